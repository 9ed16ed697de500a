// `{{name}}`: an HTTP service. `hearth up` serves it on
// http://127.0.0.1:8080; `GREETING` (`hearth up --env GREETING=Hi`) changes
// the greeting.
import { Response, serve } from "hearth-http";
import { getEnvironment } from "wasi:cli/environment@0.2.12";

export const incomingHandler = serve((request) => {
  const greeting = new Map(getEnvironment()).get("GREETING") ?? "Hello";
  return Response.text(200, `${greeting} from {{name}} at ${request.path}\n`);
});
