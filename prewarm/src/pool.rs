//! The instance pool: instances of one function, made ahead of the requests
//! that use them.
//!
//! # Contract
//!
//! * An [`InstancePool`] serves one function. It makes instances only with
//!   the [`InstanceFactory`] it was given, which instantiates the function's
//!   `InstancePre` in a fresh store and runs any per-instance setup (the
//!   function's `init`, for example). The pool never inspects the store.
//! * [`InstancePool::checkout`] hands out an idle instance when there is one
//!   (a *hit*: no instantiation on the caller's path) and otherwise makes one
//!   on the spot (a *miss*). An instance is never held by two checkouts.
//! * An instance goes back to idle only when its [`Checkout`] is
//!   [released](Checkout::release) by a caller whose call succeeded.
//!   A checkout that is dropped instead (a trap, a guest error, a deadline, a
//!   cancelled request) *poisons* its instance: its state is undefined, so it
//!   is discarded and counted in [`PoolStats::poisoned`].
//! * An instance that has served `max_invocations` calls is *retired*
//!   (discarded, counted in [`PoolStats::retired`]) when released. With the
//!   default of 1 every call gets a fresh instance, the usual `wasi:http`
//!   semantics: nothing one request does is visible to the next.
//! * With `min_idle > 0` the pool keeps that many idle instances. They are
//!   made in the background (on the current tokio runtime), in batches: one
//!   task at a time makes instances one after another until `min_idle` are
//!   idle. A batch starts on [`InstancePool::warm`], on a miss, when a
//!   discard (a retired or poisoned instance) leaves fewer than three
//!   quarters of `min_idle` idle, and when a checkout leaves fewer than
//!   half (a surge of checkouts with nothing finishing). A checkout of a
//!   pool that is still more than half full wakes nothing: its cost is a
//!   lock and a pop, and the refill's wake-up lands on the request's end,
//!   not its start. A refill that fails is logged and counted in
//!   [`PoolStats::refill_failures`], ends its batch, and is not retried
//!   until the next trigger, so a broken function cannot spin.
//! * Idle instances beyond `min_idle`, which only appear when
//!   `max_invocations > 1`, are kept up to `max_idle`; more are discarded.
//! * Idle instances hold instance slots of the engine's pooling allocator for
//!   as long as they are idle. [`PoolCapacity`] is the node-wide ledger of
//!   those slots: a pool is admitted only if its `min_idle` fits in what is
//!   left, and a refusal says how much was asked and how much is free.
//! * Dropping the pool drops its idle instances; instances still checked out
//!   are discarded when their checkouts end.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use wasmtime::Store;
use wasmtime::component::Instance;

/// A store and the instance living in it.
pub struct Ready<T: 'static> {
    /// The store.
    pub store: Store<T>,
    /// The instance.
    pub instance: Instance,
}

/// The future an [`InstanceFactory`] returns.
pub type ReadyFuture<T> = Pin<Box<dyn Future<Output = wasmtime::Result<Ready<T>>> + Send>>;

/// Makes one instance of the pool's function, ready to serve.
pub type InstanceFactory<T> = Arc<dyn Fn() -> ReadyFuture<T> + Send + Sync>;

/// How one pool behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Idle instances kept ready; 0 makes every instance on demand.
    pub min_idle: u32,
    /// Calls an instance serves before it is retired; at least 1.
    pub max_invocations: u32,
    /// Idle instances kept at most (only reached with `max_invocations > 1`).
    pub max_idle: u32,
}

impl PoolSettings {
    /// A discard leaving fewer than this many idle starts a refill batch:
    /// three quarters of `min_idle`, rounded up.
    fn batch_watermark(&self) -> u32 {
        self.min_idle - self.min_idle / 4
    }

    /// A checkout leaving fewer than this many idle starts a refill batch:
    /// half of `min_idle`, rounded up.
    fn surge_watermark(&self) -> u32 {
        self.min_idle - self.min_idle / 2
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            min_idle: 0,
            max_invocations: 1,
            max_idle: 16,
        }
    }
}

