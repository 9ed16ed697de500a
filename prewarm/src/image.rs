//! The two OCI forms a function travels in, built for push and read on pull.
//!
//! * **Image form** (the default, what containerd's CRI can pull and
//!   unpack): an OCI image manifest with one `tar+gzip` layer holding
//!   `/function.wasm`, and an image config with `os: wasip2`,
//!   `architecture: wasm`, `Entrypoint: ["/function.wasm"]` and the layer's
//!   `diff_id`. Built byte-for-byte reproducibly (fixed timestamps, fixed
//!   gzip header), so the same wasm always gets the same digests.
//! * **Artifact form** (the CNCF Wasm OCI artifact, as `wkg oci push` writes
//!   it): config `application/vnd.wasm.config.v0+json`, one layer
//!   `application/wasm` whose blob is the component itself.
//!
//! # Contract for reading
//!
//! [`wasm_location`] decides from the manifest (and, for the image form,
//! the config) where the wasm is, without downloading layers:
//! an `application/wasm` (or legacy `application/vnd.wasm.content.layer.v1+wasm`)
//! layer is the component; otherwise the config's entrypoint names a file
//! that [`extract_from_layers`] finds in the tar layers (the last layer
//! holding it wins, as when a runtime unpacks them in order). A manifest with
//! neither is [`ImageError::NoWasm`], naming what the image holds instead.

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// gzip-compressed tar layer (OCI).
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Uncompressed tar layer (OCI).
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip-compressed tar layer (Docker).
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Uncompressed tar layer (Docker).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// CNCF Wasm OCI artifact config media type.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// CNCF Wasm OCI artifact layer media type.
pub const WASM_LAYER: &str = "application/wasm";
/// The older wasm-to-oci layer media type, accepted on pull.
pub const LEGACY_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// Every manifest media type a pull accepts.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

/// Where the image form puts the component, and its entrypoint.
pub const IMAGE_WASM_PATH: &str = "/function.wasm";

/// Which OCI form to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageForm {
    /// A runnable OCI image (tar+gzip layer); containerd can unpack it.
    Image,
    /// The CNCF Wasm OCI artifact (`application/wasm` layer).
    Artifact,
}

/// A content descriptor, as in OCI manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// Platform, in index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A platform, in index entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `wasip2`.
    pub os: String,
    /// Architecture, e.g. `wasm`.
    pub architecture: String,
}

/// An image manifest (OCI or Docker schema 2), or an index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type, when it states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// OCI 1.1 artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob (absent in an index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    /// The layers (empty in an index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
    /// Platform manifests (only in an index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    /// Whether this is an index of per-platform manifests.
    pub fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_deref(),
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST)
        ) || (self.config.is_none() && !self.manifests.is_empty())
    }

    /// The index entry for a wasm platform (`wasip2`/`wasi` on `wasm`).
    pub fn wasm_platform_entry(&self) -> Option<&Descriptor> {
        self.manifests.iter().find(|entry| {
            entry.platform.as_ref().is_some_and(|platform| {
                platform.architecture == "wasm"
                    && matches!(platform.os.as_str(), "wasip2" | "wasip1" | "wasi")
            })
        })
    }
}

/// Why an image does not yield a component.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image has neither a wasm layer nor an entrypoint `.wasm` file.
    #[error("{reference} holds no WebAssembly: {detail}")]
    NoWasm {
        /// The image reference.
        reference: String,
        /// What the image holds instead.
        detail: String,
    },
    /// The component inside a layer is larger than the layer size limit.
    #[error(
        "{reference}: {path} is {size} bytes uncompressed, over the limit of {limit} bytes (raise max_layer_bytes to accept it)"
    )]
    TooLarge {
        /// The image reference.
        reference: String,
        /// The file in the image.
        path: String,
        /// Its uncompressed size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Looking for the component decompressed more than the limit.
    #[error(
        "{reference}: its layers decompress to more than {limit} bytes before the component is found (raise max_unpacked_bytes to accept it)"
    )]
    UnpackedTooLarge {
        /// The image reference.
        reference: String,
        /// The limit.
        limit: u64,
    },
    /// The manifest or config is not valid JSON of the expected shape.
    #[error("{reference}: malformed {what}: {detail}")]
    Malformed {
        /// The image reference.
        reference: String,
        /// `manifest` or `config`.
        what: &'static str,
        /// The parse error.
        detail: String,
    },
}

