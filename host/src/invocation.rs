//! One invocation of a function, the same for every trigger.
//!
//! The HTTP trigger, the message trigger and jobs differ only in the export
//! they call. Everything around that call is here, once:
//!
//! ```text
//! Function::begin  →  slot  →  instance (pool checkout, or a fresh one for
//!                     a job)  →  deadline armed  →  request context set
//! trigger          →  its own export call, bounded by Invocation::deadline
//! Invocation::finish → ok: the instance goes back to the pool (its
//!                     `shutdown` runs first if it retires); failed: it is
//!                     discarded, the error is classified and logged once
//! ```
//!
//! # Contract
//!
//! * [`Function::begin`] waits for one of the function's
//!   `max_concurrent_instances` slots at most until the deadline
//!   ([`InvocationError::Overloaded`]), then checks an instance out of the
//!   pool (a service or message handler) or instantiates one (a job), as a
//!   span (`pool checkout`, with `hearth.pool.hit`, or `instantiate`) under
//!   the request's. A failure here is logged once and returned.
//! * Every guest call runs under two deadlines: the epoch deadline in the
//!   store (the guest traps when it runs past it) and a host-side one,
//!   [`CallDeadline::run`], which fires [`DEADLINE_SLACK`] later and also
//!   stops a guest that is blocked in a host call.
//! * An [`Invocation`] dropped without [`Invocation::finish`], or finished
//!   with an error, discards its instance: an instance that failed in any
//!   way is never reused. Either way the slot is freed.
//! * [`Invocation::finish`] logs a failure once (traps with their wasm
//!   backtrace, see [`log_failure`]); the trigger logs only what it adds.

use crate::function::{Function, FunctionKind};
use crate::invocation_error::{InvocationError, log_failure};
use crate::limits::{CpuGauge, DeadlineExceeded};
use crate::propagation::RequestContext;
use crate::store_data::StoreData;
use crate::telemetry::Kind;
use hearth_prewarm::pool::{Checkout, Ready};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

pub use crate::limits::DEADLINE_SLACK;

/// How long a job without a timeout waits for a slot.
const UNBOUNDED_SLOT_WAIT: Duration = Duration::from_secs(3600);

/// An instance held for one invocation, with one of the function's slots.
pub struct Invocation {
    function: Arc<Function>,
    instance: Held,
    timeout: Option<Duration>,
    started: Instant,
    _slot: OwnedSemaphorePermit,
}

/// Where the instance came from, which decides where it goes after.
enum Held {
    /// Out of the service's pool; back into it on success.
    Pooled(Checkout<StoreData>),
    /// Made for this invocation (a job); dropped after it.
    Fresh(Ready<StoreData>),
}

impl Function {
    /// Starts an invocation: a slot, an instance with the deadline
    /// `timeout` from now (none: no deadline), and `context` on its store.
    /// Failures are logged here.
    pub async fn begin(
        self: &Arc<Self>,
        timeout: Option<Duration>,
        context: RequestContext,
    ) -> Result<Invocation, InvocationError> {
        let started = Instant::now();
        let slot = self
            .acquire_slot(timeout.unwrap_or(UNBOUNDED_SLOT_WAIT))
            .await
            .map_err(|overloaded| {
                let error = InvocationError::Overloaded(overloaded);
                log_failure(&self.env().namespace, self.name(), &error, None);
                error
            })?;
        let remaining = timeout.map(|t| t.saturating_sub(started.elapsed()));
        let instance = match self.kind() {
            FunctionKind::Job { .. } => {
                let span = context.trace.start("instantiate", Kind::Internal);
                let instance = self.instantiate(remaining).await;
                span.end_with(&instance);
                instance.map(Held::Fresh)
            }
            FunctionKind::Service { .. } | FunctionKind::MessageHandler { .. } => {
                let span = context.trace.start("pool checkout", Kind::Internal);
                let checkout = self
                    .checkout(remaining.unwrap_or(UNBOUNDED_SLOT_WAIT))
                    .await;
                match &checkout {
                    Ok(checkout) => span.set("hearth.pool.hit", || checkout.was_hit()),
                    Err(error) => span.fail("instantiate", error),
                }
                checkout.map(Held::Pooled)
            }
        };
        let instance = instance.map_err(|raw| {
            let error = InvocationError::from_wasmtime(&raw);
            log_failure(&self.env().namespace, self.name(), &error, Some(&raw));
            error
        })?;
        let mut invocation = Invocation {
            function: self.clone(),
            instance,
            timeout,
            started,
            _slot: slot,
        };
        invocation.store_data().set_request_context(context);
        Ok(invocation)
    }
}

impl Invocation {
    /// The function invoked.
    pub fn function(&self) -> &Arc<Function> {
        &self.function
    }

    /// The store and instance.
    pub fn ready(&mut self) -> &mut Ready<StoreData> {
        match &mut self.instance {
            Held::Pooled(checkout) => checkout.ready(),
            Held::Fresh(ready) => ready,
        }
    }

    /// The instance's store data.
    pub fn store_data(&mut self) -> &mut StoreData {
        self.ready().store.data_mut()
    }

    /// Time left before the deadline (none: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.timeout
            .map(|t| t.saturating_sub(self.started.elapsed()))
    }

    /// The host-side bound for the guest call about to be made.
    pub fn deadline(&self) -> CallDeadline {
        CallDeadline {
            timeout: self.timeout,
            remaining: self.remaining(),
            cpu: self.function.env().cpu.clone(),
        }
    }

    /// Ends the invocation with the export call's `result`: on success the
    /// instance goes back to the pool (running `shutdown` if it retires); on
    /// failure it is discarded and the classified error, logged once, is
    /// returned.
    pub async fn finish<R>(self, result: wasmtime::Result<R>) -> Result<R, InvocationError> {
        match result {
            Ok(value) => {
                if let Held::Pooled(checkout) = self.instance {
                    self.function.release(checkout).await;
                }
                Ok(value)
            }
            Err(raw) => {
                let error = InvocationError::from_wasmtime(&raw);
                log_failure(
                    &self.function.env().namespace,
                    self.function.name(),
                    &error,
                    Some(&raw),
                );
                // Dropping the checkout unreleased discards the instance.
                Err(error)
            }
        }
    }
}

/// The host-side deadline of one guest call (see the module docs); it
/// also counts the call's CPU time into the function's [`CpuGauge`].
#[derive(Debug, Clone)]
pub struct CallDeadline {
    timeout: Option<Duration>,
    remaining: Option<Duration>,
    cpu: Arc<CpuGauge>,
}

impl CallDeadline {
    /// Runs `call`, failing it with [`DeadlineExceeded`] once the remaining
    /// time plus [`DEADLINE_SLACK`] has passed (never, without a deadline).
    pub async fn run<R>(
        self,
        call: impl Future<Output = wasmtime::Result<R>>,
    ) -> wasmtime::Result<R> {
        let call = self.cpu.measure(call);
        let (Some(timeout), Some(remaining)) = (self.timeout, self.remaining) else {
            return call.await;
        };
        match tokio::time::timeout(remaining + DEADLINE_SLACK, call).await {
            Ok(result) => result,
            Err(_) => Err(DeadlineExceeded {
                timeout_ms: timeout.as_millis() as u64,
            }
            .into()),
        }
    }
}
