//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) and
//! `hearth:function/state` over [`hearth_state::StateStore`].
//!
//! Both interfaces open the same stores, so a key written through one is
//! read through the other. `wasi:keyvalue` `open("")`/`open("default")` is
//! the function's own app store; another identifier must be a granted
//! shared label (`access-denied` otherwise, `no-such-store` if the host
//! has no store at all). `atomics.cas` is a get-with-etag and `swap` a
//! set-if-match, so it has the same semantics on every backend.
//! `batch.set-many` and `delete-many` are applied as one transaction (all
//! or nothing), which is stronger than the standard asks.

//!
//! # Host side
//!
//! [`KeyvalueScope`] is what a function may open, resolved once at load;
//! each instance's store holds a [`KeyvalueCtx`] pointing at it, and the
//! host functions run on a [`KeyvalueView`] (the context and the instance's
//! resource table). [`add_to_linker`] adds all three interfaces (both
//! `wasi:keyvalue` drafts and `hearth:function/state`).

use super::bindings::hearth::function::state as hs;
use super::bindings::wasi::keyvalue0_2_0_draft2::{atomics, batch, store};
use crate::telemetry::{Kind, TraceContext};
use hearth_state::{Entry, Namespace, Precondition, StateError, StateStore, TransactionOp};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// The stores a function may open, resolved at load.
#[derive(Debug)]
pub struct KeyvalueScope {
    /// The function's name (named in refusals).
    pub function: Arc<str>,
    /// Its app's namespace in its own store.
    pub app: Namespace,
    /// Its own store, if the host has any.
    pub own_store: Option<StateStore>,
    /// Granted shared stores, by label, with their namespace.
    pub shared: BTreeMap<String, (StateStore, Namespace)>,
}

/// One instance's keyvalue context.
#[derive(Clone)]
pub struct KeyvalueCtx {
    /// What the function may open.
    pub scope: Arc<KeyvalueScope>,
    /// The span of the request being served (see [`crate::telemetry`]).
    pub trace: TraceContext,
}

/// What keyvalue host functions run on.
pub struct KeyvalueView<'a> {
    /// The context.
    pub ctx: &'a KeyvalueCtx,
    /// The instance's resource table (open buckets live here).
    pub table: &'a mut ResourceTable,
}

/// The [`HasData`] marker of the keyvalue interfaces.
pub struct Keyvalue;

impl HasData for Keyvalue {
    type Data<'a> = KeyvalueView<'a>;
}

/// Adds `wasi:keyvalue@0.2.0-draft2`, `wasi:keyvalue@0.2.0-draft` and
/// `hearth:function/state` to `linker`, reaching the view through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> KeyvalueView<'_>,
) -> wasmtime::Result<()> {
    use super::draft_bindings::wasi::keyvalue0_2_0_draft as draft;
    store::add_to_linker::<T, Keyvalue>(linker, get)?;
    atomics::add_to_linker::<T, Keyvalue>(linker, get)?;
    batch::add_to_linker::<T, Keyvalue>(linker, get)?;
    hs::add_to_linker::<T, Keyvalue>(linker, get)?;
    draft::store::add_to_linker::<T, Keyvalue>(linker, get)?;
    draft::atomics::add_to_linker::<T, Keyvalue>(linker, get)?;
    draft::batch::add_to_linker::<T, Keyvalue>(linker, get)?;
    Ok(())
}

/// An open store: a backend and the namespace the caller may use in it.
#[derive(Clone)]
pub struct StoreHandle {
    pub(super) store: StateStore,
    pub(super) ns: Namespace,
}

/// A `wasi:keyvalue/atomics.cas`: the value and etag read when it was made.
pub struct CasHandle {
    handle: StoreHandle,
    key: String,
    current: Option<Entry>,
}

/// Why `open` refused a label.
pub(super) enum OpenError {
    NoStore(String),
    Denied(String),
}

