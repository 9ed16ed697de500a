"""`hello-p3` in Python: `hello` as a WASI 0.3 service (an async handler).

Built for `hearth:p3/service` (this directory's `world` file):
`handle` is a coroutine, and one instance serves many requests at once.
Answers every request with a greeting and the value of the `GREETING`
environment variable (default "Hello").
"""

import os

import componentize_py_async_support
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.wasi_http_types import Fields, Request, Response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        greeting = os.environ.get("GREETING", "Hello")
        body = f"{greeting} from Hearth!\n".encode()
        writer, reader = wit_world.byte_stream()
        trailers_writer, trailers = (
            wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
                lambda: Ok(None)
            )
        )
        trailers_writer.__exit__(None, None, None)
        headers = Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
        response, _sent = Response.new(headers, reader, trailers)

        async def write_body() -> None:
            with writer:
                await writer.write_all(body)

        componentize_py_async_support.spawn(write_body())
        return response
