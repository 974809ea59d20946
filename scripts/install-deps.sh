#!/usr/bin/env bash
# Installs what building and testing kvcluster needs on a fresh Debian machine, and nothing when it is
# already there. Safe to run repeatedly. Needs root (or sudo) for apt-get.
set -euo pipefail

# Debian packages: libclang for RocksDB's bindgen, a C++ toolchain for RocksDB itself; openssl, unzip
# and util-linux (flock) for the real Kubernetes API server the operator tests run against; iproute2
# (ip netns) and iptables for the chaos tests' network namespaces and partitions; strace for the test
# that checks which syncs precede an acknowledged write (tests/tests/durability_edges.rs); prometheus
# for `promtool check rules` and `promtool test rules` on the Helm chart's alerts
# (tests/tests/helm_chart.rs, alerts.rs) and the real Prometheus of tests/tests/prometheus.rs;
# mmdebstrap, umoci and skopeo build the container image without a daemon (scripts/image.sh), and runc
# runs it in tests/tests/image.rs; containerd and containernetworking-plugins (with runc) are the node of
# scripts/e2e/cluster.sh's single-node Kubernetes; etcd-server and redis-server are the peers `kvctl bench
# --target etcd|redis` is tested against (client/tests/bench_peers.rs) and scripts/bench-peers.sh compares
# kvcluster with.
apt_packages=(libclang-dev clang g++ make pkg-config openssl unzip util-linux iproute2 iptables strace
  prometheus mmdebstrap umoci skopeo runc containerd containernetworking-plugins etcd-server redis-server)

missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Rust components the checks use.
if command -v rustup >/dev/null 2>&1; then
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi

# Go builds kube-apiserver and etcd from their modules (scripts/kube/install.sh).
if ! command -v go >/dev/null 2>&1; then
  echo "install-deps: Go >= 1.25 is needed to build kube-apiserver and etcd (scripts/kube); install it first" >&2
  [ "${CI:-}" = "true" ] && exit 1
fi

# s3s-fs, a small S3-compatible server from crates.io, for the backup tests against real S3
# (tests/tests/backup.rs). Built once into the tools cache (a few minutes on 2 cores), then reused.
s3s_fs_version="0.14.1"
tools="${KVCLUSTER_TOOLS:-/var/tmp/kvcluster-tools}"
s3s_root="$tools/cargo"
if [ "$(cat "$s3s_root/s3s-fs.version" 2>/dev/null)" != "$s3s_fs_version" ] || [ ! -x "$s3s_root/bin/s3s-fs" ]; then
  echo "install-deps: building s3s-fs $s3s_fs_version into $s3s_root (first time: a few minutes)"
  mkdir -p "$s3s_root"
  build_dir="$(mktemp -d)"
  CARGO_TARGET_DIR="$build_dir" nice -n 10 cargo install s3s-fs --version "$s3s_fs_version" \
    --features binary --locked --root "$s3s_root" --force --quiet
  rm -rf "$build_dir"
  echo "$s3s_fs_version" >"$s3s_root/s3s-fs.version"
fi
