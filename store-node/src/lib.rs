//! `hearth-store`, Hearth's storage node: a blob backend (`fs` or `s3`)
//! behind a hot memory tier, served to hosts over the `remote` protocol.
//!
//! * [`serve`]: the node's side of the protocol whose messages and client
//!   are [`hearth_blob::remote`], over TCP, RDMA verbs (feature `rdma`) or
//!   an in-process loopback pair.
//! * [`tiered`]: the hot memory tier in front of the cold backend.
//! * The `hearth-store` binary (`src/bin/hearth-store.rs`) puts them
//!   together; its flags are in its module docs.
//!
//! The wire both sides share (the [`Transport`](hearth_blob::transport::Transport)
//! trait and its ends, the registered-region rules, the verbs transport)
//! lives in `hearth-blob`, because the client reads one-sided through it
//! too.

pub mod serve;
pub mod tiered;
