//! [`FunctionEnv`]: what every instance of one function starts with, made
//! once when the function is loaded and shared, immutable, by its
//! instances.
//!
//! # Contract
//!
//! * However a function is started (a `[[function]]` in `hearth.toml`,
//!   `hearth run`'s flags, a shim's `Create` through the control API), what
//!   it asks for is a [`FunctionSpec`], and [`FunctionSpec::into_env`] with
//!   the node's [`NodeDefaults`] is the one place that becomes a
//!   [`FunctionEnv`]: the same spec gets the same environment and the same
//!   capability grants on every path.
//! * Limits the spec leaves unset take the node's; the result is checked
//!   ([`InvalidLimit`] names the limit).
//! * **Identity and reach.** The function is in the spec's namespace (or
//!   the node's [`TenancyPolicy::default_namespace`]); what its namespace
//!   may reach beyond itself comes from the policy, added to what the spec's
//!   own grants (operator-written `hearth.toml`) give, and narrowed by the
//!   spec's [`Narrowing`] (a Pod's annotations), which can never widen it
//!   ([`SpecError::NotAllowed`]). See [`crate::tenancy`].
//! * **Pod resources are limits.** A memory limit caps the per-instance
//!   memory (`max_memory_mib`), the instances alive at once
//!   (`limit / max_memory_mib`) and, through the function's
//!   [`MemoryGauge`], the linear memory of all its instances together. A
//!   CPU limit caps instances at [`INSTANCES_PER_CPU`] per CPU and, unless
//!   the spec sets `instance_concurrency`, sets it to
//!   [`DEFAULT_INSTANCE_CONCURRENCY`] per CPU (at least 1). A
//!   `min_idle` the spec asks for beyond the instances it may have is
//!   refused ([`SpecError::MinIdle`] names both numbers); the node's
//!   default `min_idle` is cut to fit instead.

use crate::capabilities::CapabilityGrants;
use crate::guest_output::GuestStdio;
use crate::limits::{
    CpuGauge, DEFAULT_INSTANCE_CONCURRENCY, InvalidLimit, Limits, LimitsOverride,
    MAX_INSTANCE_CONCURRENCY, MemoryGauge,
};
use crate::stats::ConnectionStats;
use crate::tenancy::{
    Identity, IdentityError, NamespacePolicy, Narrowing, NotAllowed, TenancyPolicy, narrow,
    topic_matches,
};
use hearth_prewarm::pool::PoolSettings;
use std::sync::Arc;

/// Instances a function may have at once per CPU of its Pod's CPU limit
/// (functions mostly wait on I/O, so more than one per CPU).
pub const INSTANCES_PER_CPU: u64 = 8;

/// A Pod's resource limits (`linux.resources` of its OCI spec); `None`:
/// not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodResources {
    /// `memory.limit`, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// The CPU limit (`cpu.quota / cpu.period`), in millicores.
    pub cpu_limit_millis: Option<u64>,
}

/// A spec that cannot become an environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A limit is out of range.
    #[error("limits: {0}")]
    Limit(#[from] InvalidLimit),
    /// Its namespace is not a namespace name.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// It narrows to something its namespace is not allowed.
    #[error(transparent)]
    NotAllowed(#[from] NotAllowed),
    /// It asks for more idle instances than it may have.
    #[error(
        "min-idle {asked} is more than the {slots} instance slots this function may have ({why}); ask for at most {slots}"
    )]
    MinIdle {
        /// Idle instances asked for.
        asked: u32,
        /// Instances it may have at once.
        slots: u32,
        /// What sets `slots`.
        why: String,
    },
    /// Its Pod's memory limit is below one MiB.
    #[error("the Pod's memory limit of {0} bytes is less than 1 MiB, too small for any instance")]
    MemoryLimitTooSmall(u64),
}

