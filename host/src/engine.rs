//! The one wasmtime [`Engine`] a Hearth process runs, and its epoch clock.
//!
//! The engine is configured for serving many short-lived instances:
//! the component model with its async ABI (WASI 0.3 components next to 0.2
//! ones), async calls, the pooling allocator (instance slots are
//! reserved once and reused), copy-on-write memory images (a fresh instance
//! maps its initial memory instead of copying it) and epoch interruption.
//!
//! A slot keeps the pages its last instance wrote resident, reset to their
//! initial contents ([`EngineSettings::keep_resident_bytes`], on kernels with
//! `PAGEMAP_SCAN`): the next instance of the same component, which the
//! pooling allocator puts in the same slot, starts with them mapped, and its
//! first request does not pay a page fault for each. What an instance sees
//! is unchanged: every page is its initial contents either way.
//!
//! [`HostEngine`] owns a thread that advances the engine's epoch every
//! [`EPOCH_TICK`]. Stores use it for deadlines (see [`crate::limits`]). The
//! thread stops when the `HostEngine` is dropped.

use crate::limits::Limits;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. A spinning guest is checked this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Pre-reserved slots reused across instances (the default).
    Pooling,
    /// mmap per instance; only for comparison in benchmarks.
    OnDemand,
}

/// Settings that shape the engine. Changing any of them changes compiled code
/// or slot layout, so they are fixed for the life of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    /// Instance allocation strategy.
    pub allocation: Allocation,
    /// Component instances that may be alive at once, across all functions.
    pub total_instances: u32,
    /// The largest per-instance memory limit of any function served.
    pub max_memory_bytes: usize,
    /// Linear memory (and, an eighth of it, table) bytes a pooled slot keeps
    /// resident when its instance ends: the pages the instance wrote are
    /// reset to their initial contents in place instead of handed back to
    /// the kernel, so the next instance of the same component in that slot
    /// (the pool's refill) does not fault them in again during its first
    /// request. 0 turns it off.
    pub keep_resident_bytes: usize,
}

/// The default of [`EngineSettings::keep_resident_bytes`].
pub const DEFAULT_KEEP_RESIDENT_BYTES: usize = 32 << 20;

/// The table bytes a slot keeps resident beside `memory_bytes` of linear
/// memory: an eighth.
pub const fn table_keep_resident_bytes(memory_bytes: usize) -> usize {
    memory_bytes / 8
}

impl EngineSettings {
    /// Settings able to serve functions under `limits`, `functions` of them.
    pub fn for_limits<'a>(limits: impl IntoIterator<Item = &'a Limits>) -> Self {
        let mut total_instances = 0u32;
        let mut max_memory_bytes = 0usize;
        for l in limits {
            total_instances = total_instances.saturating_add(l.max_concurrent_instances);
            max_memory_bytes = max_memory_bytes.max(l.max_memory_bytes());
        }
        EngineSettings {
            allocation: Allocation::Pooling,
            total_instances: total_instances.max(1),
            max_memory_bytes: max_memory_bytes.max(Limits::default().max_memory_bytes()),
            keep_resident_bytes: DEFAULT_KEEP_RESIDENT_BYTES,
        }
    }
}

impl Default for EngineSettings {
    /// Settings for one function under default limits. Compiled code does
    /// not depend on the limits, so this engine shares the on-disk compiled
    /// cache with engines built for any limits.
    fn default() -> Self {
        EngineSettings::for_limits([&Limits::default()])
    }
}

/// Core instances, memories and tables one component may use. Components made
/// by componentize-py and jco contain many core instances (the adapter, the
/// language runtime, libc), so these are generous.
const CORE_INSTANCES_PER_COMPONENT: u32 = 50;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 20;

/// Whether this kernel has the `PAGEMAP_SCAN` ioctl (Linux 6.7 and later),
/// which lets a slot's reset find the pages an instance wrote.
pub fn kernel_scans_pagemaps() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (6, 7)
}

/// The engine plus the thread that drives its epoch.
pub struct HostEngine {
    engine: Engine,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl HostEngine {
    /// Builds the engine and starts its epoch thread.
    pub fn new(settings: &EngineSettings) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .wasm_component_model_async(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        if settings.allocation == Allocation::Pooling {
            let instances = settings.total_instances;
            // Without PAGEMAP_SCAN wasmtime would reset the lowest
            // `keep_resident` bytes of every slot whether written or not.
            let keep_resident = if kernel_scans_pagemaps() {
                settings.keep_resident_bytes
            } else {
                0
            };
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(instances)
                .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
                .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
                .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
                .total_stacks(instances)
                .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
                .max_memories_per_component(MEMORIES_PER_COMPONENT)
                .max_tables_per_component(TABLES_PER_COMPONENT)
                .max_memory_size(settings.max_memory_bytes)
                .table_elements(100_000)
                .max_core_instance_size(4 << 20)
                .max_component_instance_size(4 << 20)
                .linear_memory_keep_resident(keep_resident)
                .table_keep_resident(table_keep_resident_bytes(keep_resident))
                // Reset only the pages an instance wrote.
                .pagemap_scan(wasmtime::Enabled::Auto);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("hearth-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(wasmtime::Error::new)?
        };
        Ok(HostEngine {
            engine,
            ticker: Some((stop, ticker)),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for HostEngine {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}
