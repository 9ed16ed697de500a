//! WASI 0.3 services: one instance serves many requests at once.
//!
//! A `wasi:http/handler@0.3` export is async: while one request waits (on
//! its body, a capability, a timer) the same instance runs another. A p3
//! service's requests go through its [`ConcurrentService`], which hands
//! each to a *worker*: one instance, checked out of the function's pool,
//! and the task that owns its store and runs its event loop.
//!
//! # Contract
//!
//! * **Slots and pool.** A worker holds one of the function's
//!   `max_concurrent_instances` slots and one pool checkout for its whole
//!   life, so the pool (pre-warmed instances, `init`), the memory limits and
//!   their accounting are the same as for WASI 0.2 instances.
//! * **Fill what waits, spread what computes.** A worker has *room* while
//!   fewer than `instance_concurrency` of its requests wait for their
//!   response, and is *waiting* while its event loop has nothing to run
//!   (every request on it blocked on I/O or a timer). An instance runs on
//!   one thread at a time, so a request goes, in order of preference, to:
//!   the first worker with room that is waiting; a new worker, while the
//!   function has fewer workers than the node has CPUs (requests that
//!   compute spread over cores); the first worker with room; a new worker,
//!   if one of the function's slots is free. Failing all of them it waits
//!   for room at most until its deadline, then gets `overloaded`. So a
//!   function has at most `max_concurrent_instances × instance_concurrency`
//!   requests in flight, and requests that mostly wait share few instances.
//! * **Reuse.** Requests that share an instance share its memory: that is
//!   what a p3 component is written for. A worker takes at most
//!   `max(max_invocations, instance_concurrency)` requests over its life,
//!   then finishes them and retires; a worker with nothing to do for
//!   [`WORKER_IDLE`] gives its instance back to the pool (or retires it, per
//!   `max_invocations`, running `shutdown`).
//! * **A failure poisons the instance, never its neighbours.** A trap, a
//!   memory limit, or a request past its deadline ends the worker: every
//!   request in flight on it fails with that named error (each gets its own
//!   error response; the cause is logged once, with the wasm backtrace for a
//!   trap), and the instance is discarded. Requests on other instances never
//!   see it.
//! * **Deadlines.** Each request has the function's `request_timeout_ms`
//!   from when it arrived. A worker's store only yields on the epoch, so a
//!   guest spinning in one task cannot hold a thread; the worker checks the
//!   oldest deadline in flight outside the store's event loop (which a
//!   spinning task blocks) and stops the instance once it has passed by
//!   [`DEADLINE_SLACK`]. Work a guest keeps doing after its last response
//!   (a response body still streaming, a spawned task) has the same bound.
//! * **Request context.** Capability calls do not say which task made them,
//!   so the store's [`RequestContext`] is shared by the requests on an
//!   instance: the `invoke` depth is the deepest any of them has had (a loop
//!   cannot escape `max_depth` by sharing an instance with a shallow
//!   request); the request id, `traceparent` and span (the parent of
//!   capability calls' spans) are the newest request's.

use crate::function::{Function, FunctionKind, HttpHandler};
use crate::invocation_error::{InvocationError, Overloaded, log_failure};
use crate::limits::{DEADLINE_SLACK, DeadlineExceeded};
use crate::propagation::RequestContext;
use crate::store_data::StoreData;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hearth_prewarm::pool::{Lease, Ready};
use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, watch};
use tokio::time::Instant;
use wasmtime::component::Accessor;
use wasmtime::{AsContextMut, UpdateDeadline};
use wasmtime_wasi_http::handler::{ExpirationError, Prepared, Proxy};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

/// How long a worker with nothing to do keeps its instance before giving
/// it back to the pool.
pub const WORKER_IDLE: Duration = Duration::from_secs(2);

/// How long a request whose worker failed waits for the worker to say why.
const FAILURE_REPORT_WAIT: Duration = Duration::from_secs(5);

/// The request and response of a p3 call.
pub type Request = wasmtime_wasi_http::handler::Request;
/// See [`Request`].
pub type Response = wasmtime_wasi_http::handler::Response;

/// The requests of one WASI 0.3 service (see the module docs).
pub struct ConcurrentService {
    shared: Arc<Shared>,
}

