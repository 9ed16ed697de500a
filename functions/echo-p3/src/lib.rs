//! `echo-p3`: streams the request body back as the response body, with the
//! request's `content-type` and its trailers (declared, as HTTP/1.1 asks,
//! in the `trailer` header it copies too) (WASI 0.3). Nothing is buffered:
//! the request's body stream becomes the response's.

use hearth_sdk::p3::{ErrorCode, Fields, Request, Response, Service, spawn_local, wit_future};

struct Echo;

impl Service for Echo {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let incoming = request.get_headers();
        let copied: Vec<(String, Vec<u8>)> = ["content-type", "trailer"]
            .into_iter()
            .flat_map(|name| {
                incoming
                    .get(name)
                    .into_iter()
                    .map(move |value| (name.to_string(), value))
            })
            .collect();
        let headers = Fields::from_list(&copied)
            .map_err(|e| ErrorCode::InternalError(Some(format!("{e:?}"))))?;
        // The request body's fate is the response body's: if sending the
        // response fails, so does reading the request.
        let (read_result, read_outcome) = wit_future::new(|| Ok(()));
        let (body, trailers) = Request::consume_body(request, read_outcome);
        let (response, sent) = Response::new(headers, Some(body), trailers);
        spawn_local(async move {
            let _ = read_result.write(sent.await).await;
        });
        Ok(response)
    }
}

hearth_sdk::export_p3_service!(Echo);
