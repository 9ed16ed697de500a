//! The conformance suite against each backend, and what only the `fs`
//! backend can show: a flipped byte on disk is caught, a crash's partial
//! write is never visible and is cleaned up, and no name reaches outside
//! the root.

use hearth_blob::conformance::{self, LIMIT};
use hearth_blob::fs::FsBackend;
use hearth_blob::{BlobError, BlobLimits, BlobStore, ByteRange};
use hearth_testkit::files_under;
use std::sync::Arc;

fn fs_store(root: &std::path::Path) -> BlobStore {
    BlobStore::new(
        "files",
        Arc::new(FsBackend::open(root).unwrap()),
        BlobLimits {
            max_object_bytes: LIMIT,
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(&dir.path().join("blobs"));
    conformance::run(&store).await;
    // Nothing was written outside the root.
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(outside, ["blobs"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_detects_a_flipped_byte_and_names_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    store.create_container("c").await.unwrap();
    let data = conformance::pattern(200_000, 9);
    store.put_bytes("c", "obj", data.clone()).await.unwrap();
    let file = files_under(&dir.path().join("c/objects"))
        .pop()
        .expect("the object's file");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[150_000] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    // A range in a clean block still reads; one touching the bad block,
    // or the whole object, is Corrupt.
    let clean = store
        .get_bytes(
            "c",
            "obj",
            ByteRange {
                start: 0,
                end: 1000,
            },
        )
        .await
        .unwrap();
    assert!(clean == data[..1001]);
    for range in [
        ByteRange::ALL,
        ByteRange {
            start: 150_000,
            end: 150_000,
        },
    ] {
        match store.get_bytes("c", "obj", range).await {
            Err(BlobError::Corrupt(message)) => assert!(message.contains("block 2"), "{message}"),
            other => panic!("{range:?}: expected Corrupt, got {other:?}"),
        }
    }
    // A damaged footer is caught too.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    assert!(matches!(
        store.info("c", "obj").await,
        Err(BlobError::Corrupt(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_by_a_crash_is_never_visible_and_is_cleaned_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    store.create_container("c").await.unwrap();
    store.put_bytes("c", "obj", "committed").await.unwrap();
    // What a crash mid-write leaves: a temp file.
    let stale = dir.path().join("c/tmp/123-456-0.part");
    std::fs::write(&stale, vec![7u8; 70_000]).unwrap();
    assert_eq!(store.list("c", None, 10).await.unwrap().names, ["obj"]);
    drop(store);
    let store = fs_store(dir.path());
    assert!(
        !stale.exists(),
        "opening the store removes a crash's partial write"
    );
    assert_eq!(
        store.get_bytes("c", "obj", ByteRange::ALL).await.unwrap(),
        b"committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(dir.path());
    store.create_container("c").await.unwrap();
    // A body that never ends, abandoned part way (a client that went away).
    let endless = futures_util::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        Some((Ok(bytes::Bytes::from(vec![1u8; 4096])), n + 1))
    });
    let put = store.put("c", "obj", Box::pin(endless));
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), put).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        files_under(&dir.path().join("c/tmp")),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(!store.exists("c", "obj").await.unwrap());
}

/// An `s3` store on a fresh bucket of a moto server started here.
async fn s3_store(server: &hearth_testkit::services::S3Server) -> BlobStore {
    use hearth_testkit::services::S3Server;
    let bucket = "hearth-blobs";
    server.create_bucket(bucket);
    let settings = hearth_blob::s3::S3Settings {
        endpoint: server.endpoint(),
        bucket: bucket.into(),
        region: S3Server::REGION.into(),
        credentials: (
            S3Server::CREDENTIALS.0.into(),
            S3Server::CREDENTIALS.1.into(),
        ),
        timeout: std::time::Duration::from_secs(10),
    };
    BlobStore::new(
        "objects",
        Arc::new(hearth_blob::s3::S3Backend::connect(&settings).unwrap()),
        BlobLimits {
            max_object_bytes: LIMIT,
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_passes_the_conformance_suite() {
    let server = hearth_testkit::services::S3Server::start();
    let store = s3_store(&server).await;
    conformance::run(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_is_unavailable_and_back_up_serves_again() {
    let mut server = hearth_testkit::services::S3Server::start();
    let store = s3_store(&server).await;
    store.create_container("c").await.unwrap();
    server.kill();
    match store.put_bytes("c", "a", "x").await {
        Err(BlobError::Unavailable(message)) => {
            assert!(message.contains("hearth-blobs"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(store.ping().await, Err(BlobError::Unavailable(_))));
    // moto keeps nothing across a restart: a fresh bucket, and it serves.
    server.restart();
    let store = s3_store(&server).await;
    store.create_container("c").await.unwrap();
    store.put_bytes("c", "a", "x").await.unwrap();
    assert_eq!(
        store.get_bytes("c", "a", ByteRange::ALL).await.unwrap(),
        b"x"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_detects_data_that_does_not_match_its_checksums() {
    use hearth_testkit::services::S3Server;
    use object_store::aws::AmazonS3Builder;
    use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};
    let server = S3Server::start();
    let store = s3_store(&server).await;
    store.create_container("c").await.unwrap();
    let data = conformance::pattern(200_000, 3);
    store.put_bytes("c", "obj", data.clone()).await.unwrap();
    // Someone else rewrites the object's bytes but keeps its checksum
    // metadata (what a bit flip at rest looks like to a reader).
    let raw = AmazonS3Builder::new()
        .with_endpoint(server.endpoint())
        .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
        .with_bucket_name("hearth-blobs")
        .with_region(S3Server::REGION)
        .with_access_key_id(S3Server::CREDENTIALS.0)
        .with_secret_access_key(S3Server::CREDENTIALS.1)
        .build()
        .unwrap();
    let mut flipped = data.clone();
    flipped[123_456] ^= 0x10;
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata("hearth-blocks".into()),
        format!("1048576:{:08x}", crc32c::crc32c(&data)).into(),
    );
    raw.put_opts(
        &object_store::path::Path::parse("c/o/obj").unwrap(),
        PutPayload::from(flipped),
        PutOptions {
            attributes,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for range in [ByteRange::ALL, ByteRange { start: 10, end: 20 }] {
        match store.get_bytes("c", "obj", range).await {
            Err(BlobError::Corrupt(message)) => assert!(message.contains("block 0"), "{message}"),
            other => panic!("{range:?}: expected Corrupt, got {other:?}"),
        }
    }
}
