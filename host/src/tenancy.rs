//! Tenancy: who a function is, and what the operator lets its namespace
//! reach beyond itself.
//!
//! # The model
//!
//! * A function's [`Identity`] is `(namespace, app)`. For a Pod, the
//!   namespace is the Pod's Kubernetes namespace (the CRI annotation
//!   `io.kubernetes.cri.sandbox-namespace`) and the app is the container's
//!   name, or the Pod annotation `hearth.dev/app`. A `[[function]]` of
//!   `hearth.toml` or `hearth run` is in `[tenancy] default_namespace`
//!   (`default` unless set, or its own `namespace`) and its app is `app`,
//!   else its name.
//! * Everything hearthd keeps for a function is keyed by its identity:
//!   its state and keyvalue namespace (`NAMESPACE.APP`), its blob
//!   containers (`NAMESPACE.APP.CONTAINER`), its topics (`orders` is the
//!   broker's `NAMESPACE.orders`), its consumer groups (`NAMESPACE.GROUP`),
//!   the name `invoke` finds it by (its name, in its namespace), and the
//!   `namespace` label and log field of its metrics and logs. Kubernetes
//!   namespaces hold no `.`, so `NAMESPACE.` prefixes never collide; names
//!   shared across namespaces by the operator start with `_`, which no
//!   namespace can.
//! * Replicas (Pods of one Deployment: same namespace, same app) share all
//!   of it. The same names in another namespace share nothing.
//! * **Reach across namespaces comes only from the operator**: a
//!   [`TenancyPolicy`] in `hearth.toml` (`[tenancy.namespaces.NS]`) lists
//!   the shared stores, extra brokers, other namespaces' topics, other
//!   namespaces' functions and outbound hosts functions of `NS` may use.
//!   Nothing is reachable across namespaces without it.
//! * A Pod's annotations ([`Narrowing`]) may only narrow what its
//!   namespace is allowed; naming something outside it refuses the Pod
//!   ([`NotAllowed`]), it never widens the grant.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The namespace of functions that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Who a function is: its namespace and its app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    namespace: String,
    app: String,
}

/// A namespace or app name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not a Kubernetes namespace name.
    #[error(
        "namespace {0:?} must be 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
    )]
    Namespace(String),
}

impl Identity {
    /// The identity `(namespace, app)`. The namespace must be a Kubernetes
    /// namespace name (a DNS label); the app is lowercased, and anything
    /// outside `[a-z0-9_-]` in it becomes `-` (so the first `.` of a key
    /// always ends the namespace and the second the app).
    pub fn new(namespace: &str, app: &str) -> Result<Self, IdentityError> {
        if !is_dns_label(namespace) {
            return Err(IdentityError::Namespace(
                namespace.chars().take(80).collect(),
            ));
        }
        Ok(Identity {
            namespace: namespace.to_string(),
            app: app_name(app),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The app.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// `NAMESPACE.APP`: the state namespace of the app's own store, and
    /// the prefix of its blob containers.
    pub fn scope(&self) -> String {
        format!("{}.{}", self.namespace, self.app)
    }

    /// The broker's name of `name` (a topic or a group) in this namespace.
    pub fn in_namespace(&self, name: &str) -> String {
        format!("{}.{name}", self.namespace)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.app)
    }
}

/// Whether `name` is a DNS label (what a Kubernetes namespace is).
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// An app name from a function or container name: lowercased, anything
/// outside `[a-z0-9_-]` becomes `-`, at most 63 characters.
fn app_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if cleaned.is_empty() {
        "function".into()
    } else {
        cleaned
    }
}

/// `[tenancy]` in `hearth.toml`: the namespace of functions that name
/// none, and what each namespace may reach beyond itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyPolicy {
    /// The namespace of `[[function]]` entries and `hearth run`.
    pub default_namespace: String,
    /// What each namespace may reach, by namespace.
    pub namespaces: BTreeMap<String, NamespacePolicy>,
}

impl Default for TenancyPolicy {
    fn default() -> Self {
        TenancyPolicy {
            default_namespace: DEFAULT_NAMESPACE.into(),
            namespaces: BTreeMap::new(),
        }
    }
}