/// What one function asks for, before the node's defaults.
#[derive(Debug, Clone, Default)]
pub struct FunctionSpec {
    /// Its name (tags output, errors and metrics; `invoke` finds it by it,
    /// in its namespace).
    pub name: String,
    /// Its namespace (none: the policy's default namespace).
    pub namespace: Option<String>,
    /// `wasi:cli/environment` variables, in order.
    pub env: Vec<(String, String)>,
    /// Arguments after argv\[0\] (which is the name).
    pub args: Vec<String>,
    /// Hosts outbound `wasi:http` may reach (`*`: any).
    pub allowed_outbound_hosts: Vec<String>,
    /// Limits it sets itself.
    pub limits: LimitsOverride,
    /// Idle instances kept ready (none: the node's default).
    pub min_idle: Option<u32>,
    /// Calls per instance before it retires (none: the node's default).
    pub max_invocations: Option<u32>,
    /// The capabilities it is granted.
    pub grants: CapabilityGrants,
    /// Where its stdio goes (by default: hearthd's log).
    pub stdio: GuestStdio,
    /// What its Pod's annotations narrow its namespace's reach to.
    pub narrowing: Narrowing,
    /// Its Pod's resource limits.
    pub resources: PodResources,
}

/// What the node fills in where a [`FunctionSpec`] says nothing.
#[derive(Debug, Clone)]
pub struct NodeDefaults {
    /// `[limits]`.
    pub limits: Limits,
    /// Idle instances a function keeps unless it asks.
    pub min_idle: u32,
    /// `[pool] max_invocations`.
    pub max_invocations: u32,
    /// `[tenancy]`.
    pub tenancy: Arc<TenancyPolicy>,
}

impl Default for NodeDefaults {
    fn default() -> Self {
        NodeDefaults {
            limits: Limits::default(),
            min_idle: 0,
            max_invocations: 1,
            tenancy: Arc::default(),
        }
    }
}

impl FunctionSpec {
    /// A spec for `name` asking for nothing in particular.
    pub fn named(name: &str) -> Self {
        FunctionSpec {
            name: name.into(),
            ..FunctionSpec::default()
        }
    }

