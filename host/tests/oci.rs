//! OCI distribution against a real `docker-registry`: push, pull and run in
//! both forms, images pushed by skopeo, the artifact and compiled caches
//! (hits, eviction, restarts, concurrent pulls, crashes), and every kind of
//! bad input the registry path can meet.

use base64::Engine as _;
use hearth_prewarm::artifact_cache::{ArtifactCache, PullError, PullRefusal};
use hearth_prewarm::image::{self, BuiltImage, ImageForm};
use hearth_prewarm::registry::{RegistryClient, RegistryError, RegistrySettings, parse_reference};
use hearth_testkit::http::get;
use hearth_testkit::process::{Running, run_to_end};
use hearth_testkit::registry::{
    Fault, FaultProxy, Registry, TokenServer, free_port, non_loopback_ip, skopeo_push,
};
use hearth_testkit::{ECHO, HELLO, LIFECYCLE, wasm_bytes};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");
const HEARTHD: &str = env!("CARGO_BIN_EXE_hearthd");

/// A `hearth` command with its own cache and an empty docker config, so the
/// machine's `~/.docker` never leaks in.
fn hearth(cache: &Path, docker_config: &Path) -> Command {
    let mut command = Command::new(HEARTH);
    command
        .env("HEARTH_CACHE_DIR", cache)
        .env("DOCKER_CONFIG", docker_config);
    command
}

struct Scratch {
    cache: tempfile::TempDir,
    docker: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            cache: tempfile::tempdir().unwrap(),
            docker: tempfile::tempdir().unwrap(),
        }
    }

    fn hearth(&self) -> Command {
        hearth(self.cache.path(), self.docker.path())
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        let (status, log) = run_to_end(self.hearth().args(args));
        (status.code().unwrap_or(-1), log)
    }

    fn settings(&self) -> RegistrySettings {
        RegistrySettings {
            docker_config: Some(self.docker.path().join("config.json")),
            initial_backoff: Duration::from_millis(50),
            ..RegistrySettings::default()
        }
    }

    fn artifact_cache(&self, max_bytes: u64) -> ArtifactCache {
        ArtifactCache::open(self.cache.path(), max_bytes, self.settings()).unwrap()
    }
}

fn push(scratch: &Scratch, file: &str, reference: &str, form: ImageForm) -> String {
    let mut args = vec!["push", file, reference];
    if form == ImageForm::Artifact {
        args.push("--artifact");
    }
    let (code, log) = scratch.run(&args);
    assert_eq!(code, 0, "push failed:\n{log}");
    log.lines()
        .find(|line| line.starts_with(reference) && line.contains("@sha256:"))
        .unwrap_or_else(|| panic!("push printed no reference@digest:\n{log}"))
        .to_string()
}

/// Serves `reference` with `hearth run` and returns the body of `GET /`.
fn serve_and_get(scratch: &Scratch, reference: &str, extra: &[&str]) -> (Running, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["run", reference, "--listen", &listen];
    args.extend_from_slice(extra);
    let running = Running::start(scratch.hearth().args(&args));
    let name = hearth_host::FunctionSource::parse(reference).default_name();
    let addr = running.serving_addr(&name);
    let reply = tokio_block_on(get(addr, "/")).expect("GET /");
    assert_eq!(
        reply.status,
        200,
        "{}\nlog:\n{}",
        reply.text(),
        running.log_text()
    );
    (running, reply.text())
}

fn tokio_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn manifest_of(built: &BuiltImage) -> image::Manifest {
    image::parse_manifest("test", &built.manifest).unwrap()
}

