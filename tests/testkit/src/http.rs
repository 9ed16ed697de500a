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
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
