#!/usr/bin/env bash
# On the cluster of scripts/e2e/cluster.sh (up): imports the kvcluster image, runs one kvnode pod from it
# behind a ClusterIP Service, waits until the kubelet's readiness probe (/health/ready) passes, then
# reads /health/ready from inside the cluster's network namespace through the pod's IP and through the
# Service (kube-proxy's rules). Removes the pod and the Service at the end.
#
#   scripts/e2e/smoke.sh [IMAGE.tar]   # default: builds it with scripts/image.sh from $CARGO_TARGET_DIR/debug
#
# The image's name is read from the archive (scripts/image.sh names it kvcluster/kvcluster:VERSION).
# Without an archive, `cluster.sh import` builds it with scripts/image.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cluster="$here/cluster.sh"
log() { echo "smoke: $*" >&2; }
die() { echo "smoke: FAIL: $*" >&2; exit 1; }

k() { "$cluster" kubectl "$@"; }
image="$("$cluster" import "${1:-}")" || die "could not import the image"
log "imported $image"

k apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: kvnode-smoke, labels: {app: kvnode-smoke}}
spec:
  containers:
  - name: kvnode
    image: $image
    imagePullPolicy: Never
    env:
    - {name: KVNODE_LISTEN, value: "0.0.0.0:8080"}
    - {name: KVNODE_PEER_LISTEN, value: "0.0.0.0:7070"}
    - {name: KVNODE_INSECURE, value: "true"}
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /health/ready, port: http}
      periodSeconds: 2
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, runAsNonRoot: true}
    volumeMounts: [{name: data, mountPath: /var/lib/kvnode}]
  volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: kvnode-smoke}
spec:
  selector: {app: kvnode-smoke}
  ports: [{name: http, port: 80, targetPort: http}]
EOF
started=$SECONDS
if ! k wait --for=condition=Ready pod/kvnode-smoke --timeout=120s >&2; then
  k describe pod kvnode-smoke >&2 || true
  k logs kvnode-smoke >&2 || true
  die "pod kvnode-smoke not Ready"
fi
log "pod Ready after $((SECONDS - started))s (the kubelet's readiness probe on /health/ready passed)"
pod_ip="$(k get pod kvnode-smoke -o jsonpath='{.status.podIP}')"
service_ip="$(k get service kvnode-smoke -o jsonpath='{.spec.clusterIP}')"
# kube-proxy writes a new Service's rules within its sync period (1 s): up to 30 tries, 1 s apart.
for url in "http://$pod_ip:8080/health/ready" "http://$service_ip/health/ready"; do
  for try in $(seq 30); do
    code="$("$cluster" exec curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$url")" && break
    [ "$try" -lt 30 ] || die "GET $url failed 30 times"
    sleep 1
  done
  [ "$code" = 200 ] || die "GET $url answered $code"
  log "GET $url: 200 (try $try)"
done
k logs kvnode-smoke --tail=3 >&2
k delete --wait=true --timeout=60s pod/kvnode-smoke service/kvnode-smoke >&2
log "passed"