#[test]
fn push_pull_and_run_round_trip_in_both_forms() {
    let registry = Registry::start();
    for form in [ImageForm::Image, ImageForm::Artifact] {
        let scratch = Scratch::new();
        let reference = registry.reference("fn/hello", &format!("{form:?}").to_lowercase());
        let pushed = push(&scratch, HELLO, &reference, form);
        let expected_digest = image::build(form, &wasm_bytes(HELLO)).manifest_digest();
        assert!(pushed.ends_with(&expected_digest), "{pushed}");

        let (code, log) = scratch.run(&["pull", &reference]);
        assert_eq!(code, 0, "{log}");
        assert!(
            log.contains(&expected_digest) && log.contains("compiled"),
            "{log}"
        );

        let (code, listing) = scratch.run(&["cache", "ls"]);
        assert_eq!(code, 0, "{listing}");
        assert!(
            listing.contains(&reference) && listing.contains("complete"),
            "{listing}"
        );
        assert!(listing.contains("compiled: 1 entries"), "{listing}");

        let (_server, body) = serve_and_get(&scratch, &reference, &[]);
        assert!(body.contains("Hello"), "{body}");
    }
}

#[test]
fn images_pushed_by_skopeo_run_in_both_forms_and_as_an_index() {
    let registry = Registry::start();
    for (form, as_index) in [
        (ImageForm::Image, false),
        (ImageForm::Artifact, false),
        (ImageForm::Image, true),
    ] {
        let scratch = Scratch::new();
        let built = image::build(form, &wasm_bytes(HELLO));
        let repository = format!("skopeo/{form:?}{}", if as_index { "-index" } else { "" });
        let reference = registry.reference(&repository.to_lowercase(), "1");
        skopeo_push(&built, &reference, as_index);
        let (_server, body) = serve_and_get(&scratch, &reference, &[]);
        assert!(body.contains("Hello"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_misses_and_evicts_the_least_recently_used() {
    let registry = Registry::start();
    let pusher = Scratch::new();
    let references: Vec<String> = [("hello", HELLO), ("echo", ECHO), ("lifecycle", LIFECYCLE)]
        .iter()
        .map(|(name, file)| {
            let reference = registry.reference(&format!("fn/{name}"), "1");
            push(&pusher, file, &reference, ImageForm::Image);
            reference
        })
        .collect();
    // Measure each entry's size with an unbounded cache.
    let measuring = Scratch::new();
    let measure = measuring.artifact_cache(u64::MAX);
    let mut sizes = Vec::new();
    for reference in &references {
        sizes.push(measure.pull(reference).await.unwrap().size);
    }
    let bound = sizes.iter().sum::<u64>() - 1;

    let scratch = Scratch::new();
    let cache = scratch.artifact_cache(bound);
    let (hello, echo, lifecycle) = (&references[0], &references[1], &references[2]);
    let first = cache.get_or_pull(hello).await.unwrap();
    assert_eq!(cache.stats().blob_downloads, 2, "miss: config and layer");
    let again = cache.get_or_pull(hello).await.unwrap();
    assert_eq!(again.wasm_digest, first.wasm_digest);
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.stats().blob_downloads, 2, "a hit downloads nothing");
    assert_eq!(cache.read_wasm(&again).unwrap(), wasm_bytes(HELLO));

    cache.get_or_pull(echo).await.unwrap();
    std::thread::sleep(Duration::from_millis(20));
    cache.get_or_pull(hello).await.unwrap(); // hello is now more recent than echo
    std::thread::sleep(Duration::from_millis(20));
    cache.get_or_pull(lifecycle).await.unwrap();

    assert_eq!(cache.stats().evictions, 1);
    assert!(
        cache.lookup(echo).unwrap().is_none(),
        "echo was least recently used"
    );
    assert!(cache.lookup(hello).unwrap().is_some());
    assert!(cache.lookup(lifecycle).unwrap().is_some());
    assert!(cache.total_bytes().unwrap() <= bound);
}

#[test]
fn a_restart_keeps_both_caches() {
    let mut registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "restart");
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let (code, log) = scratch.run(&["pull", &reference]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("compiled component"), "{log}");

    // With the registry gone, a new process runs from both caches.
    registry.stop();
    let (server, body) = serve_and_get(&scratch, &reference, &[]);
    assert!(body.contains("Hello"), "{body}");
    let log = server.log_text();
    assert!(
        log.contains("loaded precompiled component from disk"),
        "{log}"
    );
    assert!(
        !log.contains("compiled component\n") && !log.contains(" compiled component"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_reference_fetch_each_blob_once() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "concurrent");
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let built = image::build(ImageForm::Image, &wasm_bytes(HELLO));
    let layer = built.layers[0].descriptor.digest.clone();
    let config = built.config.descriptor.digest.clone();

    // In one process.
    let cache = scratch.artifact_cache(u64::MAX);
    let (a, b) = tokio::join!(cache.pull(&reference), cache.pull(&reference));
    assert_eq!(a.unwrap().wasm_digest, b.unwrap().wasm_digest);
    assert_eq!(cache.stats().blob_downloads, 2);
    assert_eq!(registry.blob_gets(&layer), 1, "{}", registry.log_text());
    assert_eq!(registry.blob_gets(&config), 1);

    // Across processes sharing one cache directory.
    let shared = Scratch::new();
    let mut first = Running::start(shared.hearth().args(["pull", "--no-compile", &reference]));
    let mut second = Running::start(shared.hearth().args(["pull", "--no-compile", &reference]));
    assert!(first.wait().success(), "{}", first.log_text());
    assert!(second.wait().success(), "{}", second.log_text());
    assert_eq!(
        registry.blob_gets(&layer),
        2,
        "one more GET for the second cache dir"
    );
    assert_eq!(registry.blob_gets(&config), 2);
}

#[test]
fn hearthd_prewarms_images_so_first_use_is_a_cache_hit() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "prewarm");
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let port = free_port();
    let config = scratch.cache.path().join("hearth.toml");
    std::fs::write(
        &config,
        format!(
            "[cache]\ndir = \"{}\"\n[prewarm]\nimages = [\"{reference}\"]\n\
             [[function]]\nname = \"hello\"\nimage = \"{reference}\"\nlisten = \"127.0.0.1:{port}\"\n",
            scratch.cache.path().join("c").display()
        ),
    )
    .unwrap();
    let hearthd = Running::start(
        Command::new(HEARTHD)
            .env("DOCKER_CONFIG", scratch.docker.path())
            .arg("--config")
            .arg(&config),
    );
    hearthd.wait_for_line("hearthd ready");
    let log = hearthd.log_text();
    assert!(log.contains(&format!("prewarmed {reference}")), "{log}");
    assert_eq!(
        log.matches("compiled component").count(),
        1,
        "compiled once, at prewarm:\n{log}"
    );
    assert_eq!(
        log.matches("pulled").count(),
        1,
        "pulled once, at prewarm:\n{log}"
    );
    let addr = hearthd.serving_addr("hello");
    let reply = tokio_block_on(get(addr, "/")).unwrap();
    assert_eq!(reply.status, 200);

    // Restarted with the registry gone, hearthd starts from both caches.
    let mut hearthd = hearthd;
    assert!(hearthd.terminate().success(), "{}", hearthd.log_text());
    let mut registry = registry;
    registry.stop();
    let restarted = Running::start(
        Command::new(HEARTHD)
            .env("DOCKER_CONFIG", scratch.docker.path())
            .arg("--config")
            .arg(&config),
    );
    restarted.wait_for_line("hearthd ready");
    let log = restarted.log_text();
    assert!(
        log.contains("loaded precompiled component from disk"),
        "{log}"
    );
    assert!(
        !log.contains(" compiled component"),
        "no compile after a restart:\n{log}"
    );
    let reply = tokio_block_on(get(restarted.serving_addr("hello"), "/")).unwrap();
    assert_eq!(reply.status, 200);
}

#[test]
fn plain_http_needs_the_flag_unless_the_registry_is_on_loopback() {
    let ip = non_loopback_ip();
    let registry = Registry::start_on(ip);
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "insecure");
    let (code, log) = scratch.run(&["push", HELLO, &reference]);
    assert_eq!(code, 2, "HTTPS is the default off loopback:\n{log}");
    assert!(log.contains(&registry.addr), "{log}");

    let flag = ["--insecure-registry", registry.addr.as_str()];
    let (code, log) = scratch.run(&[&["push", HELLO, &reference][..], &flag].concat());
    assert_eq!(code, 0, "{log}");
    let (code, log) = scratch.run(&[&["pull", &reference][..], &flag].concat());
    assert_eq!(code, 0, "{log}");
}

