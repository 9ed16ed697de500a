//! The data every store carries: WASI contexts, the resource table, the
//! outbound HTTP policy, one context per capability and the memory limiter.
//!
//! One [`StoreData`] is made per instance and dropped with it; nothing in
//! it is shared between instances except the immutable [`FunctionEnv`] and
//! the function's resolved capability scopes.
//!
//! It composes the capabilities: each capability module brings its own
//! context and view, and [`StoreData::add_to_linker`] links every WASI and
//! capability interface with a getter that hands out that view.

use crate::capabilities::FunctionCapabilities;
use crate::capabilities::blobstore::{self, BlobstoreCtx, BlobstoreView};
use crate::capabilities::config::{self, ConfigCtx, ConfigView};
use crate::capabilities::invoke::{self, InvokeCtx, InvokeView};
use crate::capabilities::keyvalue::{self, KeyvalueCtx, KeyvalueView};
use crate::capabilities::logging::{self, LoggingCtx, LoggingView};
use crate::capabilities::messaging::{self, InHand, MessagingCtx, MessagingView};
use crate::function_env::FunctionEnv;
use crate::guest_output::{GuestOutput, GuestStdio, GuestStream};
use crate::limits::StoreLimiter;
use crate::propagation::RequestContext;
use crate::telemetry::TraceContext;
use std::sync::Arc;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

/// The `T` of every `Store<T>` Hearth creates.
pub struct StoreData {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    keyvalue: KeyvalueCtx,
    config: ConfigCtx,
    invoke: InvokeCtx,
    messaging: MessagingCtx,
    blobstore: BlobstoreCtx,
    logging: LoggingCtx,
    pub(crate) limiter: StoreLimiter,
}

impl StoreData {
    /// Fresh state for one instance of the function described by `env`,
    /// with its resolved `capabilities`.
    pub fn new(env: &FunctionEnv, capabilities: &FunctionCapabilities) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&env.env).args(&env.args);
        match &env.stdio {
            GuestStdio::Inherit => {
                wasi.inherit_stdio();
            }
            GuestStdio::Log | GuestStdio::Files(_) => {
                let files = env.stdio.files().cloned();
                wasi.stdout(GuestOutput::new(
                    env.name.clone(),
                    GuestStream::Stdout,
                    files.clone(),
                ))
                .stderr(GuestOutput::new(
                    env.name.clone(),
                    GuestStream::Stderr,
                    files,
                ));
            }
        }
        StoreData {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: OutboundPolicy {
                allowed_hosts: env.allowed_outbound_hosts.clone(),
            },
            keyvalue: KeyvalueCtx {
                scope: capabilities.keyvalue.clone(),
                trace: TraceContext::default(),
            },
            config: ConfigCtx {
                values: capabilities.config.clone(),
            },
            invoke: InvokeCtx {
                scope: capabilities.invoke.clone(),
                request: RequestContext::default(),
            },
            messaging: MessagingCtx {
                scope: capabilities.messaging.clone(),
                in_hand: None,
                trace: TraceContext::default(),
            },
            blobstore: BlobstoreCtx {
                function: capabilities.function.clone(),
                scope: capabilities.blob.clone(),
                trace: TraceContext::default(),
            },
            logging: LoggingCtx {
                scope: capabilities.logging.clone(),
                files: env.stdio.files().cloned(),
            },
            limiter: StoreLimiter::new(&env.limits, env.memory.clone()),
        }
    }

    /// Adds every interface a function may import to `linker`: WASI 0.2 and
    /// 0.3 (each with `wasi:http`) and each capability, through its own
    /// view. Both WASI generations share the one [`WasiCtx`] and
    /// [`WasiHttpCtx`] (and so the environment, stdio and outbound policy).
    pub fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
        wasmtime_wasi::p3::add_to_linker(linker)?;
        wasmtime_wasi_http::p3::add_to_linker(linker)?;
        keyvalue::add_to_linker(linker, |data| KeyvalueView {
            ctx: &data.keyvalue,
            table: &mut data.table,
        })?;
        config::add_to_linker(linker, |data| ConfigView { ctx: &data.config })?;
        invoke::add_to_linker(linker, |data| InvokeView {
            ctx: &mut data.invoke,
        })?;
        messaging::add_to_linker(linker, |data| MessagingView {
            ctx: &mut data.messaging,
            table: &mut data.table,
        })?;
        blobstore::add_to_linker(linker, |data| BlobstoreView {
            ctx: &data.blobstore,
            table: &mut data.table,
        })?;
        logging::add_to_linker(linker, |data| LoggingView { ctx: &data.logging })?;
        Ok(())
    }

    /// Sets the context of the request the instance is about to serve;
    /// every capability's calls become children of its span.
    pub fn set_request_context(&mut self, request: RequestContext) {
        self.keyvalue.trace = request.trace.clone();
        self.messaging.trace = request.trace.clone();
        self.blobstore.trace = request.trace.clone();
        self.invoke.request = request;
    }

    /// Hands the instance the message it is about to handle (or takes it
    /// back, with `None`); returns what it held before.
    pub fn set_in_hand(&mut self, in_hand: Option<InHand>) -> Option<InHand> {
        std::mem::replace(&mut self.messaging.in_hand, in_hand)
    }

    /// The resource table (for handing the guest resources).
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreData {
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
