//! `hello-p3`: `hello` as a WASI 0.3 service (an async handler): answers
//! every request with a greeting and the value of `GREETING` (default
//! "Hello").
//!
//! ```sh
//! hearth run hello_p3.wasm --env GREETING=Hi && curl localhost:8080   # Hi from Hearth!
//! ```

use hearth_sdk::p3::{self, ErrorCode, Request, Response, Service};

struct Hello;

impl Service for Hello {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
        p3::text(200, format!("{greeting} from Hearth!\n"))
    }
}

hearth_sdk::export_p3_service!(Hello);
