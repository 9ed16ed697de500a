// `cart` in JavaScript: the same answers as functions/cart (Rust) for
// `/add`, `/cart` and `/checkout`, on `hearth:function/state`.
//
// * POST /add?user=U&sku=S&qty=N: etag-guarded read-modify-write of `cart:U`,
//   retried on `etag-mismatch`; answers the cart.
// * GET /cart?user=U: the cart (`sku qty` lines), 404 if none.
// * POST /checkout?user=U: one transaction: delete the cart if unchanged and
//   create `order:U:<etag>`; answers the order key.
import { Response, serve } from "hearth-http";
import { Store } from "hearth:function/state@0.1.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function parse(value) {
  const items = new Map();
  for (const line of decoder.decode(value).split("\n")) {
    if (!line) continue;
    const [sku, qty] = line.split(" ");
    items.set(sku, Number(qty));
  }
  return items;
}

function render(items) {
  return [...items.keys()].sort().map((sku) => `${sku} ${items.get(sku)}\n`).join("");
}

function add(store, user, sku, qty) {
  const key = `cart:${user}`;
  for (;;) {
    const entry = store.get(key);
    const items = entry ? parse(entry.value) : new Map();
    const precondition = entry ? { tag: "if-match", val: entry.etag } : { tag: "if-absent" };
    items.set(sku, (items.get(sku) ?? 0) + qty);
    const cart = render(items);
    try {
      store.set(key, encoder.encode(cart), precondition, undefined);
      return cart;
    } catch (error) {
      if (error?.payload?.tag !== "etag-mismatch") throw error;
    }
  }
}

export const incomingHandler = serve((request) => {
  const store = Store.open("");
  const user = request.query("user") ?? "anonymous";
  const key = `cart:${user}`;
  if (request.method === "POST" && request.path === "/add") {
    const qty = Number(request.query("qty") ?? "1");
    return Response.text(200, add(store, user, request.query("sku") ?? "item", qty));
  }
  if (request.method === "GET" && request.path === "/cart") {
    const entry = store.get(key);
    if (!entry) return Response.text(404, "no cart\n");
    return new Response(200, [], entry.value).withHeader("etag", entry.etag);
  }
  if (request.method === "POST" && request.path === "/checkout") {
    const entry = store.get(key);
    if (!entry) return Response.text(404, "no cart\n");
    const order = `order:${user}:${entry.etag}`;
    try {
      store.transact([
        { tag: "delete", val: { key, precondition: { tag: "if-match", val: entry.etag } } },
        { tag: "set", val: { key: order, value: entry.value, precondition: { tag: "if-absent" }, ttlMs: undefined } },
      ]);
    } catch (error) {
      if (error?.payload?.tag === "transaction-conflict") {
        return Response.text(409, `transaction-conflict: ${error.payload.val}\n`);
      }
      throw error;
    }
    return Response.text(200, `${order}\n`);
  }
  return Response.text(404, "not found\n");
});
