//! `hello`: answers every request with a greeting and the value of the
//! `GREETING` environment variable (default "Hello").
//!
//! ```sh
//! hearth run hello.wasm --env GREETING=Hi && curl localhost:8080   # Hi from Hearth!
//! ```

use hearth_sdk::http::{Request, Response, Service};

struct Hello;

impl Service for Hello {
    fn handle(_request: Request) -> Response {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
        Response::text(200, format!("{greeting} from Hearth!\n"))
    }
}

hearth_sdk::export_service!(Hello);
