#!/usr/bin/env bash
# Starts a throw-away single-node Kubernetes 1.20 (etcd, kube-apiserver,
# kube-scheduler, kube-controller-manager, kubelet, kube-proxy) on loopback,
# against a containerd CRI socket the caller runs (the tests' private one).
#
#   up.sh CTD_SOCK [WORKDIR]
#
# Binaries come from tests/kube/build.sh's cache; etcd, openssl and iptables
# from Debian. Prints the work dir: certs, logs, kubeconfig and the PIDs of
# everything started live there. down.sh WORKDIR stops it all by PID.
#
# Env knobs:
#   K8S_BIN          binaries (default ${HEARTH_KUBE_CACHE:-~/.cache/hearth-kube}/bin)
#   NODE_NAME        node name (default localhost). kube-apiserver reaches the kubelet (logs, exec)
#                    through the node's Hostname address, which is NODE_NAME, and the kubelet listens
#                    on 127.0.0.1 only, so NODE_NAME must resolve to 127.0.0.1 (kubelet 1.20 refuses a
#                    loopback --node-ip).
#   RUNTIME_CLASSES  RuntimeClass objects to create, name=handler (default "hearth")
#   KUBELET_ARGS     extra kubelet flags
set -euo pipefail
CTD_SOCK=${1:?usage: up.sh CTD_SOCK [WORKDIR]}
CTD_SOCK=$(readlink -f "$CTD_SOCK")
[ -S "$CTD_SOCK" ] || { echo "not a socket: $CTD_SOCK" >&2; exit 1; }
K8S_BIN=${K8S_BIN:-${HEARTH_KUBE_CACHE:-$HOME/.cache/hearth-kube}/bin}
NODE=${NODE_NAME:-localhost}
RUNTIME_CLASSES=${RUNTIME_CLASSES:-hearth}
W=${2:-$(mktemp -d /tmp/hearth-k8s.XXXXXX)}
mkdir -p "$W"; W=$(readlink -f "$W")
P=$W/pki; L=$W/log
mkdir -p "$P" "$L" "$W/etcd" "$W/kubelet/root" "$W/kubelet/pki" "$W/kubelet/volume-plugins" "$W/manifests"
: >"$W/pids"
for b in kubelet kube-apiserver kube-scheduler kube-controller-manager kube-proxy kubectl; do
  [ -x "$K8S_BIN/$b" ] || { echo "missing $K8S_BIN/$b: run tests/kube/build.sh" >&2; exit 1; }
done
command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # name cmd...   (own session, so a ^C in the caller does not hit it)
  local n=$1; shift
  setsid "$@" >"$L/$n.log" 2>&1 </dev/null &
  echo "$n $!" >>"$W/pids"
}
die() { echo "up.sh: $*" >&2; echo "logs in $L; run down.sh $W" >&2; exit 1; }
KC() { "$K8S_BIN/kubectl" --kubeconfig "$W/kubeconfig" "$@"; }

EP=$(free_port); PP=$(free_port); AP=$(free_port); KP=$(free_port)
echo "ports: etcd=$EP apiserver=$AP kubelet=$KP" >"$W/ports"

# ---- PKI (openssl) ----
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$P/ca.key" -out "$P/ca.crt" -days 30 \
  -subj "/CN=hearth-k8s-ca" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" >/dev/null 2>&1
cert() { # file CN O usage [SAN]
  local ext="$P/$1.ext"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$4" >"$ext"
  [ -n "${5:-}" ] && echo "subjectAltName=$5" >>"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$P/$1.key" -out "$P/$1.csr" \
    -subj "${3:+/O=$3}/CN=$2" >/dev/null 2>&1
  openssl x509 -req -in "$P/$1.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
    -days 30 -extfile "$ext" -out "$P/$1.crt" >/dev/null 2>&1
}
cert apiserver kube-apiserver "" serverAuth \
  "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin admin system:masters clientAuth
cert apiserver-kubelet kube-apiserver-kubelet-client system:masters clientAuth
cert kubelet "system:node:$NODE" system:nodes clientAuth
cert scheduler system:kube-scheduler "" clientAuth
cert controller-manager system:kube-controller-manager "" clientAuth
cert proxy system:kube-proxy "" clientAuth
openssl genrsa -out "$P/sa.key" 2048 >/dev/null 2>&1
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" >/dev/null 2>&1

kubeconfig() { # out user certname
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hearth
  cluster: {server: "https://127.0.0.1:$AP", certificate-authority: "$P/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$P/$3.crt", client-key: "$P/$3.key"}
contexts:
- name: hearth
  context: {cluster: hearth, user: $2}
current-context: hearth
EOF
}
kubeconfig "$W/kubeconfig" admin admin
kubeconfig "$W/kubelet/kubeconfig" "system:node:$NODE" kubelet
kubeconfig "$W/scheduler.kubeconfig" system:kube-scheduler scheduler
kubeconfig "$W/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
kubeconfig "$W/proxy.kubeconfig" system:kube-proxy proxy

# ---- etcd (Debian etcd-server), loopback only ----
start etcd etcd --name hearth --data-dir "$W/etcd" \
  --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
  --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
  --initial-cluster "hearth=http://127.0.0.1:$PP" --initial-cluster-state new
