// `{{name}}`: a job. `hearth up` runs it once; what it prints is the
// terminal's, and its exit status is `hearth up`'s (a thrown error: 1). In
// Kubernetes it is a Job's container.
import { getEnvironment } from "wasi:cli/environment@0.2.12";

export const run = {
  run() {
    const who = new Map(getEnvironment()).get("WHO") ?? "world";
    console.log(`Hello, ${who}, from {{name}}!`);
  },
};
