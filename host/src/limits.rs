//! Per-request limits and their enforcement inside a store.
//!
//! Every instance runs under [`Limits`]:
//! * `request_timeout_ms`: wall-clock deadline for one request (or one
//!   `init`/`shutdown` call), enforced twice: by epoch interruption, so a
//!   guest spinning in a loop is stopped, and by a host timer, so a guest
//!   blocked in a host call is stopped too. Either way the caller gets
//!   [`DeadlineExceeded`].
//! * `max_memory_mib`: the most linear memory one instance may hold, all
//!   its linear memories together (a component has several: one per core
//!   module that defines one). `memory.grow` past it traps with
//!   [`MemoryLimitExceeded`] instead of quietly returning -1, so the caller
//!   learns why the request failed.
//! * `max_request_body_bytes`: larger bodies are refused with 413.
//! * `max_concurrent_instances`: instances alive at once per function; a
//!   request that cannot get a slot within its deadline gets 503.
//! * `instance_concurrency` (WASI 0.3 services): requests one instance
//!   takes at once (see [`crate::function::concurrent`]); a function then has at most
//!   `max_concurrent_instances × instance_concurrency` requests in flight.
//!   A WASI 0.2 instance always takes one.
//! * `max_connections`: HTTP connections open at once to one function's
//!   listener; one more is closed as soon as it is accepted (and counted),
//!   so idle connections held against one function cannot use up the
//!   node's file descriptors for the others.
//! * `header_read_timeout_ms`: how long a connection may take to send a
//!   request's headers; an idle keep-alive connection that starts no new
//!   request within it is closed too.
//!
//! Each function also has a [`MemoryGauge`]: the linear memory its live
//! instances hold now, counted as the limiter grants growth and released when
//! the instance's store is dropped. It is what the shim's Stats reports.
//! A gauge may carry a limit (a Pod's memory limit): growth that would take
//! the function's instances together past it fails the same way, naming the
//! Pod's limit.

use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::ResourceLimiter;

/// Extra time the host allows past the deadline before it abandons an
/// instance itself; the epoch deadline normally fires first.
pub const DEADLINE_SLACK: Duration = Duration::from_millis(250);

/// Requests a WASI 0.3 instance takes at once unless told otherwise (per
/// CPU of the Pod's limit, when it has one: see
/// [`crate::function_env`]).
pub const DEFAULT_INSTANCE_CONCURRENCY: u32 = 16;

/// The most `instance_concurrency` may be.
pub const MAX_INSTANCE_CONCURRENCY: u32 = 1024;

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
    /// Requests one WASI 0.3 instance serves at once.
    pub instance_concurrency: u32,
    /// Maximum HTTP connections open at once to one function.
    pub max_connections: u32,
    /// Longest wait for a request's headers (and between requests of a
    /// keep-alive connection), in milliseconds.
    pub header_read_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout_ms: 30_000,
            max_memory_mib: 128,
            max_request_body_bytes: 10 * 1024 * 1024,
            max_concurrent_instances: 64,
            instance_concurrency: DEFAULT_INSTANCE_CONCURRENCY,
            max_connections: 1024,
            header_read_timeout_ms: 30_000,
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
        if self.instance_concurrency == 0 {
            return invalid("instance_concurrency", "must be at least 1");
        }
        if self.instance_concurrency > MAX_INSTANCE_CONCURRENCY {
            return invalid("instance_concurrency", "must be at most 1024");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.header_read_timeout_ms == 0 {
            return invalid("header_read_timeout_ms", "must be at least 1");
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
    /// See [`Limits::instance_concurrency`].
    pub instance_concurrency: Option<u32>,
    /// See [`Limits::max_connections`].
    pub max_connections: Option<u32>,
    /// See [`Limits::header_read_timeout_ms`].
    pub header_read_timeout_ms: Option<u64>,
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
            instance_concurrency: self
                .instance_concurrency
                .unwrap_or(defaults.instance_concurrency),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            header_read_timeout_ms: self
                .header_read_timeout_ms
                .unwrap_or(defaults.header_read_timeout_ms),
        }
    }
}

/// An instance ran past its deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("deadline exceeded: the function ran longer than {timeout_ms} ms")]
pub struct DeadlineExceeded {
    /// The deadline that was exceeded.
    pub timeout_ms: u64,
}

/// An instance tried to grow its linear memory past a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("memory limit exceeded: {}", match scope {
    MemoryScope::Instance => format!("the function tried to grow an instance's linear memory to {desired} bytes; the limit is {limit} bytes"),
    MemoryScope::Pod => format!("the function's instances would hold {desired} bytes of linear memory together; its Pod's memory limit is {limit} bytes"),
})]
pub struct MemoryLimitExceeded {
    /// The size the guest asked for (of the instance, or of all instances).
    pub desired: usize,
    /// The limit in force.
    pub limit: usize,
    /// Which limit.
    pub scope: MemoryScope,
}

/// What a memory limit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryScope {
    /// One instance (`max_memory_mib`).
    Instance,
    /// All instances of the function (its Pod's memory limit).
    Pod,
}

