"""`hello` in Python: the same answers as functions/hello (Rust).

Answers every request with a greeting and the value of the `GREETING`
environment variable (default "Hello").
"""

import os

from hearth_http import Request, Response, Service, export


class Hello(Service):
    def handle(self, request: Request) -> Response:
        greeting = os.environ.get("GREETING", "Hello")
        return Response.text(200, f"{greeting} from Hearth!\n")


IncomingHandler = export(Hello())
