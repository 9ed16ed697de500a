// HTTP services for Hearth in JavaScript: export a handler made by `serve`.
//
//   import { Response, serve } from "hearth-http";
//   export const incomingHandler = serve((request) => Response.text(200, "Hello from Hearth!\n"));
//
// The request body is read whole before the handler runs and the response
// body is written whole after it returns (as the Rust SDK's
// `hearth_sdk::http`). An exception thrown by the handler becomes a 500 whose
// body is the exception's name and message, and the host keeps serving.
// `build.mjs` inlines this file into the app (the `import ... from
// "hearth-http"` line) and builds a component for `hearth:function/service`.

// Internal names start with `__hearth`: build.mjs pastes this file in front
// of the app, so they share one scope.
import {
  Fields as __hearthFields,
  IncomingBody as __hearthIncomingBody,
  OutgoingBody as __hearthOutgoingBody,
  OutgoingResponse as __hearthOutgoingResponse,
  ResponseOutparam as __hearthResponseOutparam,
} from "wasi:http/types@0.2.12";

const __hearthEncoder = new TextEncoder();
const __hearthDecoder = new TextDecoder();

export class Request {
  constructor(method, pathWithQuery, headers, body) {
    this.method = method;
    this.pathWithQuery = pathWithQuery;
    this.headers = headers; // [[lowercase name, Uint8Array]]
    this.body = body; // Uint8Array
  }

  get path() {
    return this.pathWithQuery.split("?")[0];
  }

  query(name) {
    const query = this.pathWithQuery.split("?")[1] ?? "";
    return new URLSearchParams(query).get(name);
  }

  header(name) {
    const found = this.headers.find(([key]) => key === name.toLowerCase());
    return found ? __hearthDecoder.decode(found[1]) : null;
  }

  text() {
    return __hearthDecoder.decode(this.body);
  }
}

export class Response {
  constructor(status, headers = [], body = new Uint8Array()) {
    this.status = status;
    this.headers = headers;
    this.body = typeof body === "string" ? __hearthEncoder.encode(body) : body;
  }

  static text(status, text) {
    return new Response(status, [["content-type", __hearthEncoder.encode("text/plain; charset=utf-8")]], text);
  }

  withHeader(name, value) {
    this.headers.push([name, typeof value === "string" ? __hearthEncoder.encode(value) : value]);
    return this;
  }
}

const __HEARTH_METHODS = { get: "GET", head: "HEAD", post: "POST", put: "PUT", delete: "DELETE", connect: "CONNECT", options: "OPTIONS", trace: "TRACE", patch: "PATCH" };

function __hearthReadRequest(incoming) {
  const method = incoming.method();
  const name = method.tag === "other" ? method.val : __HEARTH_METHODS[method.tag];
  const headers = incoming.headers().entries().map(([key, value]) => [key.toLowerCase(), value]);
  const incomingBody = incoming.consume();
  const stream = incomingBody.stream();
  const chunks = [];
  let length = 0;
  for (;;) {
    let chunk;
    try {
      chunk = stream.blockingRead(64n * 1024n);
    } catch (error) {
      if (error?.payload?.tag === "closed") break;
      throw error;
    }
    chunks.push(chunk);
    length += chunk.length;
  }
  stream[Symbol.dispose]?.();
  __hearthIncomingBody.finish(incomingBody);
  const body = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.length;
  }
  return new Request(name, incoming.pathWithQuery() ?? "/", headers, body);
}

function __hearthWriteResponse(response, responseOut) {
  const outgoing = new __hearthOutgoingResponse(__hearthFields.fromList(response.headers));
  outgoing.setStatusCode(response.status);
  const body = outgoing.body();
  __hearthResponseOutparam.set(responseOut, { tag: "ok", val: outgoing });
  const stream = body.write();
  // blocking-write-and-flush takes at most 4096 bytes at a time.
  for (let start = 0; start < response.body.length; start += 4096) {
    stream.blockingWriteAndFlush(response.body.subarray(start, start + 4096));
  }
  stream[Symbol.dispose]?.();
  __hearthOutgoingBody.finish(body, undefined);
}

// The `incomingHandler` export, serving `handler(request) -> Response`.
export function serve(handler) {
  return {
    handle(incoming, responseOut) {
      let response;
      try {
        response = handler(__hearthReadRequest(incoming));
      } catch (error) {
        const message = `${error?.name ?? "Error"}: ${error?.message ?? error}\n`;
        console.error(`function threw ${message.trimEnd()}`);
        response = Response.text(500, message);
      }
      __hearthWriteResponse(response, responseOut);
    },
  };
}
