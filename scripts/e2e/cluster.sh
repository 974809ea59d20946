#!/usr/bin/env bash
# A throwaway single-node Kubernetes on this machine, every part built from source or taken from Debian:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and CoreDNS from Go
# modules (scripts/kube/install.sh --node, cached), containerd and runc from Debian, a bridge CNI
# (containernetworking-plugins) and a pause image built here (scripts/e2e/pause.c). Nothing is pulled.
# CoreDNS runs beside the kubelet on the node's address (the pods' nameserver) and serves cluster.local;
# $KVCLUSTER_E2E_PVS hostPath PersistentVolumes (default 10, 2Gi each) of the default StorageClass
# e2e-hostpath (no provisioner, bound when the pod is scheduled) take the claims.
#
#   scripts/e2e/cluster.sh up                 # build (first time: long), start, wait for the node Ready
#   scripts/e2e/cluster.sh kubectl get pods -A   # kubectl against the cluster (inside its namespace)
#   scripts/e2e/cluster.sh import [IMAGE.tar] # ctr -n k8s.io images import; prints the image's name.
#                                             # Without IMAGE.tar: builds it with scripts/image.sh
#   scripts/e2e/cluster.sh exec CMD...        # run CMD inside the cluster's network and mount namespace
#   scripts/e2e/cluster.sh status             # the daemons and the node
#   scripts/e2e/cluster.sh down               # stop everything, remove it, and check nothing is left
#
# Containment: every daemon runs in one network namespace and one mount namespace that `up` creates
# (held by bind mounts under $KVCLUSTER_E2E_DIR/ns), with the pod bridge, pod routes and every iptables
# rule of kube-proxy inside that network namespace: nothing routes off the machine. The daemons and all
# containers live under the cgroup /kvcluster-e2e. Host paths that containerd, the CNI plugins and the
# kubelet use without a setting (/run/containerd, /run/netns, /var/lib/cni, /var/log/pods,
# /var/log/containers) are bind-mounted from $KVCLUSTER_E2E_DIR inside the mount namespace only. The
# kubelet sets six kernel-wide sysctls (vm.overcommit_memory, kernel.panic, ...); `up` records them and
# `down` restores them. `down` then fails if any process, mount, cgroup, iptables rule, route, sysctl
# or file of the cluster is left on the host, and says which.
#
# Environment: KVCLUSTER_E2E_DIR (default /var/tmp/kvcluster-e2e): all state, removed by `down`;
# KVCLUSTER_TOOLS: the binaries' cache (see scripts/kube/install.sh).
# Needs root, and the Debian packages containerd, runc, containernetworking-plugins, umoci, skopeo,
# iproute2, iptables, openssl, curl and a C compiler (scripts/install-deps.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${KVCLUSTER_E2E_DIR:-/var/tmp/kvcluster-e2e}"
ns="$dir/ns"
pki="$dir/pki"
cgroup_name=kvcluster-e2e
node_name=kvc-node
node_ip=10.244.0.1 # the pod bridge's address: the node's only address besides loopback
pod_cidr=10.244.0.0/24
service_cidr=10.0.0.0/24
bridge=kvc0
pause_image=kvcluster.local/pause:1
shadowed=(/run/containerd /run/netns /var/lib/cni /var/log/pods /var/log/containers)
kernel_sysctls=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
components=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns)
pv_count="${KVCLUSTER_E2E_PVS:-10}"

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

