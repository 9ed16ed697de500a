//! Loading a component as a Hearth function and creating its instances.
//!
//! A component is a *service* if it exports `wasi:http/incoming-handler`
//! (WASI 0.2) or `wasi:http/handler` (WASI 0.3), optionally with
//! `hearth:function/lifecycle`, or a *job* if it exports `wasi:cli/run` of
//! either generation. Which generation ([`Wasi`]) is decided here, at load,
//! from the export. Anything else is refused at load with the list of what it
//! does export. Imports are checked at load too: a component that imports
//! something this host does not provide never gets as far as a request.
//!
//! Every instance lives in its own store with [`StoreData`], the memory
//! limiter and a deadline (see [`crate::limits`]). Instances of one function
//! are bounded by `max_concurrent_instances`; a request waits for a slot at
//! most until its deadline.
//!
//! A service's instances come from its [`InstancePool`] (see
//! [`hearth_prewarm::pool`] for the pool's contract), with the function's
//! [`PoolSettings`](hearth_prewarm::pool::PoolSettings) from its [`FunctionEnv`]. An instance is made by
//! instantiating the compiled `InstancePre` in a fresh store and running the
//! guest's lifecycle `init`, if exported; `shutdown` runs when the instance
//! retires after its last invocation. Idle instances reserve slots in the
//! host's [`PoolCapacity`]; a function whose `min_idle` does not fit is
//! refused at load with [`FunctionLoadError::Capacity`]. Jobs are not pooled:
//! each run gets a fresh instance.

pub mod concurrent;

use crate::capabilities::handler_bindings::HandlerExportIndices;
use crate::capabilities::{FunctionCapabilities, GrantError, HostCapabilities};
use crate::distribution::{CacheSettings, PullPolicy};
use crate::engine::{EngineSettings, HostEngine};
use crate::function_env::FunctionEnv;
use crate::invocation_error::{InitFailed, Overloaded};
use crate::limits::DeadlineExceeded;
use crate::stats::SubscriptionRegistry;
use crate::store_data::StoreData;
use crate::telemetry;
use concurrent::ConcurrentService;
use hearth_prewarm::artifact_cache::{CachedFunction, PullError};
use hearth_prewarm::pool::{
    CapacityError, Checkout, InstanceFactory, InstancePool, Lease, PoolCapacity, PoolError, Ready,
};
use hearth_prewarm::{
    ArtifactCache, CompiledCache, CompiledFrom, CompiledFunction, CompiledStore, Digest, Found,
    LoadError,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{ComponentExportIndex, Instance, Linker};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::p2::bindings::CommandIndices;
use wasmtime_wasi::p3::bindings::CommandIndices as CommandIndicesP3;
use wasmtime_wasi_http::p2::bindings::ProxyIndices;
use wasmtime_wasi_http::p3::bindings::ServiceIndices;

/// The interface a WASI 0.2 service exports.
pub const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.12";
/// The interface a WASI 0.3 service exports.
pub const HANDLER_P3: &str = "wasi:http/handler@0.3.0";
/// The interface a WASI 0.2 job exports.
pub const CLI_RUN: &str = "wasi:cli/run@0.2.12";
/// The interface a WASI 0.3 job exports.
pub const CLI_RUN_P3: &str = "wasi:cli/run@0.3.0";
/// Hearth's optional lifecycle interface.
pub const LIFECYCLE: &str = "hearth:function/lifecycle@0.1.0";
/// The interface a message handler exports.
pub const MESSAGE_HANDLER: &str = "wasi:messaging/incoming-handler@0.2.0-draft";

/// Why a function could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FunctionLoadError {
    /// The file could not be read.
    #[error("cannot read function `{function}` from {path}: {cause}")]
    Read {
        /// The function's name.
        function: String,
        /// The path that was read.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The bytes are not a usable component.
    #[error("cannot load function `{function}`: {cause}")]
    Load {
        /// The function's name.
        function: String,
        /// What is wrong with the bytes.
        cause: LoadError,
    },
    /// The component exports no world's entry point.
    #[error(
        "cannot load function `{function}`: it exports none of `{INCOMING_HANDLER}` or `{HANDLER_P3}` (a service), `{MESSAGE_HANDLER}` (a message handler) and `{CLI_RUN}` or `{CLI_RUN_P3}` (a job); it exports: {exports}"
    )]
    NoEntryPoint {
        /// The function's name.
        function: String,
        /// What it does export, comma-separated.
        exports: String,
    },
    /// The lifecycle interface is there but its functions have the wrong shape.
    #[error("cannot load function `{function}`: its `{LIFECYCLE}` export is malformed: {detail}")]
    BadLifecycle {
        /// The function's name.
        function: String,
        /// wasmtime's description.
        detail: String,
    },
    /// The function's image could not be pulled or read from the cache.
    #[error("cannot load function `{function}` from {reference}: {cause}")]
    Pull {
        /// The function's name.
        function: String,
        /// The image reference.
        reference: String,
        /// What went wrong.
        cause: Box<PullError>,
    },
    /// The host was built without caches, so it cannot load references.
    #[error("cannot load function `{function}` from {reference}: this host has no artifact cache")]
    NoArtifactCache {
        /// The function's name.
        function: String,
        /// The image reference.
        reference: String,
    },
    /// The cache directory could not be opened.
    #[error("cannot open the cache at {}: {detail}", dir.display())]
    Cache {
        /// The cache root.
        dir: PathBuf,
        /// Why.
        detail: String,
    },
    /// The function's idle instances do not fit in the pool.
    #[error("cannot load function `{function}`: {cause}")]
    Capacity {
        /// The function's name.
        function: String,
        /// What was asked and what is free.
        cause: CapacityError,
    },
    /// The component was built for a version of a package (a world's WIT)
    /// that this host does not provide.
    #[error(
        "cannot load function `{function}`: it was built for `{built_for}`, but this host provides {provided}; rebuild it against this host's wit/ (the worlds in hearth:function@0.1.0)"
    )]
    VersionMismatch {
        /// The function's name.
        function: String,
        /// The import, with the version it was built for.
        built_for: String,
        /// What this host provides of that package, e.g. "`wasi:http@0.2.12`".
        provided: String,
    },
    /// Its capability grants cannot be met (e.g. an unknown store label).
    #[error("cannot load function `{function}`: {cause}")]
    Capability {
        /// The function's name.
        function: String,
        /// What is wrong, naming the config key.
        cause: GrantError,
    },
    /// Compilation was interrupted (the blocking task panicked or was cancelled).
    #[error("cannot load function `{function}`: compilation did not finish: {detail}")]
    Interrupted {
        /// The function's name.
        function: String,
        /// Why.
        detail: String,
    },
}

