//! Installs Hearth on a node: puts `containerd-shim-hearth-v1` where
//! containerd finds it and registers the `hearth` runtime handler
//! (`io.containerd.hearth.v1`, passing `hearth.dev/*` Pod annotations) in
//! containerd's config, then restarts containerd if, and only if, the config
//! changed.
//!
//! # What it edits
//!
//! | node | file edited | how |
//! |---|---|---|
//! | containerd 1.6 / 1.7 | `/etc/containerd/config.toml`, `version = 2` (or a legacy unversioned v1 file) | the TOML, in place |
//! | containerd 2.x | `/etc/containerd/config.toml`, `version = 3` | the TOML, in place |
//! | k3s | `/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl` (`config-v3.toml.tmpl` when k3s runs containerd 2) | a marked block after `{{ template "base" . }}` |
//! | RKE2 | the same under `/var/lib/rancher/rke2/` | the same |
//!
//! k3s and RKE2 write `config.toml` themselves on every start; what survives
//! is their template, which extends the generated base. Which format a plain
//! containerd needs is read off the config's own `version`; with no config
//! (or an empty one), off `containerd --version` under the host root; for
//! k3s and RKE2 off the `version` of the `config.toml` they generated.
//!
//! # Contract
//!
//! - **Idempotent.** A second run with the same inputs writes nothing and
//!   restarts nothing. In a TOML config only the `hearth` runtime table is
//!   touched, and only where a key differs: `runtime_type` is set,
//!   `hearth.dev/*` is added to `pod_annotations` (other entries and keys an
//!   operator added stay), comments and order elsewhere are kept.
//! - **Backups.** Before a config file is changed, its previous content is
//!   copied to `FILE.bak.<unix seconds>` next to it (never overwriting an
//!   older backup). Files are replaced by rename, so containerd never reads
//!   a half-written config.
//! - **Restart only on change**, with `systemctl restart UNIT` for the
//!   node's unit (`containerd`, `k3s`/`k3s-agent`, `rke2-server`/`rke2-agent`,
//!   whichever is enabled), entered into the host's namespaces with `nsenter
//!   --target 1` when the host root is not `/` (the installer runs in a Pod
//!   with `hostPID`). `Restart::Command` replaces it, `Restart::Never` skips
//!   it. Running Pods survive a containerd restart: their shims keep running.
//! - **The shim** is replaced by rename only when its bytes differ; replacing
//!   it needs no restart (each new Pod starts the file then on disk).
//! - Anything unexpected (an unparsable config, a key that is not a table, no
//!   containerd to ask) is an [`InstallError`] naming the file and what to
//!   do, and nothing is written.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use toml_edit::{Array, DocumentMut, Item, Table, Value};

/// The runtime handler's name: Pods select it with `runtimeClassName` through
/// a RuntimeClass whose `handler` is this.
pub const RUNTIME_HANDLER: &str = "hearth";
/// The shim's runtime type; containerd runs `containerd-shim-hearth-v1` from
/// its `PATH` for it.
pub const RUNTIME_TYPE: &str = "io.containerd.hearth.v1";
/// The shim binary's file name.
pub const SHIM_BINARY: &str = "containerd-shim-hearth-v1";
/// Pod annotations containerd passes to the shim.
pub const POD_ANNOTATIONS: &str = "hearth.dev/*";

const BLOCK_BEGIN: &str =
    "# hearth: BEGIN (written by `hearth node install`, which replaces this block)";
const BLOCK_END: &str = "# hearth: END";
const K3S_BASE_TEMPLATE: &str = "{{ template \"base\" . }}";

/// Which kind of node this is, by where its containerd keeps its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A containerd of its own, configured by `/etc/containerd/config.toml`.
    Containerd,
    /// k3s's embedded containerd.
    K3s,
    /// RKE2's embedded containerd.
    Rke2,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Containerd => "containerd",
            Flavor::K3s => "k3s",
            Flavor::Rke2 => "rke2",
        })
    }
}

/// The file to edit and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The kind of node.
    pub flavor: Flavor,
    /// The file edited (host path, under the host root).
    pub file: PathBuf,
    /// containerd's config version the runtime table is written for (1, 2 or 3).
    pub config_version: i64,
    /// Whether `file` is a k3s/RKE2 Go template (edited as a marked block)
    /// rather than a TOML document.
    pub template: bool,
    /// The systemd unit that runs containerd, if one was found.
    pub unit: Option<String>,
}

