//! `slow-p3`: a WASI 0.3 handler that waits, for showing one instance
//! serving many requests at once.
//!
//! * `/?ms=N` waits N ms (default 200) without blocking the instance, then
//!   answers `instance=<id> in-flight=<n> peak=<m>`: the instance's id
//!   (random, per instance), the requests in flight on it when this one
//!   started waiting, and the most it has had at once.
//! * `/trap?ms=N` waits N ms, then panics (a trap mid-flight).
//! * `/spin` loops forever (a deadline).

use hearth_sdk::p3::{self, ErrorCode, Request, Response, Service, wasip3};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

struct Slow;

static IN_FLIGHT: AtomicU32 = AtomicU32::new(0);
static PEAK: AtomicU32 = AtomicU32::new(0);
static INSTANCE: AtomicU64 = AtomicU64::new(0);

fn instance_id() -> u64 {
    let id = INSTANCE.load(Ordering::Relaxed);
    if id != 0 {
        return id;
    }
    let fresh = wasip3::random::random::get_random_u64() | 1;
    INSTANCE.store(fresh, Ordering::Relaxed);
    fresh
}

impl Service for Slow {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        let ms: u64 = path
            .split_once("ms=")
            .and_then(|(_, v)| v.split('&').next()?.parse().ok())
            .unwrap_or(200);
        if path.starts_with("/spin") {
            #[allow(clippy::empty_loop)]
            loop {}
        }
        let now = IN_FLIGHT.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.fetch_max(now, Ordering::Relaxed);
        wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        if path.starts_with("/trap") {
            panic!("slow-p3: asked to trap after {ms} ms");
        }
        p3::text(
            200,
            format!(
                "instance={:x} in-flight={now} peak={}\n",
                instance_id(),
                PEAK.load(Ordering::Relaxed)
            ),
        )
    }
}

hearth_sdk::export_p3_service!(Slow);
