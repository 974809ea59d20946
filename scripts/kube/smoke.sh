#!/usr/bin/env bash
# Smoke test of a real control plane on loopback: etcd + kube-apiserver (built by install.sh), then with
# kubectl: a CRD with CEL validation (including an oldSelf transition rule), a good object accepted and
# bad ones rejected, server-side apply (and its conflict detection), a Lease, and a ServiceAccount token
# checked against RBAC. Stops everything and removes its temp folder on exit (KEEP=1 keeps the folder).
#
#   scripts/kube/smoke.sh
#   ETCD=/usr/bin/etcd scripts/kube/smoke.sh   # try another etcd (KUBE_APISERVER, KUBECTL likewise)
#
# This script doubles as the reference for a test harness: start_etcd, make_certs, start_apiserver and
# write_kubeconfig below are the whole recipe.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "== $*" >&2; }
die() { echo "kube/smoke: FAIL: $*" >&2; exit 1; }

# Binaries: from install.sh unless given.
if [ -z "${KUBE_APISERVER:-}" ] || [ -z "${ETCD:-}" ] || [ -z "${KUBECTL:-}" ]; then
  paths="$("$here/install.sh")"
  while IFS='=' read -r key value; do
    [ -n "${!key:-}" ] || printf -v "$key" '%s' "$value"
  done <<<"$paths"
fi
for b in "$KUBE_APISERVER" "$ETCD" "$KUBECTL"; do [ -x "$b" ] || die "not executable: $b"; done
for c in curl openssl; do command -v "$c" >/dev/null 2>&1 || die "'$c' is not on PATH (apt-get install $c)"; done

dir="$(mktemp -d "${TMPDIR:-/tmp}/kvcluster-kube.XXXXXX")"
pids=()
cleanup() {
  local status=$?
  # Stop the API server first, then etcd; each gets SIGTERM and up to 10 s before SIGKILL.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    local pid="${pids[i]}"
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    for f in etcd.log apiserver.log; do
      [ -f "$dir/$f" ] && { echo "---- last lines of $f" >&2; tail -n 30 "$dir/$f" >&2; }
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port: random in 20000-59999, not listening now (connect refused), not handed out yet.
taken=" "
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    case "$taken" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then taken+="$p "; echo "$p"; return; fi
  done
  die "no free port"
}

start_etcd() {
  etcd_port="$(free_port)"
  local peer_port; peer_port="$(free_port)"
  local extra=()
  # etcd >= 3.5: skip fsync (test data is throwaway). 3.4 lacks the flag.
  "$ETCD" --help 2>&1 | grep -q -- '--unsafe-no-fsync' && extra+=(--unsafe-no-fsync)
  "$ETCD" --name=default --data-dir="$dir/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="default=http://127.0.0.1:$peer_port" --initial-cluster-state=new \
    --log-level=warn "${extra[@]}" >"$dir/etcd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"' && return
    kill -0 "${pids[-1]}" 2>/dev/null || die "etcd exited"
    sleep 0.1
  done
  die "etcd not healthy after 10 s"
}

# Certificates (all ECDSA P-256, openssl only):
#   ca.crt/ca.key                serving CA;  apiserver.crt/.key  serving cert for 127.0.0.1 and localhost
#   client-ca.crt/client-ca.key  client CA;   admin.crt/.key     CN=admin, O=system:masters (cluster admin)
#   sa.key/sa.pub                service-account token signing key pair
make_certs() {
  local c="$dir/pki"; mkdir -p "$c"; chmod 700 "$c"
  local days=3650 key="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  # shellcheck disable=SC2086
  {
    openssl req -x509 $key -keyout "$c/ca.key" -out "$c/ca.crt" -days $days -subj "/CN=kvcluster-test-ca"
    openssl req -x509 $key -keyout "$c/client-ca.key" -out "$c/client-ca.crt" -days $days -subj "/CN=kvcluster-test-client-ca"
    openssl req $key -keyout "$c/apiserver.key" -out "$c/apiserver.csr" -subj "/CN=kube-apiserver"
    openssl req $key -keyout "$c/admin.key" -out "$c/admin.csr" -subj "/O=system:masters/CN=admin"
  } 2>/dev/null
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "basicConstraints=critical,CA:FALSE" >"$c/server.ext"
  printf '%s\n' "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth" \
    "basicConstraints=critical,CA:FALSE" >"$c/client.ext"
  openssl x509 -req -in "$c/apiserver.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
    -days $days -extfile "$c/server.ext" -out "$c/apiserver.crt" 2>/dev/null
  openssl x509 -req -in "$c/admin.csr" -CA "$c/client-ca.crt" -CAkey "$c/client-ca.key" -CAcreateserial \
    -days $days -extfile "$c/client.ext" -out "$c/admin.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$c/sa.key"
  openssl pkey -in "$c/sa.key" -pubout -out "$c/sa.pub"
}

