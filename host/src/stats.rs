//! Counters the admin endpoint reads, kept by the triggers that count them.
//!
//! # Contract
//!
//! * Counters only grow; a subscription's series lives as long as its
//!   [`SubscriptionStats`] (the registry holds them weakly).
//! * This module depends on nothing else in the host, so the
//!   [`Host`](crate::function::Host) can own the registry while the message
//!   trigger above it fills it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of one subscription.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    /// The function's namespace.
    pub namespace: String,
    /// The function's name.
    pub function: String,
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// Messages handed to the handler.
    pub delivered: AtomicU64,
    /// Of those, redeliveries (`attempt > 1`).
    pub redelivered: AtomicU64,
    /// Acked after the handler succeeded (or acked by the handler).
    pub acked: AtomicU64,
    /// Nacked for redelivery.
    pub nacked: AtomicU64,
    /// Sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Settled too late: the broker had delivered them again.
    pub lost: AtomicU64,
    /// Failed receives (the broker was unreachable).
    pub receive_errors: AtomicU64,
}

impl SubscriptionStats {
    /// (outcome label, count) pairs, for `/metrics`.
    pub fn outcomes(&self) -> [(&'static str, u64); 6] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("delivered", get(&self.delivered)),
            ("redelivered", get(&self.redelivered)),
            ("acked", get(&self.acked)),
            ("nacked", get(&self.nacked)),
            ("dead_lettered", get(&self.dead_lettered)),
            ("lost", get(&self.lost)),
        ]
    }
}

/// HTTP connections of one function's listener.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Open now.
    pub open: AtomicU64,
    /// Closed at once because `max_connections` were open.
    pub refused: AtomicU64,
}

/// Every live subscription's stats (for `/metrics`).
#[derive(Default)]
pub struct SubscriptionRegistry {
    stats: Mutex<Vec<std::sync::Weak<SubscriptionStats>>>,
}

impl SubscriptionRegistry {
    /// Adds a subscription's stats (dropped ones are forgotten).
    pub fn register(&self, stats: &Arc<SubscriptionStats>) {
        let mut all = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|s| s.strong_count() > 0);
        all.push(Arc::downgrade(stats));
    }

    /// The stats of every live subscription.
    pub fn all(&self) -> Vec<Arc<SubscriptionStats>> {
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }
}