/// Where in an image the component is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmLocation {
    /// This layer's blob is the component.
    Layer(Descriptor),
    /// The component is the file at `path` inside the tar layers.
    InLayers {
        /// Path inside the image's filesystem, without a leading `/`.
        path: String,
        /// The tar layers, in order.
        layers: Vec<Descriptor>,
    },
}

/// The parts of an image config that matter here.
#[derive(Debug, Default, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    config: Option<ImageConfigInner>,
}

#[derive(Debug, Default, Deserialize)]
struct ImageConfigInner {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
}

fn is_wasm_layer(media_type: &str) -> bool {
    media_type == WASM_LAYER || media_type == LEGACY_WASM_LAYER
}

fn is_tar_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_LAYER_TAR_GZIP | OCI_LAYER_TAR | DOCKER_LAYER_TAR_GZIP | DOCKER_LAYER_TAR
    )
}

/// Parses a manifest's bytes.
pub fn parse_manifest(reference: &str, bytes: &[u8]) -> Result<Manifest, ImageError> {
    serde_json::from_slice(bytes).map_err(|error| ImageError::Malformed {
        reference: reference.to_string(),
        what: "manifest",
        detail: error.to_string(),
    })
}

/// Decides where the component is. `config` is the config blob's bytes; it
/// is only read for the image form.
pub fn wasm_location(
    reference: &str,
    manifest: &Manifest,
    config: &[u8],
) -> Result<WasmLocation, ImageError> {
    if let Some(layer) = manifest
        .layers
        .iter()
        .find(|l| is_wasm_layer(&l.media_type))
    {
        return Ok(WasmLocation::Layer(layer.clone()));
    }
    let describe_layers = || {
        let types: Vec<&str> = manifest
            .layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect();
        format!("layers [{}]", types.join(", "))
    };
    let tar_layers: Vec<Descriptor> = manifest
        .layers
        .iter()
        .filter(|l| is_tar_layer(&l.media_type))
        .cloned()
        .collect();
    if tar_layers.is_empty() {
        return Err(ImageError::NoWasm {
            reference: reference.to_string(),
            detail: format!(
                "no application/wasm layer and no filesystem layer; {}",
                describe_layers()
            ),
        });
    }
    let parsed: ImageConfig =
        serde_json::from_slice(config).map_err(|error| ImageError::Malformed {
            reference: reference.to_string(),
            what: "config",
            detail: error.to_string(),
        })?;
    let inner = parsed.config.unwrap_or_default();
    let program = inner
        .entrypoint
        .into_iter()
        .chain(inner.cmd)
        .flatten()
        .next();
    let Some(program) = program.filter(|p| p.ends_with(".wasm")) else {
        return Err(ImageError::NoWasm {
            reference: reference.to_string(),
            detail: format!(
                "the image's entrypoint is not a .wasm file (os {}, architecture {}); build it with `hearth push`",
                parsed.os.as_deref().unwrap_or("unset"),
                parsed.architecture.as_deref().unwrap_or("unset"),
            ),
        });
    };
    Ok(WasmLocation::InLayers {
        path: program.trim_start_matches('/').to_string(),
        layers: tar_layers,
    })
}