impl KeyvalueView<'_> {
    pub(super) fn open_store(&self, label: &str) -> Result<StoreHandle, OpenError> {
        let function = &self.ctx.scope;
        if label.is_empty() || label == "default" {
            return match &function.own_store {
                Some(store) => Ok(StoreHandle {
                    store: store.clone(),
                    ns: function.app.clone(),
                }),
                None => Err(OpenError::NoStore(
                    "no state store is configured on this host ([state.stores] in hearth.toml)"
                        .into(),
                )),
            };
        }
        match function.shared.get(label) {
            Some((store, ns)) => Ok(StoreHandle {
                store: store.clone(),
                ns: ns.clone(),
            }),
            None => Err(OpenError::Denied(format!(
                "function `{}` is not granted store `{label}` (shared_stores in hearth.toml)",
                function.function
            ))),
        }
    }

    pub(super) fn handle(&self, resource: &Resource<StoreHandle>) -> wasmtime::Result<StoreHandle> {
        Ok(self.table.get(resource)?.clone())
    }
}

/// The plain key-value operations both `wasi:keyvalue` versions share.
impl StoreHandle {
    /// Runs `call`, an operation on this store, as the span `name`, a
    /// child of `trace` (see [`crate::telemetry`]).
    pub(super) async fn traced<T>(
        &self,
        trace: &TraceContext,
        name: &'static str,
        call: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let span = trace.start(name, Kind::Client);
        span.set("db.system.name", || self.store.kind());
        span.set("hearth.state.store", || self.store.label().to_string());
        let result = call.await;
        if let Err(error) = &result {
            span.fail(error.name(), error);
        }
        result
    }

    pub(super) async fn value(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.store.get(&self.ns, key).await?.map(|e| e.value))
    }

    pub(super) async fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.store
            .set(&self.ns, key, value, Precondition::None, None)
            .await
            .map(drop)
    }

    pub(super) async fn remove(&self, key: &str) -> Result<(), StateError> {
        self.store
            .delete(&self.ns, key, Precondition::None)
            .await
            .map(drop)
    }

    pub(super) async fn exists(&self, key: &str) -> Result<bool, StateError> {
        Ok(self.store.get(&self.ns, key).await?.is_some())
    }

    pub(super) async fn get_many(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, StateError> {
        let entries = self.store.get_many(&self.ns, &keys).await?;
        Ok(keys
            .into_iter()
            .zip(entries)
            .map(|(key, entry)| entry.map(|entry| (key, entry.value)))
            .collect())
    }

    /// All or nothing: one transaction.
    pub(super) async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<(), StateError> {
        let operations = pairs
            .into_iter()
            .map(|(key, value)| TransactionOp::Set {
                key,
                value,
                precondition: Precondition::None,
                ttl_ms: None,
            })
            .collect();
        self.store.transact(&self.ns, operations).await.map(drop)
    }

    /// All or nothing: one transaction.
    pub(super) async fn delete_many(&self, keys: Vec<String>) -> Result<(), StateError> {
        let operations = keys
            .into_iter()
            .map(|key| TransactionOp::Delete {
                key,
                precondition: Precondition::None,
            })
            .collect();
        self.store.transact(&self.ns, operations).await.map(drop)
    }
}