/// How containerd is restarted after its config changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// `systemctl restart` of the node's unit (see the module docs).
    Auto,
    /// Leave it: the report says a restart is needed.
    Never,
    /// Run this with `sh -c` instead.
    Command(String),
}

/// What to install, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The host's root as the installer sees it (`/host` in a Pod with the
    /// node's `/` mounted there; `/` on the node itself).
    pub host_root: PathBuf,
    /// The shim binary to install; `None` leaves the shim alone. For
    /// [`uninstall`], any `Some` means: remove the installed shim.
    pub shim: Option<PathBuf>,
    /// Where on the host the shim goes (on containerd's `PATH`).
    pub bin_dir: PathBuf,
    /// The config file (host path) to edit instead of detecting it.
    pub config: Option<PathBuf>,
    /// containerd's version (`1.7.2`, `2.0.0`) when there is no config to
    /// read the format from and no `containerd` binary to ask.
    pub containerd_version: Option<String>,
    /// How to restart containerd after a change.
    pub restart: Restart,
}

impl Options {
    /// Defaults for a node whose root is `host_root`: shim into
    /// `/usr/local/bin`, config detected, restart by systemd.
    pub fn new(host_root: impl Into<PathBuf>) -> Self {
        Options {
            host_root: host_root.into(),
            shim: None,
            bin_dir: PathBuf::from("/usr/local/bin"),
            config: None,
            containerd_version: None,
            restart: Restart::Auto,
        }
    }

    fn on_host(&self, host_path: &Path) -> PathBuf {
        on_host(&self.host_root, host_path)
    }
}

/// What a file went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Already as wanted: not written.
    Unchanged,
    /// Written; the previous content (if there was a file) is in `backup`.
    Written {
        /// The backup of the previous content.
        backup: Option<PathBuf>,
    },
    /// Removed (uninstall); the previous content is in `backup`.
    Removed {
        /// The backup of the previous content.
        backup: Option<PathBuf>,
    },
}

impl Change {
    /// Whether the file was written or removed.
    pub fn changed(&self) -> bool {
        !matches!(self, Change::Unchanged)
    }
}

/// What [`install`] or [`uninstall`] did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The config edited.
    pub target: Target,
    /// What happened to it.
    pub config: Change,
    /// What happened to the shim (`None`: not asked to touch it).
    pub shim: Option<(PathBuf, Change)>,
    /// The restart command run, if one was.
    pub restarted: Option<String>,
    /// A restart is needed but was not asked for ([`Restart::Never`]).
    pub restart_needed: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let describe = |change: &Change| match change {
            Change::Unchanged => "unchanged".to_string(),
            Change::Written { backup: Some(b) } => format!("written (backup: {})", b.display()),
            Change::Written { backup: None } => "written (new file)".to_string(),
            Change::Removed { backup: Some(b) } => format!("removed (backup: {})", b.display()),
            Change::Removed { backup: None } => "removed".to_string(),
        };
        writeln!(
            f,
            "node: {} (containerd config version {}{})",
            self.target.flavor,
            self.target.config_version,
            if self.target.template {
                ", template"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "config {}: {}",
            self.target.file.display(),
            describe(&self.config)
        )?;
        if let Some((path, change)) = &self.shim {
            writeln!(f, "shim {}: {}", path.display(), describe(change))?;
        }
        match (&self.restarted, self.restart_needed) {
            (Some(command), _) => writeln!(f, "containerd restarted: {command}"),
            (None, true) => writeln!(
                f,
                "containerd NOT restarted: restart it to apply the config"
            ),
            (None, false) => writeln!(f, "containerd not restarted: its config did not change"),
        }
    }
}

