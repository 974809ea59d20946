#!/usr/bin/env bash
# End to end on the single-node Kubernetes of scripts/e2e/cluster.sh (started here if it is not up):
# imports the image, `helm install`s the chart with a 3-pod KVCluster (N=3 W=2 R=2), starts a bounded
# write load through the client Service that records every acknowledged key, then
#   1. waits for Available and runs `helm test`;
#   2. scales to 5 (`kubectl scale kvc`) and back to 3 (a spec edit), each waiting for RingSettled;
#   3. deletes a pod, and separately SIGKILLs a kvnode process: each comes back on the same PVC, hints drain;
#   4. with the node cordoned and a deleted pod Pending, evicts another: the PDB refuses it;
#   5. changes the image tag: the StatefulSet rolls, the ring settles;
#   6. reads every acknowledged key back at R = N through every pod: 0 lost;
#   7. `helm uninstall`, then `cluster.sh down` (when this script started the cluster).
# Prints each step's duration and the writes attempted, acknowledged and failed in it, then the lost.
#
#   scripts/e2e.sh [IMAGE.tar]   # default: scripts/image.sh's image of $CARGO_TARGET_DIR/debug
#   KEEP=1 scripts/e2e.sh ...    # leave the release and the cluster up
#
# Environment: E2E_RATE writes a second (default 20), STEP_TIMEOUT seconds (default 300),
# KVCLUSTER_E2E_DIR as for cluster.sh. Needs what cluster.sh needs, and root.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cluster="$root/scripts/e2e/cluster.sh"
dir="${KVCLUSTER_E2E_DIR:-/var/tmp/kvcluster-e2e}"
ns=kv-e2e
release=kvc
name=kv # the chart's cluster.name: pods kv-0.., client Service kv
selector="app.kubernetes.io/instance=$name,app.kubernetes.io/name=kvnode"
timeout_s="${STEP_TIMEOUT:-300}"
rate="${E2E_RATE:-20}"

log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }
die() { echo "e2e: FAIL: $*" >&2; exit 1; }

while IFS= read -r line; do
  case "$line" in KUBECTL=* | HELM=*) export "${line?}" ;; esac
done < <("$root/scripts/kube/install.sh")
k() { "$cluster" exec "$KUBECTL" --kubeconfig "$dir/admin.kubeconfig" -n "$ns" "$@"; }
helm_() { "$cluster" exec "$HELM" --kubeconfig "$dir/admin.kubeconfig" -n "$ns" "$@"; }