/// [`Host::install_capabilities`] was called a second time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("capabilities are installed already")]
pub struct AlreadyInstalled;

/// What a function is, by what it exports.
pub enum FunctionKind {
    /// An HTTP service.
    Service {
        /// Where the HTTP handler lives in an instance.
        handler: HttpHandler,
        /// Where `init` and `shutdown` live, if exported.
        lifecycle: Option<LifecycleExports>,
    },
    /// A message handler only (no HTTP).
    MessageHandler {
        /// Where `init` and `shutdown` live, if exported.
        lifecycle: Option<LifecycleExports>,
    },
    /// A job.
    Job {
        /// Where `wasi:cli/run` lives in an instance.
        run: CliRun,
    },
}

impl FunctionKind {
    /// How `hearth status` and `/metrics` name it.
    pub fn name(&self) -> &'static str {
        match self {
            FunctionKind::Service { .. } => "service",
            FunctionKind::MessageHandler { .. } => "handler",
            FunctionKind::Job { .. } => "job",
        }
    }
}

/// A service's HTTP entry point, by WASI generation.
pub enum HttpHandler {
    /// `wasi:http/incoming-handler@0.2`: one request per call, one call per
    /// instance at a time.
    P2(ProxyIndices),
    /// `wasi:http/handler@0.3`: an async export; one instance takes many
    /// requests at once (see [`concurrent`]).
    P3(ServiceIndices),
}

/// A job's entry point, by WASI generation.
pub enum CliRun {
    /// `wasi:cli/run@0.2`.
    P2(CommandIndices),
    /// `wasi:cli/run@0.3` (an async export).
    P3(CommandIndicesP3),
}

/// The WASI generation a component targets, decided at load from what it
/// exports (a message handler only: from what it imports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wasi {
    /// WASI 0.2 (`wasi:http@0.2`, `wasi:cli@0.2`).
    P2,
    /// WASI 0.3 (`wasi:http@0.3`, `wasi:cli@0.3`): native async.
    P3,
}

impl Wasi {
    /// How `hearth status` and `/metrics` name it: `wasi-0.2`, `wasi-0.3`.
    pub fn label(self) -> &'static str {
        match self {
            Wasi::P2 => "wasi-0.2",
            Wasi::P3 => "wasi-0.3",
        }
    }
}

impl std::fmt::Display for Wasi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Export indices of `hearth:function/lifecycle`.
#[derive(Clone, Copy)]
pub struct LifecycleExports {
    init: ComponentExportIndex,
    shutdown: ComponentExportIndex,
}

/// The process-wide host: one engine, one linker, one compiled cache, and
/// (with [`Host::with_caches`]) the on-disk caches.
pub struct Host {
    engine: HostEngine,
    compiled: CompiledCache<StoreData>,
    artifacts: Option<ArtifactCache>,
    capacity: PoolCapacity,
    loads: [AtomicU64; 3],
    capabilities: OnceLock<Arc<HostCapabilities>>,
    /// Services loaded here, by namespace and name, for `invoke`'s local
    /// route.
    directory: Mutex<HashMap<(String, String), Weak<Function>>>,
    subscriptions: SubscriptionRegistry,
}

