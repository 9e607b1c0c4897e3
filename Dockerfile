# berth: one image for the controller (`berth controller`, deployed by charts/berth) and the host
# agent (`berth agent`, deploy/agent/).
#
#   docker build -t berth:0.1.0 .
#
# Build arguments:
#   BUILDER_IMAGE  image with the Rust toolchain (>= the rust-version in Cargo.toml) and a shell
#   BASE_IMAGE     runtime base; needs glibc (the binary links it dynamically) and /bin/sh for the
#                  agent's Marathon app (its `cmd` runs through a shell)
# A binary built beforehand can be used instead of compiling in BUILDER_IMAGE: put it at
# `prebuilt/berth` in the build context (scripts/image does this, for machines without a
# registry; then BUILDER_IMAGE only needs a shell).
ARG BUILDER_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
# Lets scripts/image remove this stage's image after a build with the legacy builder.
LABEL io.berth.stage=build
WORKDIR /src
COPY . .
RUN set -e; \
    mkdir -p /out/usr/local/bin /out/etc/ssl/certs; \
    if [ -f prebuilt/berth ]; then \
        cp prebuilt/berth /out/usr/local/bin/berth; \
    else \
        cargo build --release --locked --bin berth; \
        cp target/release/berth /out/usr/local/bin/berth; \
    fi; \
    chmod 0755 /out/usr/local/bin/berth; \
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
        cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/; \
    fi

FROM ${BASE_IMAGE}
COPY --from=build /out/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
# A numeric non-root user: no passwd entry needed, and Kubernetes' runAsNonRoot can verify it.
# The agent must run as root (it owns the tenant roots): a Marathon app running this image for
# the agent overrides the user (Docker parameter user=0); the systemd unit runs the binary as root.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["berth"]
CMD ["--help"]