for i in $(seq 100); do curl -sf "http://127.0.0.1:$EP/health" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$EP/health" >/dev/null || die "etcd did not become healthy"

# ---- kube-apiserver ----
ADM=NodeRestriction
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$EP" \
  --bind-address=127.0.0.1 --secure-port="$AP" --insecure-port=0 --advertise-address=127.0.0.1 \
  --endpoint-reconciler-type=none \
  --cert-dir="$W/apiserver" \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" \
  --kubelet-client-certificate="$P/apiserver-kubelet.crt" --kubelet-client-key="$P/apiserver-kubelet.key" \
  --kubelet-preferred-address-types=Hostname,InternalIP \
  --authorization-mode=Node,RBAC --enable-admission-plugins=$ADM \
  --service-cluster-ip-range=10.0.0.0/24 \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --allow-privileged=true --profiling=false
for i in $(seq 300); do
  curl -sf --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" "https://127.0.0.1:$AP/readyz" >/dev/null && break
  sleep 0.2
done
curl -sf --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" "https://127.0.0.1:$AP/readyz" >/dev/null \
  || die "kube-apiserver not ready: $(tail -3 "$L/kube-apiserver.log")"

# ---- scheduler, controller-manager ----
start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$W/scheduler.kubeconfig" \
    --authentication-kubeconfig="$W/scheduler.kubeconfig" --authorization-kubeconfig="$W/scheduler.kubeconfig" \
    --leader-elect=false --port=0 --bind-address=127.0.0.1 --secure-port="$(free_port)" --cert-dir="$W/scheduler"
start kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig="$W/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$W/controller-manager.kubeconfig" --authorization-kubeconfig="$W/controller-manager.kubeconfig" \
    --leader-elect=false --port=0 --bind-address=127.0.0.1 --secure-port="$(free_port)" --cert-dir="$W/controller-manager" \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" --use-service-account-credentials=true \
    --controllers='*,-nodeipam,-cloud-node-lifecycle,-service,-route' --cluster-signing-cert-file="$P/ca.crt" \
    --cluster-signing-key-file="$P/ca.key"

# ---- kubelet ----
# kubelet (protectKernelDefaults=false) rewrites a few sysctls; remember them for down.sh
for s in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/conf/all/route_localnet net/netfilter/nf_conntrack_max; do
  [ -r /proc/sys/$s ] && echo "$s $(cat /proc/sys/$s)" >>"$W/sysctl.orig"
done
# private cgroup root, so that concurrent kubelets never share /kubepods
CG=hearth-k8s-$(basename "$W" | tr -c 'a-zA-Z0-9\n' '-')
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  mkdir -p "/sys/fs/cgroup/$CG"; echo "/sys/fs/cgroup/$CG" >>"$W/cgroups"
else
  for d in /sys/fs/cgroup/*/; do
    [ -e "$d/cgroup.procs" ] || continue
    mkdir -p "$d$CG"; echo "$d$CG" >>"$W/cgroups"
    if [ -e "$d/cpuset.cpus" ]; then cat "$d/cpuset.cpus" >"$d$CG/cpuset.cpus"; cat "$d/cpuset.mems" >"$d$CG/cpuset.mems"; fi
  done
fi
cat >"$W/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KP
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$P/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /$CG
failSwapOn: false
makeIPTablesUtilChains: false
staticPodPath: "$W/manifests"
clusterDomain: cluster.local
serializeImagePulls: false
runtimeRequestTimeout: 10m
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
EOF
# shellcheck disable=SC2086
start kubelet "$K8S_BIN/kubelet" --config="$W/kubelet/config.yaml" --kubeconfig="$W/kubelet/kubeconfig" \
  --container-runtime=remote --container-runtime-endpoint="unix://$CTD_SOCK" \
  --root-dir="$W/kubelet/root" --cert-dir="$W/kubelet/pki" --volume-plugin-dir="$W/kubelet/volume-plugins" \
  --hostname-override="$NODE" --v=2 ${KUBELET_ARGS:-}
for i in $(seq 120); do KC get node "$NODE" >/dev/null 2>&1 && break; sleep 0.5; done
KC get node "$NODE" >/dev/null 2>&1 || die "node $NODE did not register: $(tail -3 "$L/kubelet.log")"

for rc in $RUNTIME_CLASSES; do
  n=${rc%%=*}; h=${rc#*=}
  printf 'apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: %s}\nhandler: %s\n' "$n" "$h" | KC apply -f - >/dev/null
done
# Pods are refused until the default ServiceAccount exists.
for i in $(seq 60); do KC get serviceaccount default >/dev/null 2>&1 && break; sleep 0.5; done

# ---- kube-proxy (iptables mode): ClusterIP Services reachable from the node ----
start kube-proxy "$K8S_BIN/kube-proxy" --kubeconfig="$W/proxy.kubeconfig" --proxy-mode=iptables \
  --hostname-override="$NODE" --bind-address=127.0.0.1 --conntrack-max-per-core=0 \
  --healthz-bind-address=127.0.0.1:"$(free_port)" --metrics-bind-address=127.0.0.1:"$(free_port)"
cat >"$W/env" <<EOF
export KUBECONFIG=$W/kubeconfig
export PATH=$K8S_BIN:\$PATH
export HEARTH_K8S_WORK=$W HEARTH_K8S_NODE=$NODE
EOF
echo "$W"