    /// The environment of this function on a node with `defaults`.
    pub fn into_env(self, defaults: &NodeDefaults) -> Result<FunctionEnv, SpecError> {
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| defaults.tenancy.default_namespace.clone());
        Identity::new(&namespace, self.grants.app.as_deref().unwrap_or(&self.name))?;
        let (limits, slots_why) = self.limits_within_resources(defaults.limits)?;
        limits.validate()?;
        let slots = limits.max_concurrent_instances;
        let min_idle = match self.min_idle {
            Some(asked) if asked > slots => {
                return Err(SpecError::MinIdle {
                    asked,
                    slots,
                    why: slots_why,
                });
            }
            Some(asked) => asked,
            None => defaults.min_idle.min(slots),
        };
        let reach = defaults.tenancy.for_namespace(&namespace);
        let (grants, allowed_outbound_hosts) = self.narrowed_grants(&namespace, &reach)?;
        let mut args = Vec::with_capacity(self.args.len() + 1);
        args.push(self.name.clone());
        args.extend(self.args);
        let memory = match self.resources.memory_limit_bytes {
            Some(limit) => MemoryGauge::with_limit(limit),
            None => MemoryGauge::default(),
        };
        Ok(FunctionEnv {
            name: self.name.as_str().into(),
            namespace,
            env: self.env,
            args,
            allowed_outbound_hosts: allowed_outbound_hosts.into(),
            limits,
            stdio: self.stdio,
            memory: Arc::new(memory),
            cpu: Arc::default(),
            connections: Arc::default(),
            pool: PoolSettings {
                min_idle,
                max_invocations: self
                    .max_invocations
                    .unwrap_or(defaults.max_invocations)
                    .max(1),
                ..PoolSettings::default()
            },
            grants,
            reach: Arc::new(reach),
        })
    }

    /// The limits in force: the spec's over the node's, cut to the Pod's
    /// resources; and what sets the number of instance slots.
    fn limits_within_resources(&self, node: Limits) -> Result<(Limits, String), SpecError> {
        const MIB: u64 = 1024 * 1024;
        let mut limits = self.limits.apply(node);
        let mut why = "max_concurrent_instances".to_string();
        if let Some(bytes) = self.resources.memory_limit_bytes {
            let limit_mib = bytes / MIB;
            if limit_mib == 0 {
                return Err(SpecError::MemoryLimitTooSmall(bytes));
            }
            limits.max_memory_mib = limits.max_memory_mib.min(limit_mib);
            let fit = u32::try_from(limit_mib / limits.max_memory_mib.max(1)).unwrap_or(u32::MAX);
            if fit < limits.max_concurrent_instances {
                limits.max_concurrent_instances = fit.max(1);
                why = format!(
                    "the Pod's memory limit of {limit_mib} MiB holds {} instance(s) of up to {} MiB",
                    limits.max_concurrent_instances, limits.max_memory_mib
                );
            }
        }
        if let Some(millis) = self.resources.cpu_limit_millis {
            let fit = u32::try_from(millis.saturating_mul(INSTANCES_PER_CPU).div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1);
            if fit < limits.max_concurrent_instances {
                limits.max_concurrent_instances = fit;
                why = format!(
                    "the Pod's CPU limit of {millis}m allows {fit} at {INSTANCES_PER_CPU} per CPU"
                );
            }
            if self.limits.instance_concurrency.is_none() {
                let per_cpu = u64::from(DEFAULT_INSTANCE_CONCURRENCY);
                limits.instance_concurrency = u32::try_from(
                    millis
                        .saturating_mul(per_cpu)
                        .div_ceil(1000)
                        .min(u64::from(MAX_INSTANCE_CONCURRENCY)),
                )
                .unwrap_or(MAX_INSTANCE_CONCURRENCY)
                .max(1);
            }
        }
        Ok((limits, why))
    }

    /// Its grants and outbound hosts: its own plus its namespace's reach,
    /// narrowed by its annotations.
    fn narrowed_grants(
        &self,
        namespace: &str,
        reach: &NamespacePolicy,
    ) -> Result<(CapabilityGrants, Vec<String>), NotAllowed> {
        let not_allowed = |what: &'static str| {
            move |name: String| NotAllowed {
                what,
                name,
                namespace: namespace.to_string(),
            }
        };
        let mut grants = self.grants.clone();
        let mut shared = grants.shared_stores.clone();
        shared.extend(reach.shared_stores.iter().cloned());
        shared.sort();
        shared.dedup();
        grants.shared_stores = match &self.narrowing.shared_stores {
            Some(asked) => narrow(asked, |label| shared.iter().any(|s| s == label))
                .map_err(not_allowed("hearth.dev/shared-stores"))?,
            None => shared,
        };
        let mut outbound = self.allowed_outbound_hosts.clone();
        outbound.extend(reach.outbound_hosts.iter().cloned());
        outbound.sort();
        outbound.dedup();
        let outbound = match &self.narrowing.outbound_hosts {
            Some(asked) => narrow(asked, |host| {
                outbound
                    .iter()
                    .any(|allowed| allowed == "*" || allowed == host)
            })
            .map_err(not_allowed("hearth.dev/outbound-hosts"))?,
            None => outbound,
        };
        if let Some(asked) = &self.narrowing.publish_topics {
            let own = grants.publish_topics.clone();
            let topics = narrow(asked, |topic| {
                match crate::tenancy::ForeignTopic::parse(topic) {
                    Some(_) => reach.topics.iter().any(|p| topic_matches(p, topic)),
                    None => own
                        .as_ref()
                        .is_none_or(|own| own.iter().any(|p| topic_matches(p, topic))),
                }
            })
            .map_err(not_allowed("hearth.dev/publish-topics"))?;
            grants.publish_topics = Some(topics);
        }
        Ok((grants, outbound))
    }
}