/// What functions of one namespace may reach beyond it
/// (`[tenancy.namespaces.NS]`). Empty: nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespacePolicy {
    /// Shared state stores (labels of `[state.stores]`) they may open.
    pub shared_stores: Vec<String>,
    /// Brokers (labels of `[messaging.brokers]`) besides their own that
    /// `wasi:messaging`'s `connect` may reach.
    pub brokers: Vec<String>,
    /// Other namespaces' topics they may publish to and subscribe to:
    /// `NS:topic`, or `NS:prefix.>` / `NS:*` for many.
    pub topics: Vec<String>,
    /// Other namespaces' functions they may `invoke`: `name.NS`, or
    /// `*.NS` for every function of `NS`.
    pub invoke: Vec<String>,
    /// Hosts outbound `wasi:http` may reach (`*`: any).
    pub outbound_hosts: Vec<String>,
}

impl TenancyPolicy {
    /// Checks the names in the policy; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !is_dns_label(&self.default_namespace) {
            return Err(format!(
                "default_namespace: {}",
                IdentityError::Namespace(self.default_namespace.clone())
            ));
        }
        for (namespace, policy) in &self.namespaces {
            let key = |field: &str| format!("namespaces.{namespace}.{field}");
            if !is_dns_label(namespace) {
                return Err(format!(
                    "namespaces: {}",
                    IdentityError::Namespace(namespace.clone())
                ));
            }
            for topic in &policy.topics {
                ForeignTopic::parse(topic)
                    .filter(|t| is_dns_label(t.namespace))
                    .ok_or_else(|| {
                        format!(
                            "{}: `{topic}` must be NAMESPACE:topic (or NAMESPACE:prefix.> / NAMESPACE:*)",
                            key("topics")
                        )
                    })?;
            }
            for target in &policy.invoke {
                InvokeTarget::parse(target, namespace)
                    .filter(|t| t.namespace != namespace)
                    .ok_or_else(|| {
                        format!(
                            "{}: `{target}` must be NAME.NAMESPACE or *.NAMESPACE, of another namespace",
                            key("invoke")
                        )
                    })?;
            }
        }
        Ok(())
    }

    /// What `namespace` may reach (nothing, if the policy does not name it).
    pub fn for_namespace(&self, namespace: &str) -> NamespacePolicy {
        self.namespaces.get(namespace).cloned().unwrap_or_default()
    }
}

/// A topic of another namespace, as a guest or the policy writes it:
/// `NS:topic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignTopic<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// The topic (or pattern) within it.
    pub topic: &'a str,
}

impl<'a> ForeignTopic<'a> {
    /// `NS:topic`, or `None` for a topic of the function's own namespace.
    pub fn parse(name: &'a str) -> Option<Self> {
        let (namespace, topic) = name.split_once(':')?;
        Some(ForeignTopic { namespace, topic })
    }

    /// The broker's name of it.
    pub fn broker_topic(&self) -> String {
        format!("{}.{}", self.namespace, self.topic)
    }
}

/// Whether `topic` is matched by `pattern`: exactly, or by a prefix
/// ending in `.>` (one or more further tokens) or `*` (anything). The one
/// rule for publish allow-lists, policies and annotations alike.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix(".>") {
        topic
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| !rest.is_empty())
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        topic.starts_with(prefix)
    } else {
        pattern == topic
    }
}

/// The namespace and name an `invoke` target means, for a caller in
/// `caller_namespace`: `name` is in the caller's namespace,
/// `name.NAMESPACE` in `NAMESPACE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvokeTarget<'a> {
    /// The callee's name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
}

impl<'a> InvokeTarget<'a> {
    /// Reads `target`; `None` when its namespace part is not a namespace
    /// name.
    pub fn parse(target: &'a str, caller_namespace: &'a str) -> Option<Self> {
        match target.rsplit_once('.') {
            None => Some(InvokeTarget {
                name: target,
                namespace: caller_namespace,
            }),
            Some((name, namespace)) if is_dns_label(namespace) && !name.is_empty() => {
                Some(InvokeTarget { name, namespace })
            }
            Some(_) => None,
        }
    }

    /// Whether the policy entries `allowed` (`name.NS`, `*.NS`) let a
    /// caller reach this target in another namespace.
    pub fn allowed_by(&self, allowed: &[String]) -> bool {
        allowed.iter().any(|entry| {
            entry.rsplit_once('.').is_some_and(|(name, namespace)| {
                namespace == self.namespace && (name == "*" || name == self.name)
            })
        })
    }
}

