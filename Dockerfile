# syntax=docker/dockerfile:1
# One image with the three binaries of message-pipeline:
#   /usr/local/bin/operator    the operator (charts/message-pipeline-operator runs it)
#   /usr/local/bin/api-server  the HTTP API worker
#   /usr/local/bin/indexer     the indexer worker (`indexer run`, `indexer dlq ...`)
# The operator's worker Deployments run `api-server` and `indexer run` from the image a
# MessagePipeline names (usually this one). Build from the repository root:
#   docker build -t message-pipeline:0.1.0 .

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build -------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# rdkafka's cmake-build compiles librdkafka from source: cmake, and the curl headers
# (rdkafka_conf.c includes curl/curl.h even with curl support off); OpenSSL and pkg-config for
# crates that link it. Versions are not pinned: a Debian stable release only takes security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake libcurl4-openssl-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target dir between builds on the same host; the
# binaries are copied out because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin api-server --bin indexer --bin operator \
 && mkdir -p /out \
 && cp target/release/api-server target/release/indexer target/release/operator /out/

# ---- runtime -----------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# The packages of image/runtime-packages (the rig's image build, devstack/image, installs the
# same list into its own Debian base).
COPY image/runtime-packages /tmp/runtime-packages
# hadolint ignore=DL3008
RUN apt-get update \
 && sed 's/#.*//' /tmp/runtime-packages | xargs \
      env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages
COPY --from=build --chown=0:0 --chmod=0755 /out/api-server /out/indexer /out/operator /usr/local/bin/
# A numeric non-root user (Kubernetes' runAsNonRoot can only verify a numeric one); 65532 is the
# uid the chart and the operator's worker Deployments run as.
USER 65532:65532
EXPOSE 8080
# No ENTRYPOINT: a Pod's `command` picks the binary (`operator`, `api-server`, `indexer run`).
CMD ["/usr/local/bin/operator"]