/// The `wasi:keyvalue` implementations both versions (`0.2.0-draft` and
/// `0.2.0-draft2`) share, written once for the generated `store` and `batch`
/// modules of the version in scope: `open`, the bucket's get/set/delete/
/// exists/drop, and batch. Each version gives its own `list-keys` (its
/// cursor type differs) and its own atomics.
macro_rules! shared_keyvalue_impls {
    ($($list_keys:tt)*) => {
        fn kv_error(error: StateError) -> store::Error {
            store::Error::Other(format!("{}: {error}", error.name()))
        }

        impl store::Host for KeyvalueView<'_> {
            async fn open(
                &mut self,
                identifier: String,
            ) -> wasmtime::Result<Result<Resource<StoreHandle>, store::Error>> {
                Ok(match self.open_store(&identifier) {
                    Ok(handle) => Ok(self.table.push(handle)?),
                    Err(OpenError::NoStore(_)) => Err(store::Error::NoSuchStore),
                    Err(OpenError::Denied(_)) => Err(store::Error::AccessDenied),
                })
            }
        }

        impl store::HostBucket for KeyvalueView<'_> {
            async fn get(
                &mut self,
                bucket: Resource<StoreHandle>,
                key: String,
            ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
                {
                let h = self.handle(&bucket)?;
                Ok(h.traced(&self.ctx.trace, "state get", h.value(&key)).await.map_err(kv_error))
            }
            }

            async fn set(
                &mut self,
                bucket: Resource<StoreHandle>,
                key: String,
                value: Vec<u8>,
            ) -> wasmtime::Result<Result<(), store::Error>> {
                {
                let h = self.handle(&bucket)?;
                Ok(h.traced(&self.ctx.trace, "state set", h.put(&key, &value)).await.map_err(kv_error))
            }
            }

            async fn delete(
                &mut self,
                bucket: Resource<StoreHandle>,
                key: String,
            ) -> wasmtime::Result<Result<(), store::Error>> {
                {
                let h = self.handle(&bucket)?;
                Ok(h.traced(&self.ctx.trace, "state delete", h.remove(&key)).await.map_err(kv_error))
            }
            }

            async fn exists(
                &mut self,
                bucket: Resource<StoreHandle>,
                key: String,
            ) -> wasmtime::Result<Result<bool, store::Error>> {
                {
                let h = self.handle(&bucket)?;
                Ok(h.traced(&self.ctx.trace, "state exists", h.exists(&key)).await.map_err(kv_error))
            }
            }

            $($list_keys)*

            async fn drop(&mut self, bucket: Resource<StoreHandle>) -> wasmtime::Result<()> {
                self.table.delete(bucket)?;
                Ok(())
            }
        }

        impl batch::Host for KeyvalueView<'_> {
            async fn get_many(
                &mut self,
                bucket: Resource<StoreHandle>,
                keys: Vec<String>,
            ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
                {
                let h = self.handle(&bucket)?;
                Ok(h.traced(&self.ctx.trace, "state get-many", h.get_many(keys)).await.map_err(kv_error))
            }
            }

            async fn set_many(
                &mut self,
                bucket: Resource<StoreHandle>,
                key_values: Vec<(String, Vec<u8>)>,
            ) -> wasmtime::Result<Result<(), store::Error>> {
                {
                let h = self.handle(&bucket)?;
                Ok(h.traced(&self.ctx.trace, "state set-many", h.set_many(key_values)).await.map_err(kv_error))
            }
            }

            async fn delete_many(
                &mut self,
                bucket: Resource<StoreHandle>,
                keys: Vec<String>,
            ) -> wasmtime::Result<Result<(), store::Error>> {
                {
                let h = self.handle(&bucket)?;
                Ok(h.traced(&self.ctx.trace, "state delete-many", h.delete_many(keys)).await.map_err(kv_error))
            }
            }
        }
    };
}
pub(super) use shared_keyvalue_impls;

// ---------------------------------------------------------------------------
// wasi:keyvalue/store and batch

shared_keyvalue_impls! {
    async fn list_keys(
        &mut self,
        bucket: Resource<StoreHandle>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let h = self.handle(&bucket)?;
        let limit = h.store.limits().max_page;
        Ok(h.traced(
            &self.ctx.trace,
            "state list-keys",
            h.store.list(&h.ns, "", cursor.as_deref(), limit),
            )
            .await
            .map(|page| store::KeyResponse {
                keys: page.keys,
                cursor: page.cursor,
            })
            .map_err(kv_error))
    }
}

// ---------------------------------------------------------------------------
// wasi:keyvalue/atomics

