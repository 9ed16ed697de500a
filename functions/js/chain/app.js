// `chain` in JavaScript: one link of functions/invoke-chain's `GET /`
// (Rust), on `wasi:config` and `hearth:function/invoke`.
//
// Config: NAME (this link), NEXT (the function to call; none for the last
// link). The last link answers `NAME depth=D request-id=R`; the others call
// NEXT and answer `NAME -> <its answer>`. A failed call answers 502 with the
// invoke error.
import { Response, serve } from "hearth-http";
import { call } from "hearth:function/invoke@0.1.0";
import { get } from "wasi:config/store@0.2.0-rc.1";

export const incomingHandler = serve((request) => {
  const name = get("NAME") || "chain";
  const next = get("NEXT");
  if (!next) {
    const depth = request.header("x-hearth-invoke-depth") ?? "0";
    const requestId = request.header("x-request-id") ?? "-";
    return Response.text(200, `${name} depth=${depth} request-id=${requestId}\n`);
  }
  let reply;
  try {
    reply = call(next, { method: "GET", pathWithQuery: "/", headers: [], body: new Uint8Array() }, { timeoutMs: undefined, idempotent: false });
  } catch (error) {
    return Response.text(502, `${error?.payload?.tag ?? "error"}: ${error?.payload?.val ?? error}\n`);
  }
  return Response.text(reply.status, `${name} -> ${new TextDecoder().decode(reply.body)}`);
});
