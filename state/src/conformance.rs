//! The one conformance suite every [`StateBackend`] must pass.
//!
//! [`run`] wraps a backend in a [`StateStore`] with [`limits`] and runs every
//! case, each in a namespace of its own (so one backend instance, even one
//! shared server, can run it repeatedly). A failing case panics with its
//! name. `state/tests/conformance.rs` runs it against each backend with real
//! servers; hearth-host's tests reuse it for the WIT layer's view.

use crate::{
    Applied, Entry, Namespace, Precondition, StateBackend, StateError, StateLimits, StateStore,
    TransactionOp,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The limits the suite runs under (small, so the limit cases are cheap).
pub fn limits() -> StateLimits {
    StateLimits {
        max_value_bytes: 4096,
        max_key_bytes: 128,
        max_operations: 8,
        max_page: 100,
    }
}

/// Runs every case against `backend`.
pub async fn run(backend: Arc<dyn StateBackend>) {
    let store = StateStore::new("conformance", backend, limits());
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {$(
            eprintln!("conformance [{}]: {}", store.kind(), stringify!($case));
            $case(&store, &fresh_namespace(stringify!($case))).await;
        )*};
    }
    cases!(
        set_then_get_returns_value_and_etag,
        every_write_gets_a_new_etag_even_after_delete,
        if_match_applies_only_on_the_current_etag,
        if_absent_applies_only_when_absent,
        delete_reports_liveness_and_honours_if_match,
        values_are_bytes,
        ttl_expires_and_a_plain_set_clears_it,
        ttl_of_zero_or_below_is_refused,
        increment_counts_in_decimal_text,
        increment_of_a_non_number_is_a_typed_error,
        concurrent_increments_are_not_lost,
        concurrent_compare_and_swap_retries_are_not_lost,
        transaction_applies_all,
        transaction_with_a_failed_precondition_applies_nothing,
        list_pages_through_a_prefix_in_order,
        list_skips_expired_keys,
        get_many_reports_each_key,
        namespaces_do_not_see_each_other,
        bad_keys_values_and_batches_are_refused_before_the_backend,
    );
}

fn fresh_namespace(case: &str) -> Namespace {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let unique = format!(
        "t{}-{}-{}",
        std::process::id(),
        crate::now_ms(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Namespace::new(&format!("{}-{unique}", case.replace('_', "-"))[..]).expect("valid namespace")
}

async fn set_then_get_returns_value_and_etag(store: &StateStore, ns: &Namespace) {
    assert_eq!(store.get(ns, "missing").await.unwrap(), None);
    let etag = store
        .set(ns, "k", b"v1", Precondition::None, None)
        .await
        .unwrap();
    assert_eq!(
        store.get(ns, "k").await.unwrap(),
        Some(Entry {
            value: b"v1".to_vec(),
            etag
        })
    );
}

async fn every_write_gets_a_new_etag_even_after_delete(store: &StateStore, ns: &Namespace) {
    let first = store
        .set(ns, "k", b"a", Precondition::None, None)
        .await
        .unwrap();
    let second = store
        .set(ns, "k", b"a", Precondition::None, None)
        .await
        .unwrap();
    assert_ne!(
        first, second,
        "rewriting the same value must change the etag"
    );
    store.delete(ns, "k", Precondition::None).await.unwrap();
    let third = store
        .set(ns, "k", b"a", Precondition::None, None)
        .await
        .unwrap();
    assert!(
        third != first && third != second,
        "a re-created key must not reuse an old etag"
    );
    let err = store
        .set(ns, "k", b"b", Precondition::IfMatch(first), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::EtagMismatch { .. }), "{err:?}");
}

async fn if_match_applies_only_on_the_current_etag(store: &StateStore, ns: &Namespace) {
    let etag = store
        .set(ns, "k", b"a", Precondition::None, None)
        .await
        .unwrap();
    let next = store
        .set(ns, "k", b"b", Precondition::IfMatch(etag), None)
        .await
        .unwrap();
    let err = store
        .set(ns, "k", b"c", Precondition::IfMatch(etag), None)
        .await
        .unwrap_err();
    assert_eq!(err, StateError::EtagMismatch { key: "k".into() });
    assert_eq!(store.get(ns, "k").await.unwrap().unwrap().value, b"b");
    assert_eq!(store.get(ns, "k").await.unwrap().unwrap().etag, next);
    let err = store
        .set(ns, "absent", b"x", Precondition::IfMatch(next), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::EtagMismatch { .. }), "{err:?}");
    assert_eq!(store.get(ns, "absent").await.unwrap(), None);
}