// ---- bad input: each case is named, logged, and leaves nothing cached ----

fn assert_nothing_cached(cache: &ArtifactCache, reference: &str) {
    assert!(
        cache.lookup(reference).unwrap().is_none(),
        "{reference} was cached"
    );
    assert!(cache.list().unwrap().is_empty(), "an entry was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "tampered-manifest");
    let digest_ref = push(&scratch, HELLO, &reference, ImageForm::Image);
    let built = image::build(ImageForm::Image, &wasm_bytes(HELLO));
    let stored = registry.blob_data_path(&built.manifest_digest());
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes.extend_from_slice(b" ");
    std::fs::write(&stored, bytes).unwrap();

    let cache = scratch.artifact_cache(u64::MAX);
    for pulled in [&reference, &digest_ref] {
        let error = cache.pull(pulled).await.unwrap_err();
        let message = error.to_string();
        assert!(
            message.to_lowercase().contains("digest"),
            "{pulled}: {message}"
        );
        assert!(
            matches!(
                error,
                PullError::Registry(
                    RegistryError::DigestMismatch { .. } | RegistryError::Protocol { .. }
                )
            ),
            "{message}"
        );
    }
    assert_nothing_cached(&cache, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_layer_is_refused_and_never_cached() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "tampered-layer");
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let built = image::build(ImageForm::Image, &wasm_bytes(HELLO));
    let layer = &built.layers[0].descriptor.digest;
    let stored = registry.blob_data_path(layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff; // same size, different content
    std::fs::write(&stored, bytes).unwrap();

    let cache = scratch.artifact_cache(u64::MAX);
    let error = cache.pull(&reference).await.unwrap_err();
    match &error {
        PullError::Registry(RegistryError::DigestMismatch { expected, .. }) => {
            assert_eq!(expected, layer)
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert_nothing_cached(&cache, &reference);
    let blob = scratch
        .cache
        .path()
        .join("artifacts/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    assert!(!blob.exists(), "the tampered layer reached the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_blob_is_named() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "missing-blob");
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let built = image::build(ImageForm::Image, &wasm_bytes(HELLO));
    let layer = &built.layers[0].descriptor.digest;
    std::fs::remove_file(registry.blob_data_path(layer)).unwrap();

    let cache = scratch.artifact_cache(u64::MAX);
    let error = cache.pull(&reference).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains(layer.as_str()), "{message}");
    assert!(message.contains(&registry.addr), "{message}");
    assert_nothing_cached(&cache, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_with_no_wasm_is_named() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("app/shell", "1");
    let mut built = image::build(ImageForm::Image, b"#!/bin/sh\necho not wasm\n");
    built.config = {
        let bytes = br#"{"os":"linux","architecture":"amd64","config":{"Entrypoint":["/bin/sh"]}}"#
            .to_vec();
        let mut config = built.config.clone();
        config.descriptor.digest = image::sha256_digest(&bytes);
        config.descriptor.size = bytes.len() as u64;
        config.bytes = bytes;
        config
    };
    let mut manifest = manifest_of(&built);
    manifest.config = Some(built.config.descriptor.clone());
    built.manifest = serde_json::to_vec(&manifest).unwrap();
    let client = RegistryClient::new(&parse_reference(&reference).unwrap(), &scratch.settings());
    client.push(&built).await.unwrap();

    let (code, log) = scratch.run(&["run", &reference]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("holds no WebAssembly") && log.contains(&reference),
        "{log}"
    );
    assert!(log.contains("linux"), "{log}");
    assert_nothing_cached(&scratch.artifact_cache(u64::MAX), &reference);
}

/// Pushes `built` as is (no checks), as a hostile registry user could.
fn push_crafted(scratch: &Scratch, reference: &str, built: &BuiltImage) {
    let client = RegistryClient::new(&parse_reference(reference).unwrap(), &scratch.settings());
    tokio_block_on(client.push(built)).unwrap();
}

/// `built` with `manifest` edited by `edit` and re-serialised.
fn with_manifest(mut built: BuiltImage, edit: impl FnOnce(&mut image::Manifest)) -> BuiltImage {
    let mut manifest = manifest_of(&built);
    edit(&mut manifest);
    built.manifest = serde_json::to_vec(&manifest).unwrap();
    built
}

#[test]
fn a_manifest_or_config_over_the_size_limit_is_refused_and_counted() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "1");
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let manifest_size = image::build(ImageForm::Image, &wasm_bytes(HELLO))
        .manifest
        .len() as u64;
    let cache = ArtifactCache::open(
        scratch.cache.path(),
        u64::MAX,
        RegistrySettings {
            max_manifest_bytes: manifest_size - 1,
            ..scratch.settings()
        },
    )
    .unwrap();
    let error = tokio_block_on(cache.pull(&reference)).unwrap_err();
    assert!(
        matches!(
            error,
            PullError::Registry(RegistryError::ManifestTooLarge { what: "manifest", size, .. })
                if size == manifest_size
        ),
        "{error}"
    );
    assert!(error.to_string().contains("max_manifest_bytes"), "{error}");
    assert_nothing_cached(&cache, &reference);

    // A config padded past the limit is refused by its descriptor, before
    // it is downloaded.
    let padded = reference.replace(":1", ":padded-config");
    let mut built = image::build(ImageForm::Image, &wasm_bytes(HELLO));
    let mut config: serde_json::Value = serde_json::from_slice(&built.config.bytes).unwrap();
    config["padding"] = "x".repeat(8192).into();
    built.config.bytes = serde_json::to_vec(&config).unwrap();
    built.config.descriptor.digest = image::sha256_digest(&built.config.bytes);
    built.config.descriptor.size = built.config.bytes.len() as u64;
    let config_descriptor = built.config.descriptor.clone();
    let built = with_manifest(built, |manifest| manifest.config = Some(config_descriptor));
    push_crafted(&scratch, &padded, &built);
    let cache = ArtifactCache::open(
        scratch.cache.path(),
        u64::MAX,
        RegistrySettings {
            max_manifest_bytes: 4096,
            ..scratch.settings()
        },
    )
    .unwrap();
    let error = tokio_block_on(cache.pull(&padded)).unwrap_err();
    assert!(
        matches!(
            error,
            PullError::Registry(RegistryError::ManifestTooLarge { what: "config", .. })
        ),
        "{error}"
    );
    assert_eq!(
        registry.blob_gets(&built.config.descriptor.digest),
        0,
        "refused before download"
    );
    assert_nothing_cached(&cache, &padded);
    assert!(
        cache
            .refusals()
            .contains(&(PullRefusal::ManifestTooLarge, 1)),
        "{:?}",
        cache.refusals()
    );
}

#[test]
fn an_image_naming_one_layer_many_times_is_refused_before_download() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "repeated");
    let built = image::build(ImageForm::Image, &wasm_bytes(HELLO));
    let layer = built.layers[0].descriptor.clone();
    let built = with_manifest(built, |manifest| {
        manifest.layers = vec![layer.clone(); 100];
    });
    push_crafted(&scratch, &reference, &built);
    let cache = ArtifactCache::open(
        scratch.cache.path(),
        u64::MAX,
        RegistrySettings {
            max_image_bytes: 10 * layer.size,
            ..scratch.settings()
        },
    )
    .unwrap();
    let error = tokio_block_on(cache.pull(&reference)).unwrap_err();
    match &error {
        PullError::Registry(RegistryError::ImageTooLarge { size, layers, .. }) => {
            assert_eq!(*layers, 100);
            assert_eq!(*size, 100 * layer.size + built.config.descriptor.size);
        }
        other => panic!("expected ImageTooLarge, got {other}"),
    }
    assert!(error.to_string().contains("max_image_bytes"), "{error}");
    assert_eq!(
        registry.blob_gets(&layer.digest),
        0,
        "refused before download"
    );
    assert_nothing_cached(&cache, &reference);
}