impl atomics::Host for KeyvalueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        let h = self.handle(&bucket)?;
        Ok(h.traced(
            &self.ctx.trace,
            "state increment",
            h.store.increment(&h.ns, &key, delta),
        )
        .await
        .map_err(kv_error))
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let precondition = {
            let cas = self.table.get(&cas)?;
            match &cas.current {
                Some(entry) => Precondition::IfMatch(entry.etag),
                None => Precondition::IfAbsent,
            }
        };
        let (handle, key) = {
            let cas = self.table.get(&cas)?;
            (cas.handle.clone(), cas.key.clone())
        };
        let result = handle
            .traced(
                &self.ctx.trace,
                "state swap",
                handle
                    .store
                    .set(&handle.ns, &key, &value, precondition, None),
            )
            .await;
        Ok(match result {
            Ok(_) => {
                self.table.delete(cas)?;
                Ok(())
            }
            // The standard hands the cas back on a failed swap; refresh it
            // with what is there now so a retry loop can go again.
            Err(StateError::EtagMismatch { .. }) => {
                let refreshed = handle.traced(
                    &self.ctx.trace,
                    "state get",
                    handle.store.get(&handle.ns, &key),
                );
                let current = match refreshed.await {
                    Ok(current) => current,
                    Err(error) => {
                        self.table.delete(cas)?;
                        return Ok(Err(atomics::CasError::StoreError(kv_error(error))));
                    }
                };
                self.table.get_mut(&cas)?.current = current;
                Err(atomics::CasError::CasFailed(cas))
            }
            Err(error) => {
                self.table.delete(cas)?;
                Err(atomics::CasError::StoreError(kv_error(error)))
            }
        })
    }
}

