// A new Hearth function in JavaScript. Rename, edit the handler, build with
// `node guest-sdk/js/build.mjs app.js app.wasm` (see guest-sdk/js/README.md).
import { Response, serve } from "hearth-http";

export const incomingHandler = serve((request) =>
  Response.text(200, `Hello from a new Hearth function at ${request.path}\n`),
);
