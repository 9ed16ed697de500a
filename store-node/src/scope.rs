//! A host's scope as a backend: the node serves each authenticated host a
//! [`BlobStore`] over [`ScopedBackend`], which looks every container up
//! as `SCOPE!CONTAINER` in the node's backend (see [`crate::access`]).
//!
//! # Contract
//!
//! * Names are checked by the [`BlobStore`] in front (a container name
//!   holds no `!`), then renamed here; what comes back (container and
//!   object descriptions, error messages) names the host's own container,
//!   so the scope never shows.
//! * Copies and moves are the trait's defaults, made of the scoped calls:
//!   both ends stay within the scope.

use crate::access::{SCOPE_SEPARATOR, scoped_name};
use async_trait::async_trait;
use hearth_blob::{
    BlobBackend, BlobError, BlobStore, ByteRange, ByteStream, ContainerInfo, ListPage, ObjectInfo,
};
use std::sync::Arc;

/// `inner`, with every container in `scope`.
pub struct ScopedBackend {
    inner: Arc<dyn BlobBackend>,
    scope: String,
    /// `SCOPE!`, stripped from what comes back.
    prefix: String,
}

/// `store`, as a host whose scope is `scope` sees it (`store` itself for
/// the unscoped store).
pub fn scoped_store(store: &BlobStore, scope: Option<&str>) -> BlobStore {
    match scope {
        None => store.clone(),
        Some(scope) => BlobStore::new(
            store.label(),
            Arc::new(ScopedBackend {
                inner: store.backend().clone(),
                scope: scope.to_string(),
                prefix: format!("{scope}{SCOPE_SEPARATOR}"),
            }),
            store.limits(),
        ),
    }
}

impl ScopedBackend {
    fn name(&self, container: &str) -> String {
        scoped_name(Some(&self.scope), container)
    }

    fn unscope(&self, name: String) -> String {
        match name.strip_prefix(&self.prefix) {
            Some(own) => own.to_string(),
            None => name,
        }
    }

    fn container(&self, mut info: ContainerInfo) -> ContainerInfo {
        info.name = self.unscope(info.name);
        info
    }

    fn object(&self, mut info: ObjectInfo) -> ObjectInfo {
        info.container = self.unscope(info.container);
        info
    }

    fn error(&self, error: BlobError) -> BlobError {
        let strip = |message: String| message.replace(&self.prefix, "");
        match error {
            BlobError::InvalidName(m) => BlobError::InvalidName(strip(m)),
            BlobError::NotFound(m) => BlobError::NotFound(strip(m)),
            BlobError::AlreadyExists(m) => BlobError::AlreadyExists(strip(m)),
            BlobError::Corrupt(m) => BlobError::Corrupt(strip(m)),
            BlobError::Unavailable(m) => BlobError::Unavailable(strip(m)),
            BlobError::Other(m) => BlobError::Other(strip(m)),
            too_large @ BlobError::TooLarge { .. } => too_large,
        }
    }
}

#[async_trait]
impl BlobBackend for ScopedBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn create_container(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        self.inner
            .create_container(&self.name(container))
            .await
            .map(|info| self.container(info))
            .map_err(|e| self.error(e))
    }

    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        self.inner
            .container_info(&self.name(container))
            .await
            .map(|info| self.container(info))
            .map_err(|e| self.error(e))
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        self.inner
            .delete_container(&self.name(container))
            .await
            .map_err(|e| self.error(e))
    }

    async fn put(
        &self,
        container: &str,
        name: &str,
        body: ByteStream,
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        self.inner
            .put(&self.name(container), name, body, limit)
            .await
            .map(|info| self.object(info))
            .map_err(|e| self.error(e))
    }

    async fn get(
        &self,
        container: &str,
        name: &str,
        range: ByteRange,
    ) -> Result<(ObjectInfo, ByteStream), BlobError> {
        self.inner
            .get(&self.name(container), name, range)
            .await
            .map(|(info, body)| (self.object(info), body))
            .map_err(|e| self.error(e))
    }

    async fn info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        self.inner
            .info(&self.name(container), name)
            .await
            .map(|info| self.object(info))
            .map_err(|e| self.error(e))
    }

    async fn delete(&self, container: &str, name: &str) -> Result<(), BlobError> {
        self.inner
            .delete(&self.name(container), name)
            .await
            .map_err(|e| self.error(e))
    }

    async fn list(
        &self,
        container: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, BlobError> {
        self.inner
            .list(&self.name(container), after, limit)
            .await
            .map_err(|e| self.error(e))
    }

    async fn ping(&self) -> Result<(), BlobError> {
        self.inner.ping().await
    }
}
