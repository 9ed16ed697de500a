//! The hearthd DaemonSet image, built from the workspace's own binaries:
//! no base image is downloaded.
//!
//! One linux/amd64 layer holds `hearthd`, `hearth` and
//! `containerd-shim-hearth-v1` in `/usr/local/bin`, the shared libraries
//! they link (found with `ldd`, at the same paths as on this machine, so the
//! dynamic loader finds them), and Debian's static busybox as `/bin/sh`,
//! `/bin/cp` and `/bin/mv` for the DaemonSet's shim-installing init
//! container. Binaries are stripped (`strip` from binutils) to keep the
//! layer small.

use hearth_prewarm::image::BuiltImage;
use hearth_testkit::containerd::workspace_binary;
use hearth_testkit::node::{BUSYBOX, linux_image};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binaries the image carries.
const BINARIES: [&str; 3] = ["hearthd", "hearth", "containerd-shim-hearth-v1"];

/// Builds the image (see the module docs).
pub fn hearthd_image(scratch: &Path) -> BuiltImage {
    let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let mut libraries = BTreeSet::new();
    for name in BINARIES {
        let binary = workspace_binary(name);
        let stripped = scratch.join(name);
        let status = Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&binary)
            .status()
            .expect("run strip (binutils)");
        assert!(status.success(), "strip {}", binary.display());
        files.push((
            format!("usr/local/bin/{name}"),
            std::fs::read(&stripped).unwrap(),
            0o755,
        ));
        libraries.extend(linked_libraries(&binary));
    }
    for library in libraries {
        let bytes =
            std::fs::read(&library).unwrap_or_else(|e| panic!("{}: {e}", library.display()));
        let inside = library
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        files.push((inside, bytes, 0o755));
    }
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("{BUSYBOX}: {e}; install it with `apt-get install busybox-static`")
    });
    for applet in ["sh", "cp", "mv"] {
        files.push((format!("bin/{applet}"), busybox.clone(), 0o755));
    }
    let borrowed: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(path, bytes, mode)| (path.as_str(), bytes.as_slice(), *mode))
        .collect();
    linux_image(&borrowed, &["/usr/local/bin/hearthd"])
}

/// The shared libraries and loader `binary` links, as `ldd` resolves them
/// (both the path it names and, for a symlink, what it points to).
fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut found = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            found.push(PathBuf::from(path));
        }
    }
    assert!(
        !found.is_empty(),
        "ldd found nothing for {}: {text}",
        binary.display()
    );
    found
}