/// What every instance of one function starts with.
#[derive(Debug, Clone)]
pub struct FunctionEnv {
    /// The function's name, used to tag its output and errors.
    pub name: Arc<str>,
    /// Its namespace (see [`crate::tenancy`]).
    pub namespace: String,
    /// `wasi:cli/environment` variables, in order.
    pub env: Vec<(String, String)>,
    /// Command-line arguments the guest sees (jobs), including argv\[0\].
    pub args: Vec<String>,
    /// Hosts that outbound `wasi:http` requests may reach; `*` allows any.
    /// Empty (the default) denies all outbound requests.
    pub allowed_outbound_hosts: Arc<[String]>,
    /// Limits in force.
    pub limits: Limits,
    /// Where guest stdio goes: hearthd's log, files (e.g. the FIFOs
    /// containerd gives a task) or the process's own (`hearth run`).
    pub stdio: GuestStdio,
    /// Linear memory held by this function's live instances (idle ones in
    /// its pool included), and its Pod's limit of it.
    pub memory: Arc<MemoryGauge>,
    /// CPU time its guest calls have used.
    pub cpu: Arc<CpuGauge>,
    /// Its HTTP listener's connections.
    pub connections: Arc<ConnectionStats>,
    /// How its instance pool behaves (services only).
    pub pool: PoolSettings,
    /// The capabilities its config grants (stores, config values).
    pub grants: CapabilityGrants,
    /// What its namespace may reach beyond itself.
    pub reach: Arc<NamespacePolicy>,
}

impl FunctionEnv {
    /// Its identity: its namespace and its app (`grants.app`, else its
    /// name).
    pub fn identity(&self) -> Result<Identity, IdentityError> {
        Identity::new(
            &self.namespace,
            self.grants.app.as_deref().unwrap_or(&self.name),
        )
    }

    /// An environment for `name` with default limits and nothing else.
    pub fn new(name: &str) -> Self {
        FunctionSpec::named(name)
            .into_env(&NodeDefaults::default())
            .expect("the default limits are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_takes_the_node_defaults_where_it_says_nothing() {
        let defaults = NodeDefaults {
            limits: Limits {
                request_timeout_ms: 500,
                ..Limits::default()
            },
            min_idle: 2,
            max_invocations: 7,
            tenancy: Arc::default(),
        };
        let spec = FunctionSpec {
            args: vec!["--flag".into()],
            limits: LimitsOverride {
                max_memory_mib: Some(16),
                ..LimitsOverride::default()
            },
            max_invocations: Some(3),
            ..FunctionSpec::named("job")
        };
        let env = spec.into_env(&defaults).unwrap();
        assert_eq!(env.args, ["job", "--flag"]);
        assert_eq!(
            (env.limits.request_timeout_ms, env.limits.max_memory_mib),
            (500, 16)
        );
        assert_eq!((env.pool.min_idle, env.pool.max_invocations), (2, 3));
        let too_big = FunctionSpec {
            limits: LimitsOverride {
                max_memory_mib: Some(5000),
                ..LimitsOverride::default()
            },
            ..FunctionSpec::named("big")
        };
        assert_eq!(
            too_big.into_env(&defaults).unwrap_err(),
            SpecError::Limit(InvalidLimit {
                key: "max_memory_mib",
                rule: "must be at most 4096 (32-bit linear memory)"
            })
        );
    }

    #[test]
    fn pod_resources_cap_memory_instances_and_min_idle() {
        let defaults = NodeDefaults::default();
        let pod = |memory_mib: Option<u64>, cpu: Option<u64>, min_idle| FunctionSpec {
            resources: PodResources {
                memory_limit_bytes: memory_mib.map(|m| m << 20),
                cpu_limit_millis: cpu,
            },
            min_idle,
            ..FunctionSpec::named("counter")
        };
        let env = pod(Some(64), None, None).into_env(&defaults).unwrap();
        assert_eq!(
            (
                env.limits.max_memory_mib,
                env.limits.max_concurrent_instances
            ),
            (64, 1)
        );
        assert_eq!(env.memory.limit(), Some(64 << 20));
        let env = pod(Some(1024), None, None).into_env(&defaults).unwrap();
        assert_eq!(
            (
                env.limits.max_memory_mib,
                env.limits.max_concurrent_instances
            ),
            (128, 8)
        );
        let env = pod(None, Some(500), None).into_env(&defaults).unwrap();
        assert_eq!(env.limits.max_concurrent_instances, 4);
        let refused = pod(Some(64), None, Some(1000))
            .into_env(&defaults)
            .unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains("min-idle 1000")
                && message.contains("1 instance slots")
                && message.contains("64 MiB"),
            "{message}"
        );
        let refused = pod(None, None, Some(1000)).into_env(&defaults).unwrap_err();
        assert!(
            refused.to_string().contains("64 instance slots"),
            "{refused}"
        );
        assert_eq!(
            pod(Some(1), None, None)
                .into_env(&defaults)
                .unwrap()
                .limits
                .max_memory_mib,
            1
        );
        assert_eq!(
            pod(None, None, None)
                .into_env(&defaults)
                .unwrap()
                .memory
                .limit(),
            None
        );
        let cut = NodeDefaults {
            min_idle: 4,
            ..NodeDefaults::default()
        };
        assert_eq!(
            pod(Some(64), None, None)
                .into_env(&cut)
                .unwrap()
                .pool
                .min_idle,
            1
        );
    }