start_apiserver() {
  api_port="$(free_port)"
  local c="$dir/pki"
  # envtest-style flags. No controllers run: nothing creates Pods, ServiceAccount tokens in Secrets, etc.
  "$KUBE_APISERVER" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
    --tls-cert-file="$c/apiserver.crt" --tls-private-key-file="$c/apiserver.key" \
    --client-ca-file="$c/client-ca.crt" \
    --service-account-issuer="https://127.0.0.1:$api_port" \
    --service-account-key-file="$c/sa.pub" --service-account-signing-key-file="$c/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=RBAC \
    --disable-admission-plugins=ServiceAccount \
    --allow-privileged=true \
    >"$dir/apiserver.log" 2>&1 &
  pids+=($!)
  local curl_auth=(--cacert "$c/ca.crt" --cert "$c/admin.crt" --key "$c/admin.key")
  local started=$SECONDS
  until curl -fsS "${curl_auth[@]}" "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; do
    kill -0 "${pids[-1]}" 2>/dev/null || die "kube-apiserver exited"
    [ $((SECONDS - started)) -lt 60 ] || die "kube-apiserver not ready after 60 s"
    sleep 0.2
  done
  log "kube-apiserver ready on https://127.0.0.1:$api_port in $((SECONDS - started)) s: $(curl -fsS "${curl_auth[@]}" "https://127.0.0.1:$api_port/version" | tr -d ' \n')"
}

write_kubeconfig() {
  local c="$dir/pki"
  b64() { base64 -w0 <"$1"; }
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(b64 "$c/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$c/admin.crt")
    client-key-data: $(b64 "$c/admin.key")
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
EOF
  chmod 600 "$dir/kubeconfig"
}

log "etcd: $("$ETCD" --version | head -n1)"
start_etcd
make_certs
start_apiserver
write_kubeconfig
export KUBECONFIG="$dir/kubeconfig"
k() { "$KUBECTL" "$@"; }
expect_fail() { # expected-substring command...
  local want="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then die "expected failure, got success: $*"; fi
  grep -qF -- "$want" <<<"$out" || die "expected '$want' in: $out"
  echo "rejected as expected: $(grep -F -- "$want" <<<"$out" | head -n1)" >&2
}

for _ in $(seq 50); do k get namespace default >/dev/null 2>&1 && break; sleep 0.2; done
k get namespace default >/dev/null || die "namespace default never appeared"

log "CRD with CEL validation rules"
k apply -f - <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.kvcluster.io
spec:
  group: smoke.kvcluster.io
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas, storageClass]
            x-kubernetes-validations:
            - rule: "self.replicas % 2 == 1"
              message: "replicas must be odd"
            properties:
              replicas: {type: integer, minimum: 1, maximum: 9}
              storageClass:
                type: string
                x-kubernetes-validations:
                - rule: "self == oldSelf"
                  message: "storageClass is immutable"
          status:
            type: object
            properties:
              readyReplicas: {type: integer}
EOF
k wait --for condition=Established --timeout=30s crd/widgets.smoke.kvcluster.io

log "a good Widget is accepted"
k apply -f - <<'EOF'
apiVersion: smoke.kvcluster.io/v1
kind: Widget
metadata: {name: good}
spec: {replicas: 3, storageClass: fast}
EOF

log "bad Widgets are rejected: even replicas (CEL), replicas above maximum (OpenAPI), changed storageClass (oldSelf)"
expect_fail "replicas must be odd" k apply -f - <<'EOF'
apiVersion: smoke.kvcluster.io/v1
kind: Widget
metadata: {name: bad}
spec: {replicas: 2, storageClass: fast}
EOF
expect_fail "should be less than or equal to 9" k create -f - <<'EOF'
apiVersion: smoke.kvcluster.io/v1
kind: Widget
metadata: {name: bad}
spec: {replicas: 11, storageClass: fast}
EOF
expect_fail "storageClass is immutable" k patch widget good --type=merge -p '{"spec":{"storageClass":"slow"}}'

