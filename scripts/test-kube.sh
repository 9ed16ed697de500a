#!/usr/bin/env bash
# Hearth under a real kubelet, API server and kubectl (Kubernetes 1.20 built
# from Debian's source package): the scenarios in tests/kube/tests/kube.rs.
# Needs root. Builds Kubernetes once into ~/.cache/hearth-kube (about 10
# minutes on 2 cores; $HEARTH_KUBE_CACHE moves it), then runs every scenario
# against one cluster. Arguments pick scenarios by substring.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" \
  || DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq busybox-static
tests/kube/build.sh
cargo test -p hearth-kube-tests --features kube --test kube -- "$@"