/// Functions loaded, by where their compiled code came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadCounts {
    /// Found compiled in memory: a compiled-cache hit.
    pub memory: u64,
    /// Loaded precompiled from disk.
    pub disk: u64,
    /// Compiled.
    pub compiled: u64,
}

impl Host {
    /// A host whose engine can serve functions within `settings`, with an
    /// in-memory compiled cache only: it loads files, not references.
    pub fn new(settings: &EngineSettings) -> wasmtime::Result<Arc<Self>> {
        let (engine, compiled) = Self::engine_and_cache(settings)?;
        Ok(Arc::new(Host {
            engine,
            compiled,
            artifacts: None,
            capacity: PoolCapacity::new(settings.total_instances),
            loads: Default::default(),
            capabilities: OnceLock::new(),
            directory: Mutex::default(),
            subscriptions: SubscriptionRegistry::default(),
        }))
    }

    /// A host that also keeps compiled code on disk and pulls references
    /// through the artifact cache, both under `caches.dir`.
    pub fn with_caches(
        settings: &EngineSettings,
        caches: &CacheSettings,
    ) -> Result<Arc<Self>, FunctionLoadError> {
        let cache_error = |detail: String| FunctionLoadError::Cache {
            dir: caches.dir.clone(),
            detail,
        };
        let (engine, compiled) =
            Self::engine_and_cache(settings).map_err(|e| cache_error(format!("{e:#}")))?;
        let mut store = CompiledStore::open(&caches.dir, engine.engine())
            .map_err(|e| cache_error(e.to_string()))?;
        if let Some(max_bytes) = caches.max_compiled_disk_bytes {
            store = store.with_max_bytes(max_bytes);
        }
        let artifacts = ArtifactCache::open(
            &caches.dir,
            caches.max_artifact_bytes,
            caches.registry.clone(),
        )
        .map_err(|e| cache_error(e.to_string()))?;
        let mut compiled = compiled.with_store(store);
        if let Some(budget) = caches.max_compiled_memory_bytes {
            compiled = compiled.with_memory_budget(budget);
        }
        Ok(Arc::new(Host {
            engine,
            compiled,
            artifacts: Some(artifacts),
            capacity: PoolCapacity::new(settings.total_instances),
            loads: Default::default(),
            capabilities: OnceLock::new(),
            directory: Mutex::default(),
            subscriptions: SubscriptionRegistry::default(),
        }))
    }

    fn engine_and_cache(
        settings: &EngineSettings,
    ) -> wasmtime::Result<(HostEngine, CompiledCache<StoreData>)> {
        let engine = HostEngine::new(settings)?;
        let mut linker = Linker::<StoreData>::new(engine.engine());
        StoreData::add_to_linker(&mut linker)?;
        let compiled = CompiledCache::new(engine.engine().clone(), linker);
        Ok((engine, compiled))
    }

    /// Installs the host's capabilities (state stores, invoke settings).
    /// Call once, before loading functions; functions loaded before get
    /// none (and a second call is refused).
    pub fn install_capabilities(
        &self,
        capabilities: HostCapabilities,
    ) -> Result<(), AlreadyInstalled> {
        self.capabilities
            .set(Arc::new(capabilities))
            .map_err(|_| AlreadyInstalled)
    }

    /// The host's capabilities (empty unless installed).
    pub fn capabilities(&self) -> &Arc<HostCapabilities> {
        self.capabilities.get_or_init(Default::default)
    }

    /// Makes `function` reachable by `invoke` under its name in its
    /// namespace (unless a live function there holds the name already: a
    /// replica, which serves the same app).
    fn register(&self, function: &Arc<Function>) {
        let mut directory = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        directory.retain(|_, f| f.strong_count() > 0);
        // Only live functions are left, so a taken name stays taken.
        let key = (
            function.env().namespace.clone(),
            function.name().to_string(),
        );
        directory
            .entry(key)
            .or_insert_with(|| Arc::downgrade(function));
    }

    /// The loaded service called `name` in `namespace`, if any.
    pub fn local_function(&self, namespace: &str, name: &str) -> Option<Arc<Function>> {
        self.directory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(Weak::upgrade)
    }

    /// Live message subscriptions' counters (for `/metrics`).
    pub fn subscriptions(&self) -> &SubscriptionRegistry {
        &self.subscriptions
    }

    /// The artifact cache, when the host was built with one.
    pub fn artifacts(&self) -> Option<&ArtifactCache> {
        self.artifacts.as_ref()
    }