/// What a pool has done, and holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Checkouts served from idle.
    pub hits: u64,
    /// Checkouts that had to instantiate.
    pub misses: u64,
    /// Instances discarded after `max_invocations`.
    pub retired: u64,
    /// Instances discarded because their call failed.
    pub poisoned: u64,
    /// Background refills that failed.
    pub refill_failures: u64,
    /// Idle instances now.
    pub idle: u32,
    /// Checked-out instances now.
    pub busy: u32,
}

/// A checkout could not be served.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Making an instance failed.
    #[error("cannot instantiate: {0:#}")]
    Instantiate(wasmtime::Error),
}

struct Idle<T: 'static> {
    ready: Ready<T>,
    invocations: u32,
}

struct Shared<T: 'static> {
    idle: VecDeque<Idle<T>>,
    /// A refill batch is running (one task making instances).
    refilling: bool,
    busy: u32,
}

struct PoolInner<T: 'static> {
    name: Arc<str>,
    settings: PoolSettings,
    factory: InstanceFactory<T>,
    shared: Mutex<Shared<T>>,
    hits: AtomicU64,
    misses: AtomicU64,
    retired: AtomicU64,
    poisoned: AtomicU64,
    refill_failures: AtomicU64,
    _admission: Option<Admission>,
}

/// The instance pool of one function. See the module docs for the contract.
pub struct InstancePool<T: 'static> {
    inner: Arc<PoolInner<T>>,
}

