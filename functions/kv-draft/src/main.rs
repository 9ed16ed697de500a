//! `kv-draft`: a job written against `wasi:keyvalue@0.2.0-draft` (the
//! version of wasmtime 48's `wasmtime-wasi-keyvalue` and of wasmCloud's
//! key-value components), not Hearth's SDK. It stores `counter = 41`,
//! increments it, writes two keys as a batch and lists the bucket; any
//! mismatch panics (a trap: the job fails). Exit 0 means every call worked.

wit_bindgen::generate!({
    path: "../../wit",
    world: "hearth:function/keyvalue-draft",
    generate_all,
});

use wasi::keyvalue0_2_0_draft::{atomics, batch, store};

fn main() {
    let bucket = store::open("").expect("open the app's store");
    bucket.set("counter", b"41").expect("set");
    let counter = atomics::increment(&bucket, "counter", 1).expect("increment");
    assert_eq!(counter, 42);
    batch::set_many(
        &bucket,
        &[("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())],
    )
    .expect("set-many");
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor).expect("list-keys");
        keys.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    keys.sort();
    assert_eq!(keys, ["a", "b", "counter"]);
    assert!(matches!(
        store::open("not-granted"),
        Err(store::Error::AccessDenied)
    ));
    println!("counter={counter} keys={}", keys.join(","));
}
