//! `containerd-shim-hearth-v1`: all logic is in the `hearth_shim` library.
fn main() {
    hearth_shim::main()
}
