#!/usr/bin/env bash
# End to end on a real Kubernetes cluster (kind): build the image, load it, install the CRD, the RBAC
# and the operator, create a 3-pod KVCluster, write keys, scale 3 -> 5 -> 3, change W, and read every
# key back. Not run in CI (it needs Docker, kind and a few GB of disk); the loopback tests
# (tests/tests/operator_*.rs) cover the same logic against a real API server without Docker.
#
#   tests/e2e/kind.sh                 # creates cluster "kvcluster-e2e", deletes it at the end
#   KEEP=1 tests/e2e/kind.sh          # keep the cluster (and print how to reach it)
#   KIND_CLUSTER=dev SKIP_BUILD=1 tests/e2e/kind.sh   # reuse a cluster and an already built image
#
# Needs: docker (with buildx), kind, kubectl, curl. About 15 minutes the first time (the image
# build compiles RocksDB), 3-4 minutes after.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cluster="${KIND_CLUSTER:-kvcluster-e2e}"
image="${IMAGE:-kvcluster:e2e}"
ns="${NAMESPACE:-kv-e2e}"
keys="${KEYS:-200}"
timeout_s="${STEP_TIMEOUT:-300}"

log() { echo "== $(date +%H:%M:%S) $*" >&2; }
die() { echo "kind.sh: FAIL: $*" >&2; exit 1; }
for c in docker kind kubectl curl; do command -v "$c" >/dev/null 2>&1 || die "'$c' is not on PATH"; done

