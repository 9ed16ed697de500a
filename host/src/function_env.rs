//! [`FunctionEnv`]: what every instance of one function starts with, made
//! once when the function is loaded and shared, immutable, by its
//! instances.

use crate::capabilities::CapabilityGrants;
use crate::guest_output::GuestOutputFiles;
use crate::limits::{Limits, MemoryGauge};
use hearth_prewarm::pool::PoolSettings;
use std::sync::Arc;

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
        FunctionEnv {
            name: name.into(),
            env: Vec::new(),
            args: vec![name.to_string()],
            allowed_outbound_hosts: Arc::from(Vec::new()),
            limits: Limits::default(),
            output_files: None,
            memory: Arc::default(),
            pool: PoolSettings::default(),
            grants: CapabilityGrants::default(),
        }
    }
}
