//! HTTP services: implement [`Service`] and call [`export_service!`](crate::export_service).
//!
//! The request body is read whole before [`Service::handle`] runs, and the
//! response body is written whole after it returns. For streaming, use
//! [`crate::bindings`] directly.

use crate::bindings::wasi::http::types::{
    Fields, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// An HTTP request, body included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// Path and query, e.g. `/items?id=3`.
    pub path_with_query: String,
    /// Headers in the order received; names are lowercase.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_with_query
            .split_once('?')
            .map_or(self.path_with_query.as_str(), |(path, _)| path)
    }

    /// The first value of query parameter `name`, with `+` and `%XX`
    /// decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.path_with_query.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// The first value of header `name` (case-insensitive) as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP response, body included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers to send.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into().into_bytes())
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// An HTTP function. Only `handle` is required.
pub trait Service {
    /// Answers one request.
    fn handle(request: Request) -> Response;

    /// Runs once per instance before its first request; an `Err` fails the
    /// instance (the caller gets 503 with the message).
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// Runs when the host retires the instance.
    fn shutdown() {}
}

/// Exports a [`Service`] implementation as the component's HTTP handler (and
/// lifecycle hooks).
#[macro_export]
macro_rules! export_service {
    ($service:ident) => {
        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for $service {
            fn handle(
                request: $crate::bindings::wasi::http::types::IncomingRequest,
                out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $crate::http::serve::<$service>(request, out)
            }
        }
        impl $crate::bindings::exports::hearth::function::lifecycle::Guest for $service {
            fn init() -> ::core::result::Result<(), ::std::string::String> {
                <$service as $crate::http::Service>::init()
            }
            fn shutdown() {
                <$service as $crate::http::Service>::shutdown()
            }
        }
        $crate::bindings::export!($service with_types_in $crate::bindings);
    };
}

/// Glue used by [`export_service!`](crate::export_service): reads the request,
/// calls the service, writes the response.
#[doc(hidden)]
pub fn serve<S: Service>(request: IncomingRequest, out: ResponseOutparam) {
    let request = match read_request(request) {
        Ok(request) => request,
        Err(message) => {
            respond(
                out,
                Response::text(400, format!("cannot read request: {message}\n")),
            );
            return;
        }
    };
    respond(out, S::handle(request));
}

fn method_name(method: WasiMethod) -> String {
    match method {
        WasiMethod::Get => "GET".into(),
        WasiMethod::Head => "HEAD".into(),
        WasiMethod::Post => "POST".into(),
        WasiMethod::Put => "PUT".into(),
        WasiMethod::Delete => "DELETE".into(),
        WasiMethod::Connect => "CONNECT".into(),
        WasiMethod::Options => "OPTIONS".into(),
        WasiMethod::Trace => "TRACE".into(),
        WasiMethod::Patch => "PATCH".into(),
        WasiMethod::Other(other) => other,
    }
}

fn read_request(request: IncomingRequest) -> Result<Request, String> {
    let method = method_name(request.method());
    let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
    let headers = request.headers().entries();
    let body = request
        .consume()
        .map_err(|()| "the body was already consumed".to_string())?;
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| "the body stream is unavailable".to_string())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(crate::bindings::wasi::io::streams::StreamError::Closed) => break,
                Err(crate::bindings::wasi::io::streams::StreamError::LastOperationFailed(e)) => {
                    return Err(e.to_debug_string());
                }
            }
        }
    }
    Ok(Request {
        method,
        path_with_query,
        headers,
        body: bytes,
    })
}

fn respond(out: ResponseOutparam, response: Response) {
    let headers = Fields::new();
    for (name, value) in &response.headers {
        // An invalid header from the function is dropped rather than failing
        // the whole response.
        let _ = headers.append(name, value);
    }
    let outgoing = OutgoingResponse::new(headers);
    let _ = outgoing.set_status_code(response.status);
    let body = outgoing.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(outgoing));
    if let Ok(stream) = body.write() {
        for chunk in response.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}
