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

use crate::capabilities::CapabilityGrants;
use crate::guest_output::GuestOutputFiles;
use crate::limits::{InvalidLimit, Limits, LimitsOverride, MemoryGauge};
use hearth_prewarm::pool::PoolSettings;
use std::sync::Arc;

/// What one function asks for, before the node's defaults.
#[derive(Debug, Clone, Default)]
pub struct FunctionSpec {
    /// Its name (tags output, errors and metrics).
    pub name: String,
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
    /// Where its stdout/stderr go (none: hearthd's log).
    pub output_files: Option<Arc<GuestOutputFiles>>,
}

/// What the node fills in where a [`FunctionSpec`] says nothing.
#[derive(Debug, Clone, Copy)]
pub struct NodeDefaults {
    /// `[limits]`.
    pub limits: Limits,
    /// Idle instances a function keeps unless it asks.
    pub min_idle: u32,
    /// `[pool] max_invocations`.
    pub max_invocations: u32,
}

impl Default for NodeDefaults {
    fn default() -> Self {
        NodeDefaults {
            limits: Limits::default(),
            min_idle: 0,
            max_invocations: 1,
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
    pub fn into_env(self, defaults: &NodeDefaults) -> Result<FunctionEnv, InvalidLimit> {
        let limits = self.limits.apply(defaults.limits);
        limits.validate()?;
        let mut args = Vec::with_capacity(self.args.len() + 1);
        args.push(self.name.clone());
        args.extend(self.args);
        Ok(FunctionEnv {
            name: self.name.as_str().into(),
            env: self.env,
            args,
            allowed_outbound_hosts: self.allowed_outbound_hosts.into(),
            limits,
            output_files: self.output_files,
            memory: Arc::default(),
            pool: PoolSettings {
                min_idle: self.min_idle.unwrap_or(defaults.min_idle),
                max_invocations: self
                    .max_invocations
                    .unwrap_or(defaults.max_invocations)
                    .max(1),
                ..PoolSettings::default()
            },
            grants: self.grants,
        })
    }
}

/// What every instance of one function starts with.
#[derive(Debug, Clone)]
pub struct FunctionEnv {
    /// The function's name, used to tag its output and errors.
    pub name: Arc<str>,
    /// `wasi:cli/environment` variables, in order.
    pub env: Vec<(String, String)>,
    /// Command-line arguments the guest sees (jobs), including argv\[0\].
    pub args: Vec<String>,
    /// Hosts that outbound `wasi:http` requests may reach; `*` allows any.
    /// Empty (the default) denies all outbound requests.
    pub allowed_outbound_hosts: Arc<[String]>,
    /// Limits in force.
    pub limits: Limits,
    /// Where guest stdout/stderr go: files (e.g. the FIFOs containerd gives
    /// a task), or, when `None`, hearthd's log.
    pub output_files: Option<Arc<GuestOutputFiles>>,
    /// Linear memory held by this function's live instances (idle ones in
    /// its pool included).
    pub memory: Arc<MemoryGauge>,
    /// How its instance pool behaves (services only).
    pub pool: PoolSettings,
    /// The capabilities its config grants (stores, config values).
    pub grants: CapabilityGrants,
}

impl FunctionEnv {
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
            too_big.into_env(&defaults).unwrap_err().key,
            "max_memory_mib"
        );
    }
}
