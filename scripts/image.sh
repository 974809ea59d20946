#!/usr/bin/env bash
# Builds the kvcluster container image without a container engine, from Debian packages only: the same
# image as the root Dockerfile (kvnode, kvoperator and kvctl in /usr/local/bin, user 65532, no shell,
# data under the volume /var/lib/kvnode), for machines with no Docker daemon and no registry.
#
# 1. A minimal Debian base (libc6, libgcc-s1, libstdc++6 and their files only, no shell, no package
#    manager) made by mmdebstrap, cached under /var/tmp/kvcluster-image-base keyed by its recipe.
# 2. The three binaries from a cargo target directory, stripped, as a second layer (umoci).
# 3. The result as an OCI image layout (OUT/oci, tag = the image's tag) and as a docker-archive tarball
#    (OUT/kvcluster.tar, skopeo) that `ctr -n k8s.io images import`, `docker load` and
#    `kind load image-archive` take.
#
#   scripts/image.sh               # debug binaries from $CARGO_TARGET_DIR/debug (or target/debug), image
#                                  # in $CARGO_TARGET_DIR/image (or target/image), named kvcluster/kvcluster:VERSION
#                                  # (the Helm chart's default image)
#   scripts/image.sh --release     # release binaries: cargo build --release --locked --workspace --bins first
#   scripts/image.sh --bin-dir DIR --out DIR --name kvcluster:dev
#   scripts/image.sh --fresh-base  # rebuild the cached base (to take Debian's security updates)
#
# Needs root (mmdebstrap writes the base's files with their owners) and the Debian packages mmdebstrap,
# umoci and skopeo (scripts/install-deps.sh). The base comes from the Debian release of this machine,
# so the binaries built here find the glibc and libstdc++ they were linked against.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
profile=debug
bin_dir=""
out=""
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)"
name="kvcluster/kvcluster:$version"
fresh_base=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "image.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release ;;
    --bin-dir) bin_dir="$2"; shift ;;
    --out) out="$2"; shift ;;
    --name) name="$2"; shift ;;
    --fresh-base) fresh_base=1 ;;
    -h|--help) usage ;;
    *) echo "image.sh: unknown argument $1" >&2; usage 2 ;;
  esac
  shift