in_ns() { nsenter --mount="$ns/mnt" --net="$ns/net" -- "$@"; }
kubectl_in() { in_ns "$KUBECTL" --kubeconfig "$dir/admin.kubeconfig" "$@"; }
cgroup_dirs() { for h in /sys/fs/cgroup/*/; do [ -d "$h$cgroup_name" ] && echo "$h$cgroup_name"; done; true; }
daemons_cgroup=/sys/fs/cgroup/pids/$cgroup_name/daemons

tools() { # sets KUBE_APISERVER, ETCD, KUBECTL, KUBELET, ... from install.sh (building what is missing)
  local line paths
  paths="$(nice -n 19 "$root/scripts/kube/install.sh" --node)" || die "scripts/kube/install.sh --node failed"
  while IFS= read -r line; do
    case "$line" in *=*) export "${line?}" ;; esac
  done <<<"$paths"
}

# --- certificates (ECDSA P-256, openssl only): one CA for serving and client certificates -----------
sign() { # name subject ext-lines...
  local name="$1" subject="$2"; shift 2
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/$name.key" \
    -out "$pki/$name.csr" -subj "$subject" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "$@" \
    >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
}

kubeconfig() { # name: $dir/NAME.kubeconfig with the client certificate NAME
  local b64ca b64crt b64key
  b64ca="$(base64 -w0 <"$pki/ca.crt")"; b64crt="$(base64 -w0 <"$pki/$1.crt")"; b64key="$(base64 -w0 <"$pki/$1.key")"
  cat >"$dir/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:6443", certificate-authority-data: $b64ca}
users:
- name: $1
  user: {client-certificate-data: $b64crt, client-key-data: $b64key}
contexts:
- name: e2e
  context: {cluster: e2e, user: $1, namespace: default}
current-context: e2e
EOF
  chmod 600 "$dir/$1.kubeconfig"
}

make_pki() {
  mkdir -p "$pki"; chmod 700 "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/ca.key" \
    -out "$pki/ca.crt" -days 30 -subj "/CN=kvcluster-e2e-ca" 2>/dev/null
  local sans="IP:127.0.0.1,IP:$node_ip,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
  sans+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth" "subjectAltName=$sans"
  local client="extendedKeyUsage=clientAuth"
  sign admin "/O=system:masters/CN=kvcluster-e2e-admin" "$client"
  sign kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  sign kube-scheduler "/CN=system:kube-scheduler" "$client"
  sign kubelet "/O=system:nodes/CN=system:node:$node_name" "$client"
  sign kube-proxy "/CN=system:kube-proxy" "$client"
  sign coredns "/CN=system:coredns" "$client"
  openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$pki/sa.key"
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  local name
  for name in admin kube-controller-manager kube-scheduler kubelet kube-proxy coredns; do kubeconfig "$name"; done
}

# --- the pause image: a static binary in an OCI layout, as a docker archive for ctr import --------
make_pause_image() {
  local work="$dir/pause-image"
  mkdir -p "$work/layer"
  cc -static -Os -Wall -Wextra -o "$work/layer/pause" "$here/pause.c"
  strip "$work/layer/pause"
  tar --create --file "$work/layer.tar" --directory "$work/layer" --numeric-owner --owner=0 --group=0 \
    --mtime=@0 pause
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:1"
  umoci raw add-layer --image "$work/oci:1" "$work/layer.tar"
  umoci config --image "$work/oci:1" --config.entrypoint /pause --config.user 65535:65535
  skopeo copy --quiet "oci:$work/oci:1" "docker-archive:$dir/pause.tar:$pause_image"
}

# --- namespaces, cgroups and shadowed host paths ----------------------------------------------------
make_namespaces() {
  mkdir -p "$ns"
  mount --bind "$ns" "$ns"
  mount --make-private "$ns"
  touch "$ns/mnt" "$ns/net"
  unshare --mount="$ns/mnt" --net="$ns/net" --propagation private true
  in_ns ip link set lo up
  in_ns ip link add "$bridge" type bridge
  in_ns ip addr add "$node_ip/24" dev "$bridge"
  in_ns ip link set "$bridge" up
  # Service IPs from the node itself (curl, the kubelet's probes of a Service): routed to the bridge,
  # where kube-proxy's OUTPUT rules rewrite them (pods reach them through their default gateway).
  in_ns ip route add "$service_cidr" dev "$bridge"
  local path shadow
  : >"$dir/created-paths"
  for path in "${shadowed[@]}"; do
    if [ ! -e "$path" ]; then mkdir -p "$path"; echo "$path" >>"$dir/created-paths"; fi
    shadow="$dir/host${path}"
    mkdir -p "$shadow"
    in_ns mount --bind "$shadow" "$path"
  done
}

make_cgroups() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] || continue
    mkdir -p "$h$cgroup_name"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h$cgroup_name/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h$cgroup_name/cpuset.mems"
    fi
  done
  mkdir -p "$daemons_cgroup"
}

start() { # name command...: in the namespaces and the daemons' cgroup, logs in $dir/log/NAME.log
  local name="$1"; shift
  # shellcheck disable=SC2016 # $$ and $0 belong to the inner shell
  setsid sh -c 'echo $$ >"$0" && exec "$@"' "$daemons_cgroup/cgroup.procs" \
    nsenter --mount="$ns/mnt" --net="$ns/net" -- "$@" </dev/null >"$dir/log/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name"
}

wait_for() { # what seconds command...
  local what="$1" limit="$2" started=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - started)) -ge "$limit" ]; then
      log "$what: not ready after ${limit}s; last lines of the logs:"
      local f
      for f in "$dir"/log/*.log; do echo "---- $f" >&2; tail -n 5 "$f" >&2; done
      die "$what did not come up"
    fi
    sleep 1
  done
  log "$what ready after $((SECONDS - started))s"
}

write_configs() {
  local restrict_oom=false
  # CapBnd bit 24 is CAP_SYS_RESOURCE
  (( 0x$(awk '$1 == "CapBnd:" { print $2 }' /proc/self/status) >> 24 & 1 )) || restrict_oom=true
  mkdir -p "$dir/cni/net.d" "$dir/containerd" "$dir/kubelet"
  cat >"$dir/cni/net.d/10-kvc.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "kvc", "plugins": [
  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam",
            "ranges": [[{"subnet": "$pod_cidr", "gateway": "$node_ip"}]],
            "routes": [{"dst": "0.0.0.0/0", "gw": "$node_ip"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
  cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # Containers' oom_score_adj no lower than containerd's own: without CAP_SYS_RESOURCE (a VM or a
  # container may drop it from the bounding set) runc cannot write the kubelet's -998 for a sandbox.
  restrict_oom_score_adj = $restrict_oom
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
EOF
  : >"$dir/resolv.conf"
  # Disk thresholds near zero and image GC off: a shared build machine's disk is often 80-90 % full,
  # which would otherwise taint the node with DiskPressure and evict the pods.
  cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup_name
containerRuntimeEndpoint: unix://$dir/containerd.sock
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
podLogsDir: /var/log/pods
resolvConf: $dir/resolv.conf
clusterDomain: cluster.local
clusterDNS: [$node_ip]
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  cat >"$dir/Corefile" <<EOF
.:53 {
  bind $node_ip
  errors
  health 127.0.0.1:8081
  ready 127.0.0.1:8181
  kubernetes cluster.local in-addr.arpa {
    kubeconfig $dir/coredns.kubeconfig e2e
    ttl 5
  }
}
EOF
}

# --- cluster objects: CoreDNS's read access and the hostPath volumes --------------------------------
apply_objects() {
  kubectl_in apply -f - >&2 <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
---
# The default class: the scheduler binds a claim to a free volume as it places the pod (with immediate
# binding a StatefulSet's pod created with its claim can stay Pending on "unbound immediate
# PersistentVolumeClaims").
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: e2e-hostpath
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
EOF
  local i
  for i in $(seq "$pv_count"); do
    mkdir -p "$dir/pv/$i"
    chmod 0777 "$dir/pv/$i" # the image's user (65532) writes there; fsGroup does not apply to hostPath
    cat <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: e2e-pv-$i}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: e2e-hostpath
  hostPath: {path: $dir/pv/$i, type: Directory}
---
EOF
  done | kubectl_in apply -f - >&2
}

# CoreDNS's A records for NAME, one address a line (python3: a minimal machine has no dig).
dns_a() {
  in_ns python3 "$here/dns_a.py" "$1" "$node_ip"
}

# --- up ---------------------------------------------------------------------------------------------
cmd_up() {
  [ "$(id -u)" -eq 0 ] || die "run as root (namespaces, mounts, cgroups, containerd)"
  local tool
  for tool in containerd ctr runc umoci skopeo cc strip openssl curl nsenter unshare ip iptables; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is missing: run scripts/install-deps.sh"
  done
  [ -x /usr/lib/cni/bridge ] || die "/usr/lib/cni/bridge is missing: apt-get install containernetworking-plugins"
  [ ! -e "$dir" ] || die "$dir exists: a cluster is up (or was not taken down): scripts/e2e/cluster.sh down"
  tools
  local started=$SECONDS
  mkdir -p "$dir/log" "$dir/pids"
  local key
  for key in "${kernel_sysctls[@]}"; do echo "$key $(cat "/proc/sys/$key")"; done >"$dir/sysctls"
  make_namespaces
  make_cgroups
  make_pki
  make_pause_image >/dev/null
  write_configs

  start etcd "$ETCD" --name=e2e --data-dir="$dir/etcd" --listen-client-urls=http://127.0.0.1:2379 \
    --advertise-client-urls=http://127.0.0.1:2379 --listen-peer-urls=http://127.0.0.1:2380 \
    --initial-advertise-peer-urls=http://127.0.0.1:2380 --initial-cluster=e2e=http://127.0.0.1:2380 \
    --log-level=warn --unsafe-no-fsync
  wait_for etcd 30 in_ns curl -fsS http://127.0.0.1:2379/health
  start kube-apiserver "$KUBE_APISERVER" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --advertise-address="$node_ip" --secure-port=6443 \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --kubelet-client-certificate="$pki/admin.crt" \
    --kubelet-client-key="$pki/admin.key" --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$service_cidr" --authorization-mode=Node,RBAC \
    --kubelet-preferred-address-types=InternalIP \
    --enable-admission-plugins=NodeRestriction --allow-privileged=true
  wait_for kube-apiserver 90 kubectl_in get --raw /readyz
  apply_objects
  start kube-controller-manager "$KUBE_CONTROLLER_MANAGER" --kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range="$service_cidr"
  start kube-scheduler "$KUBE_SCHEDULER" --kubeconfig="$dir/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$dir/kube-scheduler.kubeconfig" --bind-address=127.0.0.1 --leader-elect=false
  start containerd containerd --config "$dir/containerd/config.toml"
  wait_for containerd 30 in_ns ctr --address "$dir/containerd.sock" version
  import_image "$dir/pause.tar"
  start kubelet "$KUBELET" --config="$dir/kubelet/config.yaml" --kubeconfig="$dir/kubelet.kubeconfig" \
    --root-dir="$dir/kubelet" --hostname-override="$node_name" --node-ip="$node_ip"
  start kube-proxy "$KUBE_PROXY" --kubeconfig="$dir/kube-proxy.kubeconfig" --proxy-mode=iptables \
    --hostname-override="$node_name" --cluster-cidr="$pod_cidr" --bind-address="$node_ip" \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
  start coredns "$COREDNS" -conf "$dir/Corefile"
  wait_for coredns 60 in_ns curl -fsS http://127.0.0.1:8181/ready
  wait_for "DNS kubernetes.default.svc.cluster.local" 30 dns_a kubernetes.default.svc.cluster.local
  wait_for "node $node_name Ready" 120 kubectl_in wait --for=condition=Ready "node/$node_name" --timeout=1s
  wait_for "ServiceAccount default" 60 kubectl_in get serviceaccount default
  log "up in $((SECONDS - started))s: $(kubectl_in get node "$node_name" --no-headers)"
  log "kubectl: scripts/e2e/cluster.sh kubectl ...  (kubeconfig $dir/admin.kubeconfig, inside the namespace)"
}

import_image() { # tarball
  [ -f "$1" ] || die "no such image archive: $1"
  in_ns ctr --address "$dir/containerd.sock" -n k8s.io images import "$1" >&2
}

cmd_import() { # [tarball]: imports it (scripts/image.sh's when none is given), prints its image's name
  local archive="${1:-}" image
  [ -d "$dir/pids" ] || die "the cluster is not up: scripts/e2e/cluster.sh up"
  if [ -z "$archive" ]; then
    "$root/scripts/image.sh" --out "$dir/image" >&2
    archive="$dir/image/kvcluster.tar"
  fi
  [ -f "$archive" ] || die "no such image archive: $archive"
  image="$(tar -xOf "$archive" manifest.json | sed -n 's/.*"RepoTags":\["\([^"]*\)".*/\1/p')"
  [ -n "$image" ] || die "$archive names no image (manifest.json has no RepoTags)"
  import_image "$archive"
  echo "$image"
}

