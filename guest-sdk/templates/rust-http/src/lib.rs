//! `{{name}}`: an HTTP service. `hearth up` serves it on
//! http://127.0.0.1:8080; `GREETING` (`hearth up --env GREETING=Hi`)
//! changes the greeting.

use hearth_sdk::http::{Request, Response, Service};

struct Function;

impl Service for Function {
    fn handle(request: Request) -> Response {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
        Response::text(200, format!("{greeting} from {{name}} at {}\n", request.path()))
    }
}

hearth_sdk::export_service!(Function);
