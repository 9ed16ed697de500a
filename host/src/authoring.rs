//! Writing functions: `hearth new` (a project from a template), `hearth
//! build` (the right toolchain per language) and what `hearth up` watches.
//!
//! Contract:
//! - The SDK, its WIT and the templates are built into this binary
//!   (`build.rs`); [`sdk_dir`] unpacks them once per content hash under the
//!   cache dir (`sdk/VERSION-HASH/`), so projects made by one hearth keep
//!   building with that SDK, and a new hearth never overwrites it.
//! - A project's language is what it holds: `Cargo.toml` (Rust, `cargo build
//!   --release --target wasm32-wasip2`), `app.py` (Python, componentize-py),
//!   `app.js` (JavaScript, componentize-js). Its `world` file names the world
//!   a Python or JavaScript function is built for (default
//!   `hearth:function/service`).
//! - componentize-py and componentize-js, at the versions the SDK pins, are
//!   installed on first use into the tools dir (`$HEARTH_TOOLS_DIR`, else
//!   `CACHE/tools`), with a spinner; later builds are offline. The layout is
//!   `scripts/build-guests.sh`'s, so the test build's tools are reused.
//! - A failed build is a [`BuildError`] carrying the tool's own output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

/// The world a Python or JavaScript project is built for without a `world` file.
pub const DEFAULT_WORLD: &str = "hearth:function/service";

/// A template `hearth new` can write.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its name (`rust-http`, `python-job`, ...).
    pub name: String,
    /// The first line of its `template.txt`.
    pub description: String,
}

/// The templates built into this binary, by name.
pub fn templates() -> Vec<Template> {
    let mut templates: Vec<Template> = SDK_FILES
        .iter()
        .filter_map(|(path, bytes)| {
            let name = path
                .strip_prefix("guest-sdk/templates/")?
                .strip_suffix("/template.txt")?;
            Some(Template {
                name: name.to_string(),
                description: String::from_utf8_lossy(bytes)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            })
        })
        .collect();
    templates.sort_by(|a, b| a.name.cmp(&b.name));
    templates
}

/// Why `hearth new` could not write a project.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// No such template.
    #[error("there is no template `{0}`; `hearth new --list` shows them")]
    UnknownTemplate(String),
    /// The name cannot be a package name.
    #[error(
        "`{0}` is not a usable function name: lowercase letters, digits and `-`, starting with a letter"
    )]
    BadName(String),
    /// The directory exists and is not empty.
    #[error("{} already exists and is not empty", .0.display())]
    Exists(PathBuf),
    /// Writing failed.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Writes template `template` as a new project `name` in `dir` (which must
/// not exist, or be empty); returns the files written, relative to `dir`.
pub fn new_project(
    template: &str,
    name: &str,
    dir: &Path,
    cache_dir: &Path,
) -> Result<Vec<PathBuf>, NewError> {
    if !templates().iter().any(|t| t.name == template) {
        return Err(NewError::UnknownTemplate(template.to_string()));
    }
    if !crate::manifests::valid_name(name) {
        return Err(NewError::BadName(name.to_string()));
    }
    if dir
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        return Err(NewError::Exists(dir.to_path_buf()));
    }
    let sdk = sdk_dir(cache_dir).map_err(|e| NewError::Io {
        path: cache_dir.to_path_buf(),
        source: e,
    })?;
    let prefix = format!("guest-sdk/templates/{template}/");
    let mut written = Vec::new();
    for (path, bytes) in SDK_FILES {
        let Some(relative) = path.strip_prefix(&prefix) else {
            continue;
        };
        if relative == "template.txt" {
            continue;
        }
        let text = String::from_utf8_lossy(bytes)
            .replace("{{name}}", name)
            .replace("{{sdk}}", &sdk.display().to_string());
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| NewError::Io {
                path: parent.to_path_buf(),
                source: e,
            })?;
        }
        std::fs::write(&target, text).map_err(|e| NewError::Io {
            path: target.clone(),
            source: e,
        })?;
        written.push(PathBuf::from(relative));
    }
    let ignore = dir.join(".gitignore");
    std::fs::write(&ignore, "/target\n").map_err(|e| NewError::Io {
        path: ignore.clone(),
        source: e,
    })?;
    written.push(PathBuf::from(".gitignore"));
    written.sort();
    Ok(written)
}

