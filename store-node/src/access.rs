//! Who may use a storage node, and what each host may reach.
//!
//! # Contract
//!
//! * **A credential per host.** Each hearthd host (or group of hosts that
//!   share data, such as every node of one cluster) has a token: a random
//!   string in a file on the host (`token_file` of its `remote` store). The
//!   node's hosts file holds only the token's SHA-256, so reading it gives
//!   nobody a token:
//!
//!   ```toml
//!   # hearth-store --hosts /etc/hearth-store/hosts.toml
//!   [hosts.cluster-a]             # the host's name, in the node's logs
//!   token_sha256 = "9f86d081…"    # `hearth-store --hash-token FILE` prints it
//!   scope = "prod"                # the partition of the store it reaches
//!   ```
//!
//! * **The scope is bound to the credential.** Every container a host
//!   names is looked up in its scope (`prod!team-a.shop.photos` in the
//!   backend for `team-a.shop.photos`; `!` is in no container name, so no
//!   name can reach out of a scope, and S3 clients keep it as it is, where
//!   they percent-encode `~`). Hosts with the same scope share data;
//!   hosts with different scopes cannot name each other's containers. A
//!   host without `scope` reaches the unscoped store, which is also what a
//!   node started with `--no-auth` serves (so data written before
//!   authentication was turned on stays reachable by the hosts given no
//!   scope). Within its scope a host is trusted to keep its own tenants
//!   apart: hearthd prefixes each function's containers with its namespace
//!   and app (see hearth-host's `capabilities::blobstore`).
//! * **Refusals.** A `Hello` with no token, or a token the file does not
//!   list, is answered `unauthorized` and the connection closed; the node
//!   logs the peer and counts it (`hearth_store_connections_refused_total
//!   {reason="unauthorized"}`). Digests are compared in constant time.
//! * The hosts file is read once, at start; a malformed one, a duplicate
//!   digest or a bad scope stops the node with the line's reason.

use hearth_blob::BlobError;
use serde::Deserialize;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::Path;

/// The separator between a scope and a container name in the backend.
pub const SCOPE_SEPARATOR: char = '!';

/// The longest scope, in bytes.
pub const MAX_SCOPE_BYTES: usize = 32;

/// Who the node serves.
#[derive(Debug, Clone, Default)]
pub enum Access {
    /// Anyone who connects, unscoped (`--no-auth`).
    #[default]
    Open,
    /// The hosts of a hosts file.
    Hosts(HostTable),
}

/// A host the node accepted: its name and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The host's name (the hosts file's table name; `anonymous` when
    /// [`Access::Open`]).
    pub host: String,
    /// Its scope; `None` for the unscoped store.
    pub scope: Option<String>,
}

/// Hosts, by the SHA-256 of their token.
#[derive(Debug, Clone, Default)]
pub struct HostTable {
    hosts: Vec<([u8; 32], Grant)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    #[serde(default)]
    hosts: BTreeMap<String, HostEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    token_sha256: String,
    scope: Option<String>,
}

