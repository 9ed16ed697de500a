//! `wasi:keyvalue@0.2.0-draft` (wasmtime 48's `wasmtime-wasi-keyvalue` and
//! wasmCloud's version) on the same stores as `0.2.0-draft2`; see
//! [`super::keyvalue`] for what `open` accepts.
//!
//! Differences from draft2, as the older WIT has them: `increment` takes and
//! returns a `u64` (a stored negative number is `other("not-a-number …")`),
//! there is no compare-and-swap, and `list-keys` pages with a numeric cursor:
//! the number of keys already returned, so each page walks the listing from
//! its start (fine for the small listings this draft is used for; use
//! `hearth:function/state` for large ones).

use super::draft_bindings::wasi::keyvalue0_2_0_draft::{atomics, batch, store};
use super::keyvalue::{KeyvalueView, OpenError, StoreHandle};
use hearth_state::StateError;
use wasmtime::component::Resource;

super::keyvalue::shared_keyvalue_impls! {
    async fn list_keys(
        &mut self,
        bucket: Resource<StoreHandle>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let h = self.handle(&bucket)?;
        let page_size = h.store.limits().max_page;
        let skip = cursor.unwrap_or(0);
        // Walk pages until `skip` keys are behind us, then return one page.
        let mut seen = 0u64;
        let mut after: Option<String> = None;
        loop {
            let page = h.traced(
                &self.ctx.trace,
                "state list-keys",
                h.store.list(&h.ns, "", after.as_deref(), page_size),
            );
            let page = match page.await {
                Ok(page) => page,
                Err(error) => return Ok(Err(kv_error(error))),
            };
            let count = page.keys.len() as u64;
            if seen + count > skip || page.cursor.is_none() {
                let keys: Vec<String> = page
                    .keys
                    .into_iter()
                    .skip(skip.saturating_sub(seen) as usize)
                    .collect();
                let returned = skip.max(seen) + keys.len() as u64;
                let more = page.cursor.is_some();
                return Ok(Ok(store::KeyResponse {
                    keys,
                    cursor: more.then_some(returned),
                }));
            }
            seen += count;
            after = page.cursor;
        }
    }
}

impl atomics::Host for KeyvalueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        let h = self.handle(&bucket)?;
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(store::Error::Other(format!(
                "invalid-delta: {delta} is over i64::MAX"
            ))));
        };
        let incremented = h.traced(
            &self.ctx.trace,
            "state increment",
            h.store.increment(&h.ns, &key, delta),
        );
        Ok(match incremented.await {
            Ok(value) => u64::try_from(value).map_err(|_| {
                store::Error::Other(format!("not-a-number: key {key:?} holds {value}, below 0"))
            }),
            Err(error) => Err(kv_error(error)),
        })
    }
}