/// An image-form image whose one layer holds `junk_bytes` of zeros before
/// `/function.wasm`: a few KiB compressed, `junk_bytes` to read through.
fn gzip_bomb(wasm: &[u8], junk_bytes: usize) -> BuiltImage {
    let junk = vec![0u8; junk_bytes];
    let (_, bytes) = image::tar_gz_layer(&[("junk", &junk), ("function.wasm", wasm)]);
    let mut built = image::build(ImageForm::Image, wasm);
    built.layers[0].descriptor.digest = image::sha256_digest(&bytes);
    built.layers[0].descriptor.size = bytes.len() as u64;
    built.layers[0].bytes = bytes;
    let layer = built.layers[0].descriptor.clone();
    with_manifest(built, |manifest| manifest.layers = vec![layer])
}

#[test]
fn hearthd_refuses_a_gzip_bomb_counts_it_and_keeps_serving() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let good = registry.reference("fn/hello", "good");
    push(&scratch, HELLO, &good, ImageForm::Image);
    let bomb = registry.reference("fn/bomb", "1");
    let built = gzip_bomb(&wasm_bytes(HELLO), 64 << 20);
    assert!(built.layers[0].bytes.len() < 1 << 20, "a small layer");
    push_crafted(&scratch, &bomb, &built);

    let port = free_port();
    let config = scratch.cache.path().join("hearth.toml");
    std::fs::write(
        &config,
        format!(
            "[cache]\ndir = \"{}\"\n[registry]\nmax_unpacked_bytes = 16777216\n\
             [prewarm]\nimages = [\"{bomb}\", \"{good}\"]\n\
             [[function]]\nname = \"hello\"\nimage = \"{good}\"\nlisten = \"127.0.0.1:{port}\"\n",
            scratch.cache.path().join("c").display()
        ),
    )
    .unwrap();
    let hearthd = Running::start(
        Command::new(HEARTHD)
            .env("DOCKER_CONFIG", scratch.docker.path())
            .env("HEARTH_SOCKET", scratch.cache.path().join("hearthd.sock"))
            .arg("--config")
            .arg(&config)
            .args(["--admin", "127.0.0.1:0"]),
    );
    hearthd.wait_for_line("hearthd ready");
    let failed = hearthd.wait_for_line(&format!("prewarm of {bomb} failed"));
    assert!(
        failed.contains("decompress to more than 16777216 bytes"),
        "{failed}"
    );
    let reply = tokio_block_on(get(hearthd.serving_addr("hello"), "/")).unwrap();
    assert_eq!(reply.status, 200, "the other image serves");
    let admin = hearthd.admin_addr();
    let metrics = tokio_block_on(get(admin, "/metrics")).unwrap().text();
    assert_eq!(
        hearth_testkit::metric(
            &metrics,
            "hearth_image_pulls_refused_total{reason=\"unpacked_too_large\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        scratch
            .artifact_cache(u64::MAX)
            .lookup(&bomb)
            .unwrap()
            .is_none(),
        "the bomb was cached"
    );
}

