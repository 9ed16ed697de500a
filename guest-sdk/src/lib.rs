#![doc = include_str!("../README.md")]
// The README's job example is a whole binary crate, so it shows `fn main`.
#![allow(clippy::needless_doctest_main)]

pub mod blob;
pub mod http;
pub mod job;
pub mod messages;
#[cfg(feature = "p3")]
pub mod p3;

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

/// `wasi:keyvalue@0.2.0-draft2`: `store` (buckets), `atomics` (increment,
/// compare-and-swap) and `batch`, on the function's app store.
pub use bindings::wasi::keyvalue0_2_0_draft2 as keyvalue;

/// `hearth:function/state`: etags, if-match writes, TTLs, transactions and
/// prefix listing, on the same keys as [`keyvalue`].
pub use bindings::hearth::function::state;

/// `hearth:function/invoke`: call another function by name.
pub use bindings::hearth::function::invoke;

/// `wasi:config/store`: the function's configuration values.
pub use bindings::wasi::config::store as config;

/// `wasi:logging/logging`: log lines with a level and a context, into
/// hearthd's log (with the function's identity) and its Pod's log:
/// `hearth_sdk::logging::log(Level::Info, "orders", "placed")`.
pub use bindings::wasi::logging::logging;

/// Bindings for the message handler export (`hearth:function/handler-export`),
/// sharing [`bindings`]' `wasi:messaging` types; used by [`messages`].
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod handler_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "hearth:function/handler-export",
        pub_export_macro: true,
        default_bindings_module: "hearth_sdk::handler_bindings",
        with: {
            "wasi:messaging/types@0.2.0-draft": crate::bindings::wasi::messaging::types,
        },
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
