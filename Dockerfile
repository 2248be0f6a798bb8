# Switchboard: one `switchboard` binary, run as `switchboard gateway` by default.
#
#   docker build -t switchboard:latest .
#   docker run --rm -p 8080:8080 \
#     -e SWITCHBOARD_REDIS=redis://host.docker.internal:6379 \
#     -e SWITCHBOARD_JWT_SECRET=change-me switchboard:latest
#
# Configuration comes from SWITCHBOARD_* environment variables (or flags after `gateway`);
# invalid configuration makes the process exit with status 64.
#
# Layers, cheapest to change last:
#   1. the manifests and Cargo.lock, with stub sources: every dependency is compiled here, and
#      this layer is reused until a Cargo.toml or Cargo.lock changes (about 270 crates);
#   2. the real sources of the members the binary is built from: only Switchboard's own crates
#      rebuild.
# The manifest list and the stub list must name every workspace member (cargo loads them all)
# and every target a manifest declares, and step 2 every member the binary depends on:
# tests/tests/deploy.rs checks all three against the workspace (`cargo metadata`).

# ---- build -------------------------------------------------------------------------------------
# The workspace needs Rust >= 1.88 (edition 2024); rust:1-bookworm tracks the latest stable 1.x.
# Pin a version (e.g. rust:1.88-bookworm) for reproducible builds.
FROM rust:1-bookworm AS builder
WORKDIR /src
# No debug info and no symbol table in what ships (the release profile keeps symbols; stripping
# them here leaves Cargo.toml's `profiling` profile alone). Same effect as `strip = "symbols"`.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never

# 1. Dependencies.
COPY Cargo.toml Cargo.lock ./
COPY protocol/Cargo.toml protocol/
COPY core/Cargo.toml core/
COPY backends/memory/Cargo.toml backends/memory/
COPY backends/redis/Cargo.toml backends/redis/
COPY gateway/Cargo.toml gateway/
COPY worker/Cargo.toml worker/
COPY client/Cargo.toml client/
COPY cli/Cargo.toml cli/
COPY telemetry/Cargo.toml telemetry/
COPY bench/Cargo.toml bench/
COPY tests/Cargo.toml tests/
# Empty stubs for every target, one build (it compiles every dependency), then the stubs' own
# outputs go (the dependencies' stay).
RUN set -eu; \
    for f in protocol/src/lib.rs core/src/lib.rs backends/memory/src/lib.rs \
             backends/redis/src/lib.rs gateway/src/lib.rs worker/src/lib.rs client/src/lib.rs \
             cli/src/main.rs telemetry/src/lib.rs bench/src/lib.rs bench/src/main.rs tests/src/lib.rs; do \
      mkdir -p "$(dirname "$f")"; \
      case "$f" in */main.rs) echo 'fn main() {}' > "$f" ;; *) : > "$f" ;; esac; \
    done; \
    cargo build --release --locked -p switchboard; \
    rm -rf target/release/switchboard target/release/deps/switchboard* \
           target/release/deps/libswitchboard* target/release/.fingerprint/switchboard*

# 2. The real sources of the members `switchboard` is built from (bench and tests stay stubs;
# docs, clients and deployment files are not copied, so changing them rebuilds nothing).
COPY protocol protocol
COPY core core
COPY backends backends
COPY gateway gateway
COPY worker worker
COPY client client
COPY cli cli
COPY telemetry telemetry
# COPY keeps the files' times, which can be older than the stubs': make sure cargo sees them as new.
RUN set -eu; \
    find protocol core backends gateway worker client cli telemetry -type f -exec touch {} +; \
    cargo build --release --locked -p switchboard; \
    install -D -m 0755 target/release/switchboard /out/switchboard

# ---- runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: rediss:// to a managed Redis, JWKS over https. tini: PID 1 (below).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*

# Fixed numeric IDs so Kubernetes' runAsNonRoot can check them (see k8s/base/gateway.yaml).
RUN groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin switchboard

COPY --from=builder /out/switchboard /usr/local/bin/switchboard

# Containers listen on all interfaces; /ws, /mcp, /healthz and /readyz on this port; /metrics on
# the admin port (SWITCHBOARD_ADMIN_LISTEN, or SWITCHBOARD_WORKER_ADMIN_LISTEN for workers; 9090
# in the compose file and the Kubernetes manifests).
ENV SWITCHBOARD_LISTEN=0.0.0.0:8080
EXPOSE 8080 9090

USER 10001:10001

# SIGTERM starts a drain: /readyz turns 503, sockets close with 1012, the process exits after
# the grace period (SWITCHBOARD_SHUTDOWN_GRACE). Give the container longer than that to stop
# (compose stop_grace_period, k8s terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# No HEALTHCHECK: the slim image has no curl/wget. Kubernetes ignores Docker HEALTHCHECKs and
# probes /healthz and /readyz itself; under compose, nginx (deploy/nginx.conf) takes a failing
# gateway out of rotation.
#
# tini is PID 1: it forwards SIGTERM/SIGINT to switchboard and reaps orphaned processes (a
# worker's command tool that leaves a grandchild behind would otherwise stay a zombie under a
# PID 1 that never waits for it). Logs are plain text when stdout is not a terminal;
# SWITCHBOARD_LOG_FORMAT=json for one JSON object per line.
ENTRYPOINT ["tini", "--", "switchboard"]
CMD ["gateway"]