#[test]
fn a_layer_over_the_size_limit_is_refused_before_download() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "big");
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let (code, log) = scratch.run(&["pull", "--max-layer-bytes", "1000", &reference]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("over the limit of 1000 bytes"), "{log}");
    let layer = &image::build(ImageForm::Image, &wasm_bytes(HELLO)).layers[0]
        .descriptor
        .digest;
    assert_eq!(registry.blob_gets(layer), 0, "refused before download");
}

#[test]
fn an_unreachable_registry_is_retried_then_named() {
    let scratch = Scratch::new();
    let dead = format!("127.0.0.1:{}", free_port());
    let reference = format!("{dead}/fn/hello:1");
    let started = Instant::now();
    let (code, log) = scratch.run(&["pull", &reference]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains(&format!("registry {dead} is unreachable after 4 attempts")),
        "{log}"
    );
    assert_eq!(log.matches("retrying in").count(), 3, "{log}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_registry_that_goes_down_mid_session_is_named_and_the_cache_still_serves() {
    let mut registry = Registry::start();
    let scratch = Scratch::new();
    let cached = registry.reference("fn/hello", "cached");
    let uncached = registry.reference("fn/echo", "uncached");
    push(&scratch, HELLO, &cached, ImageForm::Image);
    push(&scratch, ECHO, &uncached, ImageForm::Image);
    assert_eq!(scratch.run(&["pull", "--no-compile", &cached]).0, 0);
    registry.stop();
    let (code, log) = scratch.run(&["pull", &uncached]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains(&format!("registry {} is unreachable", registry.addr)),
        "{log}"
    );
    let (_server, body) = serve_and_get(&scratch, &cached, &[]);
    assert!(body.contains("Hello"), "{body}");
}

#[test]
fn refused_access_names_the_registry_and_where_credentials_come_from() {
    let registry = Registry::start_with_basic_auth("alice", "s3cr3t");
    let scratch = Scratch::new();
    let reference = registry.reference("private/hello", "1");

    // Anonymous: 401, naming the registry and the docker config.
    let (code, log) = scratch.run(&["push", HELLO, &reference]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains(&format!("registry {} refused access (401", registry.addr)),
        "{log}"
    );
    assert!(log.contains("config.json"), "{log}");

    // With credentials in the docker config: basic auth works both ways.
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr3t");
    std::fs::write(
        scratch.docker.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.addr),
    )
    .unwrap();
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let (code, log) = scratch.run(&["pull", "--no-compile", &reference]);
    assert_eq!(code, 0, "{log}");

    // A 403 from the registry (here injected by a proxy in front of it).
    let proxy = FaultProxy::start(&registry.addr, Fault::Status(403));
    let via_proxy = format!("{}/private/hello:1", proxy.addr);
    let (code, log) = scratch.run(&["pull", &via_proxy]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains(&format!(
            "registry {} refused access (403 Forbidden)",
            proxy.addr
        )),
        "{log}"
    );
}