impl atomics::HostCas for KeyvalueView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, store::Error>> {
        let handle = self.handle(&bucket)?;
        let read = handle.traced(
            &self.ctx.trace,
            "state get",
            handle.store.get(&handle.ns, &key),
        );
        let current = match read.await {
            Ok(current) => current,
            Err(error) => return Ok(Err(kv_error(error))),
        };
        Ok(Ok(self.table.push(CasHandle {
            handle,
            key,
            current,
        })?))
    }

    async fn current(
        &mut self,
        cas: Resource<CasHandle>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let cas = self.table.get(&cas)?;
        Ok(Ok(cas.current.as_ref().map(|entry| entry.value.clone())))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// hearth:function/state

fn state_error(error: StateError) -> hs::Error {
    let message = error.to_string();
    match error {
        StateError::InvalidKey { .. } => hs::Error::InvalidKey(message),
        StateError::ValueTooLarge { .. } => hs::Error::ValueTooLarge(message),
        StateError::InvalidTtl { .. } => hs::Error::InvalidTtl(message),
        StateError::TooManyOperations { .. } => hs::Error::TooManyOperations(message),
        StateError::EtagMismatch { key } => hs::Error::EtagMismatch(key),
        StateError::TransactionConflict { key } => hs::Error::TransactionConflict(key),
        StateError::NotANumber { .. } => hs::Error::NotANumber(message),
        StateError::Unavailable { .. } => hs::Error::Unavailable(message),
    }
}

/// A guest's precondition; an etag that is not one of ours can never match.
fn precondition(precondition: hs::Precondition) -> Precondition {
    match precondition {
        hs::Precondition::None => Precondition::None,
        hs::Precondition::IfAbsent => Precondition::IfAbsent,
        hs::Precondition::IfMatch(etag) => Precondition::IfMatch(etag.parse().unwrap_or(0)),
    }
}

impl hs::Host for KeyvalueView<'_> {}

impl hs::HostStore for KeyvalueView<'_> {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<StoreHandle>, hs::Error>> {
        Ok(match self.open_store(&label) {
            Ok(handle) => Ok(self.table.push(handle)?),
            Err(OpenError::NoStore(message) | OpenError::Denied(message)) => {
                Err(hs::Error::NoSuchStore(message))
            }
        })
    }

    async fn get(
        &mut self,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<hs::Entry>, hs::Error>> {
        let h = self.handle(&store)?;
        Ok(
            h.traced(&self.ctx.trace, "state get", h.store.get(&h.ns, &key))
                .await
                .map(|entry| {
                    entry.map(|entry| hs::Entry {
                        value: entry.value,
                        etag: entry.etag.to_string(),
                    })
                })
                .map_err(state_error),
        )
    }

    async fn set(
        &mut self,
        store: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
        condition: hs::Precondition,
        ttl_ms: Option<i64>,
    ) -> wasmtime::Result<Result<String, hs::Error>> {
        let h = self.handle(&store)?;
        Ok(h.traced(
            &self.ctx.trace,
            "state set",
            h.store
                .set(&h.ns, &key, &value, precondition(condition), ttl_ms),
        )
        .await
        .map(|etag| etag.to_string())
        .map_err(state_error))
    }

    async fn delete(
        &mut self,
        store: Resource<StoreHandle>,
        key: String,
        condition: hs::Precondition,
    ) -> wasmtime::Result<Result<bool, hs::Error>> {
        let h = self.handle(&store)?;
        Ok(h.traced(
            &self.ctx.trace,
            "state delete",
            h.store.delete(&h.ns, &key, precondition(condition)),
        )
        .await
        .map_err(state_error))
    }

    async fn increment(
        &mut self,
        store: Resource<StoreHandle>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, hs::Error>> {
        let h = self.handle(&store)?;
        Ok(h.traced(
            &self.ctx.trace,
            "state increment",
            h.store.increment(&h.ns, &key, delta),
        )
        .await
        .map_err(state_error))
    }

    async fn transact(
        &mut self,
        store: Resource<StoreHandle>,
        operations: Vec<hs::Operation>,
    ) -> wasmtime::Result<Result<Vec<Option<String>>, hs::Error>> {
        let h = self.handle(&store)?;
        let operations = operations
            .into_iter()
            .map(|operation| match operation {
                hs::Operation::Set(set) => TransactionOp::Set {
                    key: set.key,
                    value: set.value,
                    precondition: precondition(set.precondition),
                    ttl_ms: set.ttl_ms,
                },
                hs::Operation::Delete(delete) => TransactionOp::Delete {
                    key: delete.key,
                    precondition: precondition(delete.precondition),
                },
            })
            .collect();
        Ok(h.traced(
            &self.ctx.trace,
            "state transact",
            h.store.transact(&h.ns, operations),
        )
        .await
        .map(|applied| {
            applied
                .into_iter()
                .map(|applied| match applied {
                    hearth_state::Applied::Set(etag) => Some(etag.to_string()),
                    hearth_state::Applied::Deleted(_) => None,
                })
                .collect()
        })
        .map_err(state_error))
    }

    async fn list_keys(
        &mut self,
        store: Resource<StoreHandle>,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<hs::Page, hs::Error>> {
        let h = self.handle(&store)?;
        Ok(h.traced(
            &self.ctx.trace,
            "state list-keys",
            h.store.list(&h.ns, &prefix, cursor.as_deref(), limit),
        )
        .await
        .map(|page| hs::Page {
            keys: page.keys,
            cursor: page.cursor,
        })
        .map_err(state_error))
    }

    async fn drop(&mut self, store: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_state::StateLimits;
    use hearth_state::embedded::EmbeddedBackend;
    use std::path::Path;

    fn embedded(dir: &Path) -> StateStore {
        let backend = EmbeddedBackend::open(&dir.join("kv.redb")).unwrap();
        StateStore::new("default", Arc::new(backend), StateLimits::default())
    }

    fn ctx(app: &str, own: Option<&StateStore>, shared: &[(&str, &StateStore)]) -> KeyvalueCtx {
        KeyvalueCtx {
            scope: Arc::new(KeyvalueScope {
                function: app.into(),
                app: Namespace::new(app).unwrap(),
                own_store: own.cloned(),
                shared: shared
                    .iter()
                    .map(|(label, store)| {
                        let ns = Namespace::new(&format!("_shared.{label}")).unwrap();
                        (label.to_string(), ((*store).clone(), ns))
                    })
                    .collect(),
            }),
            trace: TraceContext::default(),
        }
    }

    /// A borrow of `bucket`, as the guest passes it to a method.
    fn borrow(bucket: &Resource<StoreHandle>) -> Resource<StoreHandle> {
        Resource::new_borrow(bucket.rep())
    }

    #[tokio::test]
    async fn each_app_sees_only_its_own_keys_and_the_shared_labels_it_is_granted() {
        use store::{Host as _, HostBucket as _};
        let dir = tempfile::tempdir().unwrap();
        let state = embedded(dir.path());
        let (shop, other) = (
            ctx("shop", Some(&state), &[("cache", &state)]),
            ctx("other", Some(&state), &[("cache", &state)]),
        );
        let (mut shop_table, mut other_table) = (ResourceTable::new(), ResourceTable::new());
        let mut shop = KeyvalueView {
            ctx: &shop,
            table: &mut shop_table,
        };
        let mut other = KeyvalueView {
            ctx: &other,
            table: &mut other_table,
        };

        let own = shop.open("".into()).await.unwrap().unwrap();
        shop.set(borrow(&own), "k".into(), b"shop".to_vec())
            .await
            .unwrap()
            .unwrap();
        let theirs = other.open("default".into()).await.unwrap().unwrap();
        assert_eq!(
            other
                .get(borrow(&theirs), "k".into())
                .await
                .unwrap()
                .unwrap(),
            None,
            "another app's own store never shows this app's keys"
        );
        assert_eq!(
            shop.get(borrow(&own), "k".into()).await.unwrap().unwrap(),
            Some(b"shop".to_vec())
        );

        let shop_cache = shop.open("cache".into()).await.unwrap().unwrap();
        shop.set(borrow(&shop_cache), "k".into(), b"both".to_vec())
            .await
            .unwrap()
            .unwrap();
        let other_cache = other.open("cache".into()).await.unwrap().unwrap();
        assert_eq!(
            other
                .get(borrow(&other_cache), "k".into())
                .await
                .unwrap()
                .unwrap(),
            Some(b"both".to_vec()),
            "a granted shared label is one namespace for everyone granted it"
        );
        assert!(matches!(
            shop.open("secrets".into()).await.unwrap(),
            Err(store::Error::AccessDenied)
        ));
    }

    #[tokio::test]
    async fn a_host_without_a_store_answers_no_such_store() {
        use store::Host as _;
        let nothing = ctx("shop", None, &[]);
        let mut table = ResourceTable::new();
        let mut view = KeyvalueView {
            ctx: &nothing,
            table: &mut table,
        };
        assert!(matches!(
            view.open("".into()).await.unwrap(),
            Err(store::Error::NoSuchStore)
        ));
    }

    #[tokio::test]
    async fn atomics_batch_and_state_share_one_app_namespace() {
        use batch::Host as _;
        use hs::HostStore as _;
        let dir = tempfile::tempdir().unwrap();
        let state = embedded(dir.path());
        let shop = ctx("shop", Some(&state), &[]);
        let mut table = ResourceTable::new();
        let mut view = KeyvalueView {
            ctx: &shop,
            table: &mut table,
        };
        let bucket = store::Host::open(&mut view, "".into())
            .await
            .unwrap()
            .unwrap();
        for _ in 0..3 {
            atomics::Host::increment(&mut view, borrow(&bucket), "n".into(), 1)
                .await
                .unwrap()
                .unwrap();
        }
        let many = view
            .get_many(borrow(&bucket), vec!["n".into(), "missing".into()])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(many, vec![Some(("n".into(), b"3".to_vec())), None]);

        // hearth:function/state opens the same namespace.
        let state_store = hs::HostStore::open(&mut view, "".into())
            .await
            .unwrap()
            .unwrap();
        let entry = hs::HostStore::get(&mut view, borrow(&state_store), "n".into())
            .await
            .unwrap()
            .unwrap()
            .expect("the counter");
        assert_eq!(entry.value, b"3");
        let first = view
            .set(
                borrow(&state_store),
                "once".into(),
                b"1".to_vec(),
                hs::Precondition::IfAbsent,
                None,
            )
            .await
            .unwrap();
        assert!(first.is_ok());
        let second = view
            .set(
                borrow(&state_store),
                "once".into(),
                b"2".to_vec(),
                hs::Precondition::IfAbsent,
                None,
            )
            .await
            .unwrap();
        assert!(
            matches!(second, Err(hs::Error::EtagMismatch(_))),
            "{second:?}"
        );
    }
}