    /// Fetches `reference` into the artifact cache per `policy` and returns
    /// the entry and the verified component bytes.
    pub async fn fetch_image(
        &self,
        function: &str,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<(CachedFunction, Vec<u8>), FunctionLoadError> {
        let entry = self.pull_image(function, reference, policy).await?;
        self.read_image(function, reference, entry).await
    }

    /// The artifact cache, or the error of loading `reference` without one.
    fn artifacts_for(
        &self,
        function: &str,
        reference: &str,
    ) -> Result<&ArtifactCache, FunctionLoadError> {
        self.artifacts
            .as_ref()
            .ok_or_else(|| FunctionLoadError::NoArtifactCache {
                function: function.to_string(),
                reference: reference.to_string(),
            })
    }

    /// Fetches `reference` into the artifact cache per `policy`: its entry.
    async fn pull_image(
        &self,
        function: &str,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<CachedFunction, FunctionLoadError> {
        let artifacts = self.artifacts_for(function, reference)?;
        let span = telemetry::start_in_current("pull");
        span.set("hearth.image", || reference.to_string());
        let entry = match policy {
            PullPolicy::Missing => artifacts.get_or_pull(reference).await,
            PullPolicy::Always => artifacts.pull(reference).await,
        };
        span.end_with(&entry);
        entry.map_err(|cause| pull_error(function, reference, cause))
    }

    /// The verified component bytes of `entry` (pulled again if its blob
    /// was damaged on disk): the entry they belong to and the bytes.
    async fn read_image(
        &self,
        function: &str,
        reference: &str,
        entry: CachedFunction,
    ) -> Result<(CachedFunction, Vec<u8>), FunctionLoadError> {
        let artifacts = self.artifacts_for(function, reference)?;
        match artifacts.read_wasm(&entry) {
            Ok(bytes) => Ok((entry, bytes)),
            // The blob was damaged on disk and has been removed: fetch it again.
            Err(damaged) => {
                tracing::warn!(%reference, "{damaged}; pulling again");
                let entry = artifacts
                    .pull(reference)
                    .await
                    .map_err(|cause| pull_error(function, reference, cause))?;
                let bytes = artifacts
                    .read_wasm(&entry)
                    .map_err(|cause| pull_error(function, reference, cause))?;
                Ok((entry, bytes))
            }
        }
    }

    /// Loads the function at `reference` (see [`Host::fetch_image`]). The
    /// compiled cache is keyed by the component's digest, which the
    /// artifact cache verified at the pull: when the compiled code is in
    /// memory or on disk, the component (16–19 MB for Python or
    /// JavaScript) is neither read nor hashed.
    pub async fn load_image(
        self: &Arc<Self>,
        env: FunctionEnv,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<Arc<Function>, FunctionLoadError> {
        let entry = self.pull_image(&env.name, reference, policy).await?;
        if let Some(digest) = Digest::parse(&entry.wasm_digest)
            && let Some(found) = self
                .compile(&env, None, move |cache| cache.lookup(digest))
                .await?
        {
            return self.load_compiled(env, found);
        }
        let (entry, bytes) = self.read_image(&env.name, reference, entry).await?;
        // read_image checked the bytes against the entry's digest.
        let digest = Digest::parse(&entry.wasm_digest);
        let compiled = self
            .compile(&env, Some(bytes.len()), move |cache| {
                match digest {
                    Some(digest) => cache.get_or_compile_as(digest, &bytes),
                    None => cache.get_or_compile_traced(&bytes),
                }
                .map(Some)
            })
            .await?;
        self.load_compiled(env, compiled.expect("compiled or an error"))
    }

    /// The engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        self.engine.engine()
    }

    /// The compiled-component cache.
    pub fn compiled(&self) -> &CompiledCache<StoreData> {
        &self.compiled
    }

    /// Functions loaded so far, by where their compiled code came from.
    pub fn load_counts(&self) -> LoadCounts {
        let [memory, disk, compiled] = self.loads.each_ref().map(|c| c.load(Ordering::Relaxed));
        LoadCounts {
            memory,
            disk,
            compiled,
        }
    }

    /// The ledger of instance slots idle instances may hold.
    pub fn capacity(&self) -> &PoolCapacity {
        &self.capacity
    }

    /// Reads `path` and loads it as the function described by `env`.
    pub async fn load_file(
        self: &Arc<Self>,
        env: FunctionEnv,
        path: &Path,
    ) -> Result<Arc<Function>, FunctionLoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|cause| FunctionLoadError::Read {
                function: env.name.to_string(),
                path: path.to_owned(),
                cause,
            })?;
        self.load(env, bytes).await
    }

    /// Compiles (or finds in the cache) `bytes` and loads it as the function
    /// described by `env`. Compilation runs on a blocking thread.
    pub async fn load(
        self: &Arc<Self>,
        env: FunctionEnv,
        bytes: Vec<u8>,
    ) -> Result<Arc<Function>, FunctionLoadError> {
        let bytes_len = bytes.len();
        let compiled = self
            .compile(&env, Some(bytes_len), move |cache| {
                cache.get_or_compile_traced(&bytes).map(Some)
            })
            .await?;
        self.load_compiled(env, compiled.expect("compiled or an error"))
    }

