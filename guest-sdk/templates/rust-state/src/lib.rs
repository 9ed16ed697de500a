//! `{{name}}`: an HTTP service with state. Every `GET /` adds one to the
//! `visits` counter in the function's own store (keys are private to the
//! function's namespace and app) and answers the new count; `GET /reset`
//! deletes it.

use hearth_sdk::http::{Request, Response, Service};
use hearth_sdk::state;

struct Function;

impl Service for Function {
    fn handle(request: Request) -> Response {
        let store = match state::Store::open("") {
            Ok(store) => store,
            Err(error) => return Response::text(503, format!("no state store: {error:?}\n")),
        };
        match request.path() {
            "/reset" => match store.delete("visits", &state::Precondition::None) {
                Ok(_) => Response::text(200, "reset\n"),
                Err(error) => Response::text(503, format!("state: {error:?}\n")),
            },
            _ => match store.increment("visits", 1) {
                Ok(visits) => Response::text(200, format!("visits: {visits}\n")),
                Err(error) => Response::text(503, format!("state: {error:?}\n")),
            },
        }
    }
}

hearth_sdk::export_service!(Function);