cmd_status() {
  [ -d "$dir/pids" ] || { log "not up ($dir has no pids)"; return 1; }
  local name pid
  for name in "${components[@]}"; do
    pid="$(cat "$dir/pids/$name" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: NOT running"; fi
  done
  kubectl_in get nodes -o wide
}

# --- down -------------------------------------------------------------------------------------------
cgroup_pids() { local d; for d in $(cgroup_dirs); do find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; done; true; }

cmd_down() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  local net_id="" pid i name
  net_id="$(stat -L -c %i "$ns/net" 2>/dev/null || true)"
  # The kubelet first (so it restarts nothing), then every other daemon, each given 10 s after SIGTERM.
  for name in kubelet coredns kube-proxy kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
    pid="$(cat "$dir/pids/$name" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  # Whatever is left under the cgroup (containers, shims, a daemon that ignored SIGTERM): SIGKILL.
  for i in $(seq 50); do
    pid="$(cgroup_pids)"
    [ -n "$pid" ] || break
    # shellcheck disable=SC2086 # one pid a word
    kill -KILL $pid 2>/dev/null || true
    sleep 0.2
  done
  # The namespaces' bind mounts, newest first (the mount namespace dies with its last holder).
  local mounted
  for i in $(seq 20); do
    mounted="$(awk -v ns="$ns" '$5 == ns || index($5, ns "/") == 1 { m = $5 } END { print m }' /proc/self/mountinfo)"
    [ -n "$mounted" ] || break
    umount "$mounted"
  done
  # cgroups: children before parents
  local d
  for d in $(cgroup_dirs); do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
  if [ -f "$dir/sysctls" ]; then
    local key value
    while read -r key value; do echo "$value" >"/proc/sys/$key"; done <"$dir/sysctls"
    cp "$dir/sysctls" "/tmp/.kvcluster-e2e-sysctls.$$"
  fi
  if [ -f "$dir/created-paths" ]; then
    while read -r path; do rmdir "$path" 2>/dev/null || true; done <"$dir/created-paths"
    cp "$dir/created-paths" "/tmp/.kvcluster-e2e-created.$$"
  fi
  rm -rf "$dir"
  check_clean "$net_id"
}