/// The hex SHA-256 of `token`, as a hosts file lists it.
pub fn token_digest(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Whether `scope` is 1 to [`MAX_SCOPE_BYTES`] of `a-z`, `0-9`, `-`, `_`.
fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= MAX_SCOPE_BYTES
        && scope
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl HostTable {
    /// Reads a hosts file (see the module docs).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a hosts file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: HostsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut hosts: Vec<([u8; 32], Grant)> = Vec::new();
        for (name, entry) in file.hosts {
            let digest: [u8; 32] = hex::decode(entry.token_sha256.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| {
                    format!("hosts.{name}.token_sha256: not 64 hex digits of a SHA-256")
                })?;
            if let Some(scope) = &entry.scope
                && !valid_scope(scope)
            {
                return Err(format!(
                    "hosts.{name}.scope: `{scope}` is not 1 to {MAX_SCOPE_BYTES} of a-z, 0-9, `-`, `_`"
                ));
            }
            if let Some((_, other)) = hosts.iter().find(|(known, _)| *known == digest) {
                return Err(format!(
                    "hosts.{name}.token_sha256: the same token as hosts.{}",
                    other.host
                ));
            }
            hosts.push((
                digest,
                Grant {
                    host: name,
                    scope: entry.scope,
                },
            ));
        }
        if hosts.is_empty() {
            return Err("no [hosts.NAME] table: nobody could connect".into());
        }
        Ok(HostTable { hosts })
    }

    /// How many hosts it lists.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether it lists none (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// `a == b`, in time that does not depend on where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// The grant for a `Hello` presenting `token`, or why not (the
    /// `unauthorized` error's message, safe to send to the peer).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Grant, BlobError> {
        let table = match self {
            Access::Open => {
                return Ok(Grant {
                    host: "anonymous".into(),
                    scope: None,
                });
            }
            Access::Hosts(table) => table,
        };
        let Some(token) = token else {
            return Err(BlobError::Other(
                "this node needs a token (token_file of the remote store)".into(),
            ));
        };
        let presented: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (digest, grant) in &table.hosts {
            if same_digest(digest, &presented) {
                found = Some(grant);
            }
        }
        found
            .cloned()
            .ok_or_else(|| BlobError::Other("the token is not one this node knows".into()))
    }
}

/// The backend's name of a host's `container` in `scope`.
pub fn scoped_name(scope: Option<&str>, container: &str) -> String {
    match scope {
        Some(scope) => format!("{scope}{SCOPE_SEPARATOR}{container}"),
        None => container.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<HostTable, String> {
        HostTable::parse(text)
    }

    #[test]
    fn a_listed_token_gets_its_hosts_grant_and_others_are_refused() {
        let text = format!(
            "[hosts.a]\ntoken_sha256 = \"{}\"\nscope = \"prod\"\n[hosts.b]\ntoken_sha256 = \"{}\"\n",
            token_digest("token-of-host-a-0123"),
            token_digest("token-of-host-b-0123"),
        );
        let access = Access::Hosts(table(&text).unwrap());
        assert_eq!(
            access.authenticate(Some("token-of-host-a-0123")).unwrap(),
            Grant {
                host: "a".into(),
                scope: Some("prod".into())
            }
        );
        assert_eq!(
            access
                .authenticate(Some("token-of-host-b-0123"))
                .unwrap()
                .scope,
            None
        );
        for refused in [None, Some("token-of-host-c-0123"), Some("")] {
            assert!(access.authenticate(refused).is_err(), "{refused:?}");
        }
        assert_eq!(
            Access::Open.authenticate(None).unwrap().host,
            "anonymous".to_string()
        );
    }

    #[test]
    fn bad_hosts_files_name_the_key() {
        let digest = token_digest("x");
        for (text, expected) in [
            ("", "no [hosts.NAME] table"),
            (
                "[hosts.a]\ntoken_sha256 = \"abc\"\n",
                "hosts.a.token_sha256",
            ),
            (
                &format!("[hosts.a]\ntoken_sha256 = \"{digest}\"\nscope = \"a!b\"\n"),
                "hosts.a.scope",
            ),
            (
                &format!("[hosts.a]\ntoken_sha256 = \"{digest}\"\nscope = \"\"\n"),
                "hosts.a.scope",
            ),
            (
                &format!(
                    "[hosts.a]\ntoken_sha256 = \"{digest}\"\n[hosts.b]\ntoken_sha256 = \"{digest}\"\n"
                ),
                "the same token as hosts.a",
            ),
            (
                &format!("[hosts.a]\ntoken = \"{digest}\"\n"),
                "unknown field",
            ),
        ] {
            let error = table(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn scoped_names_cannot_collide_across_scopes() {
        assert_eq!(scoped_name(Some("prod"), "a.b.c"), "prod!a.b.c");
        assert_eq!(scoped_name(None, "a.b.c"), "a.b.c");
        // A container name holds no `!`, so `p!x` in scope `p` is the only
        // way to that backend name.
        assert!(hearth_blob::validate_container("prod!a").is_err());
    }
}
