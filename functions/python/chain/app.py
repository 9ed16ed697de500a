"""`chain` in Python: one link of functions/invoke-chain's `GET /` (Rust),
on `wasi:config` and `hearth:function/invoke`.

Config: `NAME` (this link), `NEXT` (the function to call; none for the last
link). The last link answers `NAME depth=D request-id=R`; the others call
`NEXT` and answer `NAME -> <its answer>`. A failed call answers 502 with the
invoke error.
"""

from componentize_py_types import Err
from hearth_http import Request, Response, Service, export
from wit_world.imports import invoke, wasi_config_store as config


class Chain(Service):
    def handle(self, request: Request) -> Response:
        name = config.get("NAME") or "chain"
        following = config.get("NEXT")
        if not following:
            depth = request.header("x-hearth-invoke-depth") or "0"
            request_id = request.header("x-request-id") or "-"
            return Response.text(200, f"{name} depth={depth} request-id={request_id}\n")
        try:
            reply = invoke.call(
                following,
                invoke.Request("GET", "/", [], b""),
                invoke.Options(None, False),
            )
        except Err as error:
            return Response.text(502, f"{type(error.value).__name__}: {error.value.value}\n")
        return Response.text(reply.status, f"{name} -> {reply.body.decode()}")


IncomingHandler = export(Chain())