    #[test]
    fn annotations_narrow_the_namespace_policy_and_never_widen_it() {
        let mut tenancy = TenancyPolicy::default();
        tenancy.namespaces.insert(
            "team-a".into(),
            NamespacePolicy {
                shared_stores: vec!["catalog".into()],
                outbound_hosts: vec!["api.example".into(), "cdn.example".into()],
                topics: vec!["team-b:orders".into()],
                ..NamespacePolicy::default()
            },
        );
        let defaults = NodeDefaults {
            tenancy: Arc::new(tenancy),
            ..NodeDefaults::default()
        };
        let in_a = |narrowing| FunctionSpec {
            namespace: Some("team-a".into()),
            narrowing,
            ..FunctionSpec::named("cart")
        };
        let env = in_a(Narrowing::default()).into_env(&defaults).unwrap();
        assert_eq!(env.grants.shared_stores, ["catalog"]);
        assert_eq!(&*env.allowed_outbound_hosts, ["api.example", "cdn.example"]);
        assert_eq!(env.identity().unwrap().scope(), "team-a.cart");
        let narrowed = in_a(Narrowing {
            outbound_hosts: Some(vec!["cdn.example".into()]),
            shared_stores: Some(vec![]),
            publish_topics: Some(vec!["mine".into(), "team-b:orders".into()]),
        })
        .into_env(&defaults)
        .unwrap();
        assert_eq!(&*narrowed.allowed_outbound_hosts, ["cdn.example"]);
        assert!(narrowed.grants.shared_stores.is_empty());
        for widening in [
            Narrowing {
                outbound_hosts: Some(vec!["evil.example".into()]),
                ..Narrowing::default()
            },
            Narrowing {
                shared_stores: Some(vec!["payroll".into()]),
                ..Narrowing::default()
            },
            Narrowing {
                publish_topics: Some(vec!["team-c:orders".into()]),
                ..Narrowing::default()
            },
        ] {
            let error = in_a(widening).into_env(&defaults).unwrap_err();
            assert!(matches!(error, SpecError::NotAllowed(_)), "{error}");
        }
        let in_b = FunctionSpec {
            namespace: Some("team-b".into()),
            narrowing: Narrowing {
                shared_stores: Some(vec!["catalog".into()]),
                ..Narrowing::default()
            },
            ..FunctionSpec::named("cart")
        };
        let error = in_b.into_env(&defaults).unwrap_err().to_string();
        assert!(
            error.contains("`catalog`") && error.contains("team-b"),
            "{error}"
        );
        let default_ns = FunctionSpec::named("cart").into_env(&defaults).unwrap();
        assert_eq!(default_ns.namespace, "default");
        assert!(default_ns.grants.shared_stores.is_empty());
    }
}