/// Where the embedded SDK is unpacked (unpacking it if it is not there):
/// `CACHE/sdk/VERSION-HASH`, holding `wit/` and `guest-sdk/`.
pub fn sdk_dir(cache_dir: &Path) -> std::io::Result<PathBuf> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for (path, bytes) in SDK_FILES {
        hash.update(path.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    }
    let digest = hex::encode(hash.finalize());
    let dir =
        cache_dir
            .join("sdk")
            .join(format!("{}-{}", env!("CARGO_PKG_VERSION"), &digest[..12]));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("sdk dir has a parent");
    std::fs::create_dir_all(parent)?;
    let staging = tempfile::Builder::new()
        .prefix(".sdk-")
        .tempdir_in(parent)?;
    for (path, bytes) in SDK_FILES {
        if path.starts_with("guest-sdk/templates/") {
            continue;
        }
        let target = staging.path().join(path);
        std::fs::create_dir_all(target.parent().expect("a file has a parent"))?;
        std::fs::write(target, bytes)?;
    }
    std::fs::write(staging.path().join(".complete"), b"")?;
    let staged = staging.keep();
    match std::fs::rename(&staged, &dir) {
        Ok(()) => Ok(dir),
        // Another hearth unpacked it meanwhile: the same bytes.
        Err(_) if dir.join(".complete").exists() => {
            let _ = std::fs::remove_dir_all(&staged);
            Ok(dir)
        }
        Err(error) => Err(error),
    }
}

/// A project's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `Cargo.toml`.
    Rust,
    /// `app.py`.
    Python,
    /// `app.js`.
    JavaScript,
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
        })
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Not a project hearth knows how to build.
    #[error("{} holds no Cargo.toml, app.py or app.js: not a function project (`hearth new` makes one)", .0.display())]
    NotAProject(PathBuf),
    /// A tool is missing from the machine.
    #[error("{tool} is not installed ({hint})")]
    MissingTool {
        /// The tool.
        tool: String,
        /// How to install it.
        hint: String,
    },
    /// Installing componentize-py/-js failed.
    #[error("installing {tool} failed:\n{output}")]
    Install {
        /// The tool.
        tool: String,
        /// What the installer printed.
        output: String,
    },
    /// The compiler refused the code: its own message.
    #[error("{tool} failed:\n{output}")]
    Failed {
        /// The tool.
        tool: String,
        /// What it printed.
        output: String,
    },
    /// Anything else.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// The project's language.
    pub language: Language,
    /// The component.
    pub component: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// What it exports (`wasi:http/incoming-handler@0.2.12`, ...).
    pub exports: Vec<String>,
    /// What it imports.
    pub imports: Vec<String>,
}

impl Built {
    /// What the component is, from its exports.
    pub fn kind(&self) -> &'static str {
        let exports = |prefix: &str| self.exports.iter().any(|e| e.starts_with(prefix));
        match (
            exports("wasi:http/incoming-handler") || exports("wasi:http/handler"),
            exports("wasi:messaging/incoming-handler"),
            exports("wasi:cli/run"),
        ) {
            (true, true, _) => "service and message handler",
            (true, false, _) => "service",
            (false, true, _) => "message handler",
            (false, false, true) => "job",
            _ => "component with no export hearth runs",
        }
    }
}

impl std::fmt::Display for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "built {} ({:.1} KiB): a {} {}",
            self.component.display(),
            self.size as f64 / 1024.0,
            self.language,
            self.kind()
        )?;
        writeln!(f, "  exports: {}", self.exports.join(", "))?;
        write!(f, "  imports: {}", self.imports.join(", "))
    }
}

/// The language of the project in `dir`.
pub fn language(dir: &Path) -> Result<Language, BuildError> {
    if dir.join("Cargo.toml").is_file() {
        Ok(Language::Rust)
    } else if dir.join("app.py").is_file() {
        Ok(Language::Python)
    } else if dir.join("app.js").is_file() {
        Ok(Language::JavaScript)
    } else {
        Err(BuildError::NotAProject(dir.to_path_buf()))
    }
}

/// Where componentize-py/-js are installed.
pub fn tools_dir(cache_dir: &Path) -> PathBuf {
    std::env::var_os("HEARTH_TOOLS_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir.join("tools"))
}

/// Builds the project in `dir`; see the module docs.
pub fn build(dir: &Path, cache_dir: &Path) -> Result<Built, BuildError> {
    let dir = dir.canonicalize()?;
    let language = language(&dir)?;
    let sdk = sdk_dir(cache_dir)?;
    let component = match language {
        Language::Rust => build_rust(&dir)?,
        Language::Python => build_python(&dir, &sdk, &tools_dir(cache_dir))?,
        Language::JavaScript => build_js(&dir, &sdk, &tools_dir(cache_dir))?,
    };
    let bytes = std::fs::read(&component)?;
    let (imports, exports) = component_interfaces(&bytes);
    Ok(Built {
        language,
        size: bytes.len() as u64,
        component,
        imports,
        exports,
    })
}

/// The world a Python or JavaScript project names.
fn world(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("world"))
        .map(|world| world.trim().to_string())
        .ok()
        .filter(|world| !world.is_empty())
        .unwrap_or_else(|| DEFAULT_WORLD.to_string())
}