#[test]
fn bearer_token_auth_works_with_docker_config_credentials() {
    let tokens = TokenServer::start("bob", "hunter2");
    let registry = Registry::start_with_token_auth(&tokens);
    let scratch = Scratch::new();
    let reference = registry.reference("private/hello", "token");

    // No credentials: the token service refuses, and the error says where
    // credentials are read from.
    let (code, log) = scratch.run(&["push", HELLO, &reference]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains(&format!("registry {} refused access", registry.addr)),
        "{log}"
    );
    assert!(log.contains("config.json"), "{log}");
    assert_eq!(tokens.issued(), 0);

    // Basic credentials in config.json are exchanged for bearer tokens.
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:hunter2");
    std::fs::write(
        scratch.docker.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.addr),
    )
    .unwrap();
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let (_server, body) = serve_and_get(&scratch, &reference, &[]);
    assert!(body.contains("Hello"), "{body}");
    assert!(tokens.issued() >= 2, "push and pull each obtained a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_download_is_retried_then_refused() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    push(
        &scratch,
        HELLO,
        &registry.reference("fn/hello", "1"),
        ImageForm::Image,
    );
    let proxy = FaultProxy::start(&registry.addr, Fault::TruncateBlobs);
    let reference = format!("{}/fn/hello:1", proxy.addr);

    let cache = scratch.artifact_cache(u64::MAX);
    let error = cache.pull(&reference).await.unwrap_err();
    assert!(
        matches!(error, PullError::Registry(RegistryError::Truncated { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("truncated"), "{error}");
    assert_nothing_cached(&cache, &reference);

    // When the network recovers, the same pull succeeds.
    proxy.set(Fault::None);
    let entry = cache.pull(&reference).await.unwrap();
    assert_eq!(cache.read_wasm(&entry).unwrap(), wasm_bytes(HELLO));
}

#[test]
fn a_malformed_reference_is_named() {
    let scratch = Scratch::new();
    for bad in ["Bad Ref", "fn/hello:bad!tag", "a@sha256:short"] {
        let (code, log) = scratch.run(&["pull", bad]);
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("malformed image reference"), "{bad}: {log}");
    }
}

#[test]
fn a_crash_mid_pull_leaves_no_entry_that_reads_as_valid() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    push(
        &scratch,
        HELLO,
        &registry.reference("fn/hello", "1"),
        ImageForm::Image,
    );
    let proxy = FaultProxy::start(&registry.addr, Fault::StallBlobs);
    let reference = format!("{}/fn/hello:1", proxy.addr);

    let mut pull = Running::start(scratch.hearth().args(["pull", &reference]));
    let staging = scratch.cache.path().join("artifacts/tmp");
    let deadline = Instant::now() + Duration::from_secs(30);
    // The manifest is staged too, briefly, before any blob is asked for:
    // only a staged file seen once the proxy holds a blob body half sent is
    // the download that never finishes.
    loop {
        let partial = proxy.stalled_bodies() > 0
            && std::fs::read_dir(&staging)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                })
                .unwrap_or(false);
        if partial {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no download started:\n{}",
            pull.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pull.kill();

    let cache = scratch.artifact_cache(u64::MAX);
    assert!(cache.lookup(&reference).unwrap().is_none());
    let (code, log) = scratch.run(&["cache", "gc"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("1 staging file(s)"), "{log}");

    proxy.set(Fault::None);
    let (code, log) = scratch.run(&["pull", &reference]);
    assert_eq!(code, 0, "{log}");
}

/// The path of the blob named `digest` somewhere under `dir`.
fn find_blob(dir: &Path, digest: &str) -> Option<std::path::PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_blob(&path, digest) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|name| name == hex) {
            return Some(path);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_whose_code_is_compiled_loads_without_reading_its_component() {
    use hearth_host::distribution::{CacheSettings, PullPolicy};
    use hearth_host::{EngineSettings, FunctionEnv, Host, Limits};
    let registry = Registry::start();
    let scratch = Scratch::new();
    let reference = registry.reference("fn/hello", "1");
    push(&scratch, HELLO, &reference, ImageForm::Image);
    let mut caches = CacheSettings::at_default_dir();
    caches.dir = scratch.cache.path().to_path_buf();
    caches.registry = scratch.settings();
    let settings = EngineSettings::for_limits([&Limits::default()]);
    let host = Host::with_caches(&settings, &caches).unwrap();
    host.load_image(FunctionEnv::new("first"), &reference, PullPolicy::Missing)
        .await
        .unwrap();
    assert_eq!(host.load_counts().compiled, 1);
    // With the component damaged on disk (same length: the entry still
    // looks complete), the compiled code is still found by the digest the
    // pull verified: from memory, and in a new host (a restarted hearthd)
    // from the compiled store on disk. Reading it would have found the
    // damage and pulled it again.
    let entry = host
        .artifacts()
        .unwrap()
        .lookup(&reference)
        .unwrap()
        .unwrap();
    let blob = find_blob(scratch.cache.path(), &entry.wasm_digest).expect("the wasm blob");
    let damaged = vec![0u8; std::fs::metadata(&blob).unwrap().len() as usize];
    std::fs::write(&blob, &damaged).unwrap();
    host.load_image(FunctionEnv::new("second"), &reference, PullPolicy::Missing)
        .await
        .unwrap();
    assert_eq!(host.load_counts().memory, 1);
    let restarted = Host::with_caches(&settings, &caches).unwrap();
    let function = restarted
        .load_image(FunctionEnv::new("third"), &reference, PullPolicy::Missing)
        .await
        .unwrap();
    assert_eq!(restarted.load_counts().disk, 1);
    assert!(function.is_service());
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        damaged,
        "nothing read it back, nothing pulled it again"
    );
}
