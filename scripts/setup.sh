#!/usr/bin/env bash
# Installs what building and testing Hearth needs on a fresh Debian machine:
# Debian packages, and the wasm32-wasip2 target plus rustfmt/clippy for the
# toolchain pinned in rust-toolchain.toml. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build, the tests and the README's example need.
# docker-registry and skopeo: the OCI tests push to and pull from a real registry.
# protobuf-compiler: the control API is generated from control/proto; iproute2: netns tests.
# redis-server, postgresql, nats-server: the state and messaging backends are
# tested against real servers the tests start.
# containerd, runc, containernetworking-plugins: the shim tests drive a private
# containerd (ctr and CRI) with Pod networking through the ptp CNI plugin.
# libibverbs-dev, librdmacm-dev, rdma-core, ibverbs-providers, cmake,
# libclang-dev: hearth-blob's `rdma` feature (sideway builds rdma-core's
# headers with cmake and bindgen; soft-RoCE `rxe` needs the providers).
APT_PACKAGES=(curl ca-certificates pkg-config docker-registry skopeo protobuf-compiler iproute2
  containerd runc containernetworking-plugins redis-server postgresql nats-server
  libibverbs-dev librdmacm-dev rdma-core ibverbs-providers cmake libclang-dev)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# Python and JavaScript guests (scripts/build-guests.sh): python3 with venv
# and node with npm. Checked by command, not package: a node from another
# source (e.g. NodeSource) already brings npm.
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi

# rustup does not add targets to a toolchain that is already installed, so
# ask for them explicitly (the channel comes from rust-toolchain.toml).
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain install "$toolchain" --profile minimal --no-self-update >/dev/null 2>&1 || true
rustup target add --toolchain "$toolchain" wasm32-wasip2 >/dev/null
rustup component add --toolchain "$toolchain" rustfmt clippy >/dev/null

# The S3-compatible server the blob storage tests start: moto's standalone
# server (PyPI, pinned in tests/testkit/s3-requirements.txt), in a venv of
# its own. See the README for why this one.
moto=target/tools/moto
want_moto=$(sed -n 's/^moto\[server\]==//p' tests/testkit/s3-requirements.txt)
if ! "$moto/bin/python" -c "import sys, moto; sys.exit(moto.__version__ != '$want_moto')" 2>/dev/null; then
  echo "setup: installing moto[server] $want_moto into $moto"
  rm -rf "$moto"
  python3 -m venv "$moto"
  "$moto/bin/pip" install --quiet --disable-pip-version-check -r tests/testkit/s3-requirements.txt
fi
