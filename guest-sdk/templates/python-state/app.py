"""`{{name}}`: an HTTP service with state. Every `GET /` adds one to the
`visits` counter in the function's own store (keys are private to the
function's namespace and app) and answers the new count; `GET /reset`
deletes it."""

from hearth_http import Request, Response, Service, export
from wit_world.imports import state


class Function(Service):
    def handle(self, request: Request) -> Response:
        store = state.Store.open("")
        if request.path == "/reset":
            store.delete("visits", state.Precondition_None_())
            return Response.text(200, "reset\n")
        visits = store.increment("visits", 1)
        return Response.text(200, f"visits: {visits}\n")


IncomingHandler = export(Function())
