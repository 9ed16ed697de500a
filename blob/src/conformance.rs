//! The one conformance suite every [`BlobBackend`](crate::BlobBackend)
//! passes: [`run`] drives a [`BlobStore`] through the crate contract.
//! Each case uses its own container, so a store can be shared.
//!
//! The store must allow objects of at least [`LIMIT`] bytes and no more
//! (`BlobLimits { max_object_bytes: LIMIT, .. }`).

use crate::{BlobError, BlobStore, ByteRange, ByteStream};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

/// The object size limit the suite expects the store to have.
pub const LIMIT: u64 = 8 * 1024 * 1024;

/// `len` bytes of a pattern that differs at every offset of interest.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// A body of `chunks` chunks of `chunk` bytes of `pattern(.., seed)`.
fn chunked(data: Vec<u8>, chunk: usize) -> ByteStream {
    let chunks: Vec<Result<Bytes, BlobError>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks).boxed()
}

macro_rules! expect_err {
    ($result:expr, $pattern:pat, $what:expr) => {
        match $result {
            Err($pattern) => {}
            other => panic!(
                "{}: expected {}, got {other:?}",
                $what,
                stringify!($pattern)
            ),
        }
    };
}

/// Runs every case against `store`.
pub async fn run(store: &BlobStore) {
    containers(store).await;
    round_trip_and_ranges(store).await;
    overwrite_listing_and_delete(store).await;
    copy_and_rename(store).await;
    limits_and_failed_writes(store).await;
    bad_names(store).await;
    streaming(store).await;
}

async fn fresh(store: &BlobStore, container: &str) {
    store.delete_container(container).await.unwrap();
    store.create_container(container).await.unwrap();
}

async fn containers(store: &BlobStore) {
    let c = "conf-containers";
    store.delete_container(c).await.unwrap();
    assert!(!store.container_exists(c).await.unwrap());
    let created = store.create_container(c).await.unwrap();
    assert_eq!(created.name, c);
    assert!(store.container_exists(c).await.unwrap());
    assert_eq!(store.container_info(c).await.unwrap().name, c);
    expect_err!(
        store.create_container(c).await,
        BlobError::AlreadyExists(_),
        "create twice"
    );
    store.put_bytes(c, "a", "x").await.unwrap();
    store.delete_container(c).await.unwrap();
    assert!(!store.container_exists(c).await.unwrap());
    store.delete_container(c).await.unwrap();
    // A container created again is empty.
    store.create_container(c).await.unwrap();
    assert!(store.list(c, None, 10).await.unwrap().names.is_empty());
    expect_err!(
        store.put_bytes("conf-missing", "a", "x").await,
        BlobError::NotFound(_),
        "put into a missing container"
    );
    expect_err!(
        store.list("conf-missing", None, 10).await,
        BlobError::NotFound(_),
        "list a missing container"
    );
    expect_err!(
        store.exists("conf-missing", "a").await,
        BlobError::NotFound(_),
        "exists in a missing container"
    );
    store.delete_container(c).await.unwrap();
}

async fn round_trip_and_ranges(store: &BlobStore) {
    let c = "conf-ranges";
    fresh(store, c).await;
    // Three blocks and a bit (for block-checked backends), in odd chunks.
    let data = pattern(3 * 65536 + 17, 1);
    let info = store
        .put(c, "dir/object.bin", chunked(data.clone(), 10_000))
        .await
        .unwrap();
    assert_eq!(
        (info.size, info.name.as_str()),
        (data.len() as u64, "dir/object.bin")
    );
    let read = store
        .get_bytes(c, "dir/object.bin", ByteRange::ALL)
        .await
        .unwrap();
    assert!(read == data, "the whole object reads back");
    assert_eq!(
        store.info(c, "dir/object.bin").await.unwrap().size,
        data.len() as u64
    );
    assert!(store.exists(c, "dir/object.bin").await.unwrap());
    assert!(!store.exists(c, "dir/other").await.unwrap());
    let size = data.len() as u64;
    for (start, end) in [
        (0, 0),
        (1, 1),
        (65535, 65536),
        (100, 200_000),
        (65536 * 3, size - 1),
        (size - 5, u64::MAX),
        (10, size + 1000),
    ] {
        let got = store
            .get_bytes(c, "dir/object.bin", ByteRange { start, end })
            .await
            .unwrap();
        let until = (end.saturating_add(1)).min(size) as usize;
        assert!(
            got == data[start as usize..until],
            "range {start}..={end}: {} bytes",
            got.len()
        );
    }
    let past = store
        .get_bytes(
            c,
            "dir/object.bin",
            ByteRange {
                start: size + 10,
                end: size + 20,
            },
        )
        .await
        .unwrap();
    assert!(past.is_empty(), "a range past the end is empty");
    // An empty object.
    store.put_bytes(c, "empty", Bytes::new()).await.unwrap();
    assert!(
        store
            .get_bytes(c, "empty", ByteRange::ALL)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.info(c, "empty").await.unwrap().size, 0);
    expect_err!(
        store
            .get(c, "nope", ByteRange::ALL)
            .await
            .map(|(info, _)| info),
        BlobError::NotFound(_),
        "get a missing object"
    );
    expect_err!(
        store.info(c, "nope").await,
        BlobError::NotFound(_),
        "info of a missing object"
    );
    store.delete_container(c).await.unwrap();
}

