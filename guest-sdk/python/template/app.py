"""A new Hearth function in Python. Rename, edit `handle`, build with
componentize-py (see guest-sdk/python/README.md)."""

from hearth_http import Request, Response, Service, export


class Function(Service):
    def handle(self, request: Request) -> Response:
        return Response.text(200, f"Hello from a new Hearth function at {request.path}\n")


IncomingHandler = export(Function())