    /// Runs `work` on the compiled cache on a blocking thread, in a
    /// `compile` span; its errors named for `env`'s function.
    async fn compile(
        self: &Arc<Self>,
        env: &FunctionEnv,
        bytes_len: Option<usize>,
        work: impl FnOnce(&CompiledCache<StoreData>) -> Result<Option<Compiled>, LoadError>
        + Send
        + 'static,
    ) -> Result<Option<Compiled>, FunctionLoadError> {
        let host = self.clone();
        let name = env.name.to_string();
        let span = telemetry::start_in_current("compile");
        span.set("hearth.function", || name.clone());
        span.set("k8s.namespace.name", || env.namespace.to_string());
        if let Some(len) = bytes_len {
            span.set("hearth.component.bytes", || len as i64);
        }
        let compiled = tokio::task::spawn_blocking(move || work(&host.compiled)).await;
        match &compiled {
            Ok(Ok(Some((_, from)))) => span.set("hearth.compiled_from", || from.as_str()),
            Ok(Ok(None)) => span.set("hearth.compiled_from", || "none"),
            Ok(Err(error)) => span.fail("load", error),
            Err(error) => span.fail("interrupted", error),
        }
        span.end();
        compiled
            .map_err(|e| FunctionLoadError::Interrupted {
                function: name.clone(),
                detail: e.to_string(),
            })?
            .map_err(|cause| match version_mismatch(&cause) {
                Some((built_for, provided)) => FunctionLoadError::VersionMismatch {
                    function: name.clone(),
                    built_for,
                    provided,
                },
                None => FunctionLoadError::Load {
                    function: name.clone(),
                    cause,
                },
            })
    }

    /// Loads `compiled` as the function described by `env`.
    fn load_compiled(
        self: &Arc<Self>,
        env: FunctionEnv,
        (compiled, compiled_from): Compiled,
    ) -> Result<Arc<Function>, FunctionLoadError> {
        let name = env.name.to_string();
        let kind = classify(&name, &compiled)?;
        let capability_error = |cause| FunctionLoadError::Capability {
            function: name.clone(),
            cause,
        };
        let identity = env
            .identity()
            .map_err(|e| capability_error(GrantError::Identity(e)))?;
        let capabilities = Arc::new(
            self.capabilities()
                .resolve(&name, &identity, &env.grants, &env.reach, &env.env)
                .map_err(capability_error)?,
        );
        let counter = match compiled_from {
            CompiledFrom::Memory => 0,
            CompiledFrom::Disk => 1,
            CompiledFrom::Compiled => 2,
        };
        self.loads[counter].fetch_add(1, Ordering::Relaxed);
        let message_handler = handler_indices(&name, &compiled)?;
        let pool = match kind {
            FunctionKind::Service { lifecycle, .. }
            | FunctionKind::MessageHandler { lifecycle } => {
                let admission = self
                    .capacity
                    .admit(&name, env.pool.min_idle)
                    .map_err(|cause| FunctionLoadError::Capacity {
                        function: name.clone(),
                        cause,
                    })?;
                let factory =
                    instance_factory(self.clone(), &env, &capabilities, &compiled, lifecycle);
                let pool = InstancePool::new(&name, env.pool, factory, Some(admission));
                pool.warm();
                Some(pool)
            }
            FunctionKind::Job { .. } => None,
        };
        let wasi = wasi_generation(&kind, &compiled, self.engine());
        let concurrent = matches!(
            kind,
            FunctionKind::Service {
                handler: HttpHandler::P3(_),
                ..
            }
        )
        .then(|| ConcurrentService::new(env.limits.instance_concurrency, env.pool.max_invocations));
        let function = Arc::new(Function {
            host: self.clone(),
            slots: Arc::new(Semaphore::new(env.limits.max_concurrent_instances as usize)),
            env,
            capabilities,
            compiled,
            compiled_from,
            kind,
            wasi,
            message_handler,
            pool,
            concurrent,
        });
        if function.is_service() {
            self.register(&function);
        }
        Ok(function)
    }
}

/// A function's compiled code and where it came from.
type Compiled = Found<StoreData>;

/// `cause`, a failure to pull `reference` for `function`.
fn pull_error(function: &str, reference: &str, cause: PullError) -> FunctionLoadError {
    FunctionLoadError::Pull {
        function: function.to_string(),
        reference: reference.to_string(),
        cause: Box::new(cause),
    }
}

