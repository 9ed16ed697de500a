// `hello` in JavaScript: the same answers as functions/hello (Rust).
// Answers every request with a greeting and the value of the `GREETING`
// environment variable (default "Hello").
import { Response, serve } from "hearth-http";
import { getEnvironment } from "wasi:cli/environment@0.2.12";

export const incomingHandler = serve(() => {
  const greeting = new Map(getEnvironment()).get("GREETING") ?? "Hello";
  return Response.text(200, `${greeting} from Hearth!\n`);
});
