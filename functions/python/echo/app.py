"""`echo` in Python: the same answers as functions/echo (Rust).

Returns the request body as the response body, each request header `h` as
response header `x-echo-h`, and the method and path as `x-echo-method` and
`x-echo-path`.
"""

from hearth_http import Request, Response, Service, export


class Echo(Service):
    def handle(self, request: Request) -> Response:
        response = Response(200)
        response.with_header("x-echo-method", request.method)
        response.with_header("x-echo-path", request.path_with_query)
        for name, value in request.headers:
            response.with_header(f"x-echo-{name}", value)
        if request.path == "/raise":
            raise ValueError("echo was asked to fail")
        response.body = request.body
        return response


IncomingHandler = export(Echo())