struct Shared {
    /// Requests one worker takes at once.
    concurrency: usize,
    /// Requests one worker takes over its life.
    lifetime: usize,
    workers: Mutex<Vec<Arc<WorkerHandle>>>,
    /// Workers started for requests that compute before filling any.
    parallelism: usize,
    /// Woken when a worker may have room, or a slot may be free.
    room: Notify,
    in_flight: AtomicUsize,
}

/// What dispatch knows of a worker; the worker's task owns the rest.
struct WorkerHandle {
    jobs: mpsc::UnboundedSender<Job>,
    load: Mutex<Load>,
    /// Its event loop had nothing to run when last polled (see the module
    /// docs); false from when it is given a request until then.
    waiting: AtomicBool,
}

#[derive(Default)]
struct Load {
    /// Requests given to the worker and not yet answered.
    now: usize,
    /// Requests given to it over its life.
    total: usize,
    /// False once the worker has ended or decided to: it takes no more.
    open: bool,
}

/// One request on its way to a worker.
struct Job {
    request: Request,
    context: RequestContext,
    deadline: Instant,
    respond: futures_channel::oneshot::Sender<wasmtime::Result<Response>>,
    /// Where the worker says why it failed, if it does.
    report: watch::Sender<Option<InvocationError>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few counter updates or a push; a
    // panic cannot leave one half-done.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConcurrentService {
    /// The service for `function` (a p3 service).
    pub(crate) fn new(concurrency: u32, max_invocations: u32) -> Self {
        let concurrency = concurrency.max(1) as usize;
        ConcurrentService {
            shared: Arc::new(Shared {
                concurrency,
                lifetime: concurrency.max(max_invocations as usize),
                workers: Mutex::new(Vec::new()),
                parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
                room: Notify::new(),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Requests in flight now (given to a worker and not yet answered, or
    /// waiting for room).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Serves `request` on an instance of `function` (this service's),
    /// within `timeout`. Every failure is logged once: here, or by the
    /// worker for a failure of its instance.
    pub(crate) async fn handle(
        &self,
        function: &Arc<Function>,
        request: Request,
        context: RequestContext,
        timeout: Duration,
    ) -> Result<Response, InvocationError> {
        let shared = &self.shared;
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let _counted = InFlight(shared);
        let logged = |error: InvocationError| {
            log_failure(&function.env().namespace, function.name(), &error, None);
            error
        };
        let arrived = Instant::now();
        let deadline = arrived + timeout;
        let timeout_ms = timeout.as_millis() as u64;
        let (respond, answer) = futures_channel::oneshot::channel();
        let (report, mut reported) = watch::channel(None);
        let mut job = Job {
            request,
            context,
            deadline,
            respond,
            report,
        };
        loop {
            let worker = shared.assign(function, deadline).await.map_err(|_| {
                logged(InvocationError::Overloaded(Overloaded {
                    max: function.env().limits.max_concurrent_instances,
                    waited_ms: arrived.elapsed().as_millis() as u64,
                }))
            })?;
            match worker.jobs.send(job) {
                Ok(()) => break,
                // The worker ended between assignment and sending: another.
                Err(mpsc::error::SendError(returned)) => job = returned,
            }
        }
        let answered = tokio::time::timeout_at(deadline + DEADLINE_SLACK * 2, answer).await;
        let error = match answered {
            Ok(Ok(Ok(response))) => return Ok(response),
            Err(_) => InvocationError::Deadline(DeadlineExceeded { timeout_ms }),
            Ok(Ok(Err(error))) => classify(&error, timeout_ms),
            // The worker dropped the request unanswered: its instance failed
            // (it logged why) and it reports the failure once the store is
            // gone.
            Ok(Err(_canceled)) => {
                let why =
                    tokio::time::timeout(FAILURE_REPORT_WAIT, reported.wait_for(Option::is_some))
                        .await;
                return Err(match why {
                    Ok(Ok(failure)) => failure.clone().expect("waited for Some"),
                    _ => logged(InvocationError::Internal(
                        "the instance serving this request ended without answering".into(),
                    )),
                });
            }
        };
        Err(logged(error))
    }
}

/// A request failed by its worker, with the instance still sound (or not
/// yet known to be unsound).
fn classify(error: &wasmtime::Error, timeout_ms: u64) -> InvocationError {
    if error.is::<ExpirationError>() {
        InvocationError::Deadline(DeadlineExceeded { timeout_ms })
    } else if let Some(failure) = error.downcast_ref::<InvocationError>() {
        failure.clone()
    } else if let Some(code) = error.downcast_ref::<ErrorCode>() {
        InvocationError::GuestError(format!("{code:?}"))
    } else {
        InvocationError::from_wasmtime(error)
    }
}

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// No worker had room and no slot came free before the deadline.
struct NoRoom;

impl Shared {
    /// A worker for one more request (see "Fill, then spread").
    async fn assign(
        self: &Arc<Self>,
        function: &Arc<Function>,
        deadline: Instant,
    ) -> Result<Arc<WorkerHandle>, NoRoom> {
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            {
                let mut workers = lock(&self.workers);
                workers.retain(|worker| lock(&worker.load).open);
                let take = |worker: &Arc<WorkerHandle>| {
                    let mut load = lock(&worker.load);
                    let room =
                        load.open && load.now < self.concurrency && load.total < self.lifetime;
                    if room {
                        load.now += 1;
                        load.total += 1;
                        worker.waiting.store(false, Ordering::Relaxed);
                    }
                    room
                };
                if let Some(worker) = workers
                    .iter()
                    .find(|w| w.waiting.load(Ordering::Relaxed) && take(w))
                {
                    return Ok(worker.clone());
                }
                let spread = workers.len() < self.parallelism;
                if spread && let Some(slot) = function.try_acquire_slot() {
                    return Ok(self.start_worker(function, &mut workers, slot));
                }
                if let Some(worker) = workers.iter().find(|w| take(w)) {
                    return Ok(worker.clone());
                }
                if let Some(slot) = function.try_acquire_slot() {
                    return Ok(self.start_worker(function, &mut workers, slot));
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(NoRoom);
            }
        }
    }
}

impl Shared {
    /// Starts a worker holding `slot`, with one request given to it.
    fn start_worker(
        self: &Arc<Self>,
        function: &Arc<Function>,
        workers: &mut Vec<Arc<WorkerHandle>>,
        slot: OwnedSemaphorePermit,
    ) -> Arc<WorkerHandle> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let worker = Arc::new(WorkerHandle {
            jobs,
            load: Mutex::new(Load {
                now: 1,
                total: 1,
                open: true,
            }),
            waiting: AtomicBool::new(false),
        });
        workers.push(worker.clone());
        tokio::spawn(run_worker(
            function.clone(),
            self.clone(),
            worker.clone(),
            queue,
            slot,
        ));
        worker
    }
}

impl WorkerHandle {
    /// One of its requests was answered (or failed).
    fn answered(&self, shared: &Shared) {
        {
            let mut load = lock(&self.load);
            load.now = load.now.saturating_sub(1);
        }
        shared.room.notify_waiters();
    }

    /// Ends the worker if nothing is given to it: it takes no more.
    fn close_if_unloaded(&self) -> bool {
        let mut load = lock(&self.load);
        if load.now == 0 {
            load.open = false;
        }
        !load.open
    }

    fn close(&self) {
        lock(&self.load).open = false;
    }

    fn spent(&self, shared: &Shared) -> bool {
        lock(&self.load).total >= shared.lifetime
    }
}

/// An instance's failure, and wasmtime's error (for the backtrace) when
/// there is one.
type Failure = (InvocationError, Option<wasmtime::Error>);

/// Why a worker ended.
enum Ended {
    /// Idle, or spent: the instance is sound.
    Done,
    /// Its instance failed: it is discarded, its requests fail with this.
    Failed(Failure),
}

/// A worker: checks an instance out, serves what it is given, then gives
/// the instance back or discards it (see the module docs).
async fn run_worker(
    function: Arc<Function>,
    shared: Arc<Shared>,
    handle: Arc<WorkerHandle>,
    mut queue: mpsc::UnboundedReceiver<Job>,
    slot: OwnedSemaphorePermit,
) {
    let env = function.env();
    let timeout = env.limits.request_timeout();
    let started = async {
        let checkout = function.checkout(timeout).await?;
        let (mut ready, lease) = checkout.into_lease();
        // Deadlines are the worker's: the store only yields.
        ready.store.set_epoch_deadline(1);
        ready
            .store
            .epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        let FunctionKind::Service {
            handler: HttpHandler::P3(indices),
            ..
        } = function.kind()
        else {
            wasmtime::bail!("function `{}` is not a WASI 0.3 service", function.name());
        };
        let service = indices.load(&mut ready.store, &ready.instance)?;
        wasmtime::Result::Ok((ready, lease, service))
    }
    .await;
    let (mut ready, lease, service) = match started {
        Ok(started) => started,
        Err(raw) => {
            // No instance: every request given to this worker fails so.
            let failure = InvocationError::from_wasmtime(&raw);
            log_failure(&env.namespace, function.name(), &failure, Some(&raw));
            handle.close();
            drop(slot);
            shared.room.notify_waiters();
            queue.close();
            while let Ok(job) = queue.try_recv() {
                let _ = job.respond.send(Err(wasmtime::Error::new(failure.clone())));
                handle.answered(&shared);
            }
            return;
        }
    };
    let proxy = Proxy::P3(service);
    let (ended, served, reports) =
        serve_instance(&mut ready, &proxy, &function, &shared, &handle, &mut queue).await;
    handle.close();
    match ended {
        Ended::Done => {
            drop(slot);
            shared.room.notify_waiters();
            function.release_lease(lease, ready, served as u32).await;
        }
        Ended::Failed((failure, raw)) => {
            log_failure(&env.namespace, function.name(), &failure, raw.as_ref());
            tracing::warn!(
                namespace = %env.namespace,
                function = function.name(),
                error = failure.name(),
                served,
                "instance discarded; the requests in flight on it fail with it"
            );
            // The store goes first: its slot and memory are free when the
            // requests hear why they failed.
            drop(ready);
            discard(lease);
            drop(slot);
            shared.room.notify_waiters();
            for report in reports {
                report.send_replace(Some(failure.clone()));
            }
            // Requests given to it but never started fail the same way.
            queue.close();
            while let Ok(job) = queue.try_recv() {
                job.report.send_replace(Some(failure.clone()));
            }
        }
    }
}

/// Dropping a lease poisons its instance (see [`Lease`]).
fn discard(lease: Lease<StoreData>) {
    drop(lease);
}

/// The deadlines a worker watches from outside its store's event loop.
#[derive(Default)]
struct Deadlines {
    /// Deadlines of the requests in flight, with how many have each.
    requests: BTreeMap<Instant, usize>,
    /// Set while the guest works on with no request in flight.
    after_last_answer: Option<Instant>,
}

impl Deadlines {
    fn earliest(&self) -> Option<Instant> {
        let request = self.requests.keys().next().copied();
        match (request, self.after_last_answer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn remove(&mut self, deadline: Instant) {
        if let Some(count) = self.requests.get_mut(&deadline) {
            *count -= 1;
            if *count == 0 {
                self.requests.remove(&deadline);
            }
        }
    }
}

/// Runs the instance's event loop: takes requests from `queue`, serves
/// them concurrently, until it is idle for [`WORKER_IDLE`], spent, or
/// failed. Returns why it ended, how many requests it started and where to
/// report a failure.
async fn serve_instance(
    ready: &mut Ready<StoreData>,
    proxy: &Proxy,
    function: &Function,
    shared: &Shared,
    handle: &WorkerHandle,
    queue: &mut mpsc::UnboundedReceiver<Job>,
) -> (Ended, usize, Vec<watch::Sender<Option<InvocationError>>>) {
    let timeout = function.env().limits.request_timeout();
    let timeout_ms = timeout.as_millis() as u64;
    let deadlines = Mutex::new(Deadlines::default());
    let reports = Mutex::new(Vec::new());
    let served = AtomicUsize::new(0);
    let view: fn(&mut StoreData) -> WasiHttpCtxView<'_> = <StoreData as WasiHttpView>::http;
    let Proxy::P3(service) = proxy else {
        unreachable!("workers serve WASI 0.3 services")
    };
    let handle_func = *service.wasi_http_handler().func_handle().func();

    let event_loop = async |accessor: &Accessor<StoreData>| -> Result<(), Failure> {
        let mut calls = FuturesUnordered::new();
        let mut deepest = 0u32;
        let mut idle_timer = pin!(tokio::time::sleep(WORKER_IDLE));
        let mut idle = false;
        std::future::poll_fn(|cx| {
            loop {
                // Answers first: a request past its deadline must end the
                // instance before it takes another.
                match calls.poll_next_unpin(cx) {
                    Poll::Ready(Some((deadline, Ok(true)))) => {
                        lock(&deadlines).remove(deadline);
                        handle.answered(shared);
                        continue;
                    }
                    Poll::Ready(Some((deadline, Ok(false)))) => {
                        lock(&deadlines).remove(deadline);
                        handle.answered(shared);
                        let failure = InvocationError::Deadline(DeadlineExceeded { timeout_ms });
                        return Poll::Ready(Err((failure, None)));
                    }
                    Poll::Ready(Some((_, Err(trap)))) => {
                        let failure = InvocationError::from_wasmtime(&trap);
                        return Poll::Ready(Err((failure, Some(trap))));
                    }
                    Poll::Ready(None) | Poll::Pending => {}
                }
                let can_call = accessor
                    .poll_ready_for_concurrent_call(handle_func, cx)
                    .is_ready();
                if can_call && let Poll::Ready(Some(job)) = queue.poll_recv(cx) {
                    idle = false;
                    lock(&deadlines).after_last_answer = None;
                    let Job {
                        request,
                        mut context,
                        deadline,
                        respond,
                        report,
                    } = job;
                    deepest = deepest.max(context.depth);
                    context.depth = deepest;
                    let prepared = accessor.with(|mut store| {
                        store.data_mut().set_request_context(context);
                        Prepared::new(store.as_context_mut(), proxy, request, view, respond)
                    });
                    served.fetch_add(1, Ordering::Relaxed);
                    match prepared {
                        Ok(prepared) => {
                            *lock(&deadlines).requests.entry(deadline).or_default() += 1;
                            lock(&reports).push(report);
                            calls.push(async move {
                                let expiry = tokio::time::sleep_until(deadline);
                                (deadline, prepared.run(accessor, expiry).await)
                            });
                        }
                        Err(error) => {
                            report.send_replace(Some(InvocationError::Internal(format!(
                                "cannot start the call: {error:#}"
                            ))));
                            handle.answered(shared);
                        }
                    }
                    continue;
                }
                if !calls.is_empty() {
                    return Poll::Pending;
                }
                // No request in flight. Work the guest goes on with (a body
                // still streaming, a spawned task) keeps the instance, within
                // a deadline of its own.
                if accessor.poll_no_interesting_tasks(cx).is_pending() {
                    let mut deadlines = lock(&deadlines);
                    if deadlines.after_last_answer.is_none() {
                        deadlines.after_last_answer = Some(Instant::now() + timeout);
                    }
                    return Poll::Pending;
                }
                lock(&deadlines).after_last_answer = None;
                if handle.spent(shared) && handle.close_if_unloaded() {
                    return Poll::Ready(Ok(()));
                }
                if !idle {
                    idle = true;
                    idle_timer.as_mut().reset(Instant::now() + WORKER_IDLE);
                }
                if idle_timer.as_mut().poll(cx).is_ready() {
                    if handle.close_if_unloaded() {
                        return Poll::Ready(Ok(()));
                    }
                    // Given a request meanwhile: it is in the queue.
                    idle = false;
                    continue;
                }
                return Poll::Pending;
            }
        })
        .await
    };

    // A guest spinning in a task blocks the event loop, deadlines inside it
    // included: the earliest deadline is also watched from out here.
    let ended = {
        let mut running = pin!(ready.store.run_concurrent(event_loop));
        let mut watchdog = pin!(tokio::time::sleep(timeout));
        let mut armed: Option<Instant> = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = running.as_mut().poll(cx) {
                return Poll::Ready(match result {
                    Ok(Ok(())) => Ended::Done,
                    Ok(Err(failure)) => Ended::Failed(failure),
                    Err(raw) => Ended::Failed((InvocationError::from_wasmtime(&raw), Some(raw))),
                });
            }
            // Nothing to run: a request given now starts at once.
            handle.waiting.store(true, Ordering::Relaxed);
            let earliest = lock(&deadlines).earliest();
            if let Some(earliest) = earliest {
                let stop_at = earliest + DEADLINE_SLACK;
                if armed != Some(stop_at) {
                    watchdog.as_mut().reset(stop_at);
                    armed = Some(stop_at);
                }
                if watchdog.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ended::Failed((
                        InvocationError::Deadline(DeadlineExceeded { timeout_ms }),
                        None,
                    )));
                }
            }
            Poll::Pending
        })
        .await
    };
    let reports = std::mem::take(&mut *lock(&reports));
    (ended, served.load(Ordering::Relaxed), reports)
}
