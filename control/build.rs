//! Generates the control API from `proto/hearth/control/v1/control.proto`
//! with Debian's `protoc` (or `$PROTOC`).

fn main() {
    let proto = "proto/hearth/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    if std::env::var_os("PROTOC").is_none() && !std::path::Path::new("/usr/bin/protoc").exists() {
        panic!(
            "protoc is missing: install Debian's protobuf-compiler (scripts/setup.sh does) or set $PROTOC"
        );
    }
    tonic_prost_build::configure()
        .compile_protos(&[proto], &["proto"])
        .unwrap_or_else(|e| panic!("cannot compile {proto}: {e}"));
}