impl<T: Send + 'static> InstancePool<T> {
    /// A pool for the function called `name` (used in logs), making
    /// instances with `factory`. `admission` holds the pool's share of
    /// [`PoolCapacity`], if the caller keeps that ledger.
    pub fn new(
        name: &str,
        settings: PoolSettings,
        factory: InstanceFactory<T>,
        admission: Option<Admission>,
    ) -> Self {
        let settings = PoolSettings {
            max_invocations: settings.max_invocations.max(1),
            max_idle: settings.max_idle.max(settings.min_idle),
            ..settings
        };
        InstancePool {
            inner: Arc::new(PoolInner {
                name: name.into(),
                settings,
                factory,
                shared: Mutex::new(Shared {
                    idle: VecDeque::new(),
                    refilling: false,
                    busy: 0,
                }),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                retired: AtomicU64::new(0),
                poisoned: AtomicU64::new(0),
                refill_failures: AtomicU64::new(0),
                _admission: admission,
            }),
        }
    }

    /// The settings in force (`max_invocations` and `max_idle` normalised).
    pub fn settings(&self) -> PoolSettings {
        self.inner.settings
    }

    /// Starts filling the pool to `min_idle` in the background.
    pub fn warm(&self) {
        PoolInner::refill(&self.inner, self.inner.settings.min_idle);
    }

    /// Waits until the pool holds `min_idle` idle instances, or a refill
    /// has failed. For tests and start-up paths that want warmth first.
    pub async fn wait_warm(&self) -> PoolStats {
        self.warm();
        let failures_before = self.inner.refill_failures.load(Ordering::Relaxed);
        loop {
            let stats = self.stats();
            let refilling = self.inner.lock().refilling;
            if stats.idle >= self.inner.settings.min_idle
                || (!refilling
                    && self.inner.refill_failures.load(Ordering::Relaxed) > failures_before)
            {
                return stats;
            }
            if !refilling {
                self.warm();
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// An instance to serve one call: idle if one is (a hit), else made now
    /// (a miss).
    pub async fn checkout(&self) -> Result<Checkout<T>, PoolError> {
        let (taken, surge) = {
            let mut shared = self.inner.lock();
            let taken = shared.idle.pop_front();
            if taken.is_some() {
                shared.busy += 1;
            }
            let surge = !shared.refilling
                && (shared.idle.len() as u32) < self.inner.settings.surge_watermark();
            (taken, surge)
        };
        if let Some(idle) = taken {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
            if surge {
                PoolInner::refill(&self.inner, self.inner.settings.min_idle);
            }
            return Ok(Checkout {
                pool: self.inner.clone(),
                idle: Some(idle),
                hit: true,
            });
        }
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        PoolInner::refill(&self.inner, self.inner.settings.min_idle);
        let ready = (self.inner.factory)()
            .await
            .map_err(PoolError::Instantiate)?;
        self.inner.lock().busy += 1;
        Ok(Checkout {
            pool: self.inner.clone(),
            idle: Some(Idle {
                ready,
                invocations: 0,
            }),
            hit: false,
        })
    }

    /// Counters and current occupancy.
    pub fn stats(&self) -> PoolStats {
        let (idle, busy) = {
            let shared = self.inner.lock();
            (shared.idle.len() as u32, shared.busy)
        };
        PoolStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            retired: self.inner.retired.load(Ordering::Relaxed),
            poisoned: self.inner.poisoned.load(Ordering::Relaxed),
            refill_failures: self.inner.refill_failures.load(Ordering::Relaxed),
            idle,
            busy,
        }
    }
}

impl<T: Send + 'static> PoolInner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<T>> {
        // Every mutation under this lock is a push, pop or counter change;
        // a panic cannot leave it half-done, so poisoning is ignored.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a refill batch if none is running and fewer than `below` are
    /// idle: one task that makes instances one after another until
    /// `min_idle` are idle, or one fails.
    fn refill(this: &Arc<Self>, below: u32) {
        {
            let mut shared = this.lock();
            if shared.refilling || shared.idle.len() as u32 >= below.min(this.settings.min_idle) {
                return;
            }
            shared.refilling = true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            this.lock().refilling = false;
            tracing::warn!(function = %this.name, "no async runtime: the pool cannot refill");
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(this);
        runtime.spawn(async move {
            loop {
                let made = {
                    let Some(pool) = weak.upgrade() else { return };
                    {
                        let mut shared = pool.lock();
                        if shared.idle.len() as u32 >= pool.settings.min_idle {
                            shared.refilling = false;
                            return;
                        }
                    }
                    (pool.factory)()
                };
                // The pool is not held while its instance is made: dropping
                // the pool ends the batch.
                let made = made.await;
                let Some(pool) = weak.upgrade() else { return };
                match made {
                    Ok(ready) => pool.lock().idle.push_back(Idle {
                        ready,
                        invocations: 0,
                    }),
                    Err(error) => {
                        pool.lock().refilling = false;
                        pool.refill_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(function = %pool.name, error = %format!("{error:#}"), "pool refill failed");
                        return;
                    }
                }
            }
        });
    }

    /// The checkout of `idle` ended: `calls` served and released, or
    /// poisoned (`released` false).
    fn finish(this: &Arc<Self>, mut idle: Idle<T>, released: bool, calls: u32) {
        let mut shared = this.lock();
        shared.busy -= 1;
        if !released {
            drop(shared);
            this.poisoned.fetch_add(1, Ordering::Relaxed);
        } else {
            idle.invocations = idle.invocations.saturating_add(calls);
            if idle.invocations >= this.settings.max_invocations {
                drop(shared);
                this.retired.fetch_add(1, Ordering::Relaxed);
            } else if (shared.idle.len() as u32) < this.settings.max_idle {
                shared.idle.push_back(idle);
                return;
            } else {
                drop(shared);
            }
        }
        // Dropped outside the lock: dropping a store returns its slot to the
        // allocator, which is not free.
        drop(idle);
        Self::refill(this, this.settings.batch_watermark());
    }
}

/// One instance, checked out of its pool for one call.
pub struct Checkout<T: Send + 'static> {
    pool: Arc<PoolInner<T>>,
    idle: Option<Idle<T>>,
    hit: bool,
}