/// What a Pod's annotations ask for, each `None` when not set: they may
/// only narrow what the namespace is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Narrowing {
    /// `hearth.dev/outbound-hosts`.
    pub outbound_hosts: Option<Vec<String>>,
    /// `hearth.dev/shared-stores`.
    pub shared_stores: Option<Vec<String>>,
    /// `hearth.dev/publish-topics`.
    pub publish_topics: Option<Vec<String>>,
}

/// An annotation asked for more than the namespace is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} `{name}` is not allowed for namespace `{namespace}` ([tenancy.namespaces.{namespace}] in hearthd's hearth.toml); a Pod's annotations can only narrow that"
)]
pub struct NotAllowed {
    /// Which list (`hearth.dev/outbound-hosts`, ...).
    pub what: &'static str,
    /// The entry.
    pub name: String,
    /// The namespace.
    pub namespace: String,
}

/// `asked` if every entry of it is `allowed` (by `permits`), else the
/// first one that is not.
pub fn narrow(asked: &[String], permits: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
    match asked.iter().find(|entry| !permits(entry)) {
        Some(entry) => Err(entry.clone()),
        None => Ok(asked.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_scope_by_namespace_and_app() {
        let a = Identity::new("team-a", "Cart.V2").unwrap();
        assert_eq!(a.app(), "cart-v2");
        assert_eq!(a.scope(), "team-a.cart-v2");
        assert_eq!(a.in_namespace("orders.created"), "team-a.orders.created");
        assert_eq!(a.to_string(), "team-a/cart-v2");
        for bad in ["", "Team", "a.b", "-a", "a-", "_shared", &"x".repeat(64)] {
            assert!(Identity::new(bad, "cart").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invoke_targets_resolve_in_the_callers_namespace_unless_named() {
        let own = InvokeTarget::parse("cart", "team-a").unwrap();
        assert_eq!((own.name, own.namespace), ("cart", "team-a"));
        let other = InvokeTarget::parse("cart.team-b", "team-a").unwrap();
        assert_eq!((other.name, other.namespace), ("cart", "team-b"));
        assert!(InvokeTarget::parse("cart.Team_B", "team-a").is_none());
        assert!(other.allowed_by(&["cart.team-b".into()]));
        assert!(other.allowed_by(&["*.team-b".into()]));
        assert!(!other.allowed_by(&["payments.team-b".into(), "*.team-c".into()]));
    }

    #[test]
    fn topic_patterns_match_exactly_or_by_prefix() {
        assert!(topic_matches("orders", "orders"));
        assert!(!topic_matches("orders", "orders.eu"));
        assert!(topic_matches("orders.>", "orders.eu"));
        assert!(!topic_matches("orders.>", "orders."));
        assert!(topic_matches("*", "anything"));
        let foreign = ForeignTopic::parse("team-b:orders").unwrap();
        assert_eq!(foreign.broker_topic(), "team-b.orders");
        assert!(ForeignTopic::parse("orders").is_none());
    }

    #[test]
    fn a_policy_with_bad_names_is_refused_naming_the_key() {
        let mut policy = TenancyPolicy::default();
        assert_eq!(policy.validate(), Ok(()));
        policy.namespaces.insert(
            "team-a".into(),
            NamespacePolicy {
                invoke: vec!["payments.team-b".into(), "cart".into()],
                ..NamespacePolicy::default()
            },
        );
        let error = policy.validate().unwrap_err();
        assert!(error.contains("namespaces.team-a.invoke") && error.contains("`cart`"));
        policy.namespaces.get_mut("team-a").unwrap().invoke = vec!["*.team-b".into()];
        policy.namespaces.get_mut("team-a").unwrap().topics = vec!["orders".into()];
        let error = policy.validate().unwrap_err();
        assert!(error.contains("namespaces.team-a.topics"), "{error}");
        policy.default_namespace = "Not Valid".into();
        assert!(policy.validate().unwrap_err().contains("default_namespace"));
    }

    #[test]
    fn narrowing_keeps_a_subset_and_names_the_first_extra() {
        let allowed = ["a.example".to_string(), "b.example".to_string()];
        let permits = |h: &str| allowed.iter().any(|a| a == h);
        assert_eq!(
            narrow(&["b.example".into()], permits),
            Ok(vec!["b.example".to_string()])
        );
        assert_eq!(
            narrow(&["b.example".into(), "evil.example".into()], permits),
            Err("evil.example".to_string())
        );
    }
}
