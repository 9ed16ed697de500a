#![doc = include_str!("../README.md")]
// The README's job example is a whole binary crate, so it shows `fn main`.
#![allow(clippy::needless_doctest_main)]

pub mod http;
pub mod job;

/// Bindings for the `hearth:function/service-with-lifecycle` world, generated
/// from Hearth's one WIT source. Use these directly for anything the
/// [`http`] layer does not cover (streaming bodies, outbound HTTP).
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "hearth:function/service-with-lifecycle",
        pub_export_macro: true,
        default_bindings_module: "hearth_sdk::bindings",
        generate_all,
    });
}

/// Bindings for `hearth:function/job-imports` (no exports), used by [`job`].
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod job_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "hearth:function/job-imports",
        generate_all,
    });
}