done
bin_dir="${bin_dir:-$target_dir/$profile}"
out="${out:-$target_dir/image}"
tag="${name##*:}"
case "$tag" in
  "$name"|*/*|"") die "--name must be REPOSITORY:TAG, not $name" ;;
esac

[ "$(id -u)" -eq 0 ] || die "run as root: mmdebstrap writes the base's files owned by root"
for tool in mmdebstrap umoci skopeo strip flock; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is missing: run scripts/install-deps.sh"
done
for bin in kvnode kvoperator kvctl; do
  [ -x "$bin_dir/$bin" ] ||
    die "$bin_dir/$bin is missing: cargo build --locked --workspace --bins$([ "$profile" = release ] && echo ' --release')"
done

# --- the base: Debian's runtime libraries for the binaries, and the files a container needs -------
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
[ -n "$suite" ] || die "cannot tell this machine's Debian release from /etc/os-release"
packages=libc6,libgcc-s1,libstdc++6
# Run by mmdebstrap on the extracted files ("$1"), in place of its own cleanup (--skip=cleanup): keeps
# the packages' list for image scanners, drops the package manager's state, docs and iconv modules
# (nothing here converts charsets), and adds the user 65532 and the data directory it owns.
hook='set -eu
r="$1"
for deb in "$r"/var/cache/apt/archives/*.deb; do
  dpkg-deb --field "$deb" | sed "1a Status: install ok installed"
  echo
done > "$r/status"
rm -rf "$r/etc/apt" "$r/etc/dpkg" "$r/etc/fstab" "$r/var/cache" "$r/var/lib/apt" "$r/var/log" \
  "$r/var/lib/dpkg" "$r/usr/share/gcc" "$r/usr/share/gdb" "$r/usr/share/lintian" "$r"/tmp/mmdebstrap.*
mkdir -p "$r/var/lib/dpkg"
mv "$r/status" "$r/var/lib/dpkg/status"
printf "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" > "$r/etc/passwd"
printf "root:x:0:\nnonroot:x:65532:\n" > "$r/etc/group"
printf "hosts: files dns\n" > "$r/etc/nsswitch.conf"
printf "127.0.0.1 localhost\n::1 localhost\n" > "$r/etc/hosts"
: > "$r/etc/resolv.conf"
: > "$r/etc/hostname"
chmod 0644 "$r/etc/resolv.conf" "$r/etc/hostname"
install -d -m 0700 "$r/root"
install -d -m 0700 -o 65532 -g 65532 "$r/home/nonroot" "$r/var/lib/kvnode"'
mmdebstrap_args=(--quiet --variant=extract "--include=$packages" --skip=output/dev,cleanup
  "--dpkgopt=path-exclude=/usr/share/doc/*" "--dpkgopt=path-exclude=/usr/share/locale/*"
  "--dpkgopt=path-exclude=/usr/share/man/*" "--dpkgopt=path-exclude=/usr/lib/*/gconv/*"
  "--extract-hook=$hook")
key="$(printf '%s\n' "$suite" "$packages" "${mmdebstrap_args[@]}" | sha256sum | cut -c1-16)"
cache=/var/tmp/kvcluster-image-base
base="$cache/$suite-$key"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one base build at a time; a second caller waits and reuses it
if [ "$fresh_base" = 1 ]; then rm -rf "$base"; fi
if [ ! -d "$base" ]; then
  echo "image.sh: building the $suite base ($packages) with mmdebstrap" >&2
  rm -rf "$base.tmp"
  mkdir -p "$base.tmp"
  mmdebstrap "${mmdebstrap_args[@]}" "$suite" "$base.tmp/rootfs.tar"
  umoci init --layout "$base.tmp/oci"
  umoci new --image "$base.tmp/oci:base"
  umoci raw add-layer --image "$base.tmp/oci:base" "$base.tmp/rootfs.tar"
  rm "$base.tmp/rootfs.tar"
  mv "$base.tmp" "$base"
fi

# --- the binaries, as the second layer -------------------------------------------------------------
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/layer/usr/local/bin"
for bin in kvnode kvoperator kvctl; do
  strip -o "$work/layer/usr/local/bin/$bin" "$bin_dir/$bin"
  chmod 0755 "$work/layer/usr/local/bin/$bin"
done
tar --create --file "$work/bins.tar" --directory "$work/layer" --numeric-owner --owner=0 --group=0 \
  --sort=name --mtime=@0 usr

rm -rf "$out/oci" "$out/kvcluster.tar"
mkdir -p "$out"
cp -a "$base/oci" "$out/oci"
flock -u 9
image="$out/oci:$tag"
umoci raw add-layer --image "$out/oci:base" --tag "$tag" "$work/bins.tar"
umoci rm --image "$out/oci:base"
# Same configuration as the Dockerfile's final stage.
umoci config --image "$image" \
  --config.user 65532:65532 \
  --config.entrypoint kvnode \
  --config.env PATH=/usr/local/bin:/usr/bin:/bin \
  --config.env KVNODE_DATA_DIR=/var/lib/kvnode \
  --config.volume /var/lib/kvnode \
  --config.label "org.opencontainers.image.title=kvcluster" \
  --config.label "org.opencontainers.image.version=$version"
umoci gc --layout "$out/oci"

skopeo copy --quiet "oci:$out/oci:$tag" "docker-archive:$out/kvcluster.tar:$name"

layers="$(du -sh "$out/oci/blobs" | cut -f1)"
archive="$(du -h "$out/kvcluster.tar" | cut -f1)"
echo "image.sh: $name (binaries from $bin_dir)"
echo "image.sh: OCI layout $image ($layers compressed)"
echo "image.sh: docker archive $out/kvcluster.tar ($archive): ctr -n k8s.io images import $out/kvcluster.tar"