/// Why an install could not be done; nothing was written unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Reading or writing a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The config is not TOML.
    #[error("{} is not valid TOML, so it was left as it is: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key on the way to the runtime table is not a table.
    #[error("{}: `{key}` is not a table (or is an inline table); add the hearth runtime by hand (see deploy/containerd/)", path.display())]
    NotATable {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
    },
    /// The config's `version` is not one containerd has.
    #[error("{}: containerd config version {version} is not 1, 2 or 3", path.display())]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// The version read.
        version: i64,
    },
    /// The format could not be worked out.
    #[error("cannot tell which config format containerd needs: {0}; pass --containerd-version")]
    NoVersion(String),
    /// k3s/RKE2 has not generated its config yet.
    #[error("{} does not exist yet: start {flavor} once so it writes it, then install", path.display())]
    NotGenerated {
        /// The node's kind.
        flavor: Flavor,
        /// The generated config.
        path: PathBuf,
    },
    /// No unit to restart was found.
    #[error("no systemd unit for {flavor} found under {}; pass --restart-command or --restart never", root.display())]
    NoUnit {
        /// The node's kind.
        flavor: Flavor,
        /// The host root searched.
        root: PathBuf,
    },
    /// The restart command failed (the config was written).
    #[error(
        "the config was written, but restarting containerd with `{command}` failed ({status}): {stderr}"
    )]
    Restart {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

type Result<T> = std::result::Result<T, InstallError>;

/// Finds which config to edit on the node at `options.host_root`.
pub fn detect(options: &Options) -> Result<Target> {
    let root = &options.host_root;
    let embedded = [
        (Flavor::Rke2, "/var/lib/rancher/rke2/agent/etc/containerd"),
        (Flavor::K3s, "/var/lib/rancher/k3s/agent/etc/containerd"),
    ];
    if options.config.is_none() {
        for (flavor, dir) in embedded {
            let dir = on_host(root, Path::new(dir));
            if !dir.is_dir() {
                continue;
            }
            let generated = dir.join("config.toml");
            let text = read_optional(&generated)?.ok_or_else(|| InstallError::NotGenerated {
                flavor,
                path: generated.clone(),
            })?;
            let version = version_of(&generated, &text)?.unwrap_or(1);
            let name = if version >= 3 {
                "config-v3.toml.tmpl"
            } else {
                "config.toml.tmpl"
            };
            return Ok(Target {
                flavor,
                file: dir.join(name),
                config_version: version,
                template: true,
                unit: find_unit(root, flavor),
            });
        }
    }
    let file = options.on_host(
        options
            .config
            .as_deref()
            .unwrap_or(Path::new("/etc/containerd/config.toml")),
    );
    let text = read_optional(&file)?.unwrap_or_default();
    let version = match version_of(&file, &text)? {
        Some(version) => version,
        // A config with settings but no version is containerd 1.x's v1.
        None if !text.trim().is_empty() => 1,
        None => version_for_containerd(options)?,
    };
    Ok(Target {
        flavor: Flavor::Containerd,
        file,
        config_version: version,
        template: false,
        unit: find_unit(root, Flavor::Containerd),
    })
}

/// Installs the shim and the runtime; see the module docs.
pub fn install(options: &Options) -> Result<Report> {
    let target = detect(options)?;
    let before = read_optional(&target.file)?;
    let after = if target.template {
        Some(template_with_runtime(
            before.as_deref(),
            target.config_version,
        ))
    } else {
        Some(config_with_runtime(
            &target.file,
            before.as_deref().unwrap_or(""),
            target.config_version,
        )?)
    };
    let shim = match &options.shim {
        Some(source) => Some(install_shim(options, source)?),
        None => None,
    };
    finish(options, target, before, after, shim)
}

/// Takes the runtime out of containerd's config (restarting it if that
/// changed anything) and removes the shim binary; running Pods keep their
/// shims until they stop.
pub fn uninstall(options: &Options) -> Result<Report> {
    let target = detect(options)?;
    let before = read_optional(&target.file)?;
    let after = match &before {
        None => None,
        Some(text) if target.template => template_without_runtime(text),
        Some(text) => Some(config_without_runtime(
            &target.file,
            text,
            target.config_version,
        )?),
    };
    let shim_path = options.on_host(&options.bin_dir.join(SHIM_BINARY));
    let shim = if options.shim.is_some() && shim_path.exists() {
        std::fs::remove_file(&shim_path).map_err(io("removing", &shim_path))?;
        Some((shim_path, Change::Removed { backup: None }))
    } else {
        None
    };
    finish(options, target, before, after, shim)
}

fn finish(
    options: &Options,
    target: Target,
    before: Option<String>,
    after: Option<String>,
    shim: Option<(PathBuf, Change)>,
) -> Result<Report> {
    let restart_command = match &options.restart {
        _ if before == after => None,
        Restart::Never => None,
        restart => Some(restart_command(options, &target, restart)?),
    };
    let config = match (&before, &after) {
        (before, after) if before == after => Change::Unchanged,
        (before, Some(text)) => {
            let backup = match before {
                Some(previous) => Some(backup(&target.file, previous)?),
                None => None,
            };
            if let Some(dir) = target.file.parent() {
                std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
            }
            write_atomically(&target.file, text.as_bytes(), 0o644)?;
            Change::Written { backup }
        }
        (Some(previous), None) => {
            let backup = backup(&target.file, previous)?;
            std::fs::remove_file(&target.file).map_err(io("removing", &target.file))?;
            Change::Removed {
                backup: Some(backup),
            }
        }
        (None, None) => Change::Unchanged,
    };
    let mut report = Report {
        target,
        config,
        shim,
        restarted: None,
        restart_needed: false,
    };
    if report.config.changed() {
        match restart_command {
            None => report.restart_needed = true,
            Some((argv, shown)) => report.restarted = Some(run_restart(argv, shown)?),
        }
    }
    Ok(report)
}

/// The TOML path of the hearth runtime table for a config version.
pub fn runtime_table_path(config_version: i64) -> [&'static str; 5] {
    let cri = match config_version {
        1 => "cri",
        2 => "io.containerd.grpc.v1.cri",
        _ => "io.containerd.cri.v1.runtime",
    };
    ["plugins", cri, "containerd", "runtimes", RUNTIME_HANDLER]
}

/// `text` (a containerd config of `config_version`; empty for none) with
/// the hearth runtime registered; the same text if it already is.
pub fn config_with_runtime(file: &Path, text: &str, config_version: i64) -> Result<String> {
    let mut document = parse(file, text)?;
    if text.trim().is_empty() {
        document["version"] = toml_edit::value(config_version);
    }
    let path = runtime_table_path(config_version);
    let mut table = document.as_table_mut();
    for (depth, key) in path.iter().enumerate() {
        let leaf = depth + 1 == path.len();
        let parent_dotted = table.is_dotted();
        let item = table.entry(key).or_insert_with(|| {
            let mut table = Table::new();
            table.set_implicit(!leaf);
            table.set_dotted(parent_dotted && !leaf);
            Item::Table(table)
        });
        table = item.as_table_mut().ok_or_else(|| InstallError::NotATable {
            path: file.to_path_buf(),
            key: path[..=depth].join("."),
        })?;
    }
    // Every edit below sets `changed`: a new table on the way always gets
    // its `runtime_type`, so an untouched document renders as `text`.
    let mut changed = false;
    if table.get("runtime_type").and_then(Item::as_str) != Some(RUNTIME_TYPE) {
        table["runtime_type"] = toml_edit::value(RUNTIME_TYPE);
        changed = true;
    }
    match table
        .get_mut("pod_annotations")
        .and_then(Item::as_array_mut)
    {
        Some(annotations) => {
            if !annotations
                .iter()
                .any(|a| a.as_str() == Some(POD_ANNOTATIONS))
            {
                annotations.push(POD_ANNOTATIONS);
                changed = true;
            }
        }
        None => {
            table["pod_annotations"] =
                Item::Value(Value::Array(Array::from_iter([POD_ANNOTATIONS])));
            changed = true;
        }
    }
    Ok(if changed {
        document.to_string()
    } else {
        text.to_string()
    })
}

/// `text` without the hearth runtime table.
pub fn config_without_runtime(file: &Path, text: &str, config_version: i64) -> Result<String> {
    let mut document = parse(file, text)?;
    let path = runtime_table_path(config_version);
    let mut table = Some(document.as_table_mut());
    for key in &path[..path.len() - 1] {
        table = table
            .and_then(|t| t.get_mut(key))
            .and_then(Item::as_table_mut);
    }
    let removed = table.is_some_and(|runtimes| runtimes.remove(RUNTIME_HANDLER).is_some());
    Ok(if removed {
        document.to_string()
    } else {
        text.to_string()
    })
}

/// The block a k3s/RKE2 template gets.
fn template_block(config_version: i64) -> String {
    let [plugins, cri, containerd, runtimes, handler] = runtime_table_path(config_version);
    format!(
        "{BLOCK_BEGIN}\n[{plugins}.\"{cri}\".{containerd}.{runtimes}.{handler}]\n  runtime_type = \"{RUNTIME_TYPE}\"\n  pod_annotations = [\"{POD_ANNOTATIONS}\"]\n{BLOCK_END}\n"
    )
}

/// A k3s/RKE2 template (`None`: none yet) with the hearth block, replacing
/// an earlier one in place.
pub fn template_with_runtime(text: Option<&str>, config_version: i64) -> String {
    let block = template_block(config_version);
    match text {
        None => format!("{K3S_BASE_TEMPLATE}\n\n{block}"),
        Some(text) => match block_span(text) {
            Some((start, end)) => format!("{}{block}{}", &text[..start], &text[end..]),
            None if text.is_empty() || text.ends_with('\n') => format!("{text}\n{block}"),
            None => format!("{text}\n\n{block}"),
        },
    }
}

/// The template without the hearth block; `None` when what is left is only
/// the base template (the file can go: k3s then uses its base alone).
pub fn template_without_runtime(text: &str) -> Option<String> {
    let rest = match block_span(text) {
        Some((start, end)) => format!("{}{}", &text[..start], &text[end..]),
        None => return Some(text.to_string()),
    };
    if rest.trim().is_empty() || rest.trim() == K3S_BASE_TEMPLATE {
        None
    } else {
        Some(rest)
    }
}

/// Byte range of the managed block, with the line break after its end.
fn block_span(text: &str) -> Option<(usize, usize)> {
    let start = text.find(BLOCK_BEGIN)?;
    let end_marker = start + text[start..].find(BLOCK_END)?;
    let mut end = end_marker + BLOCK_END.len();
    if text[end..].starts_with('\n') {
        end += 1;
    }
    Some((start, end))
}

fn parse(file: &Path, text: &str) -> Result<DocumentMut> {
    text.parse::<DocumentMut>()
        .map_err(|error| InstallError::Parse {
            path: file.to_path_buf(),
            message: error.to_string(),
        })
}

fn version_of(file: &Path, text: &str) -> Result<Option<i64>> {
    let document = parse(file, text)?;
    match document.get("version") {
        None => Ok(None),
        Some(item) => match item.as_integer() {
            Some(version @ 1..=3) => Ok(Some(version)),
            Some(version) => Err(InstallError::UnknownVersion {
                path: file.to_path_buf(),
                version,
            }),
            None => Err(InstallError::Parse {
                path: file.to_path_buf(),
                message: "`version` is not an integer".into(),
            }),
        },
    }
}

/// The config version a fresh config needs: 3 for containerd 2.x, else 2.
fn version_for_containerd(options: &Options) -> Result<i64> {
    let version = match &options.containerd_version {
        Some(version) => version.clone(),
        None => containerd_version(&options.host_root)?,
    };
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok())
        .ok_or_else(|| InstallError::NoVersion(format!("`{version}` is not a version")))?;
    Ok(if major >= 2 { 3 } else { 2 })
}