fn project_name(dir: &Path) -> String {
    dir.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".to_string())
}

/// Runs `command`; its combined output, or the tool's own message as the error.
/// The error for `tool` that could not be started: missing (with how to
/// install it) or another I/O failure.
fn spawn_error(tool: &str, error: std::io::Error) -> BuildError {
    if error.kind() != std::io::ErrorKind::NotFound {
        return BuildError::Io(error);
    }
    BuildError::MissingTool {
        tool: tool.to_string(),
        hint: match tool {
            "cargo" => "install Rust with rustup, then `rustup target add wasm32-wasip2`".into(),
            "node" | "npm" => {
                "install Node.js 18 or later (Debian: apt-get install nodejs npm)".into()
            }
            _ => {
                "install Python 3.10 or later (Debian: apt-get install python3 python3-venv)".into()
            }
        },
    }
}

fn run_tool(tool: &str, command: &mut Command) -> Result<String, BuildError> {
    let output = command.output().map_err(|error| spawn_error(tool, error))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(BuildError::Failed {
            tool: tool.to_string(),
            output: text.trim_end().to_string(),
        })
    }
}

fn build_rust(dir: &Path) -> Result<PathBuf, BuildError> {
    let output = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stderr(Stdio::piped())
        .output()
        .map_err(|error| spawn_error("cargo", error))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let hint =
            if stderr.contains("wasm32-wasip2") && stderr.contains("target may not be installed") {
                "\n(run `rustup target add wasm32-wasip2`)"
            } else {
                ""
            };
        return Err(BuildError::Failed {
            tool: "cargo".into(),
            output: format!("{}{hint}", stderr.trim_end()),
        });
    }
    // The last artifact of the project's own package that is a .wasm.
    let wasm = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| {
            message["manifest_path"]
                .as_str()
                .is_some_and(|path| Path::new(path).parent() == Some(dir))
        })
        .flat_map(|message| message["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|name| name.as_str().map(PathBuf::from))
        .rfind(|path| path.extension().is_some_and(|ext| ext == "wasm"));
    wasm.ok_or_else(|| BuildError::Failed {
        tool: "cargo".into(),
        output: "the build produced no .wasm: is the crate a cdylib (a service or handler) or a binary (a job)?".into(),
    })
}

/// A spinner on stderr while `what` runs, if stderr is a terminal.
fn spinner(what: String) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        eprintln!("{what}");
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(what);
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

fn pinned(sdk: &Path, file: &str, prefix: &str) -> std::io::Result<String> {
    let text = std::fs::read_to_string(sdk.join(file))?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// componentize-py at the SDK's pin, in `TOOLS/python` (a venv).
fn python_tool(sdk: &Path, tools: &Path) -> Result<PathBuf, BuildError> {
    let venv = tools.join("python");
    let tool = venv.join("bin/componentize-py");
    let version = pinned(
        sdk,
        "guest-sdk/python/requirements.txt",
        "componentize-py==",
    )?;
    let installed = Command::new(&tool)
        .arg("--version")
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout).trim() == format!("componentize-py {version}")
        });
    if installed {
        return Ok(tool);
    }
    let bar = spinner(format!(
        "installing componentize-py {version} into {} (first use only)",
        venv.display()
    ));
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(tools)?;
    let result = run_tool(
        "python3",
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
    )
    .and_then(|_| {
        run_tool(
            "pip",
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(sdk.join("guest-sdk/python/requirements.txt")),
        )
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(_) => Ok(tool),
        Err(BuildError::Failed { output, .. }) => Err(BuildError::Install {
            tool: format!("componentize-py {version}"),
            output,
        }),
        Err(other) => Err(other),
    }
}

