# syntax=docker/dockerfile:1
# The kvcluster image: kvnode, kvoperator and kvctl in /usr/local/bin on distroless Debian 12 (glibc and
# libstdc++, no shell, no package manager), running as nonroot (65532). It works with a read-only root
# filesystem: kvnode keeps its data in the volume /var/lib/kvnode (KVNODE_DATA_DIR) and writes nowhere
# else. The entrypoint is kvnode; the operator's Deployment runs `kvoperator` as its command.
#
#   docker build -t kvcluster/kvcluster:0.1.0 .
#   docker run --read-only -v kvdata:/var/lib/kvnode -p 8080:8080 kvcluster/kvcluster:0.1.0 \
#     --listen 0.0.0.0:8080 --insecure
#
# Without a Docker daemon, scripts/image.sh builds the same image from Debian packages (docs/decisions.md).
# Bookworm, as the final stage; Rust 1.95, what the tests build with (parking_lot 0.13 needs it).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --workspace, as everywhere: the binaries get the features the tests ran them with.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out/bin /out/data \
 && for bin in kvnode kvoperator kvctl; do strip -o "/out/bin/$bin" "target/release/$bin"; done

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build --chown=65532:65532 --chmod=0700 /out/data /var/lib/kvnode
USER 65532:65532
ENV KVNODE_DATA_DIR=/var/lib/kvnode
VOLUME /var/lib/kvnode
ENTRYPOINT ["kvnode"]