/// Linear memory held by the live instances of one function, in bytes,
/// and the most they may hold together, if limited.
#[derive(Debug, Default)]
pub struct MemoryGauge {
    bytes: AtomicU64,
    limit: Option<u64>,
}

impl MemoryGauge {
    /// A gauge refusing growth past `limit` bytes in all.
    pub fn with_limit(limit: u64) -> Self {
        MemoryGauge {
            bytes: AtomicU64::new(0),
            limit: Some(limit),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Adds `grown` bytes unless that passes the limit.
    fn charge(&self, grown: u64) -> Result<(), MemoryLimitExceeded> {
        let Some(limit) = self.limit else {
            self.bytes.fetch_add(grown, Ordering::Relaxed);
            return Ok(());
        };
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(grown).filter(|total| *total <= limit)
            })
            .map(drop)
            .map_err(|held| MemoryLimitExceeded {
                desired: usize::try_from(held.saturating_add(grown)).unwrap_or(usize::MAX),
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
                scope: MemoryScope::Pod,
            })
    }
}

/// CPU time the guest code of one function has used, in nanoseconds:
/// the thread CPU time of every poll of its guest calls (so time spent
/// waiting is not counted, and time another function's call spends on the
/// same thread never is). What the shim's Stats reports as CPU usage.
#[derive(Debug, Default)]
pub struct CpuGauge(AtomicU64);

impl CpuGauge {
    /// Nanoseconds used so far.
    pub fn nanos(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Runs `call`, adding the CPU time of each of its polls.
    pub async fn measure<F: Future>(&self, call: F) -> F::Output {
        let mut call = std::pin::pin!(call);
        std::future::poll_fn(|cx| {
            let started = thread_cpu_nanos();
            let poll = call.as_mut().poll(cx);
            self.0.fetch_add(
                thread_cpu_nanos().saturating_sub(started),
                Ordering::Relaxed,
            );
            poll
        })
        .await
    }
}

/// This thread's CPU time, in nanoseconds (0 if the clock cannot be read).
fn thread_cpu_nanos() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
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
        self.gauge.bytes.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = desired.saturating_sub(current) as u64;
        let instance_total = self.charged.saturating_add(grown);
        if instance_total > self.max_memory_bytes as u64 {
            return Err(MemoryLimitExceeded {
                desired: usize::try_from(instance_total).unwrap_or(usize::MAX),
                limit: self.max_memory_bytes,
                scope: MemoryScope::Instance,
            }
            .into());
        }
        self.gauge.charge(grown)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn limits(max_memory_mib: u64) -> Limits {
        Limits {
            max_memory_mib,
            ..Limits::default()
        }
    }

    #[test]
    fn the_instance_cap_counts_every_linear_memory_together() {
        let gauge = Arc::new(MemoryGauge::default());
        let mut instance = StoreLimiter::new(&limits(4), gauge.clone());
        // Two memories of one component, 3 MiB each: the second passes the
        // 4 MiB cap though each alone is under it.
        assert!(instance.memory_growing(0, 3 * MIB, None).unwrap());
        let error = instance.memory_growing(0, 3 * MIB, None).unwrap_err();
        let error = error.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!(
            (error.desired, error.limit, error.scope),
            (6 * MIB, 4 * MIB, MemoryScope::Instance)
        );
        assert_eq!(
            gauge.bytes(),
            3 * MIB as u64,
            "the refused growth is not counted"
        );
        drop(instance);
        assert_eq!(gauge.bytes(), 0, "a dropped store gives its memory back");
    }

    #[test]
    fn a_pod_limit_bounds_all_instances_of_the_function_together() {
        let gauge = Arc::new(MemoryGauge::with_limit(5 * MIB as u64));
        let mut first = StoreLimiter::new(&limits(4), gauge.clone());
        let mut second = StoreLimiter::new(&limits(4), gauge.clone());
        assert!(first.memory_growing(0, 3 * MIB, None).unwrap());
        let error = second.memory_growing(0, 3 * MIB, None).unwrap_err();
        let error = error.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!(
            (error.desired, error.limit, error.scope),
            (6 * MIB, 5 * MIB, MemoryScope::Pod)
        );
        assert!(
            error
                .to_string()
                .contains("its Pod's memory limit is 5242880 bytes")
        );
        assert!(second.memory_growing(0, 2 * MIB, None).unwrap());
        drop(first);
        assert_eq!(gauge.bytes(), 2 * MIB as u64);
    }

    #[tokio::test]
    async fn cpu_time_is_counted_only_while_the_call_runs() {
        let gauge = CpuGauge::default();
        gauge
            .measure(async {
                let started = std::time::Instant::now();
                let mut spins = 0u64;
                while started.elapsed() < Duration::from_millis(20) {
                    spins = std::hint::black_box(spins + 1);
                }
            })
            .await;
        let busy = gauge.nanos();
        assert!(busy > 0, "a spinning call used CPU");
        gauge
            .measure(tokio::time::sleep(Duration::from_millis(20)))
            .await;
        assert!(
            gauge.nanos() - busy < 20_000_000,
            "waiting is not CPU time: {} ns",
            gauge.nanos() - busy
        );
    }
}