/// Finds `path` in the tar layers (given in order, each with its media type
/// and a reader of its blob); the last layer holding it wins. Reads the
/// layers as streams, never whole. A file larger than `max_file_bytes` is
/// refused before it is read, and reading stops with
/// [`ImageError::UnpackedTooLarge`] once more than `max_unpacked_bytes` have
/// been decompressed in all (skipped files count too), so a small
/// compressed layer cannot inflate into a memory or CPU bomb. Blocking: run
/// it off the async workers.
pub fn extract_from_layers<'a, R: Read>(
    reference: &str,
    path: &str,
    max_file_bytes: u64,
    max_unpacked_bytes: u64,
    layers: impl IntoIterator<Item = (&'a str, R)>,
) -> Result<Vec<u8>, ImageError> {
    let wanted = path.trim_start_matches('/');
    let mut found = None;
    let mut unpacked = 0u64;
    for (media_type, blob) in layers {
        let blob = std::io::BufReader::new(blob);
        let decompressed: Box<dyn Read> = if media_type.ends_with("gzip") {
            Box::new(flate2::bufread::GzDecoder::new(blob))
        } else {
            Box::new(blob)
        };
        let mut counted = Budgeted {
            inner: decompressed,
            remaining: max_unpacked_bytes.saturating_sub(unpacked),
            exceeded: false,
        };
        let before = counted.remaining;
        let scanned = find_in_tar(reference, wanted, max_file_bytes, &mut counted);
        if counted.exceeded {
            return Err(ImageError::UnpackedTooLarge {
                reference: reference.to_string(),
                limit: max_unpacked_bytes,
            });
        }
        if let Some(content) = scanned? {
            found = Some(content);
        }
        unpacked += before - counted.remaining;
    }
    found.ok_or_else(|| ImageError::NoWasm {
        reference: reference.to_string(),
        detail: format!("the entrypoint /{wanted} is not in any layer"),
    })
}

/// The last regular file at `wanted` in one tar stream.
fn find_in_tar(
    reference: &str,
    wanted: &str,
    max_file_bytes: u64,
    tar_stream: &mut dyn Read,
) -> Result<Option<Vec<u8>>, ImageError> {
    let mut found = None;
    let mut archive = tar::Archive::new(tar_stream);
    let entries = archive
        .entries()
        .map_err(|e| malformed_layer(reference, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| malformed_layer(reference, e))?;
        let entry_path = entry.path().map_err(|e| malformed_layer(reference, e))?;
        let normalized = entry_path.to_string_lossy();
        let normalized = normalized.trim_start_matches("./").trim_start_matches('/');
        if normalized == wanted && entry.header().entry_type().is_file() {
            if entry.size() > max_file_bytes {
                return Err(ImageError::TooLarge {
                    reference: reference.to_string(),
                    path: format!("/{wanted}"),
                    size: entry.size(),
                    limit: max_file_bytes,
                });
            }
            let mut content = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut content)
                .map_err(|e| malformed_layer(reference, e))?;
            found = Some(content);
        }
    }
    Ok(found)
}

/// A reader that fails once it has given out `remaining` bytes.
struct Budgeted<R> {
    inner: R,
    remaining: u64,
    exceeded: bool,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte past the budget tells "exactly at it" from "over it".
        let allowed = buf
            .len()
            .min(usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..allowed])?;
        if read as u64 > self.remaining {
            self.exceeded = true;
            self.remaining = 0;
            return Err(std::io::Error::other(
                "decompressed past the unpacked-size limit",
            ));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

fn malformed_layer(reference: &str, error: std::io::Error) -> ImageError {
    ImageError::Malformed {
        reference: reference.to_string(),
        what: "layer",
        detail: error.to_string(),
    }
}

/// A blob to push: its descriptor and its bytes.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Describes `bytes`.
    pub descriptor: Descriptor,
    /// The content.
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Blob {
            descriptor: Descriptor {
                media_type: media_type.to_string(),
                digest: sha256_digest(&bytes),
                size: bytes.len() as u64,
                platform: None,
            },
            bytes,
        }
    }
}

/// Everything a push uploads: the config, the layers, then the manifest.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The config blob.
    pub config: Blob,
    /// The layer blobs.
    pub layers: Vec<Blob>,
    /// The manifest bytes (pushed last).
    pub manifest: Vec<u8>,
    /// The manifest's media type.
    pub manifest_media_type: &'static str,
}

