#!/usr/bin/env bash
# Builds the Kubernetes binaries the kube rig runs (kubelet, kube-apiserver,
# kube-scheduler, kube-controller-manager, kube-proxy, kubectl) from Debian
# bookworm's `kubernetes` source package (upstream v1.20.2 with its vendor/)
# with Debian's go 1.19, offline once the source package is downloaded.
#
# Output: $HEARTH_KUBE_CACHE/bin (default ~/.cache/hearth-kube/bin), outside
# the work tree. Idempotent: a second run with the binaries in place does
# nothing (delete the cache to rebuild). About 10 minutes cold on 2 cores.
set -euo pipefail
CACHE=${HEARTH_KUBE_CACHE:-$HOME/.cache/hearth-kube}
SRC=$CACHE/src
OUT=$CACHE/bin
PKGVER=1.20.5+really1.20.2-1.1+deb12u1
BINARIES=(kubelet kube-apiserver kube-scheduler kube-controller-manager kube-proxy kubectl)

have_all() {
  for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || return 1; done
}
if have_all; then
  echo "kube build: $OUT has ${BINARIES[*]} ($("$OUT/kubelet" --version))"
  exit 0
fi

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
need=()
for package in golang-1.19-go make rsync jq patch etcd-server openssl conntrack iptables; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || need+=("$package")
done
if ((${#need[@]})); then
  echo "kube build: installing ${need[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}"
fi

if [ ! -f "$SRC/go.mod" ]; then
  # deb-src is not in the machine's apt sources: use a private apt state
  # directory that lists the same mirrors as deb-src, leaving the system's
  # sources untouched.
  apt_dir=$(mktemp -d /tmp/hearth-kube-apt.XXXXXX)
  trap 'rm -rf "$apt_dir"' EXIT
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/dl" "$apt_dir/parts"
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$apt_dir/parts/src.sources"
  else
    grep -h '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >"$apt_dir/parts/src.list"
  fi
  apt_options=(-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$apt_dir/parts"
    -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache"
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
  apt-get "${apt_options[@]}" update -qq
  (cd "$apt_dir/dl" && apt-get "${apt_options[@]}" source --download-only "kubernetes=$PKGVER")
  mkdir -p "$SRC"
  tar xzf "$apt_dir"/dl/kubernetes_*.orig.tar.gz -C "$SRC" --strip-components=1
  tar xJf "$apt_dir"/dl/kubernetes_*.debian.tar.xz -C "$apt_dir/dl"
  while read -r patch_name; do
    [ -n "$patch_name" ] && patch -d "$SRC" -p1 -s <"$apt_dir/dl/debian/patches/$patch_name"
  done <"$apt_dir/dl/debian/patches/series"
fi

cat >"$SRC/.version-file" <<'VERSION'
KUBE_GIT_COMMIT='faecb196815e248d3ecfb03c680a4507229c2a56'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v1.20.2'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
VERSION
cd "$SRC"
export PATH=/usr/lib/go-1.19/bin:$PATH GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 \
  KUBE_GIT_VERSION_FILE="$SRC/.version-file"
started=$(date +%s)
what=""
for b in "${BINARIES[@]}"; do what+="cmd/$b "; done
# make runs the code generators (openapi and others) first.
nice -n 19 make WHAT="${what% }"
mkdir -p "$OUT"
for b in "${BINARIES[@]}"; do install -m 755 "_output/bin/$b" "$OUT/$b"; done
# The build cache is 1-2 GB and only speeds up a rebuild of the same tree.
rm -rf "$SRC/_output/local/go/cache"
echo "kube build: built in $(($(date +%s) - started)) s: $("$OUT/kubelet" --version)"
