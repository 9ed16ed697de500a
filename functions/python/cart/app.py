"""`cart` in Python: the same answers as functions/cart (Rust) for `/add`,
`/cart` and `/checkout`, on `hearth:function/state`.

* `POST /add?user=U&sku=S&qty=N`: etag-guarded read-modify-write of
  `cart:U`, retried on `etag-mismatch`; answers the cart.
* `GET /cart?user=U`: the cart (`sku qty` lines), 404 if none.
* `POST /checkout?user=U`: one transaction: delete the cart if unchanged and
  create `order:U:<etag>`; answers the order key.
"""

from componentize_py_types import Err
from hearth_http import Request, Response, Service, export
from wit_world.imports import state


def parse(value: bytes) -> dict:
    items = {}
    for line in value.decode().splitlines():
        sku, _, qty = line.partition(" ")
        items[sku] = int(qty)
    return items


def render(items: dict) -> str:
    return "".join(f"{sku} {qty}\n" for sku, qty in sorted(items.items()))


def add(store: state.Store, user: str, sku: str, qty: int) -> str:
    key = f"cart:{user}"
    while True:
        entry = store.get(key)
        if entry is None:
            items, precondition = {}, state.Precondition_IfAbsent()
        else:
            items, precondition = parse(entry.value), state.Precondition_IfMatch(entry.etag)
        items[sku] = items.get(sku, 0) + qty
        cart = render(items)
        try:
            store.set(key, cart.encode(), precondition, None)
            return cart
        except Err as error:
            if not isinstance(error.value, state.Error_EtagMismatch):
                raise


class Cart(Service):
    def handle(self, request: Request) -> Response:
        store = state.Store.open("")
        user = request.query("user") or "anonymous"
        key = f"cart:{user}"
        if request.method == "POST" and request.path == "/add":
            qty = int(request.query("qty") or "1")
            return Response.text(200, add(store, user, request.query("sku") or "item", qty))
        if request.method == "GET" and request.path == "/cart":
            entry = store.get(key)
            if entry is None:
                return Response.text(404, "no cart\n")
            return Response(200, [("etag", entry.etag.encode())], entry.value)
        if request.method == "POST" and request.path == "/checkout":
            entry = store.get(key)
            if entry is None:
                return Response.text(404, "no cart\n")
            order = f"order:{user}:{entry.etag}"
            try:
                store.transact(
                    [
                        state.Operation_Delete(
                            state.DeleteOperation(key, state.Precondition_IfMatch(entry.etag))
                        ),
                        state.Operation_Set(
                            state.SetOperation(order, entry.value, state.Precondition_IfAbsent(), None)
                        ),
                    ]
                )
            except Err as error:
                if isinstance(error.value, state.Error_TransactionConflict):
                    return Response.text(409, f"transaction-conflict: {error.value.value}\n")
                raise
            return Response.text(200, f"{order}\n")
        return Response.text(404, "not found\n")


IncomingHandler = export(Cart())