/// The WIT packages (and versions) this host links, for naming a version
/// mismatch. wasmtime links any semver-compatible version of an import
/// (e.g. `wasi:http@0.2.3` to 0.2.12, `wasi:http@0.3.1` to 0.3.0: for 0.x
/// the minor version is the major); anything else (`wasi:http@0.4.0`, a
/// 0.3 release candidate) fails to link.
pub const PROVIDED_PACKAGES: &[(&str, &[&str])] = &[
    ("hearth:function", &["0.1.0"]),
    ("wasi:keyvalue", &["0.2.0-draft", "0.2.0-draft2"]),
    ("wasi:config", &["0.2.0-rc.1"]),
    ("wasi:http", &["0.2.12", "0.3.0"]),
    ("wasi:cli", &["0.2.12", "0.3.0"]),
    ("wasi:io", &["0.2.12"]),
    ("wasi:clocks", &["0.2.12", "0.3.0"]),
    ("wasi:random", &["0.2.12", "0.3.0"]),
    ("wasi:filesystem", &["0.2.12", "0.3.0"]),
    ("wasi:sockets", &["0.2.12", "0.3.0"]),
];

/// For an unresolved import of a package this host provides at other
/// versions: (the import, what the host provides).
fn version_mismatch(cause: &LoadError) -> Option<(String, String)> {
    let LoadError::MissingImport { import, .. } = cause else {
        return None;
    };
    let (path, version) = import.split_once('@')?;
    let package = path.split('/').next()?;
    let (_, versions) = PROVIDED_PACKAGES
        .iter()
        .find(|(name, _)| *name == package)?;
    if versions.contains(&version) {
        return None; // the version is right; something else is missing
    }
    let provided = versions
        .iter()
        .map(|v| format!("`{package}@{v}`"))
        .collect::<Vec<_>>()
        .join(" and ");
    Some((import.clone(), provided))
}

/// Makes a service's instances: a fresh store, the compiled `InstancePre`
/// instantiated in it, and the guest's `init` run under the request deadline.
fn instance_factory(
    host: Arc<Host>,
    env: &FunctionEnv,
    capabilities: &Arc<FunctionCapabilities>,
    compiled: &Arc<CompiledFunction<StoreData>>,
    lifecycle: Option<LifecycleExports>,
) -> InstanceFactory<StoreData> {
    let env = env.clone();
    let compiled = compiled.clone();
    let capabilities = capabilities.clone();
    Arc::new(move || {
        let (host, env, compiled, capabilities) = (
            host.clone(),
            env.clone(),
            compiled.clone(),
            capabilities.clone(),
        );
        Box::pin(async move {
            let mut store = new_store(
                &host,
                &env,
                &capabilities,
                Some(env.limits.request_timeout()),
            );
            let instance = compiled.instance_pre.instantiate_async(&mut store).await?;
            if let Some(lifecycle) = lifecycle {
                let init = instance
                    .get_typed_func::<(), (Result<(), String>,)>(&mut store, lifecycle.init)?;
                let (result,) = init.call_async(&mut store, ()).await?;
                result.map_err(|message| InitFailed { message })?;
            }
            Ok(Ready { store, instance })
        })
    })
}

fn new_store(
    host: &Host,
    env: &FunctionEnv,
    capabilities: &Arc<FunctionCapabilities>,
    timeout: Option<Duration>,
) -> Store<StoreData> {
    let state = StoreData::new(env, capabilities);
    let mut store = Store::new(host.engine(), state);
    store.limiter(|state| &mut state.limiter);
    set_deadline(&mut store, timeout);
    store
}

