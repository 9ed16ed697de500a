// Builds a JavaScript function into a component for `hearth:function/service`:
//
//   node guest-sdk/js/build.mjs app.js app.wasm
//
// The app's `import ... from "hearth-http"` line is replaced by
// guest-sdk/js/hearth-http.js itself (componentize-js takes one module), then
// @bytecodealliance/componentize-js (pinned in package.json) builds it
// against the WIT in wit/ (or $HEARTH_WIT).
import { componentize } from "@bytecodealliance/componentize-js";
import { readFile, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const [entry, out, world = "hearth:function/service"] = process.argv.slice(2);
if (!entry || !out) {
  console.error("usage: node build.mjs APP.js OUT.wasm [WORLD]");
  process.exit(2);
}
const sdk = await readFile(join(here, "hearth-http.js"), "utf8");
let app = await readFile(entry, "utf8");
const sdkImport = /^import\s*\{[^}]*\}\s*from\s*["']hearth-http["'];?\s*$/m;
if (sdkImport.test(app)) {
  app = `${sdk}\n// ---- ${entry}\n${app.replace(sdkImport, "")}`;
}
const { component } = await componentize(app, {
  witPath: process.env.HEARTH_WIT ?? join(here, "..", "..", "wit"),
  worldName: world,
  sourceName: basename(entry),
});
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes`);
