// `{{name}}`: an HTTP service with state. Every `GET /` adds one to the
// `visits` counter in the function's own store (keys are private to the
// function's namespace and app) and answers the new count; `GET /reset`
// deletes it.
import { Response, serve } from "hearth-http";
import { Store } from "hearth:function/state@0.1.0";

export const incomingHandler = serve((request) => {
  const store = Store.open("");
  if (request.path === "/reset") {
    store.delete("visits", { tag: "none" });
    return Response.text(200, "reset\n");
  }
  const visits = store.increment("visits", 1n);
  return Response.text(200, `visits: ${visits}\n`);
});
