"""HTTP services for Hearth in Python: subclass `Service`, export it.

    from hearth_http import Request, Response, Service, export

    class Hello(Service):
        def handle(self, request: Request) -> Response:
            return Response.text(200, "Hello from Hearth!\\n")

    IncomingHandler = export(Hello())

The request body is read whole before `handle` runs and the response body is
written whole after it returns (as the Rust SDK's `hearth_sdk::http`). An
exception raised by `handle` becomes a 500 whose body is the exception's type
and message, and the host keeps serving. Built against
`hearth:function/service` with componentize-py (see README.md).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from wit_world import exports
from wit_world.imports import wasi_http_types as http
from wit_world.imports.streams import StreamError_Closed
from componentize_py_types import Err, Ok

_METHODS = {
    http.Method_Get: "GET",
    http.Method_Head: "HEAD",
    http.Method_Post: "POST",
    http.Method_Put: "PUT",
    http.Method_Delete: "DELETE",
    http.Method_Connect: "CONNECT",
    http.Method_Options: "OPTIONS",
    http.Method_Trace: "TRACE",
    http.Method_Patch: "PATCH",
}


@dataclass
class Request:
    """An HTTP request, body included. Header names are lowercase."""

    method: str
    path_with_query: str
    headers: List[Tuple[str, bytes]]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.path_with_query).path

    def query(self, name: str) -> Optional[str]:
        values = parse_qs(urlsplit(self.path_with_query).query).get(name)
        return values[0] if values else None

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value.decode("utf-8", "replace")
        return None


@dataclass
class Response:
    """An HTTP response, body included."""

    status: int
    headers: List[Tuple[str, bytes]] = field(default_factory=list)
    body: bytes = b""

    @staticmethod
    def text(status: int, body: str) -> "Response":
        return Response(status, [("content-type", b"text/plain; charset=utf-8")], body.encode())

    def with_header(self, name: str, value) -> "Response":
        if isinstance(value, str):
            value = value.encode()
        self.headers.append((name, value))
        return self


class Service:
    """Implement `handle`."""

    def handle(self, request: Request) -> Response:
        raise NotImplementedError


def _read_request(incoming: http.IncomingRequest) -> Request:
    method = incoming.method()
    name = _METHODS.get(type(method))
    if name is None:
        name = method.value  # Method_Other
    headers = [(k.lower(), v) for k, v in incoming.headers().entries()]
    body = bytearray()
    incoming_body = incoming.consume()
    with incoming_body.stream() as stream:
        while True:
            try:
                body += stream.blocking_read(64 * 1024)
            except Err as error:
                if isinstance(error.value, StreamError_Closed):
                    break
                raise
    http.IncomingBody.finish(incoming_body)
    return Request(name, incoming.path_with_query() or "/", headers, bytes(body))


def _write_response(response: Response, out: http.ResponseOutparam) -> None:
    outgoing = http.OutgoingResponse(http.Fields.from_list(response.headers))
    outgoing.set_status_code(response.status)
    body = outgoing.body()
    http.ResponseOutparam.set(out, Ok(outgoing))
    with body.write() as stream:
        data = response.body
        # blocking-write-and-flush takes at most 4096 bytes at a time.
        for start in range(0, len(data), 4096):
            stream.blocking_write_and_flush(data[start : start + 4096])
    http.OutgoingBody.finish(body, None)


def export(service: Service):
    """The `IncomingHandler` class componentize-py looks for, serving `service`."""

    class IncomingHandler(exports.IncomingHandler):
        def handle(self, request: http.IncomingRequest, response_out: http.ResponseOutparam) -> None:
            try:
                response = service.handle(_read_request(request))
            except Exception as error:  # noqa: BLE001 - the caller gets it as a 500
                message = f"{type(error).__name__}: {error}\n"
                print(f"function raised {message}", end="", file=__import__("sys").stderr)
                response = Response.text(500, message)
            _write_response(response, response_out)

    return IncomingHandler