owned=0
work="$(mktemp -d)"
load_pid_file="$work/load.pid"
cleanup() {
  local status=$?
  [ ! -f "$load_pid_file" ] || kill -TERM "$(cat "$load_pid_file")" 2>/dev/null || true
  if [ "$status" -ne 0 ] && [ -d "$dir/pids" ]; then
    echo "---- diagnostics" >&2
    k get kvc,sts,pods,pvc,pdb -o wide >&2 || true
    k get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 25 >&2 || true
    k logs deploy/"$release"-kvcluster-operator --tail=40 >&2 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" != 1 ] && [ "$owned" = 1 ]; then "$cluster" down >&2 || status=1; fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- steps and the table ------------------------------------------------------------------------
table="$work/table"
step_name="" step_started=0 step_t0=0
step() { # name: starts a step (ending the previous one)
  [ -z "$step_name" ] || end_step
  step_name="$1" step_started=$SECONDS step_t0="$(date +%s.%N)"
  log "step: $1"
}
end_step() {
  local counts="- - -"
  [ ! -f "$work/load.log" ] || counts="$(python3 "$root/scripts/e2e/load.py" count "$work/load.log" "$step_t0" "$(date +%s.%N)")"
  echo "$step_name|$((SECONDS - step_started))|$counts" >>"$table"
  step_name=""
}

# --- waits --------------------------------------------------------------------------------------
until_ok() { # what command...: retries every 2 s for STEP_TIMEOUT
  local what="$1" started=$SECONDS; shift
  until "$@" >/dev/null 2>&1; do
    [ $((SECONDS - started)) -lt "$timeout_s" ] || die "$what: not within ${timeout_s}s"
    sleep 2
  done
  log "$what ($((SECONDS - started))s)"
}
ring_is() { # replicas: RingSettled, status up to date, that many members, StatefulSet pods all ready
  local got
  got="$(k get kvc "$name" -o jsonpath='{.metadata.generation}={.status.observedGeneration} {.status.conditions[?(@.type=="RingSettled")].status} {.status.members[*]}')"
  set -- "$1" $got
  [ "${2%=*}" = "${2#*=}" ] && [ "$3" = True ] && [ $(($# - 3)) = "$1" ] || return 1
  [ "$(k get sts "$name" -o jsonpath='{.spec.replicas} {.status.readyReplicas} {.status.updatedReplicas}')" = "$1 $1 $1" ]
}
pod_ips() { k get pods -l "$selector" -o jsonpath='{.items[*].status.podIP}'; }
hints_drained() { # every pod reports hints_pending 0
  local ip status
  for ip in $(pod_ips); do
    status="$("$cluster" exec curl -fsS --max-time 3 "http://$ip:8080/admin/v1/status")" || return 1
    grep -q '"hints_pending":0[,}]' <<<"$status" || return 1
  done
}
pod_back() { # pod old-uid: a new pod (or container) of that name is Ready
  [ "$(k get pod "$1" -o jsonpath='{.metadata.uid}')" != "$2" ] || return 1
  k wait --for=condition=Ready "pod/$1" --timeout=2s
}
claim_of() { # pod: "PVC-name PVC-uid PV-name"
  local claim
  claim="$(k get pod "$1" -o jsonpath='{.spec.volumes[?(@.persistentVolumeClaim)].persistentVolumeClaim.claimName}')"
  echo "$claim $(k get pvc "$claim" -o jsonpath='{.metadata.uid} {.spec.volumeName}')"
}
pod_pending() { # pod old-uid: a new pod of that name waits to be scheduled
  local got
  got="$(k get pod "$1" -o jsonpath='{.metadata.uid} {.status.phase}')" || return 1
  [ "${got% *}" != "$2" ] && [ "${got#* }" = Pending ]
}
pdb_allows() { [ "$(k get pdb "$name" -o jsonpath='{.status.disruptionsAllowed}')" = "$1" ]; }
all_on() { # image: every kvnode pod runs it
  [ "$(k get pods -l "$selector" -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{end}' | grep -cx "$1")" = 3 ]
}
restarts() { k get pod "$1" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
restarted() { # pod count: restarted more than COUNT times and Ready
  [ "$(restarts "$1")" -gt "$2" ] && k wait --for=condition=Ready "pod/$1" --timeout=2s
}

# --- cluster, image, chart ----------------------------------------------------------------------
started_all=$SECONDS
step "cluster up"
if [ ! -d "$dir/pids" ]; then owned=1; "$cluster" up; fi
image="$("$cluster" import "${1:-}")"
log "image $image"

step "helm install"
k create namespace "$ns" >/dev/null
helm_ install "$release" "$root/charts/kvcluster" --wait --timeout 180s \
  --set image.pullPolicy=Never --set cluster.enabled=true --set cluster.name="$name" \
  --set cluster.storage.size=1Gi --set cluster.cacheSize=64Mi \
  --set-json 'cluster.resources={"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"memory":"512Mi"}}' \
  --set cluster.image="$image" >&2
until_ok "StatefulSet $name exists" k get sts "$name"
until_ok "Service $name has a ClusterIP" k get svc "$name" -o jsonpath='{.spec.clusterIP}'
service_url="http://$(k get svc "$name" -o jsonpath='{.spec.clusterIP}'):8080"
until_ok "pods Ready" k wait --for=condition=Ready pod -l "$selector" --timeout=2s
# The load: one process in the cluster's namespace, bounded by count and time, stopped after step 5.
# shellcheck disable=SC2016 # $$ and $0 belong to the inner shell
"$cluster" exec sh -c 'echo $$ >"$0" && exec "$@"' "$load_pid_file" python3 "$root/scripts/e2e/load.py" \
  write "$service_url" "$work/load.log" --rate "$rate" --seconds 3600 --max 100000 &
until_ok "load writer started" test -s "$work/load.log"

step "1 Available, helm test"
until_ok "KVCluster Available" k wait --for=condition=Available "kvc/$name" --timeout=2s
helm_ test "$release" --timeout 120s >&2

step "2 scale 3 -> 5 -> 3"
k scale kvc "$name" --replicas=5 >&2
until_ok "ring settled on 5" ring_is 5
k patch kvc "$name" --type merge -p '{"spec":{"replicas":3}}' >&2
until_ok "ring settled on 3" ring_is 3

step "3a delete pod $name-1"
before="$(claim_of "$name-1")" uid="$(k get pod "$name-1" -o jsonpath='{.metadata.uid}')"
k delete pod "$name-1" --wait=true >&2
until_ok "$name-1 back and Ready" pod_back "$name-1" "$uid"
[ "$(claim_of "$name-1")" = "$before" ] || die "$name-1 came back on $(claim_of "$name-1"), not $before"
log "$name-1 is on the same claim and volume: $before"
until_ok "hints drained" hints_drained

step "3b SIGKILL kvnode in $name-2"
before="$(claim_of "$name-2")" count="$(restarts "$name-2")"
container="$(k get pod "$name-2" -o jsonpath='{.status.containerStatuses[0].containerID}')"
pid="$("$cluster" exec ctr --address "$dir/containerd.sock" -n k8s.io task ls | awk -v id="${container#containerd://}" '$1 == id { print $2 }')"
[ -n "$pid" ] || die "no containerd task for $container"
kill -KILL "$pid"
until_ok "$name-2 restarted and Ready" restarted "$name-2" "$count"
[ "$(claim_of "$name-2")" = "$before" ] || die "$name-2 is on $(claim_of "$name-2"), not $before"
until_ok "hints drained" hints_drained

step "4 eviction refused by the PDB"
k cordon kvc-node >&2
before="$(claim_of "$name-0")" uid="$(k get pod "$name-0" -o jsonpath='{.metadata.uid}')"
k delete pod "$name-0" --wait=true >&2
until_ok "$name-0 recreated and Pending (node cordoned)" pod_pending "$name-0" "$uid"
until_ok "PDB allows 0 disruptions" pdb_allows 0
eviction='{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"'"$name-1"'","namespace":"'"$ns"'"}}'
if refusal="$(k create --raw "/api/v1/namespaces/$ns/pods/$name-1/eviction" -f - <<<"$eviction" 2>&1)"; then
  die "the eviction of $name-1 was accepted while $name-0 was down: $refusal"
fi
grep -q "disruption budget" <<<"$refusal" || die "the eviction failed, but not because of the PDB: $refusal"
log "eviction refused: $refusal"
k uncordon kvc-node >&2
until_ok "$name-0 Ready" k wait --for=condition=Ready "pod/$name-0" --timeout=2s
[ "$(claim_of "$name-0")" = "$before" ] || die "$name-0 came back on $(claim_of "$name-0"), not $before"
until_ok "ring settled on 3" ring_is 3
until_ok "hints drained" hints_drained

step "5 image tag change (rolling restart)"
next="${image%:*}:e2e-next"
"$cluster" exec ctr --address "$dir/containerd.sock" -n k8s.io images tag "$image" "$next" >&2
k patch kvc "$name" --type merge -p '{"spec":{"image":"'"$next"'"}}' >&2
until_ok "every pod on $next" all_on "$next"
until_ok "ring settled on 3" ring_is 3
until_ok "hints drained" hints_drained
kill -TERM "$(cat "$load_pid_file")"
rm -f "$load_pid_file"
sleep 4 # the writer's last request times out after 3 s

step "6 read back at R=N through every pod"
urls=()
for ip in $(pod_ips); do urls+=("http://$ip:8080"); done
check="$("$cluster" exec python3 "$root/scripts/e2e/load.py" check "$work/load.log" 3 "${urls[@]}")" ||
  { log "$check"; die "acknowledged writes were lost"; }
log "$check"
lost="${check##*lost }"

step "7 helm uninstall"
helm_ uninstall "$release" --wait --timeout 180s >&2
end_step

read -r attempted acked failed < <(python3 "$root/scripts/e2e/load.py" count "$work/load.log")
{
  printf '%-40s %8s %10s %8s %8s\n' step seconds attempted acked failed
  while IFS='|' read -r s d c; do
    read -r a o f <<<"$c"
    printf '%-40s %8s %10s %8s %8s\n' "$s" "$d" "$a" "$o" "$f"
  done <"$table"
  printf '%-40s %8s %10s %8s %8s\n' total "$((SECONDS - started_all))" "$attempted" "$acked" "$failed"
  echo "acknowledged writes lost (read at R=3 through each of 3 pods): $lost"
  echo "failed writes by answer (0 = none: refused, reset or 3 s timeout): $(awk '$3 != 204 { n[$3]++ }
    END { for (c in n) printf "%s x%d  ", c, n[c] }' "$work/load.log")"
} | tee "$work/summary" >&2
log "e2e: passed"
