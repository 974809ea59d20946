#!/usr/bin/env bash
# Installs what building and testing kvcluster needs on a fresh Debian machine, and nothing when it is
# already there. Safe to run repeatedly. Needs root (or sudo) for apt-get.
set -euo pipefail

# Debian packages: libclang for RocksDB's bindgen, a C++ toolchain for RocksDB itself; openssl, unzip
# and util-linux (flock) for the real Kubernetes API server the operator tests run against; iproute2
# (ip netns) and iptables for the chaos tests' network namespaces and partitions; strace for the test
# that checks which syncs precede an acknowledged write (tests/tests/durability_edges.rs); prometheus
# for `promtool check rules` and `promtool test rules` on the Helm chart's alerts
# (tests/tests/helm_chart.rs, alerts.rs) and the real Prometheus of tests/tests/prometheus.rs.
apt_packages=(libclang-dev clang g++ make pkg-config openssl unzip util-linux iproute2 iptables strace prometheus)

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
