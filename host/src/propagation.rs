//! What travels with a request from hop to hop: the header names Hearth
//! reads and writes, the per-request [`RequestContext`] and the ids it is
//! made of.
//!
//! # Contract
//!
//! * This module depends on nothing else in the host but [`crate::telemetry`]
//!   (a request's span travels in its context): triggers read a
//!   request's context from its headers here, and `invoke` writes it into
//!   the callee's request here, so both sides agree on the names.
//! * A request that arrives without `x-request-id` gets one on its first
//!   `invoke` (see [`RequestContext::request_id_or_new`]), kept for its later
//!   calls, so every hop of a chain carries the same id.
//! * `traceparent` follows W3C trace context: a call keeps the caller's
//!   trace id and gets a new span id ([`child_traceparent`]); a malformed
//!   parent starts a new trace.
//! * **Only the host names a caller.** A request from outside the host (a
//!   client, or a peer on another node: [`RequestContext::from_untrusted`])
//!   loses any `x-hearth-caller` before the guest sees it, and its depth
//!   counts only if it is a number within the host's `max_depth` (a hop
//!   from another node's `invoke` always is); anything else is dropped and
//!   the chain starts at 0. A request the host made itself (a local
//!   `invoke`) keeps every header as the host set it.

use crate::telemetry::TraceContext;
use std::sync::atomic::{AtomicU64, Ordering};

/// Header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// How many invoke hops led to a request.
pub const DEPTH_HEADER: &str = "x-hearth-invoke-depth";
/// The calling function's name.
pub const CALLER_HEADER: &str = "x-hearth-caller";
/// The header naming a Hearth error on an error response.
pub const ERROR_HEADER: &str = "x-hearth-error";

/// Per-request context, set by the trigger on the store before each call
/// and read by `invoke`.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// How many `invoke` hops led to this request (0 for an outside caller).
    pub depth: u32,
    /// `x-request-id` of the request, propagated by `invoke` (which makes
    /// one on the request's first call if it came without).
    pub request_id: Option<String>,
    /// W3C `traceparent` of the request, propagated by `invoke`.
    pub traceparent: Option<String>,
    /// The request's span, parent of its capability calls' spans (empty
    /// when nothing is traced; see [`crate::telemetry`]).
    pub trace: TraceContext,
}

impl RequestContext {
    /// The context carried by a request's headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        RequestContext {
            depth: header(DEPTH_HEADER)
                .and_then(|d| d.parse().ok())
                .unwrap_or(0),
            // Without one, the first `invoke` of the request makes one.
            request_id: header(REQUEST_ID_HEADER),
            traceparent: header(TRACEPARENT_HEADER),
            trace: TraceContext::default(),
        }
    }

    /// The context of a request from outside this host, removing from
    /// `headers` what such a request may not claim (see the module docs).
    pub fn from_untrusted(headers: &mut http::HeaderMap, max_depth: u32) -> Self {
        headers.remove(CALLER_HEADER);
        let claimed = headers.get(DEPTH_HEADER).map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|depth| *depth <= max_depth)
        });
        if let Some(None) = claimed {
            tracing::debug!(
                "ignored an {DEPTH_HEADER} header that is not a depth within {max_depth}"
            );
            headers.remove(DEPTH_HEADER);
        }
        Self::from_headers(headers)
    }

    /// The request id, made now if the request came without one.
    pub fn request_id_or_new(&mut self) -> String {
        self.request_id.get_or_insert_with(|| new_id(16)).clone()
    }
}

/// A random-looking hex id of `bytes` bytes (request ids, span ids).
pub fn new_id(bytes: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64)
        ^ (COUNTER.fetch_add(1, Ordering::Relaxed)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ ((std::process::id() as u64) << 32);
    let hash = |seed: u64| {
        // splitmix64: spreads a counter into well-mixed bits.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut id = String::new();
    let mut seed = mixed;
    while id.len() < bytes * 2 {
        seed = hash(seed);
        id.push_str(&format!("{seed:016x}"));
    }
    id.truncate(bytes * 2);
    id
}

/// The `traceparent` for a call: the caller's trace with a new span, or a
/// new trace.
pub fn child_traceparent(parent: Option<&str>) -> String {
    let span = new_id(8);
    match parent.map(|p| p.split('-').collect::<Vec<_>>()) {
        Some(parts) if parts.len() == 4 && parts[1].len() == 32 && parts[3].len() == 2 => {
            format!("00-{}-{span}-{}", parts[1], parts[3])
        }
        _ => format!("00-{}-{span}-01", new_id(16)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_keeps_the_trace_and_makes_a_new_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(Some(parent));
        let parts: Vec<&str> = child.split('-').collect();
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7");
        assert_eq!(parts[2].len(), 16);
        let fresh = child_traceparent(None);
        assert_eq!(fresh.split('-').nth(1).unwrap().len(), 32);
        assert_ne!(
            child_traceparent(Some("garbage")).split('-').nth(1),
            Some("garbage")
        );
    }

    #[test]
    fn a_request_from_outside_cannot_name_a_caller_or_an_impossible_depth() {
        for (claimed, kept) in [
            ("3", Some("3")),
            ("8", Some("8")),
            ("9", None),
            ("4294967295", None),
            ("-1", None),
            ("x", None),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert(CALLER_HEADER, "admin".parse().unwrap());
            headers.insert(DEPTH_HEADER, claimed.parse().unwrap());
            let context = RequestContext::from_untrusted(&mut headers, 8);
            assert!(headers.get(CALLER_HEADER).is_none(), "{claimed}");
            assert_eq!(
                headers.get(DEPTH_HEADER).map(|v| v.to_str().unwrap()),
                kept,
                "{claimed}"
            );
            assert_eq!(context.depth, kept.map_or(0, |d| d.parse().unwrap()));
        }
    }

    #[test]
    fn the_context_comes_from_headers_and_a_missing_id_is_made_once() {
        let mut headers = http::HeaderMap::new();
        headers.insert(DEPTH_HEADER, "3".parse().unwrap());
        headers.insert(TRACEPARENT_HEADER, "tp".parse().unwrap());
        let mut context = RequestContext::from_headers(&headers);
        assert_eq!(context.depth, 3);
        assert_eq!(context.traceparent.as_deref(), Some("tp"));
        assert_eq!(context.request_id, None);
        let id = context.request_id_or_new();
        assert_eq!(id.len(), 32);
        assert_eq!(context.request_id_or_new(), id, "kept for later calls");
    }
}
