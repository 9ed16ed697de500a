#!/usr/bin/env bash
# Stops what up.sh started (by PID, from WORKDIR/pids), newest first.
#   down.sh WORKDIR [--rm]     (--rm: also delete WORKDIR; by default it stays for its logs)
# Pods are deleted through the API first (if kube-apiserver still answers) so
# that the kubelet stops their sandboxes in containerd; the caller's containerd
# is not touched. Then the sysctls the kubelet and kube-proxy rewrote are
# restored, kube-proxy's iptables rules removed, the private cgroup root,
# kubelet mounts and the Pods' log directories deleted.
set -uo pipefail
W=${1:?usage: down.sh WORKDIR [--rm]}
[ -f "$W/pids" ] || { echo "no $W/pids" >&2; exit 1; }
L=$W/log
K8S_BIN=${K8S_BIN:-${HEARTH_KUBE_CACHE:-$HOME/.cache/hearth-kube}/bin}
if [ -f "$W/kubeconfig" ] && grep -q '^kubelet ' "$W/pids"; then
  # remember the pods' log dirs (/var/log/pods is hard-coded in kubelet 1.20; its GC stops with it)
  timeout 20 "$K8S_BIN/kubectl" --kubeconfig "$W/kubeconfig" get pods --all-namespaces \
    -o jsonpath='{range .items[*]}{.metadata.namespace}_{.metadata.name}_{.metadata.uid}{"\n"}{end}' >>"$W/podlogdirs" 2>/dev/null
  # Controllers first, so that nothing re-creates the Pods deleted next.
  timeout 60 "$K8S_BIN/kubectl" --kubeconfig "$W/kubeconfig" delete \
    deployments,replicasets,daemonsets,statefulsets,jobs --all --all-namespaces --wait=true >/dev/null 2>&1 \
    || echo "down.sh: controller deletion incomplete" >&2
  timeout 90 "$K8S_BIN/kubectl" --kubeconfig "$W/kubeconfig" delete pods --all --all-namespaces \
    --grace-period=5 --wait=true >/dev/null 2>&1 || echo "down.sh: pod deletion incomplete" >&2
  # static pods (manifests dir) are not deletable through the API: drop their manifests and give the kubelet a moment
  if [ -n "$(ls -A "$W/manifests" 2>/dev/null)" ]; then rm -f "$W/manifests"/*; sleep 25; fi
fi
tac "$W/pids" | while read -r name pid; do
  [ -n "$pid" ] || continue
  kill -TERM "$pid" 2>/dev/null || continue
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { echo "down.sh: $name ($pid) needs SIGKILL" >&2; kill -KILL "$pid" 2>/dev/null; }
done
: >"$W/pids"
# kube-proxy's KUBE-* chains and jumps
"$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
# ...and the canary and mark chains --cleanup leaves (kube-proxy's and the kubelet's)
for table in mangle nat filter; do
  for chain in $(iptables -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Z-]*\)$/\1/p'); do
    iptables -t "$table" -F "$chain" 2>/dev/null
  done
  for chain in $(iptables -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Z-]*\)$/\1/p'); do
    iptables -t "$table" -X "$chain" 2>/dev/null
  done
done
# restore the sysctls the kubelet rewrote
if [ -f "$W/sysctl.orig" ]; then
  while read -r s v; do echo "$v" >"/proc/sys/$s" 2>/dev/null || true; done <"$W/sysctl.orig"
fi
# remove the private cgroup root (deepest first); fails harmlessly if something still lives there
if [ -f "$W/cgroups" ]; then
  while read -r cg; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
  done <"$W/cgroups"
fi
# kubelet mounts (projected/secret volumes are tmpfs under root-dir)
grep -o " $W/kubelet/root[^ ]*" /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
# Every Pod the kubelet ever ran, including those deleted before its log GC
# got to them: its log names each as "NAME_NAMESPACE(UID)".
grep -ohE '"[a-z0-9.-]+_[a-z0-9-]+\([0-9a-f-]{36}\)"' "$L/kubelet.log" 2>/dev/null | sort -u |
  sed -E 's/"([^_]+)_([^(]+)\(([^)]+)\)"/\2_\1_\3/' >>"$W/podlogdirs"
[ -f "$W/podlogdirs" ] && sort -u "$W/podlogdirs" | while read -r d; do
  [ -n "$d" ] || continue
  rm -rf "/var/log/pods/$d"
  find /var/log/containers -maxdepth 1 -lname "/var/log/pods/$d/*" -delete 2>/dev/null
done
[ "${2:-}" = "--rm" ] && rm -rf "$W"
echo "stopped"