fn export_names(compiled: &CompiledFunction<StoreData>, engine: &wasmtime::Engine) -> String {
    let names: Vec<String> = compiled
        .component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// Where `wasi:messaging/incoming-handler` lives, if exported.
fn handler_indices(
    name: &str,
    compiled: &CompiledFunction<StoreData>,
) -> Result<Option<HandlerExportIndices>, FunctionLoadError> {
    if compiled
        .component
        .get_export_index(None, MESSAGE_HANDLER)
        .is_none()
    {
        return Ok(None);
    }
    HandlerExportIndices::new(&compiled.instance_pre)
        .map(Some)
        .map_err(|e| FunctionLoadError::BadLifecycle {
            function: name.into(),
            detail: format!("its `{MESSAGE_HANDLER}` export: {e:#}"),
        })
}

fn lifecycle_exports(
    name: &str,
    compiled: &CompiledFunction<StoreData>,
) -> Result<Option<LifecycleExports>, FunctionLoadError> {
    let component = &compiled.component;
    let Some(interface) = component.get_export_index(None, LIFECYCLE) else {
        return Ok(None);
    };
    let find = |func: &str| {
        component
            .get_export_index(Some(&interface), func)
            .ok_or_else(|| FunctionLoadError::BadLifecycle {
                function: name.into(),
                detail: format!("it has no `{func}` function"),
            })
    };
    Ok(Some(LifecycleExports {
        init: find("init")?,
        shutdown: find("shutdown")?,
    }))
}

fn classify(
    name: &str,
    compiled: &CompiledFunction<StoreData>,
) -> Result<FunctionKind, FunctionLoadError> {
    let component = &compiled.component;
    let malformed = |e: wasmtime::Error| FunctionLoadError::BadLifecycle {
        function: name.into(),
        detail: format!("{e:#}"),
    };
    let exports = |interface| component.get_export_index(None, interface).is_some();
    if exports(INCOMING_HANDLER) {
        let handler = ProxyIndices::new(&compiled.instance_pre).map_err(malformed)?;
        let lifecycle = lifecycle_exports(name, compiled)?;
        return Ok(FunctionKind::Service {
            handler: HttpHandler::P2(handler),
            lifecycle,
        });
    }
    if exports(HANDLER_P3) {
        let handler = ServiceIndices::new(&compiled.instance_pre).map_err(malformed)?;
        let lifecycle = lifecycle_exports(name, compiled)?;
        return Ok(FunctionKind::Service {
            handler: HttpHandler::P3(handler),
            lifecycle,
        });
    }
    if exports(MESSAGE_HANDLER) {
        let lifecycle = lifecycle_exports(name, compiled)?;
        return Ok(FunctionKind::MessageHandler { lifecycle });
    }
    if exports(CLI_RUN) {
        let run = CommandIndices::new(&compiled.instance_pre).map_err(malformed)?;
        return Ok(FunctionKind::Job {
            run: CliRun::P2(run),
        });
    }
    if exports(CLI_RUN_P3) {
        let run = CommandIndicesP3::new(&compiled.instance_pre).map_err(malformed)?;
        return Ok(FunctionKind::Job {
            run: CliRun::P3(run),
        });
    }
    Err(FunctionLoadError::NoEntryPoint {
        function: name.into(),
        exports: export_names(compiled, compiled.instance_pre.engine()),
    })
}

/// The WASI generation of a component of `kind`: its export's, or for a
/// message handler (whose export is the same in both), whether it imports
/// any WASI 0.3 interface.
fn wasi_generation(
    kind: &FunctionKind,
    compiled: &CompiledFunction<StoreData>,
    engine: &wasmtime::Engine,
) -> Wasi {
    match kind {
        FunctionKind::Service {
            handler: HttpHandler::P3(_),
            ..
        }
        | FunctionKind::Job { run: CliRun::P3(_) } => Wasi::P3,
        FunctionKind::Service { .. } | FunctionKind::Job { .. } => Wasi::P2,
        FunctionKind::MessageHandler { .. } => {
            let imports_p3 = compiled
                .component
                .component_type()
                .imports(engine)
                .any(|(name, _)| name.starts_with("wasi:") && name.contains("@0.3."));
            if imports_p3 { Wasi::P3 } else { Wasi::P2 }
        }
    }
}

/// A loaded function: compiled code, what kind it is, and how its instances
/// are made.
pub struct Function {
    host: Arc<Host>,
    env: FunctionEnv,
    capabilities: Arc<FunctionCapabilities>,
    compiled: Arc<CompiledFunction<StoreData>>,
    compiled_from: CompiledFrom,
    kind: FunctionKind,
    wasi: Wasi,
    message_handler: Option<HandlerExportIndices>,
    slots: Arc<Semaphore>,
    pool: Option<InstancePool<StoreData>>,
    /// A WASI 0.3 service's requests (see [`concurrent`]).
    concurrent: Option<ConcurrentService>,
}

impl Function {
    /// The function's name.
    pub fn name(&self) -> &str {
        &self.env.name
    }

    /// What it was started with.
    pub fn env(&self) -> &FunctionEnv {
        &self.env
    }

    /// Its resolved capabilities.
    pub fn capabilities(&self) -> &Arc<FunctionCapabilities> {
        &self.capabilities
    }

    /// What kind of function it is.
    pub fn kind(&self) -> &FunctionKind {
        &self.kind
    }

    /// The WASI generation it targets.
    pub fn wasi(&self) -> Wasi {
        self.wasi
    }

    /// A WASI 0.3 service's concurrent requests (`None` otherwise).
    pub fn concurrent(&self) -> Option<&ConcurrentService> {
        self.concurrent.as_ref()
    }

    /// Whether it is a service.
    pub fn is_service(&self) -> bool {
        matches!(self.kind, FunctionKind::Service { .. })
    }

    /// Where its message handler lives, if it exports one.
    pub fn message_handler(&self) -> Option<&HandlerExportIndices> {
        self.message_handler.as_ref()
    }

    /// The compiled component behind it.
    pub fn compiled(&self) -> &Arc<CompiledFunction<StoreData>> {
        &self.compiled
    }

    /// Where this function's compiled code came from when it was loaded.
    pub fn compiled_from(&self) -> CompiledFrom {
        self.compiled_from
    }

    /// Instances of this function alive now.
    pub fn live_instances(&self) -> u32 {
        self.env
            .limits
            .max_concurrent_instances
            .saturating_sub(self.slots.available_permits() as u32)
    }

    /// The host it was loaded into.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// One of the function's instance slots, if one is free now.
    pub(crate) fn try_acquire_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Waits up to `wait` for one of the function's instance slots.
    pub(crate) async fn acquire_slot(
        &self,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, Overloaded> {
        let started = Instant::now();
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Overloaded {
                max: self.env.limits.max_concurrent_instances,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }

    /// A fresh store for one instance, with the limiter installed and a
    /// deadline `timeout` from now (none if `timeout` is `None`).
    pub fn new_store(&self, timeout: Option<Duration>) -> Store<StoreData> {
        new_store(&self.host, &self.env, &self.capabilities, timeout)
    }

    /// The service's instance pool (`None` for a job).
    pub fn pool(&self) -> Option<&InstancePool<StoreData>> {
        self.pool.as_ref()
    }

    /// Checks an instance of this service out of its pool, with a deadline
    /// `timeout` from now.
    pub(crate) async fn checkout(
        &self,
        timeout: Duration,
    ) -> wasmtime::Result<Checkout<StoreData>> {
        let Some(pool) = &self.pool else {
            wasmtime::bail!("function `{}` is a job, not a service", self.name());
        };
        let mut checkout = pool.checkout().await.map_err(|error| match error {
            PoolError::Instantiate(error) => error,
        })?;
        set_deadline(&mut checkout.ready().store, Some(timeout));
        Ok(checkout)
    }

    /// The invocation on `checkout` succeeded: gives the instance back to
    /// the pool, running the guest's `shutdown` first if this was its last
    /// invocation.
    pub(crate) async fn release(&self, mut checkout: Checkout<StoreData>) {
        let served_before = checkout.invocations();
        self.shutdown_if_retiring(checkout.ready(), served_before, 1)
            .await;
        checkout.release();
    }

    /// A leased instance (a WASI 0.3 worker's) served `calls` requests, all
    /// of them successfully: gives it back to the pool, running the guest's
    /// `shutdown` first if it retires.
    pub(crate) async fn release_lease(
        &self,
        lease: Lease<StoreData>,
        mut ready: Ready<StoreData>,
        calls: u32,
    ) {
        self.shutdown_if_retiring(&mut ready, lease.invocations(), calls)
            .await;
        lease.release(ready, calls);
    }

    /// Runs the guest's `shutdown` on `ready` if, after `calls` more on top
    /// of the `served_before` it had served, it reaches `max_invocations`
    /// and so retires when given back to the pool.
    async fn shutdown_if_retiring(
        &self,
        ready: &mut Ready<StoreData>,
        served_before: u32,
        calls: u32,
    ) {
        let last = served_before.saturating_add(calls) >= self.env.pool.max_invocations.max(1);
        if last && let Some(lifecycle) = self.lifecycle() {
            run_shutdown(&self.env, lifecycle, &mut ready.store, ready.instance).await;
        }
    }

    /// A fresh instance in a fresh store with a deadline `timeout` from now
    /// (jobs: not pooled).
    pub(crate) async fn instantiate(
        &self,
        timeout: Option<Duration>,
    ) -> wasmtime::Result<Ready<StoreData>> {
        let mut store = self.new_store(timeout);
        let instance = self
            .compiled
            .instance_pre
            .instantiate_async(&mut store)
            .await?;
        Ok(Ready { store, instance })
    }

    fn lifecycle(&self) -> Option<LifecycleExports> {
        match &self.kind {
            FunctionKind::Service { lifecycle, .. }
            | FunctionKind::MessageHandler { lifecycle } => *lifecycle,
            FunctionKind::Job { .. } => None,
        }
    }
}

/// Runs the guest's `shutdown` with a fresh deadline. Failures are logged,
/// never returned: the instance is being discarded anyway.
async fn run_shutdown(
    env: &FunctionEnv,
    lifecycle: LifecycleExports,
    store: &mut Store<StoreData>,
    instance: Instance,
) {
    set_deadline(store, Some(env.limits.request_timeout()));
    let result = async {
        let shutdown = instance.get_typed_func::<(), ()>(&mut *store, lifecycle.shutdown)?;
        shutdown.call_async(&mut *store, ()).await
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(function = %env.name, error = %format!("{error:#}"), "lifecycle shutdown failed");
    }
}

/// Arms the store's epoch deadline: the guest yields to the executor every
/// epoch tick and traps with [`DeadlineExceeded`] once `timeout` has passed.
fn set_deadline(store: &mut Store<StoreData>, timeout: Option<Duration>) {
    store.set_epoch_deadline(1);
    match timeout {
        None => store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1))),
        Some(timeout) => {
            let deadline = Instant::now() + timeout;
            let timeout_ms = timeout.as_millis() as u64;
            store.epoch_deadline_callback(move |_| {
                if Instant::now() >= deadline {
                    Err(DeadlineExceeded { timeout_ms }.into())
                } else {
                    Ok(UpdateDeadline::Yield(1))
                }
            });
        }
    }
}
