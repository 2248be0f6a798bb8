# Switchboard: one `switchboard` binary, run as `switchboard gateway` by default.
#
#   docker build -t switchboard:latest .
#   docker run --rm -p 8080:8080 \
#     -e SWITCHBOARD_REDIS=redis://host.docker.internal:6379 \
#     -e SWITCHBOARD_JWT_SECRET=change-me switchboard:latest
#
# Configuration comes from SWITCHBOARD_* environment variables (or flags after
# `gateway`); invalid configuration makes the process exit with status 64.

# ---- build -------------------------------------------------------------------
# The workspace needs Rust >= 1.88 (edition 2024); rust:1-bookworm tracks the
# latest stable 1.x. Pin a version (e.g. rust:1.88-bookworm) for reproducible builds.
FROM rust:1-bookworm AS builder
WORKDIR /src

# The whole workspace is copied (every member must be present for cargo to load
# the workspace); .dockerignore keeps target/ and .git/ out of the context.
COPY . .
RUN cargo build --release -p switchboard --locked \
 && install -D -m 0755 target/release/switchboard /out/switchboard

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Fixed numeric IDs so Kubernetes' runAsNonRoot can check them (see k8s/gateway.yaml).
RUN groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin switchboard

COPY --from=builder /out/switchboard /usr/local/bin/switchboard

# Containers listen on all interfaces; /ws, /healthz, /readyz and /metrics share this port.
ENV SWITCHBOARD_LISTEN=0.0.0.0:8080
EXPOSE 8080

USER 10001:10001

# SIGTERM starts a drain: /readyz turns 503, sockets close with 1012, the process
# exits after the grace period (SWITCHBOARD_SHUTDOWN_GRACE, default 10 s).
# Give the container longer than that to stop (compose stop_grace_period,
# k8s terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# No HEALTHCHECK: the slim image has no curl/wget, and adding one just for this
# is not worth it. Kubernetes ignores Docker HEALTHCHECKs anyway and probes
# /healthz and /readyz itself; under compose, nginx (deploy/nginx.conf) takes
# a failing gateway out of rotation.
ENTRYPOINT ["switchboard"]
CMD ["gateway"]