impl<T: Send + 'static> Checkout<T> {
    /// Whether it came from idle (a pool hit).
    pub fn was_hit(&self) -> bool {
        self.hit
    }

    /// Calls this instance served before this checkout.
    pub fn invocations(&self) -> u32 {
        self.idle.as_ref().map_or(0, |idle| idle.invocations)
    }

    /// The store and instance.
    pub fn ready(&mut self) -> &mut Ready<T> {
        &mut self
            .idle
            .as_mut()
            .expect("present until release or drop")
            .ready
    }

    /// The call succeeded: the instance may serve again (see the contract).
    pub fn release(mut self) {
        if let Some(idle) = self.idle.take() {
            PoolInner::finish(&self.pool, idle, true, 1);
        }
    }

    /// Takes the store and instance out, for a caller that must own them
    /// (a worker serving many calls at once on one instance). The instance
    /// still counts as checked out until the [`Lease`] ends: given back
    /// with [`Lease::release`], or poisoned if the lease is dropped.
    pub fn into_lease(mut self) -> (Ready<T>, Lease<T>) {
        let idle = self.idle.take().expect("present until release or drop");
        let lease = Lease {
            pool: self.pool.clone(),
            invocations: idle.invocations,
            open: true,
        };
        (idle.ready, lease)
    }
}

impl<T: Send + 'static> Drop for Checkout<T> {
    fn drop(&mut self) {
        if let Some(idle) = self.idle.take() {
            PoolInner::finish(&self.pool, idle, false, 0);
        }
    }
}

/// A checked-out instance whose store the caller owns (see
/// [`Checkout::into_lease`]).
pub struct Lease<T: Send + 'static> {
    pool: Arc<PoolInner<T>>,
    invocations: u32,
    open: bool,
}

impl<T: Send + 'static> Lease<T> {
    /// Calls the instance served before this lease.
    pub fn invocations(&self) -> u32 {
        self.invocations
    }

    /// Every call on `ready` succeeded: it may serve again, as a released
    /// [`Checkout`] would, counting `calls` against `max_invocations`.
    pub fn release(mut self, ready: Ready<T>, calls: u32) {
        self.open = false;
        let idle = Idle {
            ready,
            invocations: self.invocations,
        };
        PoolInner::finish(&self.pool, idle, true, calls.max(1));
    }
}

impl<T: Send + 'static> Drop for Lease<T> {
    fn drop(&mut self) {
        if self.open {
            self.pool.lock().busy -= 1;
            self.pool.poisoned.fetch_add(1, Ordering::Relaxed);
            PoolInner::refill(&self.pool, self.pool.settings.batch_watermark());
        }
    }
}

/// The node-wide ledger of instance slots that idle instances may hold.
#[derive(Debug, Clone)]
pub struct PoolCapacity {
    inner: Arc<Mutex<CapacityLedger>>,
}

#[derive(Debug)]
struct CapacityLedger {
    slots: u32,
    reserved: u32,
}

/// A pool was refused because its idle instances would not fit.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "the prewarm pool is full: function `{function}` asks for {asked} idle instances, but only {free} of {slots} instance slots are free (raise [pool] instance_slots or lower min_idle)"
)]
pub struct CapacityError {
    /// The function refused.
    pub function: String,
    /// Idle instances it asked for.
    pub asked: u32,
    /// Slots still free.
    pub free: u32,
    /// All slots.
    pub slots: u32,
}

/// A pool's reservation in [`PoolCapacity`]; given back when dropped.
#[derive(Debug)]
pub struct Admission {
    ledger: Arc<Mutex<CapacityLedger>>,
    reserved: u32,
}

impl PoolCapacity {
    /// A ledger of `slots` instance slots.
    pub fn new(slots: u32) -> Self {
        PoolCapacity {
            inner: Arc::new(Mutex::new(CapacityLedger { slots, reserved: 0 })),
        }
    }

    /// Reserves `min_idle` slots for `function`, or refuses.
    pub fn admit(&self, function: &str, min_idle: u32) -> Result<Admission, CapacityError> {
        let mut ledger = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let free = ledger.slots - ledger.reserved;
        if min_idle > free {
            return Err(CapacityError {
                function: function.into(),
                asked: min_idle,
                free,
                slots: ledger.slots,
            });
        }
        ledger.reserved += min_idle;
        Ok(Admission {
            ledger: self.inner.clone(),
            reserved: min_idle,
        })
    }