async fn overwrite_listing_and_delete(store: &BlobStore) {
    let c = "conf-list";
    fresh(store, c).await;
    store.put_bytes(c, "k", pattern(70_000, 2)).await.unwrap();
    store.put_bytes(c, "k", "short").await.unwrap();
    assert_eq!(
        store.get_bytes(c, "k", ByteRange::ALL).await.unwrap(),
        b"short"
    );
    let mut expected: Vec<String> = ["a", "a/b", "a/b/c", "b", "k", "z z", "ünï/名前"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for name in &expected {
        store.put_bytes(c, name, name.clone()).await.unwrap();
    }
    expected.sort();
    expected.dedup();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.list(c, after.as_deref(), 3).await.unwrap();
        assert!(page.names.len() <= 3);
        pages += 1;
        listed.extend(page.names);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, expected, "listed in order, a page at a time");
    assert!(pages >= 3);
    store.delete(c, "a/b").await.unwrap();
    store.delete(c, "a/b").await.unwrap();
    assert!(!store.exists(c, "a/b").await.unwrap());
    assert!(store.exists(c, "a/b/c").await.unwrap());
    expect_err!(
        store
            .get(c, "a/b", ByteRange::ALL)
            .await
            .map(|(info, _)| info),
        BlobError::NotFound(_),
        "get after delete"
    );
    store.delete_container(c).await.unwrap();
}

async fn copy_and_rename(store: &BlobStore) {
    let (a, b) = ("conf-copy-a", "conf-copy-b");
    fresh(store, a).await;
    fresh(store, b).await;
    let data = pattern(100_000, 3);
    store.put_bytes(a, "src", data.clone()).await.unwrap();
    store.put_bytes(b, "dst", "old").await.unwrap();
    store.copy((a, "src"), (b, "dst")).await.unwrap();
    assert!(store.get_bytes(b, "dst", ByteRange::ALL).await.unwrap() == data);
    assert!(
        store.exists(a, "src").await.unwrap(),
        "copy keeps the source"
    );
    store.rename((a, "src"), (a, "moved")).await.unwrap();
    assert!(
        !store.exists(a, "src").await.unwrap(),
        "rename removes the source"
    );
    assert!(store.get_bytes(a, "moved", ByteRange::ALL).await.unwrap() == data);
    expect_err!(
        store.copy((a, "moved"), ("conf-missing", "x")).await,
        BlobError::NotFound(_),
        "copy into a missing container"
    );
    expect_err!(
        store.copy((a, "nope"), (b, "x")).await,
        BlobError::NotFound(_),
        "copy of a missing object"
    );
    assert!(store.exists(a, "moved").await.unwrap());
    store.delete_container(a).await.unwrap();
    store.delete_container(b).await.unwrap();
}

async fn limits_and_failed_writes(store: &BlobStore) {
    let c = "conf-limits";
    fresh(store, c).await;
    store.put_bytes(c, "keep", "old").await.unwrap();
    // Over the limit, streamed: refused, and the old object stays.
    let over = pattern(LIMIT as usize + 1, 4);
    expect_err!(
        store.put(c, "keep", chunked(over, 1 << 20)).await,
        BlobError::TooLarge { .. },
        "an object over the limit"
    );
    assert_eq!(
        store.get_bytes(c, "keep", ByteRange::ALL).await.unwrap(),
        b"old"
    );
    // A body that fails half way: the error, and nothing of it visible.
    let failing = futures_util::stream::iter(vec![
        Ok(Bytes::from(pattern(100_000, 5))),
        Err(BlobError::Other("the client went away".into())),
    ])
    .boxed();
    expect_err!(
        store.put(c, "keep", failing).await,
        BlobError::Other(_),
        "a body that fails"
    );
    let failing = futures_util::stream::iter(vec![
        Ok(Bytes::from(pattern(100_000, 5))),
        Err(BlobError::Other("the client went away".into())),
    ])
    .boxed();
    expect_err!(
        store.put(c, "new", failing).await,
        BlobError::Other(_),
        "a new object's body that fails"
    );
    assert_eq!(
        store.get_bytes(c, "keep", ByteRange::ALL).await.unwrap(),
        b"old"
    );
    assert!(
        !store.exists(c, "new").await.unwrap(),
        "a failed write is never visible"
    );
    assert_eq!(store.list(c, None, 10).await.unwrap().names, ["keep"]);
    store.delete_container(c).await.unwrap();
}

async fn bad_names(store: &BlobStore) {
    let c = "conf-names";
    fresh(store, c).await;
    for bad in ["../escape", "/etc/passwd", "a/../../b", "nul\0", ""] {
        expect_err!(
            store.put_bytes(c, bad, "x").await,
            BlobError::InvalidName(_),
            format!("put {bad:?}")
        );
        expect_err!(
            store
                .get(c, bad, ByteRange::ALL)
                .await
                .map(|(info, _)| info),
            BlobError::InvalidName(_),
            format!("get {bad:?}")
        );
    }
    for bad in ["..", "UPPER", "a/b"] {
        expect_err!(
            store.create_container(bad).await,
            BlobError::InvalidName(_),
            format!("container {bad:?}")
        );
    }
    assert!(store.list(c, None, 10).await.unwrap().names.is_empty());
    store.delete_container(c).await.unwrap();
}

async fn streaming(store: &BlobStore) {
    let c = "conf-stream";
    fresh(store, c).await;
    let data = pattern(LIMIT as usize, 6);
    store
        .put(c, "big", chunked(data.clone(), 1 << 20))
        .await
        .unwrap();
    let (info, body) = store.get(c, "big", ByteRange::ALL).await.unwrap();
    assert_eq!(info.size, LIMIT);
    let chunks: Vec<Bytes> = body.try_collect().await.unwrap();
    assert!(
        chunks.len() > 1,
        "a large object streams in more than one chunk"
    );
    assert!(
        chunks.iter().all(|c| c.len() <= 4 << 20),
        "no chunk holds more than 4 MiB"
    );
    let joined: Vec<u8> = chunks.concat();
    assert!(joined == data);
    store.delete_container(c).await.unwrap();
}
