"""`{{name}}`: a job. `hearth up` runs it once; its stdout and stderr are
the terminal's, and its exit status is `hearth up`'s (an exception: 1). In
Kubernetes it is a Job's container."""

import os
import sys

from wit_world import exports


class Run(exports.Run):
    def run(self) -> None:
        who = os.environ.get("WHO", "world")
        data = sys.stdin.buffer.read()
        print(f"Hello, {who}, from {{name}}! stdin had {len(data)} bytes")