created_cluster=0
pf_pid=""
cleanup() {
  local status=$?
  if [ -n "$pf_pid" ]; then kill "$pf_pid" 2>/dev/null || true; fi
  if [ "$status" -ne 0 ]; then
    echo "---- diagnostics" >&2
    kubectl get kvc,sts,pods,pdb -n "$ns" -o wide >&2 || true
    kubectl get kvc demo -n "$ns" -o yaml >&2 || true
    kubectl get events -n "$ns" --sort-by=.lastTimestamp >&2 | tail -n 30 || true
    kubectl logs -n kvcluster-system deploy/kvoperator --tail=60 >&2 || true
  fi
  if [ "$created_cluster" = 1 ] && [ "${KEEP:-0}" != 1 ]; then
    log "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  elif [ "${KEEP:-0}" = 1 ]; then
    echo "kept: kubectl --context kind-$cluster -n $ns get kvc" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- cluster and image -------------------------------------------------------------------------
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "creating kind cluster $cluster"
  kind create cluster --name "$cluster" --wait 120s
  created_cluster=1
fi
kubectl config use-context "kind-$cluster" >/dev/null

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building $image (the root Dockerfile)"
  docker build -t "$image" "$root"
fi
log "loading $image into kind"
kind load docker-image "$image" --name "$cluster"

# --- operator -----------------------------------------------------------------------------------
log "installing the CRD, the ClusterRole and the operator"
kubectl apply -f "$root/crds/kvcluster.yaml"
kubectl wait --for condition=Established --timeout=60s crd/kvclusters.kvcluster.io
kubectl apply -f "$root/operator/rbac.yaml"
sed "s|image: kvcluster:e2e|image: $image|" "$root/tests/e2e/operator.yaml" | kubectl apply -f -
kubectl -n kvcluster-system rollout status deploy/kvoperator --timeout=120s

# --- helpers ------------------------------------------------------------------------------------
jp() { kubectl get kvc demo -n "$ns" -o jsonpath="$1" 2>/dev/null; }

# Waits until the ring is settled on $1 members, the status is up to date with the spec, and the
# StatefulSet has exactly $1 replicas.
wait_ring() {
  local want="$1" started=$SECONDS members settled gen observed sts
  while :; do
    members="$(jp '{.status.members[*]}' | wc -w)"
    settled="$(jp '{.status.conditions[?(@.type=="RingSettled")].status}')"
    gen="$(jp '{.metadata.generation}')"
    observed="$(jp '{.status.observedGeneration}')"
    sts="$(kubectl get sts demo -n "$ns" -o jsonpath='{.spec.replicas}' 2>/dev/null || echo 0)"
    if [ "$members" = "$want" ] && [ "$settled" = True ] && [ "$gen" = "$observed" ] && [ "$sts" = "$want" ]; then
      log "ring settled on $want members at epoch $(jp '{.status.ringEpoch}') after $((SECONDS - started)) s"
      return
    fi
    [ $((SECONDS - started)) -lt "$timeout_s" ] ||
      die "ring not settled on $want members within ${timeout_s}s (members=$members settled=$settled sts=$sts)"
    sleep 3
  done
}

# A port-forward to the client Service; restarted by each call (pods come and go under it).
forward() {
  if [ -n "$pf_pid" ]; then kill "$pf_pid" 2>/dev/null || true; fi
  local port; port=$((20000 + RANDOM % 20000))
  kubectl port-forward -n "$ns" svc/demo "$port:8080" >/dev/null 2>&1 &
  pf_pid=$!
  endpoint="http://127.0.0.1:$port"
  for _ in $(seq 50); do curl -fsS "$endpoint/health/ready" >/dev/null 2>&1 && return; sleep 0.2; done
  die "port-forward to svc/demo did not answer"
}

write_keys() { # prefix
  local i
  for i in $(seq "$keys"); do
    curl -fsS -X PUT --data-binary "value-$1-$i" "$endpoint/v1/kv/$1-$i" >/dev/null ||
      die "write of $1-$i failed"
  done
}

check_keys() { # prefix
  local i got
  for i in $(seq "$keys"); do
    got="$(curl -fsS "$endpoint/v1/kv/$1-$i?r=2")" || die "read of $1-$i failed"
    [ "$got" = "value-$1-$i" ] || die "$1-$i: got '$got'"
  done
  log "all $keys keys '$1-*' read back"
}

# --- scenario -----------------------------------------------------------------------------------
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
log "creating KVCluster demo: 3 pods, N=3 W=2 R=2"
kubectl apply -f - <<EOF
apiVersion: kvcluster.io/v1alpha1
kind: KVCluster
metadata:
  name: demo
  namespace: $ns
spec:
  replicas: 3
  replicationFactor: 3
  writeQuorum: 2
  readQuorum: 2
  image: $image
  imagePullPolicy: Never
  storage:
    size: 1Gi
  resources:
    requests: {cpu: 100m, memory: 128Mi}
    limits: {memory: 512Mi}
  cacheSize: 64Mi
EOF
wait_ring 3
kubectl get kvc -n "$ns"
forward
write_keys before

log "scaling 3 -> 5"
kubectl patch kvc demo -n "$ns" --type merge -p '{"spec":{"replicas":5}}'
wait_ring 5
forward
write_keys grown
check_keys before

log "scaling 5 -> 3"
kubectl patch kvc demo -n "$ns" --type merge -p '{"spec":{"replicas":3}}'
wait_ring 3
[ "$(kubectl get pods -n "$ns" -l app.kubernetes.io/instance=demo -o name | wc -l)" = 3 ] ||
  die "pods of the removed members are still there"
forward
check_keys before
check_keys grown

log "W 2 -> 1 (pushed to the running pods: no restart)"
restarts_before="$(kubectl get pods -n "$ns" -l app.kubernetes.io/instance=demo -o jsonpath='{.items[*].metadata.uid}')"
kubectl patch kvc demo -n "$ns" --type merge -p '{"spec":{"writeQuorum":1}}'
started=$SECONDS
until [ "$(curl -fsS "$endpoint/admin/v1/cluster" | grep -o '"w":[0-9]*')" = '"w":1' ]; do
  [ $((SECONDS - started)) -lt 60 ] || die "the nodes never got w=1"
  sleep 1
done
[ "$(jp '{.status.consistency}')" = Eventual ] || sleep 5
[ "$(jp '{.status.consistency}')" = Eventual ] || die "status.consistency is not Eventual with N=3 W=1 R=2"
[ "$(kubectl get pods -n "$ns" -l app.kubernetes.io/instance=demo -o jsonpath='{.items[*].metadata.uid}')" = "$restarts_before" ] ||
  die "pods were replaced by a quorum change"

kubectl get kvc -n "$ns"
kubectl get events -n "$ns" --field-selector involvedObject.kind=KVCluster -o custom-columns=REASON:.reason,MESSAGE:.message
log "kind e2e: all checks passed"
