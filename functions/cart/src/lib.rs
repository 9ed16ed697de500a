//! `cart`: a shopping cart on `hearth:function/state`: etag-guarded
//! read-modify-write and an atomic checkout transaction.
//!
//! * `POST /add?user=U&sku=S&qty=N`: reads `cart:U` with its etag, adds
//!   the item, writes back `if-match` (or `if-absent` for a new cart),
//!   retrying on `etag-mismatch`; answers the cart and `x-retries`.
//! * `GET /cart?user=U`: the cart (`sku qty` lines) and its `etag` header.
//! * `POST /checkout?user=U[&etag=E]`: one transaction: delete `cart:U` if
//!   it still has etag `E` (the cart the shopper saw; default: the etag
//!   just read) and create `order:U:<etag>`. A cart changed since: 409
//!   `transaction-conflict`, and neither write happened.
//! * `POST /set?key=K[&ttl_ms=T][&if_match=E]` (body: value), `GET /get?key=K`,
//!   `DELETE /key?key=K`, `GET /keys?prefix=P[&cursor=C][&limit=N]`: the
//!   raw calls, for tests.
//! * `?store=LABEL` on any of them opens that store instead of the app's own.
//!
//! Errors answer `<status> <error-name>: <message>`: invalid-key 400,
//! invalid-ttl 400, too-many-operations 400, no-such-store 403,
//! etag-mismatch 412, transaction-conflict 409, value-too-large 413,
//! not-a-number 422, unavailable 503.

use hearth_sdk::http::{Request, Response, Service};
use hearth_sdk::state::{DeleteOperation, Error, Operation, Precondition, SetOperation, Store};
use std::collections::BTreeMap;

struct Cart;

fn failure(error: Error) -> Response {
    let (status, name, message) = match error {
        Error::InvalidKey(m) => (400, "invalid-key", m),
        Error::InvalidTtl(m) => (400, "invalid-ttl", m),
        Error::TooManyOperations(m) => (400, "too-many-operations", m),
        Error::NoSuchStore(m) => (403, "no-such-store", m),
        Error::EtagMismatch(m) => (412, "etag-mismatch", m),
        Error::TransactionConflict(m) => (409, "transaction-conflict", m),
        Error::ValueTooLarge(m) => (413, "value-too-large", m),
        Error::NotANumber(m) => (422, "not-a-number", m),
        Error::Unavailable(m) => (503, "unavailable", m),
    };
    Response::text(status, format!("{name}: {message}\n"))
}

fn parse(value: &[u8]) -> BTreeMap<String, u64> {
    String::from_utf8_lossy(value)
        .lines()
        .filter_map(|line| {
            let (sku, qty) = line.split_once(' ')?;
            Some((sku.to_string(), qty.parse().ok()?))
        })
        .collect()
}

fn render(items: &BTreeMap<String, u64>) -> String {
    items
        .iter()
        .map(|(sku, qty)| format!("{sku} {qty}\n"))
        .collect()
}

fn add(store: &Store, user: &str, sku: &str, qty: u64) -> Result<(String, u32), Error> {
    let key = format!("cart:{user}");
    let mut retries = 0;
    loop {
        let current = store.get(&key)?;
        let (mut items, precondition) = match &current {
            Some(entry) => (
                parse(&entry.value),
                Precondition::IfMatch(entry.etag.clone()),
            ),
            None => (BTreeMap::new(), Precondition::IfAbsent),
        };
        *items.entry(sku.to_string()).or_default() += qty;
        let cart = render(&items);
        match store.set(&key, cart.as_bytes(), &precondition, None) {
            Ok(_) => return Ok((cart, retries)),
            Err(Error::EtagMismatch(_)) => retries += 1,
            Err(other) => return Err(other),
        }
    }
}

fn checkout(store: &Store, user: &str, seen: Option<String>) -> Result<Response, Error> {
    let key = format!("cart:{user}");
    let Some(mut cart) = store.get(&key)? else {
        return Ok(Response::text(404, "no cart\n"));
    };
    if let Some(seen) = seen {
        cart.etag = seen;
    }
    let order = format!("order:{user}:{}", cart.etag);
    store.transact(&[
        Operation::Delete(DeleteOperation {
            key: key.clone(),
            precondition: Precondition::IfMatch(cart.etag.clone()),
        }),
        Operation::Set(SetOperation {
            key: order.clone(),
            value: cart.value,
            precondition: Precondition::IfAbsent,
            ttl_ms: None,
        }),
    ])?;
    Ok(Response::text(200, format!("{order}\n")))
}

fn handle(request: &Request) -> Result<Response, Error> {
    let store = Store::open(&request.query("store").unwrap_or_default())?;
    let user = request.query("user").unwrap_or_else(|| "anonymous".into());
    let key = request.query("key").unwrap_or_default();
    Ok(match (request.method.as_str(), request.path()) {
        ("POST", "/add") => {
            let sku = request.query("sku").unwrap_or_else(|| "item".into());
            let qty = request
                .query("qty")
                .and_then(|q| q.parse().ok())
                .unwrap_or(1);
            let (cart, retries) = add(&store, &user, &sku, qty)?;
            Response::text(200, cart).with_header("x-retries", retries.to_string())
        }
        ("GET", "/cart") => match store.get(&format!("cart:{user}"))? {
            Some(entry) => Response::new(200)
                .with_header("etag", &entry.etag)
                .with_body(entry.value),
            None => Response::text(404, "no cart\n"),
        },
        ("POST", "/checkout") => checkout(&store, &user, request.query("etag"))?,
        ("POST", "/set") => {
            let ttl_ms = request.query("ttl_ms").and_then(|t| t.parse().ok());
            let precondition = match request.query("if_match") {
                Some(etag) => Precondition::IfMatch(etag),
                None => Precondition::None,
            };
            let etag = store.set(&key, &request.body, &precondition, ttl_ms)?;
            Response::text(200, format!("{etag}\n")).with_header("etag", &etag)
        }
        ("GET", "/get") => match store.get(&key)? {
            Some(entry) => Response::new(200)
                .with_header("etag", &entry.etag)
                .with_body(entry.value),
            None => Response::text(404, "absent\n"),
        },
        ("DELETE", "/key") => {
            let existed = store.delete(&key, &Precondition::None)?;
            Response::text(200, format!("{existed}\n"))
        }
        ("GET", "/keys") => {
            let limit = request
                .query("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100);
            let page = store.list_keys(
                &request.query("prefix").unwrap_or_default(),
                request.query("cursor").as_deref(),
                limit,
            )?;
            let mut response = Response::text(200, page.keys.join("\n") + "\n");
            if let Some(cursor) = page.cursor {
                response = response.with_header("x-cursor", cursor);
            }
            response
        }
        _ => Response::text(404, "not found\n"),
    })
}

impl Service for Cart {
    fn handle(request: Request) -> Response {
        handle(&request).unwrap_or_else(failure)
    }
}

hearth_sdk::export_service!(Cart);
