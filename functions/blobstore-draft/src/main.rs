//! `blobstore-draft`: a job built against the upstream `wasi:blobstore`
//! WIT exactly as WebAssembly/wasi-blobstore 824aa76 publishes it (with
//! its `wasi:io@0.2.2`, in `wit/` here, untouched), the way wasmCloud's and
//! Spin's blobstore components are, not against Hearth's SDK or WIT. It
//! creates a container, writes an object through an `outgoing-value`
//! stream (write-data before the body, as Spin's tests do), reads a range
//! and the whole back both ways, lists, copies, moves and deletes; any
//! mismatch panics (a trap: the job fails). Exit 0 means every call worked.

wit_bindgen::generate!({
    path: "wit",
    world: "wasi:blobstore/imports@0.2.0-draft",
    generate_all,
});

use wasi::blobstore::blobstore;
use wasi::blobstore::types::{IncomingValue, ObjectId, OutgoingValue};
use wasi::io::streams::StreamError;

fn main() {
    let name = "draft".to_string();
    if blobstore::container_exists(&name).expect("container-exists") {
        blobstore::delete_container(&name).expect("delete-container");
    }
    let container = blobstore::create_container(&name).expect("create-container");
    assert_eq!(container.name().expect("name"), "draft");

    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let value = OutgoingValue::new_outgoing_value();
    container
        .write_data(&"a/b.bin".to_string(), &value)
        .expect("write-data");
    {
        let body = value.outgoing_value_write_body().expect("write-body");
        for chunk in data.chunks(4096) {
            body.blocking_write_and_flush(chunk).expect("write");
        }
    }
    OutgoingValue::finish(value).expect("finish");

    let info = container
        .object_info(&"a/b.bin".to_string())
        .expect("object-info");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.container, "draft");

    let part = container
        .get_data(&"a/b.bin".to_string(), 1000, 1009)
        .expect("get-data range");
    assert_eq!(part.size(), 10);
    let part = IncomingValue::incoming_value_consume_sync(part).expect("consume-sync");
    assert_eq!(part, data[1000..1010]);

    let whole = container
        .get_data(&"a/b.bin".to_string(), 0, u64::MAX)
        .expect("get-data whole");
    let stream = IncomingValue::incoming_value_consume_async(whole).expect("consume-async");
    let mut read = Vec::new();
    loop {
        match stream.blocking_read(65536) {
            Ok(chunk) => read.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => panic!("read: {}", e.to_debug_string()),
        }
    }
    assert!(read == data, "the object reads back whole");

    let id = |object: &str| ObjectId {
        container: name.clone(),
        object: object.into(),
    };
    blobstore::copy_object(&id("a/b.bin"), &id("copy")).expect("copy-object");
    blobstore::move_object(&id("copy"), &id("moved")).expect("move-object");
    assert!(
        !container
            .has_object(&"copy".to_string())
            .expect("has-object")
    );
    let names = container.list_objects().expect("list-objects");
    let (listed, done) = names.read_stream_object_names(10).expect("read names");
    assert!(done);
    assert_eq!(listed, ["a/b.bin", "moved"]);

    let refused = container.get_data(&"../escape".to_string(), 0, 1);
    assert!(matches!(&refused, Err(e) if e.starts_with("invalid name")));
    container
        .delete_objects(&["a/b.bin".to_string(), "moved".to_string()])
        .expect("delete-objects");
    assert!(
        !container
            .has_object(&"moved".to_string())
            .expect("has-object")
    );
    blobstore::delete_container(&name).expect("delete-container");
    println!("wasi:blobstore draft: every call worked");
}