/// Asks the host's containerd binary for its version (it is a static binary
/// on most nodes, so it runs from the installer's view of the host root).
fn containerd_version(root: &Path) -> Result<String> {
    let candidates = [
        "/usr/local/bin/containerd",
        "/usr/bin/containerd",
        "/bin/containerd",
    ];
    let binary = candidates
        .iter()
        .map(|path| on_host(root, Path::new(path)))
        .find(|path| path.exists())
        .ok_or_else(|| {
            InstallError::NoVersion(format!(
                "there is no config to read it from, and no containerd binary in {} (under {})",
                candidates.join(", "),
                root.display()
            ))
        })?;
    let output = Command::new(&binary)
        .arg("--version")
        .output()
        .map_err(io("running", &binary))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // `containerd github.com/containerd/containerd v1.7.2 <commit>`, or
    // Debian's `... 1.6.20~ds1 1.6.20~ds1-1+b1`.
    text.split_whitespace()
        .map(|word| word.trim_start_matches('v'))
        .find(|word| {
            let mut parts = word.split('.');
            parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
                && parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
        })
        .map(str::to_string)
        .ok_or_else(|| {
            InstallError::NoVersion(format!(
                "`{} --version` printed `{}`",
                binary.display(),
                text.trim()
            ))
        })
}

