//! Builds every member of the `functions/` workspace to `wasm32-wasip2`
//! (release) and generates, in `$OUT_DIR/functions.rs`:
//!
//! * one `pub const NAME: &str` per function, the absolute path of its `.wasm`;
//! * `foreach_function!(mac)`, which calls `mac!(name)` for every function, so
//!   a test file can require a test per function at compile time.
//!
//! The wasm is built into `<target>/wasm-functions`, a directory of its own
//! inside the shared target dir: the outer cargo holds the lock on the host
//! profile's directory, and a nested build there would wait on it forever.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.ancestors().nth(2).unwrap().to_path_buf();
    let functions = root.join("functions");
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => root.join("target"),
    }
    .join("wasm-functions");

    for watched in ["functions", "guest-sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let members = workspace_members(&functions.join("Cargo.toml"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&functions)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        // Flags meant for the host build must not leak into the wasm build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("failed to run cargo to build functions/");
    if !status.success() {
        panic!(
            "building functions/ for wasm32-wasip2 failed. If the target is missing, run \
             `rustup target add wasm32-wasip2` (scripts/setup.sh does this)."
        );
    }

    let out_dir = target_dir.join("wasm32-wasip2").join("release");
    let mut generated = String::new();
    let mut names = Vec::new();
    for member in &members {
        let wasm = [member.clone(), member.replace('-', "_")]
            .iter()
            .map(|stem| out_dir.join(format!("{stem}.wasm")))
            .find(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!("functions/{member} built no .wasm in {}", out_dir.display())
            });
        let ident = member.replace('-', "_");
        generated.push_str(&format!(
            "/// Path of `functions/{member}` built for wasm32-wasip2.\npub const {}: &str = {:?};\n",
            ident.to_uppercase(),
            wasm.display().to_string()
        ));
        names.push(ident);
    }
    generated.push_str(&format!(
        "/// Calls `$mac!(name)` for every function in `functions/`.\n\
         #[macro_export]\nmacro_rules! foreach_function {{\n    ($mac:ident) => {{\n{}    }};\n}}\n",
        names
            .iter()
            .map(|name| format!("        $mac!({name});\n"))
            .collect::<String>()
    ));
    generated.push_str(&guest_functions(&root, &target_dir));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("functions.rs");
    std::fs::write(out, generated).unwrap();
}

/// Builds functions/python/* and functions/js/* with scripts/build-guests.sh
/// (tools cached in `<target>/guest-tools`) and returns their constants:
/// `PY_NAME` / `JS_NAME` paths and `GUEST_FUNCTIONS` (language, name, path).
fn guest_functions(root: &Path, wasm_target: &Path) -> String {
    let target = wasm_target.parent().unwrap();
    let out = target.join("guest-functions");
    let status = Command::new("bash")
        .arg(root.join("scripts/build-guests.sh"))
        .arg(&out)
        .arg(target.join("guest-tools"))
        .status()
        .expect("failed to run scripts/build-guests.sh");
    if !status.success() {
        panic!(
            "building the Python and JavaScript functions failed (see above). They need python3 \
             with venv and node with npm (scripts/setup.sh installs them), and PyPI and npm \
             on the first run."
        );
    }
    let mut generated = String::new();
    let mut table = Vec::new();
    for (language, prefix, dir) in [
        ("python", "py", "functions/python"),
        ("js", "js", "functions/js"),
    ] {
        let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.path().is_dir())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        // The guide's template is built too, so the guide cannot rot.
        names.push("template".into());
        names.sort();
        for name in names {
            let wasm = out.join(format!("{prefix}-{name}.wasm"));
            assert!(wasm.is_file(), "{dir}/{name} built no {}", wasm.display());
            let ident = format!(
                "{}_{}",
                prefix.to_uppercase(),
                name.replace('-', "_").to_uppercase()
            );
            generated.push_str(&format!(
                "/// Path of `{dir}/{name}` built into a component.\npub const {ident}: &str = {:?};\n",
                wasm.display().to_string()
            ));
            table.push(format!("    ({language:?}, {name:?}, {ident}),\n"));
        }
    }
    generated.push_str(&format!(
        "/// Every Python and JavaScript function: (language, name, path).\npub const GUEST_FUNCTIONS: &[(&str, &str, &str)] = &[\n{}];\n",
        table.concat()
    ));
    generated
}

fn workspace_members(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let value: toml::Table = toml::from_str(&text).unwrap();
    value["workspace"]["members"]
        .as_array()
        .expect("functions/Cargo.toml lists [workspace] members")
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect()
}
