// `echo` in JavaScript: the same answers as functions/echo (Rust): the
// request body as the response body, each request header `h` as `x-echo-h`,
// the method and path as `x-echo-method` and `x-echo-path`. `/raise` throws.
import { Response, serve } from "hearth-http";

export const incomingHandler = serve((request) => {
  const response = new Response(200)
    .withHeader("x-echo-method", request.method)
    .withHeader("x-echo-path", request.pathWithQuery);
  for (const [name, value] of request.headers) {
    response.withHeader(`x-echo-${name}`, value);
  }
  if (request.path === "/raise") {
    throw new TypeError("echo was asked to fail");
  }
  response.body = request.body;
  return response;
});
