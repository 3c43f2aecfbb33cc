# The CPU image of Sluice: one binary, `sluice`, running as an unprivileged user.
#   docker build -t sluice:latest .
#   docker run --rm -p 9527:9527 --user "$(id -u):$(id -g)" -v ~/.cache/huggingface:/tmp/hf sluice:latest
# (--user lets the container write the mounted hub cache, which belongs to you.)
# Needs BuildKit (the default builder of current Docker): the cache mounts keep the cargo registry
# and the target directory between builds, so a source change recompiles only the workspace crates.
# The GPU image is Dockerfile.cuda.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# cmake and a C++ compiler build the statically linked SentencePiece library.
# DL3008 (pin apt package versions) is ignored here and below: the base image tag pins the Debian
# release, and a pinned point-release version leaves the archive at the next update, which would
# break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the release build reads; tests, fixtures, benches and tools stay out of the cache key.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# Set to true to keep the line tables of the release profile (file:line in panics and backtraces);
# by default they are stripped, which shrinks the binary about fivefold.
ARG KEEP_DEBUG=false
# The target directory is a cache mount, so the binary is copied out of it in the same step.
RUN --mount=type=cache,id=sluice-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=sluice-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=sluice-target-cpu,target=/src/target,sharing=locked \
    cargo build --release --locked -p sluice-cli \
 && install -D -m 0755 target/release/sluice /out/sluice \
 && if [ "$KEEP_DEBUG" != "true" ]; then strip --strip-debug /out/sluice; fi

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: HTTPS to the Hugging Face hub and object storage (rustls reads the system roots).
# libstdc++ and libgcc, which the binary links, are already in the slim image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A system user without a login shell; the home directory is the working directory.
RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid 10001 --home-dir /work --no-create-home \
      --shell /usr/sbin/nologin sluice \
 && mkdir -p /work /tmp/hf \
 && chown sluice:sluice /work /tmp/hf
COPY --from=builder /out/sluice /usr/local/bin/sluice
# The hub cache (`sluice fetch-model`, or a hub id given to --model) goes under /tmp, which a
# read-only root filesystem gets as a writable volume; mount ~/.cache/huggingface here to reuse it.
ENV HF_HOME=/tmp/hf \
    SLUICE_HOST=0.0.0.0 \
    SLUICE_PORT=9527
WORKDIR /work
USER 10001:10001
EXPOSE 9527
# No curl in the image: the binary checks its own /healthz. A first start that downloads a model
# can take minutes, hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD ["sluice", "healthcheck", "--url", "http://127.0.0.1:9527/healthz"]
ENTRYPOINT ["sluice"]
CMD ["serve"]