async fn if_absent_applies_only_when_absent(store: &StateStore, ns: &Namespace) {
    store
        .set(ns, "k", b"first", Precondition::IfAbsent, None)
        .await
        .unwrap();
    let err = store
        .set(ns, "k", b"second", Precondition::IfAbsent, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::EtagMismatch { .. }), "{err:?}");
    assert_eq!(store.get(ns, "k").await.unwrap().unwrap().value, b"first");
}

async fn delete_reports_liveness_and_honours_if_match(store: &StateStore, ns: &Namespace) {
    assert!(!store.delete(ns, "k", Precondition::None).await.unwrap());
    let etag = store
        .set(ns, "k", b"a", Precondition::None, None)
        .await
        .unwrap();
    let err = store
        .delete(ns, "k", Precondition::IfMatch(etag + 1_000_000))
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::EtagMismatch { .. }), "{err:?}");
    assert!(store.get(ns, "k").await.unwrap().is_some());
    assert!(
        store
            .delete(ns, "k", Precondition::IfMatch(etag))
            .await
            .unwrap()
    );
    assert_eq!(store.get(ns, "k").await.unwrap(), None);
}

async fn values_are_bytes(store: &StateStore, ns: &Namespace) {
    let binary: Vec<u8> = (0..=255).collect();
    store
        .set(ns, "binary", &binary, Precondition::None, None)
        .await
        .unwrap();
    store
        .set(ns, "empty", b"", Precondition::None, None)
        .await
        .unwrap();
    store
        .set(ns, "unicode key ✓/x", b"u", Precondition::None, None)
        .await
        .unwrap();
    assert_eq!(
        store.get(ns, "binary").await.unwrap().unwrap().value,
        binary
    );
    assert_eq!(
        store.get(ns, "empty").await.unwrap().unwrap().value,
        b"".to_vec()
    );
    assert_eq!(
        store
            .get(ns, "unicode key ✓/x")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"u"
    );
}

async fn ttl_expires_and_a_plain_set_clears_it(store: &StateStore, ns: &Namespace) {
    store
        .set(ns, "short", b"x", Precondition::None, Some(300))
        .await
        .unwrap();
    store
        .set(ns, "cleared", b"x", Precondition::None, Some(300))
        .await
        .unwrap();
    store
        .set(ns, "cleared", b"y", Precondition::None, None)
        .await
        .unwrap();
    assert!(store.get(ns, "short").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.get(ns, "short").await.unwrap(), None, "TTL passed");
    assert_eq!(
        store.get(ns, "cleared").await.unwrap().unwrap().value,
        b"y",
        "a set without TTL keeps the key forever"
    );
    // An expired key is absent for preconditions too.
    store
        .set(ns, "short", b"again", Precondition::IfAbsent, None)
        .await
        .unwrap();
}