impl BuiltImage {
    /// The manifest digest: what `name@digest` pulls.
    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Builds `wasm` in the given form. Deterministic: same input, same digests.
pub fn build(form: ImageForm, wasm: &[u8]) -> BuiltImage {
    match form {
        ImageForm::Image => build_image_form(wasm),
        ImageForm::Artifact => build_artifact_form(wasm),
    }
}

/// A layer holding `files` (path, bytes) in order: the tar, and its
/// gzip. Deterministic (no times, owners or OS byte).
pub fn tar_gz_layer(files: &[(&str, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        for (path, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, path, *bytes)
                .expect("writing a tar to memory cannot fail");
        }
        builder
            .finish()
            .expect("writing a tar to memory cannot fail");
    }
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::default());
    encoder
        .write_all(&tar_bytes)
        .expect("gzip to memory cannot fail");
    let gzip = GzEncoder::finish(encoder).expect("gzip to memory cannot fail");
    (tar_bytes, gzip)
}

fn build_image_form(wasm: &[u8]) -> BuiltImage {
    let (tar_bytes, gzip) = tar_gz_layer(&[(IMAGE_WASM_PATH.trim_start_matches('/'), wasm)]);
    let diff_id = sha256_digest(&tar_bytes);
    let layer = Blob::new(OCI_LAYER_TAR_GZIP, gzip);
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "config": { "Entrypoint": [IMAGE_WASM_PATH] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "hearth push", "comment": "WebAssembly component" }],
    });
    let config = Blob::new(
        OCI_CONFIG,
        serde_json::to_vec(&config).expect("JSON to memory"),
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        artifact_type: None,
        config: Some(config.descriptor.clone()),
        layers: vec![layer.descriptor.clone()],
        manifests: Vec::new(),
    };
    BuiltImage {
        manifest: serde_json::to_vec(&manifest).expect("JSON to memory"),
        manifest_media_type: OCI_MANIFEST,
        config,
        layers: vec![layer],
    }
}