log "server-side apply: field manager 'smoke' owns spec.replicas; 'other' conflicts, then forces"
k apply --server-side --field-manager=smoke -f - <<'EOF'
apiVersion: smoke.kvcluster.io/v1
kind: Widget
metadata: {name: ssa}
spec: {replicas: 5, storageClass: fast}
EOF
expect_fail "conflict" k apply --server-side --field-manager=other -f - <<'EOF'
apiVersion: smoke.kvcluster.io/v1
kind: Widget
metadata: {name: ssa}
spec: {replicas: 7, storageClass: fast}
EOF
k apply --server-side --field-manager=other --force-conflicts -f - <<'EOF'
apiVersion: smoke.kvcluster.io/v1
kind: Widget
metadata: {name: ssa}
spec: {replicas: 7, storageClass: fast}
EOF
[ "$(k get widget ssa -o jsonpath='{.spec.replicas}')" = 7 ] || die "forced apply did not take"
k get widget ssa --show-managed-fields -o jsonpath='{range .metadata.managedFields[*]}{.manager} {.operation}{"\n"}{end}' >&2
log "status subresource: merge patch of status"
k patch widget good --subresource=status --type=merge -p '{"status":{"readyReplicas":3}}'
[ "$(k get widget good -o jsonpath='{.status.readyReplicas}')" = 3 ] || die "status patch did not take"

log "Lease"
k apply -f - <<'EOF'
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: smoke-leader}
spec: {holderIdentity: smoke-1, leaseDurationSeconds: 15}
EOF
k get lease smoke-leader -o jsonpath='{.spec.holderIdentity}{"\n"}' >&2

log "RBAC: a ServiceAccount token (TokenRequest) is denied, then allowed once a Role grants it"
k create serviceaccount smoke-sa
token="$(k create token smoke-sa --duration=10m)"
# A separate kubeconfig user for the token (the admin user has a client certificate).
k config set-credentials smoke-sa --token="$token" >/dev/null
k config set-context sa --cluster=test --user=smoke-sa --namespace=default >/dev/null
expect_fail "forbidden" k --context=sa get widgets
k create role widget-reader --verb=get,list,watch --resource=widgets.smoke.kvcluster.io
k create rolebinding widget-reader --role=widget-reader --serviceaccount=default:smoke-sa
k --context=sa get widgets >&2
[ "$(k auth can-i list widgets.smoke.kvcluster.io --as=system:serviceaccount:default:smoke-sa)" = yes ] || die "can-i"

log "watch: one event arrives"
k get widgets --watch-only -o name --request-timeout=10s >"$dir/watch.out" 2>&1 &
watch_pid=$!
sleep 1
k patch widget good --type=merge -p '{"metadata":{"labels":{"touched":"yes"}}}' >/dev/null
for _ in $(seq 50); do grep -q 'widget.smoke.kvcluster.io/good' "$dir/watch.out" && break; sleep 0.1; done
kill "$watch_pid" 2>/dev/null || true; wait "$watch_pid" 2>/dev/null || true
grep -q 'widget.smoke.kvcluster.io/good' "$dir/watch.out" || die "no watch event: $(cat "$dir/watch.out")"

log "streaming list (watch with sendInitialEvents=true): initial events, then the initial-events-end bookmark"
# Needs etcd's RequestWatchProgress (etcd >= 3.4.31 / 3.5.13); clients such as kube-rs' watcher with
# streaming lists, and client-go's WatchListClient, use it.
k get --raw "/apis/smoke.kvcluster.io/v1/namespaces/default/widgets?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=3" >"$dir/watchlist.out" 2>&1 || true
{ grep -q '"type":"ADDED".*"name":"good"' "$dir/watchlist.out" &&
  grep -q '"k8s.io/initial-events-end":"true"' "$dir/watchlist.out"; } ||
  die "streaming list: $(head -c 600 "$dir/watchlist.out")"

log "smoke: all checks passed; stopping"