check_clean() { # net-namespace inode (or empty): reports every leftover, fails if there is one
  local net_id="$1" left=() pid p
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    if [ -n "$net_id" ] && [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$net_id" ]; then
      left+=("process $pid in the cluster's network namespace: $(tr '\0' ' ' 2>/dev/null <"$p/cmdline")")
    elif tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$dir/"; then
      left+=("process $pid: $(tr '\0' ' ' <"$p/cmdline")")
    fi
  done
  local d
  for d in $(cgroup_dirs); do left+=("cgroup $d"); done
  if grep -F -e "$dir" /proc/self/mountinfo >/dev/null; then
    left+=("mounts: $(grep -F -e "$dir" /proc/self/mountinfo | awk '{print $5}' | tr '\n' ' ')")
  fi
  if [ -n "$net_id" ] && grep -l "net:\[$net_id\]" /proc/[0-9]*/mountinfo >/dev/null 2>&1; then
    left+=("a bind mount still holds the cluster's network namespace")
  fi
  local rules
  rules="$( { iptables-save; ip6tables-save; } 2>/dev/null | grep -E "KUBE-|CNI-|$bridge|${pod_cidr%.*}\.|${service_cidr%.*}\." || true)"
  [ -z "$rules" ] || left+=("iptables rules on the host: $rules")
  local routes
  routes="$(ip route show table all | grep -E "$bridge|${pod_cidr%.*}\." || true)"
  [ -z "$routes" ] || left+=("routes on the host: $routes")
  ip link show "$bridge" >/dev/null 2>&1 && left+=("link $bridge on the host")
  local file key value
  for file in /tmp/.kvcluster-e2e-sysctls.*; do
    [ -f "$file" ] || continue
    while read -r key value; do
      [ "$(cat "/proc/sys/$key")" = "$value" ] || left+=("sysctl $key is $(cat "/proc/sys/$key"), was $value")
    done <"$file"
    rm -f "$file"
  done
  for file in /tmp/.kvcluster-e2e-created.*; do
    [ -f "$file" ] || continue
    while read -r path; do [ ! -e "$path" ] || left+=("path $path (created by up)"); done <"$file"
    rm -f "$file"
  done
  [ ! -e "$dir" ] || left+=("$dir")
  if [ ${#left[@]} -gt 0 ]; then
    log "down: LEFT BEHIND on the host:"
    printf '  %s\n' "${left[@]}" >&2
    exit 1
  fi
  log "down: nothing left behind (checked: processes in the namespace or naming $dir, cgroups /$cgroup_name,"
  log "  mounts, the namespace's bind mounts, iptables/ip6tables rules, routes, link $bridge, kernel sysctls,"
  log "  ${shadowed[*]}, $dir)"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) tools; cmd_status ;;
  kubectl) shift; tools; kubectl_in "$@" ;;
  exec) shift; [ $# -gt 0 ] || usage 2; in_ns "$@" ;;
  import) [ $# -le 2 ] || usage 2; cmd_import "${2:-}" ;;
  -h|--help) usage ;;
  *) usage 2 ;;
esac
