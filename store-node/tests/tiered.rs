//! The storage node's hot memory tier: it passes the conformance suite over
//! an `fs` cold backend, serves repeat reads from memory, and never serves
//! stale bytes after a write or delete.

use hearth_blob::conformance::{self, LIMIT};
use hearth_blob::{BlobLimits, BlobStore};
use hearth_store_node::tiered::TieredBackend;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_over_fs_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let cold = Arc::new(hearth_blob::fs::FsBackend::open(dir.path()).unwrap());
    let tiered = Arc::new(TieredBackend::new(cold, 4 << 20, 1 << 20));
    let store = BlobStore::new(
        "tiered",
        tiered,
        BlobLimits {
            max_object_bytes: LIMIT,
            ..Default::default()
        },
    );
    conformance::run(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_tier_serves_repeat_reads_and_never_stale_data() {
    let dir = tempfile::tempdir().unwrap();
    let cold = Arc::new(hearth_blob::fs::FsBackend::open(dir.path()).unwrap());
    let tiered = Arc::new(TieredBackend::new(cold, 1 << 20, 600_000));
    let store = BlobStore::new("tiered", tiered.clone(), BlobLimits::default());
    store.create_container("c").await.unwrap();
    let first = conformance::pattern(500_000, 1);
    store.put_bytes("c", "a", first.clone()).await.unwrap();
    let all = hearth_blob::ByteRange::ALL;
    assert_eq!(store.get_bytes("c", "a", all).await.unwrap(), first);
    assert_eq!(
        tiered.stats().objects,
        1,
        "a whole read of a small object is kept"
    );
    let range = hearth_blob::ByteRange { start: 10, end: 19 };
    assert_eq!(
        store.get_bytes("c", "a", range).await.unwrap(),
        &first[10..20]
    );
    assert_eq!(store.get_bytes("c", "a", all).await.unwrap(), first);
    assert_eq!(tiered.stats().hits, 2);

    // An overwrite is read back new, never the cached old bytes.
    let second = conformance::pattern(400_000, 2);
    store.put_bytes("c", "a", second.clone()).await.unwrap();
    assert_eq!(store.get_bytes("c", "a", all).await.unwrap(), second);
    store.delete("c", "a").await.unwrap();
    assert!(matches!(
        store.get_bytes("c", "a", all).await,
        Err(hearth_blob::BlobError::NotFound(_))
    ));

    // Capacity: two objects of 500 kB do not both fit in 1 MiB with a
    // third; the least recently read goes.
    for name in ["x", "y", "z"] {
        store.put_bytes("c", name, first.clone()).await.unwrap();
        store.get_bytes("c", name, all).await.unwrap();
    }
    let stats = tiered.stats();
    assert!(stats.bytes <= 1 << 20, "{stats:?}");
    assert_eq!(stats.objects, 2, "{stats:?}");
    // Too big for the tier: passed through, not kept.
    store
        .put_bytes("c", "big", conformance::pattern(700_000, 3))
        .await
        .unwrap();
    store.get_bytes("c", "big", all).await.unwrap();
    assert_eq!(tiered.stats().objects, 2);
}
