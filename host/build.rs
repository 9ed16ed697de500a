//! Embeds the guest SDK, its WIT and the `hearth new` templates into the
//! `hearth` binary (`$OUT_DIR/sdk_files.rs`, used by `src/authoring.rs`), so
//! a project made by `hearth new` and built by `hearth build` uses exactly
//! the SDK this hearth was built with, wherever hearth is installed.
//!
//! The SDK's `Cargo.toml` inherits from this workspace; a standalone copy is
//! written with the inherited values (package fields, the pinned
//! `wit-bindgen` and `wasip3`) filled in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let host = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = host.parent().unwrap().to_path_buf();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for dir in ["wit", "guest-sdk/src", "guest-sdk/templates"] {
        collect(&root, &root.join(dir), &mut files);
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for file in [
        "guest-sdk/README.md",
        "guest-sdk/python/hearth_http.py",
        "guest-sdk/python/requirements.txt",
        "guest-sdk/js/build.mjs",
        "guest-sdk/js/hearth-http.js",
        "guest-sdk/js/package.json",
        "guest-sdk/js/package-lock.json",
    ] {
        files.push((file.to_string(), root.join(file)));
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    for file in ["Cargo.toml", "guest-sdk/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    files.sort();

    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let manifest = standalone_sdk_manifest(&root);
    std::fs::write(out.join("guest-sdk-Cargo.toml"), manifest).unwrap();
    let mut code = String::from(
        "/// Every file of the embedded SDK: (path, bytes).\npub static SDK_FILES: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &files {
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    writeln!(
        code,
        "    (\"guest-sdk/Cargo.toml\", include_bytes!({:?})),\n];",
        out.join("guest-sdk-Cargo.toml").display().to_string()
    )
    .unwrap();
    std::fs::write(out.join("sdk_files.rs"), code).unwrap();
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy();
        if name == "__pycache__" || name.ends_with(".pyc") {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.push((relative, path));
        }
    }
}

/// guest-sdk/Cargo.toml with what it inherits from the workspace filled in.
fn standalone_sdk_manifest(root: &Path) -> String {
    let workspace: toml_edit::DocumentMut = std::fs::read_to_string(root.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let mut sdk: toml_edit::DocumentMut =
        std::fs::read_to_string(root.join("guest-sdk/Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let package = workspace["workspace"]["package"]
        .as_table()
        .unwrap()
        .clone();
    for (key, value) in sdk["package"].as_table_mut().unwrap().iter_mut() {
        let inherited = value
            .as_table_like()
            .and_then(|t| t.get("workspace"))
            .and_then(|w| w.as_bool())
            == Some(true);
        if inherited {
            *value = package[key.get()].clone();
        }
    }
    let pins = workspace["workspace"]["dependencies"]
        .as_table()
        .unwrap()
        .clone();
    for (name, value) in sdk["dependencies"].as_table_mut().unwrap().iter_mut() {
        let Some(table) = value.as_table_like() else {
            continue;
        };
        if table.get("workspace").and_then(|w| w.as_bool()) != Some(true) {
            continue;
        }
        let optional = table.get("optional").and_then(|o| o.as_bool()) == Some(true);
        let mut pinned = match pins[name.get()].clone() {
            toml_edit::Item::Value(toml_edit::Value::String(version)) => {
                let mut inline = toml_edit::InlineTable::new();
                inline.insert("version", version.value().as_str().into());
                inline
            }
            toml_edit::Item::Value(toml_edit::Value::InlineTable(inline)) => inline,
            other => panic!("workspace dependency {name}: unexpected {other:?}"),
        };
        if optional {
            pinned.insert("optional", true.into());
        }
        *value = toml_edit::Item::Value(toml_edit::Value::InlineTable(pinned));
    }
    sdk.remove("lints");
    format!(
        "# Written by hearth from its own guest-sdk/Cargo.toml (workspace values filled in).\n{sdk}"
    )
}