async fn ttl_of_zero_or_below_is_refused(store: &StateStore, ns: &Namespace) {
    for ttl_ms in [0, -1, i64::MIN] {
        let err = store
            .set(ns, "k", b"x", Precondition::None, Some(ttl_ms))
            .await
            .unwrap_err();
        assert_eq!(err, StateError::InvalidTtl { ttl_ms });
    }
    let err = store
        .transact(
            ns,
            vec![TransactionOp::Set {
                key: "k".into(),
                value: b"x".to_vec(),
                precondition: Precondition::None,
                ttl_ms: Some(0),
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(err, StateError::InvalidTtl { ttl_ms: 0 });
    assert_eq!(store.get(ns, "k").await.unwrap(), None);
}

async fn increment_counts_in_decimal_text(store: &StateStore, ns: &Namespace) {
    assert_eq!(store.increment(ns, "n", 5).await.unwrap(), 5);
    assert_eq!(store.increment(ns, "n", -7).await.unwrap(), -2);
    assert_eq!(store.get(ns, "n").await.unwrap().unwrap().value, b"-2");
    store
        .set(ns, "big", b"9000000000000000000", Precondition::None, None)
        .await
        .unwrap();
    assert_eq!(
        store.increment(ns, "big", 1).await.unwrap(),
        9_000_000_000_000_000_001
    );
    let before = store.get(ns, "n").await.unwrap().unwrap().etag;
    store.increment(ns, "n", 1).await.unwrap();
    assert_ne!(store.get(ns, "n").await.unwrap().unwrap().etag, before);
}

async fn increment_of_a_non_number_is_a_typed_error(store: &StateStore, ns: &Namespace) {
    store
        .set(ns, "text", b"hello", Precondition::None, None)
        .await
        .unwrap();
    let err = store.increment(ns, "text", 1).await.unwrap_err();
    assert_eq!(err, StateError::NotANumber { key: "text".into() });
    assert_eq!(
        store.get(ns, "text").await.unwrap().unwrap().value,
        b"hello"
    );
}

async fn concurrent_increments_are_not_lost(store: &StateStore, ns: &Namespace) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, ns) = (store.clone(), ns.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    store.increment(&ns, "n", 1).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.get(ns, "n").await.unwrap().unwrap().value, b"80");
}

async fn concurrent_compare_and_swap_retries_are_not_lost(store: &StateStore, ns: &Namespace) {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, ns) = (store.clone(), ns.clone());
            tokio::spawn(async move {
                let mut conflicts = 0u32;
                for _ in 0..10 {
                    loop {
                        let current = store.get(&ns, "n").await.unwrap();
                        let (number, precondition) = match &current {
                            Some(entry) => (
                                String::from_utf8_lossy(&entry.value)
                                    .parse::<u64>()
                                    .unwrap(),
                                Precondition::IfMatch(entry.etag),
                            ),
                            None => (0, Precondition::IfAbsent),
                        };
                        let next = (number + 1).to_string();
                        match store
                            .set(&ns, "n", next.as_bytes(), precondition, None)
                            .await
                        {
                            Ok(_) => break,
                            Err(StateError::EtagMismatch { .. }) => conflicts += 1,
                            Err(other) => panic!("{other}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.get(ns, "n").await.unwrap().unwrap().value, b"40");
}

async fn transaction_applies_all(store: &StateStore, ns: &Namespace) {
    let etag = store
        .set(ns, "a", b"old", Precondition::None, None)
        .await
        .unwrap();
    store
        .set(ns, "gone", b"x", Precondition::None, None)
        .await
        .unwrap();
    let applied = store
        .transact(
            ns,
            vec![
                TransactionOp::Set {
                    key: "a".into(),
                    value: b"new".to_vec(),
                    precondition: Precondition::IfMatch(etag),
                    ttl_ms: None,
                },
                TransactionOp::Set {
                    key: "b".into(),
                    value: b"created".to_vec(),
                    precondition: Precondition::IfAbsent,
                    ttl_ms: Some(60_000),
                },
                TransactionOp::Delete {
                    key: "gone".into(),
                    precondition: Precondition::None,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(applied.len(), 3);
    assert!(matches!(applied[2], Applied::Deleted(true)));
    let a = store.get(ns, "a").await.unwrap().unwrap();
    assert_eq!(a.value, b"new");
    assert_eq!(Applied::Set(a.etag), applied[0]);
    assert_eq!(store.get(ns, "b").await.unwrap().unwrap().value, b"created");
    assert_eq!(store.get(ns, "gone").await.unwrap(), None);
}

async fn transaction_with_a_failed_precondition_applies_nothing(
    store: &StateStore,
    ns: &Namespace,
) {
    let etag = store
        .set(ns, "a", b"old", Precondition::None, None)
        .await
        .unwrap();
    store
        .set(ns, "b", b"old", Precondition::None, None)
        .await
        .unwrap();
    store
        .set(ns, "c", b"exists", Precondition::None, None)
        .await
        .unwrap();
    let err = store
        .transact(
            ns,
            vec![
                TransactionOp::Set {
                    key: "a".into(),
                    value: b"new".to_vec(),
                    precondition: Precondition::IfMatch(etag),
                    ttl_ms: None,
                },
                TransactionOp::Delete {
                    key: "b".into(),
                    precondition: Precondition::None,
                },
                TransactionOp::Set {
                    key: "c".into(),
                    value: b"new".to_vec(),
                    precondition: Precondition::IfAbsent,
                    ttl_ms: None,
                },
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err, StateError::TransactionConflict { key: "c".into() });
    let a = store.get(ns, "a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.etag), (&b"old"[..], etag));
    assert_eq!(store.get(ns, "b").await.unwrap().unwrap().value, b"old");
    assert_eq!(store.get(ns, "c").await.unwrap().unwrap().value, b"exists");
}

async fn list_pages_through_a_prefix_in_order(store: &StateStore, ns: &Namespace) {
    let mut expected = Vec::new();
    for i in 0..25 {
        let key = format!("user:{i:02}");
        store
            .set(ns, &key, b"x", Precondition::None, None)
            .await
            .unwrap();
        expected.push(key);
    }
    for other in ["user", "usex:1", "a", "zzz"] {
        store
            .set(ns, other, b"x", Precondition::None, None)
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list(ns, "user:", cursor.as_deref(), 10)
            .await
            .unwrap();
        pages += 1;
        assert!(page.keys.len() <= 10);
        seen.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10, "listing does not end");
    }
    assert_eq!(seen, expected);
    let all = store.list(ns, "", None, 100).await.unwrap();
    assert_eq!(all.keys.len(), 29);
    assert_eq!(all.keys.first().map(String::as_str), Some("a"));
    assert_eq!(all.cursor, None);
}

async fn list_skips_expired_keys(store: &StateStore, ns: &Namespace) {
    store
        .set(ns, "p:live", b"x", Precondition::None, None)
        .await
        .unwrap();
    store
        .set(ns, "p:short", b"x", Precondition::None, Some(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let page = store.list(ns, "p:", None, 10).await.unwrap();
    assert_eq!(page.keys, vec!["p:live".to_string()]);
}

async fn get_many_reports_each_key(store: &StateStore, ns: &Namespace) {
    store
        .set(ns, "x", b"1", Precondition::None, None)
        .await
        .unwrap();
    let entries = store
        .get_many(ns, &["x".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(entries[0].as_ref().unwrap().value, b"1");
    assert_eq!(entries[1], None);
}

async fn namespaces_do_not_see_each_other(store: &StateStore, ns: &Namespace) {
    let other = fresh_namespace("other-app");
    store
        .set(ns, "secret", b"mine", Precondition::None, None)
        .await
        .unwrap();
    assert_eq!(store.get(&other, "secret").await.unwrap(), None);
    assert!(
        store
            .list(&other, "", None, 10)
            .await
            .unwrap()
            .keys
            .is_empty()
    );
    assert!(
        !store
            .delete(&other, "secret", Precondition::None)
            .await
            .unwrap()
    );
    assert_eq!(store.increment(&other, "secret", 1).await.unwrap(), 1);
    assert_eq!(
        store.get(ns, "secret").await.unwrap().unwrap().value,
        b"mine"
    );
}

async fn bad_keys_values_and_batches_are_refused_before_the_backend(
    store: &StateStore,
    ns: &Namespace,
) {
    let limits = store.limits();
    for key in [
        String::new(),
        "line\nbreak".to_string(),
        "nul\0".to_string(),
        "k".repeat(limits.max_key_bytes + 1),
    ] {
        let err = store
            .set(ns, &key, b"x", Precondition::None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StateError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
        let err = store.get(ns, &key).await.unwrap_err();
        assert!(
            matches!(err, StateError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
    }
    let big = vec![0u8; limits.max_value_bytes as usize + 1];
    let err = store
        .set(ns, "big", &big, Precondition::None, None)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StateError::ValueTooLarge {
            size: big.len() as u64,
            limit: limits.max_value_bytes
        }
    );
    assert_eq!(store.get(ns, "big").await.unwrap(), None);
    let too_many = (0..=limits.max_operations)
        .map(|i| TransactionOp::Delete {
            key: format!("k{i}"),
            precondition: Precondition::None,
        })
        .collect();
    let err = store.transact(ns, too_many).await.unwrap_err();
    assert!(
        matches!(err, StateError::TooManyOperations { .. }),
        "{err:?}"
    );
}
