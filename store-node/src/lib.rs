//! `hearth-store`, Hearth's storage node: a blob backend (`fs` or `s3`)
//! behind a hot memory tier, served to hosts over the `remote` protocol.
//!
//! * [`serve`]: the node's side of the protocol whose messages and client
//!   are [`hearth_blob::remote`], over TCP, RDMA verbs (feature `rdma`) or
//!   an in-process loopback pair.
//! * [`access`]: who may connect (a token per host) and the scope each
//!   host's containers live in; [`scope`] serves a host its scope.
//! * [`metrics`]: what the node counts, for `--metrics-listen`.
//! * [`tiered`]: the hot memory tier in front of the cold backend.
//! * The `hearth-store` binary (`src/bin/hearth-store.rs`) puts them
//!   together; its flags are in its module docs.
//!
//! The wire both sides share (the [`Transport`](hearth_blob::transport::Transport)
//! trait and its ends, the registered-region rules, the verbs transport)
//! lives in `hearth-blob`, because the client reads one-sided through it
//! too.

pub mod access;
pub mod metrics;
pub mod scope;
pub mod serve;
pub mod tiered;
