//! The data every store carries: WASI contexts, the resource table, the
//! outbound HTTP policy, the capability context and the memory limiter.
//!
//! One [`FunctionState`] is made per instance and dropped with it; nothing in
//! it is shared between instances except the immutable [`FunctionEnv`].

use crate::capabilities::{
    CapabilityCtx, CapabilityGrants, CapabilityHost, CapabilityView, FunctionCapabilities,
    HostCapabilities, RequestContext,
};
use crate::guest_output::{GuestOutput, GuestOutputFiles, GuestStream};
use crate::limits::{Limits, MemoryGauge, StoreLimiter};
use hearth_prewarm::pool::PoolSettings;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

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

/// The `T` of every `Store<T>` Hearth creates.
pub struct FunctionState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    capabilities: CapabilityCtx,
    pub(crate) limiter: StoreLimiter,
}

impl FunctionState {
    /// Fresh state for one instance of the function described by `env`,
    /// with its resolved `capabilities` on `host`.
    pub fn new(
        env: &FunctionEnv,
        capabilities: Arc<FunctionCapabilities>,
        host: Arc<HostCapabilities>,
    ) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&env.env)
            .args(&env.args)
            .stdout(GuestOutput::new(
                env.name.clone(),
                GuestStream::Stdout,
                env.output_files.clone(),
            ))
            .stderr(GuestOutput::new(
                env.name.clone(),
                GuestStream::Stderr,
                env.output_files.clone(),
            ));
        FunctionState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: OutboundPolicy {
                allowed_hosts: env.allowed_outbound_hosts.clone(),
            },
            capabilities: CapabilityCtx {
                function: capabilities,
                host,
                request: RequestContext::default(),
                in_hand: None,
            },
            limiter: StoreLimiter::new(&env.limits, env.memory.clone()),
        }
    }

    /// Sets the context of the request the instance is about to serve.
    pub fn set_request_context(&mut self, request: RequestContext) {
        self.capabilities.request = request;
    }

    /// Hands the instance the message it is about to handle (or takes it
    /// back, with `None`); returns what it held before.
    pub fn set_in_hand(
        &mut self,
        in_hand: Option<crate::capabilities::messaging::InHand>,
    ) -> Option<crate::capabilities::messaging::InHand> {
        std::mem::replace(&mut self.capabilities.in_hand, in_hand)
    }

    /// The resource table (for handing the guest resources).
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl CapabilityHost for FunctionState {
    fn capabilities(&mut self) -> CapabilityView<'_> {
        CapabilityView {
            ctx: &mut self.capabilities,
            table: &mut self.table,
        }
    }
}

impl WasiView for FunctionState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for FunctionState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Outbound `wasi:http` is denied unless the destination host is listed.
struct OutboundPolicy {
    allowed_hosts: Arc<[String]>,
}

impl OutboundPolicy {
    fn allows(&self, host: &str) -> bool {
        self.allowed_hosts
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(host))
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let host = request.uri().host().unwrap_or_default().to_string();
        if !self.allows(&host) {
            tracing::warn!(%host, "outbound HTTP request denied: host not in allowed_outbound_hosts");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
