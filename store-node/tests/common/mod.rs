//! What the storage-node test files share: a host's side of the protocol,
//! through the `remote` backend or spoken by hand on a raw connection.

use hearth_blob::conformance::LIMIT;
use hearth_blob::remote::{Connector, RemoteBackend, Reply, Request, Token, decode, encode};
use hearth_blob::transport::Transport;
use hearth_blob::{BlobLimits, BlobStore};
use std::sync::Arc;
use std::time::Duration;

/// The limits of every store in these tests (the conformance suite's).
pub fn limits() -> BlobLimits {
    BlobLimits {
        max_object_bytes: LIMIT,
        ..Default::default()
    }
}

/// The store a node reached through `connect` serves to a host presenting
/// `token`.
pub fn remote_store(connect: Connector, token: Option<&str>) -> BlobStore {
    BlobStore::new(
        "remote",
        Arc::new(RemoteBackend::with_token(
            connect,
            token.map(str::to_string),
        )),
        limits(),
    )
}

/// Says hello with `token` on a raw connection, as a client must first,
/// and checks the node welcomed it.
pub async fn say_hello(transport: &dyn Transport, token: Option<&str>) {
    let token = token.map(|token| Token(token.to_string()));
    transport
        .send(encode(&Request::Hello { token }))
        .await
        .unwrap();
    let reply: Reply = decode(&transport.recv().await.unwrap()).unwrap();
    assert!(matches!(reply, Reply::Welcome { .. }), "{reply:?}");
}

/// Waits (10 s at most) for the node to end `transport`: the node's last
/// word before it did, if any, as text.
pub async fn last_word(transport: &dyn Transport) -> Option<String> {
    let mut said = None;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), transport.recv())
            .await
            .expect("the node ends the connection");
        match next {
            Ok(message) => said = Some(format!("{:?}", decode::<Reply>(&message).unwrap())),
            Err(_) => return said,
        }
    }
}