    /// Slots reserved now, and all slots.
    pub fn usage(&self) -> (u32, u32) {
        let ledger = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (ledger.reserved, ledger.slots)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        ledger.reserved -= self.reserved;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Config, Engine};

    /// A pool over a tiny component whose factory counts instantiations
    /// and fails while `fail` is set.
    struct Fixture {
        pool: InstancePool<()>,
        made: Arc<AtomicU32>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    fn fixture(settings: PoolSettings) -> Fixture {
        let engine = Engine::new(&Config::new()).unwrap();
        let component = Component::new(&engine, "(component)").unwrap();
        let pre = Linker::<()>::new(&engine)
            .instantiate_pre(&component)
            .unwrap();
        let made = Arc::new(AtomicU32::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let factory: InstanceFactory<()> = {
            let (made, fail) = (made.clone(), fail.clone());
            Arc::new(move || {
                let (pre, made, fail) = (pre.clone(), made.clone(), fail.clone());
                Box::pin(async move {
                    if fail.load(Ordering::SeqCst) {
                        wasmtime::bail!("factory told to fail");
                    }
                    let mut store = Store::new(pre.engine(), ());
                    let instance = pre.instantiate_async(&mut store).await?;
                    made.fetch_add(1, Ordering::SeqCst);
                    Ok(Ready { store, instance })
                })
            })
        };
        Fixture {
            pool: InstancePool::new("test", settings, factory, None),
            made,
            fail,
        }
    }

    #[tokio::test]
    async fn an_empty_pool_misses_and_a_warm_pool_hits() {
        let cold = fixture(PoolSettings::default());
        let checkout = cold.pool.checkout().await.unwrap();
        assert!(!checkout.was_hit());
        assert_eq!(cold.pool.stats().busy, 1);
        checkout.release();
        let stats = cold.pool.stats();
        assert_eq!((stats.hits, stats.misses, stats.busy), (0, 1, 0));

        let warm = fixture(PoolSettings {
            min_idle: 2,
            ..PoolSettings::default()
        });
        assert_eq!(warm.pool.wait_warm().await.idle, 2);
        let checkout = warm.pool.checkout().await.unwrap();
        assert!(checkout.was_hit());
        checkout.release();
        assert_eq!(warm.pool.stats().hits, 1);
        assert_eq!(warm.pool.stats().misses, 0);
    }

    #[tokio::test]
    async fn an_instance_retires_after_max_invocations() {
        let fixture = fixture(PoolSettings {
            max_invocations: 3,
            ..PoolSettings::default()
        });
        for expected_invocations in 0..3 {
            let checkout = fixture.pool.checkout().await.unwrap();
            assert_eq!(checkout.invocations(), expected_invocations);
            assert_eq!(checkout.was_hit(), expected_invocations > 0);
            checkout.release();
        }
        let stats = fixture.pool.stats();
        assert_eq!((stats.retired, stats.idle), (1, 0));
        assert_eq!(fixture.made.load(Ordering::SeqCst), 1);
        // The next call gets a new instance.
        let checkout = fixture.pool.checkout().await.unwrap();
        assert_eq!(checkout.invocations(), 0);
        assert!(!checkout.was_hit());
        assert_eq!(fixture.made.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_call_poisons_the_instance_and_it_is_discarded() {
        let fixture = fixture(PoolSettings {
            max_invocations: 100,
            ..PoolSettings::default()
        });
        let checkout = fixture.pool.checkout().await.unwrap();
        drop(checkout); // not released: the call trapped
        let stats = fixture.pool.stats();
        assert_eq!((stats.poisoned, stats.idle, stats.busy), (1, 0, 0));
        let next = fixture.pool.checkout().await.unwrap();
        assert!(!next.was_hit(), "a poisoned instance is never handed out");
        assert_eq!(fixture.made.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn min_idle_is_refilled_after_checkouts() {
        let fixture = fixture(PoolSettings {
            min_idle: 3,
            ..PoolSettings::default()
        });
        fixture.pool.wait_warm().await;
        let taken: Vec<_> = [
            fixture.pool.checkout().await.unwrap(),
            fixture.pool.checkout().await.unwrap(),
        ]
        .into();
        assert!(taken.iter().all(Checkout::was_hit));
        let stats = fixture.pool.wait_warm().await;
        assert_eq!((stats.idle, stats.busy), (3, 2));
        assert_eq!(fixture.made.load(Ordering::SeqCst), 5);
        for checkout in taken {
            checkout.release();
        }
        // Retired (max_invocations 1), not returned: idle stays at min_idle.
        let stats = fixture.pool.stats();
        assert_eq!((stats.idle, stats.busy, stats.retired), (3, 0, 2));
    }

    #[tokio::test]
    async fn refills_wait_for_a_quarter_gone_and_then_fill_in_one_batch() {
        let fixture = fixture(PoolSettings {
            min_idle: 8,
            ..PoolSettings::default()
        });
        fixture.pool.wait_warm().await;
        assert_eq!(fixture.made.load(Ordering::SeqCst), 8);
        // One gone (retired): 7 of 8 idle, above three quarters: no refill.
        fixture.pool.checkout().await.unwrap().release();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(fixture.made.load(Ordering::SeqCst), 8);
        assert!(!fixture.pool.inner.lock().refilling);
        // Three gone: 5 idle, below 6: one batch makes all three.
        for _ in 0..2 {
            fixture.pool.checkout().await.unwrap().release();
        }
        let stats = fixture.pool.wait_warm().await;
        assert_eq!((stats.idle, stats.retired, stats.misses), (8, 3, 0));
        assert_eq!(fixture.made.load(Ordering::SeqCst), 11);
        // A surge: checkouts held (nothing finishes) start a batch once
        // fewer than half are idle.
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(fixture.pool.checkout().await.unwrap());
        }
        // Not `wait_warm`, which would start a batch itself.
        let started = std::time::Instant::now();
        while fixture.pool.stats().idle < 8 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "no refill after a surge: {:?}",
                fixture.pool.stats()
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(fixture.pool.stats().busy, 5);
        drop(held);
    }

    #[tokio::test]
    async fn a_failing_refill_is_counted_and_does_not_spin() {
        let fixture = fixture(PoolSettings {
            min_idle: 2,
            ..PoolSettings::default()
        });
        fixture.fail.store(true, Ordering::SeqCst);
        let stats = fixture.pool.wait_warm().await;
        assert_eq!(stats.idle, 0);
        assert!(stats.refill_failures >= 1);
        let failures = fixture.pool.stats().refill_failures;
        tokio::task::yield_now().await;
        assert_eq!(fixture.pool.stats().refill_failures, failures);
        let refused = fixture.pool.checkout().await.err().unwrap();
        assert!(refused.to_string().contains("factory told to fail"));
        fixture.fail.store(false, Ordering::SeqCst);
        assert_eq!(fixture.pool.wait_warm().await.idle, 2);
    }

    #[tokio::test]
    async fn idle_beyond_max_idle_is_discarded() {
        let fixture = fixture(PoolSettings {
            max_invocations: 10,
            max_idle: 1,
            min_idle: 0,
        });
        let first = fixture.pool.checkout().await.unwrap();
        let second = fixture.pool.checkout().await.unwrap();
        first.release();
        second.release();
        assert_eq!(fixture.pool.stats().idle, 1);
    }

    #[test]
    fn capacity_refuses_what_it_cannot_hold_and_frees_on_drop() {
        let capacity = PoolCapacity::new(10);
        let first = capacity.admit("a", 6).unwrap();
        let refused = capacity.admit("b", 5).unwrap_err();
        assert_eq!(
            refused,
            CapacityError {
                function: "b".into(),
                asked: 5,
                free: 4,
                slots: 10
            }
        );
        assert!(refused.to_string().contains("instance_slots"), "{refused}");
        assert_eq!(capacity.usage(), (6, 10));
        drop(first);
        assert_eq!(capacity.usage(), (0, 10));
        let _second = capacity.admit("b", 5).unwrap();
    }
}
