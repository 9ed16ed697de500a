#!/usr/bin/env bash
# Builds the Python and JavaScript functions in functions/python/* and
# functions/js/* into components for hearth:function/service (or the world
# named in the function's `world` file: hearth:p3/service, from wit/p3, for
# a WASI 0.3 Python function):
#
#   scripts/build-guests.sh OUT_DIR TOOLS_DIR
#
# OUT_DIR gets py-NAME.wasm and js-NAME.wasm (and py-template.wasm,
# js-template.wasm from the guides' templates). TOOLS_DIR caches the pinned
# tools: a venv with componentize-py (guest-sdk/python/requirements.txt) and
# node_modules with @bytecodealliance/componentize-js
# (guest-sdk/js/package-lock.json). They are downloaded on the first run
# only; later runs are offline. A component is rebuilt only when its
# function, its SDK or wit/ changed. tests/testkit's build step runs this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: build-guests.sh OUT_DIR TOOLS_DIR}
tools=${2:?usage: build-guests.sh OUT_DIR TOOLS_DIR}
mkdir -p "$out" "$tools"
out=$(cd "$out" && pwd)
tools=$(cd "$tools" && pwd)
# componentize-py imports the app; keep bytecode out of the source tree.
export PYTHONDONTWRITEBYTECODE=1

# Whether $1 is missing or older than anything under the other arguments.
stale() {
  local target=$1
  shift
  [ ! -f "$target" ] || [ -n "$(find "$@" -newer "$target" -type f -not -path '*/__pycache__/*' -print -quit)" ]
}

command -v python3 >/dev/null || { echo "build-guests: python3 is missing (scripts/setup.sh installs it)" >&2; exit 1; }
command -v node >/dev/null || { echo "build-guests: node is missing (scripts/setup.sh installs nodejs)" >&2; exit 1; }

# Python: componentize-py in a venv of its own.
py="$tools/python"
want_py=$(sed -n 's/^componentize-py==//p' "$root/guest-sdk/python/requirements.txt")
if ! "$py/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $want_py"; then
  echo "build-guests: installing componentize-py $want_py into $py" >&2
  rm -rf "$py"
  python3 -m venv "$py"
  "$py/bin/pip" install --quiet --disable-pip-version-check -r "$root/guest-sdk/python/requirements.txt"
fi
for dir in "$root"/functions/python/*/ "$root/guest-sdk/python/template/"; do
  name=$(basename "$dir")
  wasm="$out/py-$name.wasm"
  if stale "$wasm" "${dir%/}" "$root/guest-sdk/python" "$root/wit"; then
    echo "build-guests: functions/python/$name -> $wasm" >&2
    wit=(-d "$root/wit") world=hearth:function/service
    if [ -f "$dir/world" ]; then
      world=$(cat "$dir/world")
      wit+=(-d "$root/wit/p3")
    fi
    (cd "$tools" && "$py/bin/componentize-py" "${wit[@]}" -w "$world" \
      componentize app -p "$dir" -p "$root/guest-sdk/python" -o "$wasm.tmp" >/dev/null)
    mv "$wasm.tmp" "$wasm"
  fi
done

# JavaScript: componentize-js from the pinned package-lock.json.
js="$tools/js"
mkdir -p "$js"
if ! cmp -s "$root/guest-sdk/js/package-lock.json" "$js/package-lock.json" \
  || [ ! -d "$js/node_modules/@bytecodealliance/componentize-js" ]; then
  echo "build-guests: installing componentize-js into $js" >&2
  cp "$root/guest-sdk/js/package.json" "$root/guest-sdk/js/package-lock.json" "$js/"
  # `npm ci` refuses this lock (npm leaves optional per-platform packages out
  # of it); `npm install` installs exactly the locked versions all the same.
  (cd "$js" && npm install --silent --no-audit --no-fund --no-save)
fi
cp "$root/guest-sdk/js/build.mjs" "$root/guest-sdk/js/hearth-http.js" "$js/"
for dir in "$root"/functions/js/*/ "$root/guest-sdk/js/template/"; do
  name=$(basename "$dir")
  wasm="$out/js-$name.wasm"
  if stale "$wasm" "$dir" "$root/guest-sdk/js" "$root/wit"; then
    echo "build-guests: functions/js/$name -> $wasm" >&2
    HEARTH_WIT="$root/wit" node "$js/build.mjs" "$dir/app.js" "$wasm.tmp" >/dev/null
    mv "$wasm.tmp" "$wasm"
  fi
done
