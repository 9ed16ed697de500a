//! A minimal HTTP/1.1 client: one connection per call, whole bodies.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// A response with its body read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Trailers after a chunked body, if any came.
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `GET path` to `addr`.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    send(addr, Method::GET, path, &[], Bytes::new()).await
}

/// Sends a request with a `Content-Length` body.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> std::io::Result<Reply> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(std::io::Error::other)?;
    exchange(addr, request).await
}

/// Sends a POST whose body is streamed in `chunks` with no `Content-Length`.
pub async fn post_chunked(
    addr: SocketAddr,
    path: &str,
    chunks: Vec<Bytes>,
) -> std::io::Result<Reply> {
    let frames = chunks
        .into_iter()
        .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk)));
    let body = IterStream(frames);
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", addr.to_string())
        .body(body)
        .map_err(std::io::Error::other)?;
    exchange(addr, request).await
}

/// Sends a POST whose body is streamed in `chunks`, then `trailers`
/// (declared in a `trailer` header, as HTTP/1.1 asks, and with
/// `te: trailers`, so the server may answer with trailers too).
pub async fn post_with_trailers(
    addr: SocketAddr,
    path: &str,
    chunks: Vec<Bytes>,
    trailers: HeaderMap,
) -> std::io::Result<Reply> {
    let declared = trailers
        .keys()
        .map(|name| name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let frames = chunks
        .into_iter()
        .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk)))
        .chain(std::iter::once(Ok(Frame::trailers(trailers))));
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", addr.to_string())
        .header("te", "trailers")
        .header("trailer", declared)
        .body(IterStream(frames))
        .map_err(std::io::Error::other)?;
    exchange(addr, request).await
}

/// An iterator as a `Stream`, without pulling in a futures crate.
struct IterStream<I>(I);

impl<I: Iterator + Unpin> hyper::body::Body for IterStream<I>
where
    I::Item: Into<Result<Frame<Bytes>, std::convert::Infallible>>,
{
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.next().map(Into::into))
    }
}

async fn exchange<B>(addr: SocketAddr, request: Request<B>) -> std::io::Result<Reply>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(std::io::Error::other)?;
    let trailers = collected.trailers().cloned();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}