fn build_artifact_form(wasm: &[u8]) -> BuiltImage {
    let layer = Blob::new(WASM_LAYER, wasm.to_vec());
    // The shape of the CNCF Wasm OCI artifact config (as wkg writes it).
    let config = serde_json::json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer.descriptor.digest],
        "component": { "exports": [], "imports": [], "target": null },
    });
    let config = Blob::new(
        WASM_CONFIG,
        serde_json::to_vec(&config).expect("JSON to memory"),
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        artifact_type: Some(WASM_CONFIG.to_string()),
        config: Some(config.descriptor.clone()),
        layers: vec![layer.descriptor.clone()],
        manifests: Vec::new(),
    };
    BuiltImage {
        manifest: serde_json::to_vec(&manifest).expect("JSON to memory"),
        manifest_media_type: OCI_MANIFEST,
        config,
        layers: vec![layer],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASM: &[u8] = b"\0asm\x0d\0\x01\0 pretend component";

    #[test]
    fn image_form_round_trips_through_the_tar_layer() {
        let built = build(ImageForm::Image, WASM);
        let manifest = parse_manifest("r", &built.manifest).unwrap();
        let location = wasm_location("r", &manifest, &built.config.bytes).unwrap();
        let WasmLocation::InLayers { path, layers } = location else {
            panic!("image form keeps the wasm in a tar layer");
        };
        assert_eq!(path, "function.wasm");
        assert_eq!(layers.len(), 1);
        let extracted = extract_from_layers(
            "r",
            &path,
            u64::MAX,
            u64::MAX,
            [(
                layers[0].media_type.as_str(),
                built.layers[0].bytes.as_slice(),
            )],
        )
        .unwrap();
        assert_eq!(extracted, WASM);
    }

    #[test]
    fn image_form_config_names_platform_entrypoint_and_diff_id() {
        let built = build(ImageForm::Image, WASM);
        let config: serde_json::Value = serde_json::from_slice(&built.config.bytes).unwrap();
        assert_eq!(config["os"], "wasip2");
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["config"]["Entrypoint"][0], "/function.wasm");
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(built.layers[0].bytes.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256_digest(&tar));
    }

    #[test]
    fn builds_are_reproducible() {
        for form in [ImageForm::Image, ImageForm::Artifact] {
            assert_eq!(
                build(form, WASM).manifest_digest(),
                build(form, WASM).manifest_digest()
            );
        }
    }

    #[test]
    fn artifact_form_layer_is_the_component() {
        let built = build(ImageForm::Artifact, WASM);
        let manifest = parse_manifest("r", &built.manifest).unwrap();
        assert_eq!(manifest.config.as_ref().unwrap().media_type, WASM_CONFIG);
        match wasm_location("r", &manifest, &built.config.bytes).unwrap() {
            WasmLocation::Layer(layer) => {
                assert_eq!(layer.media_type, WASM_LAYER);
                assert_eq!(layer.digest, sha256_digest(WASM));
            }
            other => panic!("expected a wasm layer, got {other:?}"),
        }
    }

    #[test]
    fn image_without_wasm_entrypoint_is_named() {
        let mut built = build(ImageForm::Image, WASM);
        built.config.bytes =
            br#"{"os":"linux","architecture":"amd64","config":{"Entrypoint":["/bin/sh"]}}"#
                .to_vec();
        let manifest = parse_manifest("reg/app:1", &built.manifest).unwrap();
        let error = wasm_location("reg/app:1", &manifest, &built.config.bytes).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ImageError::NoWasm { .. }), "{message}");
        assert!(
            message.contains("reg/app:1") && message.contains("linux"),
            "{message}"
        );
    }

    #[test]
    fn a_component_inflating_past_the_limit_is_refused_before_reading() {
        let big = vec![0u8; 1 << 20];
        let built = build(ImageForm::Image, &big);
        assert!(built.layers[0].bytes.len() < 4096, "zeros compress well");
        let error = extract_from_layers(
            "r",
            "function.wasm",
            1 << 16,
            u64::MAX,
            [(OCI_LAYER_TAR_GZIP, built.layers[0].bytes.as_slice())],
        )
        .unwrap_err();
        assert!(
            matches!(error, ImageError::TooLarge { size, .. } if size == 1 << 20),
            "{error}"
        );
    }

    #[test]
    fn layers_decompressing_past_the_budget_are_refused_while_reading() {
        // 4 MiB of zeros under another name, then the component: the scan
        // reads through the zeros to reach it.
        let junk = vec![0u8; 4 << 20];
        let (tar, layer) = tar_gz_layer(&[("junk", &junk), ("function.wasm", WASM)]);
        assert!(layer.len() < 64 << 10, "zeros compress well");
        let extract = |budget| {
            extract_from_layers(
                "r",
                "function.wasm",
                u64::MAX,
                budget,
                [(OCI_LAYER_TAR_GZIP, layer.as_slice())],
            )
        };
        let error = extract(1 << 20).unwrap_err();
        assert!(
            matches!(error, ImageError::UnpackedTooLarge { limit, .. } if limit == 1 << 20),
            "{error}"
        );
        assert!(error.to_string().contains("max_unpacked_bytes"), "{error}");
        // The same budget spans layers: two layers of 4 MiB need 8.
        assert_eq!(extract(tar.len() as u64).unwrap(), WASM);
        let twice = extract_from_layers(
            "r",
            "function.wasm",
            u64::MAX,
            tar.len() as u64 + 1024,
            [
                (OCI_LAYER_TAR_GZIP, layer.as_slice()),
                (OCI_LAYER_TAR_GZIP, layer.as_slice()),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(twice, ImageError::UnpackedTooLarge { .. }),
            "{twice}"
        );
    }

    #[test]
    fn entrypoint_missing_from_layers_is_named() {
        let built = build(ImageForm::Image, WASM);
        let error = extract_from_layers(
            "r",
            "other.wasm",
            u64::MAX,
            u64::MAX,
            [(OCI_LAYER_TAR_GZIP, built.layers[0].bytes.as_slice())],
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("/other.wasm is not in any layer"),
            "{error}"
        );
    }
}
