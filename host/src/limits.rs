//! Per-request limits and their enforcement inside a store.
//!
//! Every instance runs under [`Limits`]:
//! * `request_timeout_ms`: wall-clock deadline for one request (or one
//!   `init`/`shutdown` call), enforced twice: by epoch interruption, so a
//!   guest spinning in a loop is stopped, and by a host timer, so a guest
//!   blocked in a host call is stopped too. Either way the caller gets
//!   [`DeadlineExceeded`].
//! * `max_memory_mib`: the most linear memory one instance may hold.
//!   `memory.grow` past it traps with [`MemoryLimitExceeded`] instead of
//!   quietly returning -1, so the caller learns why the request failed.
//! * `max_request_body_bytes`: larger bodies are refused with 413.
//! * `max_concurrent_instances`: instances alive at once per function; a
//!   request that cannot get a slot within its deadline gets 503.
//!
//! Each function also has a [`MemoryGauge`]: the linear memory its live
//! instances hold now, counted as the limiter grants growth and released when
//! the instance's store is dropped. It is what the shim's Stats reports.

use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::ResourceLimiter;

/// Limits that apply to every instance of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock deadline of one request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Maximum linear memory per instance, in MiB.
    pub max_memory_mib: u64,
    /// Maximum request body, in bytes.
    pub max_request_body_bytes: u64,
    /// Maximum instances of one function alive at once.
    pub max_concurrent_instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout_ms: 30_000,
            max_memory_mib: 128,
            max_request_body_bytes: 10 * 1024 * 1024,
            max_concurrent_instances: 64,
        }
    }
}

impl Limits {
    /// The request deadline as a [`Duration`].
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The memory limit in bytes.
    pub fn max_memory_bytes(&self) -> usize {
        usize::try_from(self.max_memory_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// Checks that every limit is usable, naming the first that is not.
    pub fn validate(&self) -> Result<(), InvalidLimit> {
        let invalid = |key, rule| Err(InvalidLimit { key, rule });
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms", "must be at least 1");
        }
        if self.max_memory_mib == 0 {
            return invalid("max_memory_mib", "must be at least 1");
        }
        if self.max_memory_mib > 4096 {
            return invalid(
                "max_memory_mib",
                "must be at most 4096 (32-bit linear memory)",
            );
        }
        if self.max_concurrent_instances == 0 {
            return invalid("max_concurrent_instances", "must be at least 1");
        }
        Ok(())
    }
}

/// A limit out of its range: the limit's key and the rule it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{key} {rule}")]
pub struct InvalidLimit {
    /// The limit, as `[limits]` names it.
    pub key: &'static str,
    /// What it must be.
    pub rule: &'static str,
}

/// Limits a function sets for itself; unset ones take the node's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    /// See [`Limits::request_timeout_ms`].
    pub request_timeout_ms: Option<u64>,
    /// See [`Limits::max_memory_mib`].
    pub max_memory_mib: Option<u64>,
    /// See [`Limits::max_request_body_bytes`].
    pub max_request_body_bytes: Option<u64>,
    /// See [`Limits::max_concurrent_instances`].
    pub max_concurrent_instances: Option<u32>,
}

impl LimitsOverride {
    /// `defaults` with these overrides applied.
    pub fn apply(&self, defaults: Limits) -> Limits {
        Limits {
            request_timeout_ms: self
                .request_timeout_ms
                .unwrap_or(defaults.request_timeout_ms),
            max_memory_mib: self.max_memory_mib.unwrap_or(defaults.max_memory_mib),
            max_request_body_bytes: self
                .max_request_body_bytes
                .unwrap_or(defaults.max_request_body_bytes),
            max_concurrent_instances: self
                .max_concurrent_instances
                .unwrap_or(defaults.max_concurrent_instances),
        }
    }
}

/// An instance ran past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded: the function ran longer than {timeout_ms} ms")]
pub struct DeadlineExceeded {
    /// The deadline that was exceeded.
    pub timeout_ms: u64,
}

/// An instance tried to grow its linear memory past the limit.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory limit exceeded: the function tried to grow linear memory to {desired} bytes; the limit is {limit} bytes"
)]
pub struct MemoryLimitExceeded {
    /// The size the guest asked for.
    pub desired: usize,
    /// The limit in force.
    pub limit: usize,
}

/// Linear memory held by the live instances of one function, in bytes.
#[derive(Debug, Default)]
pub struct MemoryGauge(AtomicU64);

impl MemoryGauge {
    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The [`ResourceLimiter`] every store carries.
#[derive(Debug)]
pub struct StoreLimiter {
    max_memory_bytes: usize,
    gauge: Arc<MemoryGauge>,
    /// What this store has added to `gauge`; given back on drop.
    charged: u64,
}

impl StoreLimiter {
    /// A limiter enforcing `limits` and counting granted memory in `gauge`.
    pub fn new(limits: &Limits, gauge: Arc<MemoryGauge>) -> Self {
        StoreLimiter {
            max_memory_bytes: limits.max_memory_bytes(),
            gauge,
            charged: 0,
        }
    }
}

impl Drop for StoreLimiter {
    fn drop(&mut self) {
        self.gauge.0.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            return Err(MemoryLimitExceeded {
                desired,
                limit: self.max_memory_bytes,
            }
            .into());
        }
        let grown = desired.saturating_sub(current) as u64;
        self.gauge.0.fetch_add(grown, Ordering::Relaxed);
        self.charged += grown;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}