/// The systemd unit running containerd: the first enabled candidate, else
/// the first with a unit file.
fn find_unit(root: &Path, flavor: Flavor) -> Option<String> {
    let candidates: &[&str] = match flavor {
        Flavor::Containerd => &["containerd"],
        Flavor::K3s => &["k3s", "k3s-agent"],
        Flavor::Rke2 => &["rke2-server", "rke2-agent"],
    };
    let unit_dirs = [
        "/etc/systemd/system",
        "/usr/local/lib/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ];
    let enabled = |unit: &&&str| {
        on_host(
            root,
            Path::new(&format!(
                "/etc/systemd/system/multi-user.target.wants/{unit}.service"
            )),
        )
        .exists()
    };
    let installed = |unit: &&&str| {
        unit_dirs
            .iter()
            .any(|dir| on_host(root, &Path::new(dir).join(format!("{unit}.service"))).exists())
    };
    candidates
        .iter()
        .find(enabled)
        .or_else(|| candidates.iter().find(installed))
        .map(|unit| unit.to_string())
}

/// The restart's argv and how it is shown; worked out before anything is
/// written, so a node with no unit to restart is refused untouched.
fn restart_command(
    options: &Options,
    target: &Target,
    restart: &Restart,
) -> Result<(Vec<String>, String)> {
    let argv: Vec<String> = match restart {
        Restart::Never => unreachable!("not called for Restart::Never"),
        Restart::Command(command) => vec!["sh".into(), "-c".into(), command.clone()],
        Restart::Auto => {
            let unit = target.unit.clone().ok_or_else(|| InstallError::NoUnit {
                flavor: target.flavor,
                root: options.host_root.clone(),
            })?;
            let mut argv = Vec::new();
            if options.host_root != Path::new("/") {
                argv.extend(
                    [
                        "nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid",
                        "--",
                    ]
                    .map(String::from),
                );
            }
            argv.extend(["systemctl".into(), "restart".into(), unit]);
            argv
        }
    };
    let shown = match restart {
        Restart::Command(command) => command.clone(),
        _ => argv.join(" "),
    };
    Ok((argv, shown))
}

fn run_restart(argv: Vec<String>, shown: String) -> Result<String> {
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|source| InstallError::Restart {
            command: shown.clone(),
            status: "not started".into(),
            stderr: source.to_string(),
        })?;
    if !output.status.success() {
        return Err(InstallError::Restart {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(shown)
}

fn install_shim(options: &Options, source: &Path) -> Result<(PathBuf, Change)> {
    let bytes = std::fs::read(source).map_err(io("reading the shim", source))?;
    let destination = options.on_host(&options.bin_dir.join(SHIM_BINARY));
    if std::fs::read(&destination).ok().as_deref() == Some(&bytes[..]) {
        return Ok((destination, Change::Unchanged));
    }
    if let Some(dir) = destination.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    write_atomically(&destination, &bytes, 0o755)?;
    Ok((destination, Change::Written { backup: None }))
}

/// Copies `previous` to `FILE.bak.<unix seconds>[.N]`.
fn backup(file: &Path, previous: &str) -> Result<PathBuf> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let base = format!("{}.bak.{seconds}", file.display());
    let mut path = PathBuf::from(&base);
    let mut n = 1;
    while path.exists() {
        path = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    std::fs::write(&path, previous).map_err(io("writing the backup", &path))?;
    Ok(path)
}

/// Writes `bytes` to a temp file beside `path` and renames it over `path`,
/// keeping `path`'s mode if it exists.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.hearth-new"));
    let mode = std::fs::metadata(path)
        .map(|metadata| metadata.permissions().mode() & 0o7777)
        .unwrap_or(mode);
    let mut file = std::fs::File::create(&temp).map_err(io("creating", &temp))?;
    file.write_all(bytes).map_err(io("writing", &temp))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &temp))?;
    file.sync_all().map_err(io("syncing", &temp))?;
    std::fs::rename(&temp, path).map_err(io("replacing", path))
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

/// `host_path` (absolute, as the host sees it) under `root`.
fn on_host(root: &Path, host_path: &Path) -> PathBuf {
    root.join(host_path.strip_prefix("/").unwrap_or(host_path))
}