fn build_python(dir: &Path, sdk: &Path, tools: &Path) -> Result<PathBuf, BuildError> {
    let tool = python_tool(sdk, tools)?;
    let world = world(dir);
    let out_dir = dir.join("target");
    std::fs::create_dir_all(&out_dir)?;
    let wasm = out_dir.join(format!("{}.wasm", project_name(dir)));
    let mut command = Command::new(&tool);
    command.arg("-d").arg(sdk.join("wit"));
    if world.starts_with("hearth:p3/") {
        command.arg("-d").arg(sdk.join("wit/p3"));
    }
    command
        .args(["-w", &world, "componentize", "app", "-p"])
        .arg(dir)
        .arg("-p")
        .arg(sdk.join("guest-sdk/python"))
        .arg("-o")
        .arg(&wasm)
        // componentize-py imports the app: keep bytecode out of the project.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&out_dir);
    run_tool("componentize-py", &mut command)?;
    Ok(wasm)
}

/// componentize-js from the SDK's package-lock.json, in `TOOLS/js`.
fn js_tool(sdk: &Path, tools: &Path) -> Result<PathBuf, BuildError> {
    let js = tools.join("js");
    std::fs::create_dir_all(&js)?;
    let lock = std::fs::read(sdk.join("guest-sdk/js/package-lock.json"))?;
    let current = std::fs::read(js.join("package-lock.json")).ok();
    let ready = current.as_deref() == Some(&lock[..])
        && js
            .join("node_modules/@bytecodealliance/componentize-js")
            .is_dir();
    if !ready {
        let bar = spinner(format!(
            "installing componentize-js into {} (first use only)",
            js.display()
        ));
        std::fs::copy(
            sdk.join("guest-sdk/js/package.json"),
            js.join("package.json"),
        )?;
        std::fs::write(js.join("package-lock.json"), &lock)?;
        let result = run_tool(
            "npm",
            Command::new("npm")
                .args([
                    "install",
                    "--silent",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                ])
                .current_dir(&js),
        );
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if let Err(BuildError::Failed { output, .. }) = result {
            return Err(BuildError::Install {
                tool: "componentize-js".into(),
                output,
            });
        }
        result?;
    }
    for file in ["build.mjs", "hearth-http.js"] {
        std::fs::copy(sdk.join("guest-sdk/js").join(file), js.join(file))?;
    }
    Ok(js.join("build.mjs"))
}

fn build_js(dir: &Path, sdk: &Path, tools: &Path) -> Result<PathBuf, BuildError> {
    let script = js_tool(sdk, tools)?;
    let out_dir = dir.join("target");
    std::fs::create_dir_all(&out_dir)?;
    let wasm = out_dir.join(format!("{}.wasm", project_name(dir)));
    run_tool(
        "componentize-js",
        Command::new("node")
            .arg(&script)
            .arg(dir.join("app.js"))
            .arg(&wasm)
            .arg(world(dir))
            .env("HEARTH_WIT", sdk.join("wit")),
    )?;
    Ok(wasm)
}

/// The top-level import and export names of a component.
pub fn component_interfaces(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    use wasmparser::{Parser, Payload};
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                imports.extend(
                    reader
                        .into_iter()
                        .flatten()
                        .map(|i| i.name.name.to_string()),
                );
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                exports.extend(
                    reader
                        .into_iter()
                        .flatten()
                        .map(|e| e.name.name.to_string()),
                );
            }
            _ => {}
        }
    }
    (imports, exports)
}

/// A fingerprint of the project's sources (paths, sizes, modification
/// times), leaving out build output, dependencies and hidden files: what
/// `hearth up --watch` polls.
pub fn sources_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.')
                || matches!(name.as_ref(), "target" | "node_modules" | "__pycache__")
            {
                continue;
            }
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                stack.push(entry.path());
            } else {
                files.push((
                    entry.path(),
                    metadata.len(),
                    metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
    }
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_templates_four_kinds_in_three_languages() {
        let names: Vec<String> = templates().into_iter().map(|t| t.name).collect();
        for language in ["rust", "python", "js"] {
            for kind in ["http", "state", "job", "message"] {
                assert!(names.contains(&format!("{language}-{kind}")), "{names:?}");
            }
        }
    }

    #[test]
    fn the_embedded_sdk_manifest_pins_what_the_workspace_pins() {
        let manifest = SDK_FILES
            .iter()
            .find(|(path, _)| *path == "guest-sdk/Cargo.toml")
            .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
            .unwrap();
        let manifest: toml::Table = toml::from_str(&manifest).unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("hearth-sdk"));
        assert_eq!(manifest["package"]["edition"].as_str(), Some("2024"));
        let workspace: toml::Table = toml::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            manifest["dependencies"]["wit-bindgen"]["version"].as_str(),
            workspace["workspace"]["dependencies"]["wit-bindgen"].as_str()
        );
        assert_eq!(
            manifest["dependencies"]["wasip3"]["optional"].as_bool(),
            Some(true)
        );
    }
}
