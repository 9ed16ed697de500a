//! `echo`: returns the request body as the response body, each request
//! header `h` as response header `x-echo-h`, and the method and path as
//! `x-echo-method` and `x-echo-path`.

use hearth_sdk::http::{Request, Response, Service};

struct Echo;

impl Service for Echo {
    fn handle(request: Request) -> Response {
        let mut response = Response::new(200)
            .with_header("x-echo-method", &request.method)
            .with_header("x-echo-path", &request.path_with_query);
        for (name, value) in &request.headers {
            response = response.with_header(&format!("x-echo-{name}"), value);
        }
        response.with_body(request.body)
    }
}

hearth_sdk::export_service!(Echo);
