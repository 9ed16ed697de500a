//! `wasi:config@0.2.0-rc.1`: a function's configuration values.
//!
//! The values are, in increasing precedence (a later source wins a key):
//!
//! 1. the function's environment (the container's env for a Pod,
//!    `env = {...}` in `hearth.toml`, `--env` for `hearth run`);
//! 2. files in each `config_dir` (a mounted Kubernetes ConfigMap: a Pod's
//!    ConfigMap volumes, in the order of its mounts): one key per regular
//!    file, named by the file, its contents the value. Hidden entries
//!    (`..data`, `.x`) are skipped, so the ConfigMap's symlinked layout
//!    reads as the plain keys;
//! 3. `[function.config]` in `hearth.toml`.
//!
//! They are read once, when the function is loaded; a changed ConfigMap
//! is seen by functions loaded after the change.
//!
//! # Host side
//!
//! The merged values are resolved once at load into an `Arc`; each
//! instance's [`ConfigCtx`] points at them and the host functions run on a
//! [`ConfigView`]. [`add_to_linker`] adds the interface.

use super::bindings::wasi::config::store;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// One instance's `wasi:config` context: the function's values, sorted by
/// key.
#[derive(Debug, Clone, Default)]
pub struct ConfigCtx {
    /// The values.
    pub values: Arc<[(String, String)]>,
}

/// What `wasi:config` host functions run on.
pub struct ConfigView<'a> {
    /// The context.
    pub ctx: &'a ConfigCtx,
}

/// The [`HasData`] marker of `wasi:config`.
pub struct Config;

impl HasData for Config {
    type Data<'a> = ConfigView<'a>;
}

/// Adds `wasi:config/store` to `linker`, reaching the view through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> ConfigView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, Config>(linker, get)
}

/// Largest file read from a config directory.
const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// A `config_dir` that cannot be read: the path and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config_dir: {problem}")]
pub struct ConfigDirError {
    /// The directory, or the file in it.
    pub path: std::path::PathBuf,
    /// What is wrong, naming the path.
    pub problem: String,
}

/// The merged values (see the module docs), sorted by key.
pub fn collect(
    env: &[(String, String)],
    config_dirs: &[std::path::PathBuf],
    config: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ConfigDirError> {
    let failed = |path: &Path, problem: String| ConfigDirError {
        path: path.to_owned(),
        problem,
    };
    let mut values: BTreeMap<String, String> = env.iter().cloned().collect();
    for dir in config_dirs {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| failed(dir, format!("cannot read {}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| failed(dir, format!("{}: {e}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            // Follows symlinks: a ConfigMap's keys are links into `..data`.
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            if name.starts_with('.') || !metadata.is_file() {
                continue;
            }
            if metadata.len() > MAX_CONFIG_FILE_BYTES {
                return Err(failed(
                    &path,
                    format!(
                        "{} is {} bytes, over the limit of {MAX_CONFIG_FILE_BYTES}",
                        path.display(),
                        metadata.len()
                    ),
                ));
            }
            let value = std::fs::read_to_string(&path).map_err(|e| {
                failed(
                    &path,
                    format!("cannot read {} as UTF-8 text: {e}", path.display()),
                )
            })?;
            values.insert(name, value);
        }
    }
    values.extend(config.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(values.into_iter().collect())
}

impl store::Host for ConfigView<'_> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, store::Error>> {
        let values = &self.ctx.values;
        Ok(Ok(values
            .binary_search_by(|(k, _)| k.as_str().cmp(&key))
            .ok()
            .map(|at| values[at].1.clone())))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, store::Error>> {
        Ok(Ok(self.ctx.values.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_table_beats_configmap_files_which_beat_env() {
        let dir = tempfile::tempdir().unwrap();
        // The layout kubelet makes for a ConfigMap volume.
        let data = dir.path().join("..2026_11_23_10_00_00.1");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("LEVEL"), "file").unwrap();
        std::fs::write(data.join("ONLY_FILE"), "from-file").unwrap();
        std::os::unix::fs::symlink(&data, dir.path().join("..data")).unwrap();
        for key in ["LEVEL", "ONLY_FILE"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key)).unwrap();
        }
        let env = vec![
            ("LEVEL".to_string(), "env".to_string()),
            ("ONLY_ENV".to_string(), "from-env".to_string()),
        ];
        let table = BTreeMap::from([("LEVEL".to_string(), "table".to_string())]);
        let values = collect(&env, &[dir.path().to_owned()], &table).unwrap();
        assert_eq!(
            values,
            vec![
                ("LEVEL".to_string(), "table".to_string()),
                ("ONLY_ENV".to_string(), "from-env".to_string()),
                ("ONLY_FILE".to_string(), "from-file".to_string()),
            ]
        );
        let without_table = collect(&env, &[dir.path().to_owned()], &BTreeMap::new()).unwrap();
        assert_eq!(without_table[0], ("LEVEL".to_string(), "file".to_string()));
    }

    #[test]
    fn a_missing_config_dir_is_named() {
        let error = collect(&[], &["/nonexistent/cm".into()], &BTreeMap::new()).unwrap_err();
        assert_eq!(error.path, Path::new("/nonexistent/cm"));
        assert!(
            error
                .to_string()
                .starts_with("config_dir: cannot read /nonexistent/cm"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_host_functions_answer_from_the_resolved_values() {
        let values = collect(
            &[("B".to_string(), "2".to_string())],
            &[],
            &BTreeMap::from([("A".to_string(), "1".to_string())]),
        )
        .unwrap();
        let ctx = ConfigCtx {
            values: values.into(),
        };
        let mut view = ConfigView { ctx: &ctx };
        use store::Host as _;
        assert_eq!(
            view.get("A".into()).await.unwrap().unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(
            view.get("B".into()).await.unwrap().unwrap().as_deref(),
            Some("2")
        );
        assert_eq!(view.get("C".into()).await.unwrap().unwrap(), None);
        let all = view.get_all().await.unwrap().unwrap();
        assert_eq!(all.len(), 2);
        let empty = ConfigCtx::default();
        let mut view = ConfigView { ctx: &empty };
        assert!(view.get_all().await.unwrap().unwrap().is_empty());
    }
}
