#!/usr/bin/env bash
# Builds what the RDMA VM boots: Debian's stock kernel (the one
# `linux-image-amd64` names, which has `rdma_rxe`), unpacked into a cache
# without touching the host's /boot or /lib/modules, and a small initramfs
# (busybox, the kernel modules soft-RoCE, virtio-net and 9p need, and
# tests/rdma-vm/init).
#
#   tests/rdma-vm/build.sh          # idempotent; prints where things are
#
# Output: $HEARTH_RDMA_VM_CACHE (default target/rdma-vm): vmlinuz,
# initrd.cpio.gz. The initramfs is rebuilt when init or this script is
# newer than it. Installs (apt, --no-install-recommends) what it needs:
# qemu-system-x86, busybox-static, kmod, and rdma-core/ibverbs-providers/
# ibverbs-utils/iproute2, which the VM uses from the host's root (see
# README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${HEARTH_RDMA_VM_CACHE:-$root/target/rdma-vm}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
packages=(qemu-system-x86 busybox-static kmod rdma-core ibverbs-providers ibverbs-utils libibverbs1 librdmacm1 iproute2)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "rdma-vm build: installing ${missing[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel: the package behind linux-image-amd64, unpacked, not installed.
if ! ls "$cache"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  kernel_package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$kernel_package" ] || { echo "rdma-vm build: apt knows no linux-image-amd64" >&2; exit 1; }
  download=$(mktemp -d "$cache/deb.XXXXXX")
  scratch+=("$download")
  echo "rdma-vm build: downloading $kernel_package" >&2
  if ! (cd "$download" && apt-get download -qq "$kernel_package" 2>/dev/null); then
    # The package lists may name a kernel the mirror no longer has.
    "${sudo_cmd[@]}" apt-get update -qq
    kernel_package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
    (cd "$download" && apt-get download -qq "$kernel_package")
  fi
  rm -rf "$cache/kernel.partial"
  dpkg-deb -x "$download"/"$kernel_package"_*.deb "$cache/kernel.partial"
  mv "$cache/kernel.partial" "$cache/kernel"
fi
kernel_version=$(ls "$cache/kernel/lib/modules" | head -n1)
[ -f "$cache/kernel/lib/modules/$kernel_version/modules.dep" ] \
  || depmod -b "$cache/kernel" "$kernel_version"
ln -sfn "kernel/boot/vmlinuz-$kernel_version" "$cache/vmlinuz"

initrd=$cache/initrd.cpio.gz
if [ -f "$initrd" ] && [ "$initrd" -nt "$here/init" ] && [ "$initrd" -nt "$here/build.sh" ]; then
  echo "rdma-vm build: $cache has vmlinuz ($kernel_version) and initrd.cpio.gz" >&2
  exit 0
fi

stage=$(mktemp -d "$cache/initrd.XXXXXX")
scratch+=("$stage")
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,newroot,modules}
cp /bin/busybox "$stage/bin/busybox"
for applet in $(/bin/busybox --list); do
  case $applet in init | busybox) ;; *) ln -sf busybox "$stage/bin/$applet" ;; esac
done
# Modules in the order `modprobe --show-depends` gives; built-in ones
# print no insmod line. crc32_generic: rxe asks the crypto API for
# "crc32", and nothing in the VM would load it on demand.
for module in virtio_pci virtio_net crc32_generic rdma_rxe rdma_ucm ib_uverbs 9pnet_virtio 9p overlay; do
  modprobe -d "$cache/kernel" -S "$kernel_version" --show-depends "$module" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r module; do
  cp "$module" "$stage/modules/"
  basename "$module" >>"$stage/modules/order"
done
cp "$here/init" "$stage/init"
chmod 755 "$stage/init"
(cd "$stage" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$initrd.partial"
mv "$initrd.partial" "$initrd"
echo "rdma-vm build: $initrd ($(du -h "$initrd" | cut -f1)), kernel $kernel_version" >&2
