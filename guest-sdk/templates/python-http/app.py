"""`{{name}}`: an HTTP service. `hearth up` serves it on
http://127.0.0.1:8080; `GREETING` (`hearth up --env GREETING=Hi`) changes
the greeting."""

import os

from hearth_http import Request, Response, Service, export


class Function(Service):
    def handle(self, request: Request) -> Response:
        greeting = os.environ.get("GREETING", "Hello")
        return Response.text(200, f"{greeting} from {{name}} at {request.path}\n")


IncomingHandler = export(Function())
