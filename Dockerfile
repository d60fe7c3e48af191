# syntax=docker/dockerfile:1
# (The syntax line enables RUN --mount cache mounts on any BuildKit.)
#
# registrar: multi-stage build.
#   docker build -t registrar .
#   docker run --rm registrar --help
# The image runs `registrar serve` by default; `migrate`, `seed` and `token`
# are the other subcommands (see docker-compose.yml).

############################################################################
# Builder
############################################################################
FROM rust:1-bookworm AS builder
WORKDIR /build
# Cache mounts keep the crate registry and compiled dependencies between
# builds, so an edit to the sources recompiles registrar alone. .dockerignore
# keeps target/ and .git/ out of the context.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin registrar \
    && cp target/release/registrar /usr/local/bin/registrar

############################################################################
# Runtime
############################################################################
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to managed PostgreSQL/Redis. curl: the container
# healthcheck (GET /ready) in docker-compose.yml.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# Fixed, non-root ids so volume permissions and Kubernetes runAsNonRoot work.
RUN groupadd --system --gid 10001 registrar \
 && useradd --system --uid 10001 --gid registrar \
        --home-dir /app --no-create-home --shell /usr/sbin/nologin registrar

WORKDIR /app
COPY --from=builder /usr/local/bin/registrar /usr/local/bin/registrar
# Settings are read from ./config (default.toml, then <APP_ENV>.toml), then
# APP__<SECTION>__<KEY> environment variables. Owned by root: read-only to the app.
COPY config/ /app/config/

# production.toml: listen on 0.0.0.0, JSON logs, /metrics and /health on
# port 9091 (the API port answers 404 for them) bound to loopback unless
# APP__HTTP__METRICS_HOST opens it (docker-compose.yml does, on its own
# network). Secrets (database URL, APP__AUTH__JWT_SECRET) must come from the
# environment.
ENV APP_ENV=production

USER 10001:10001
# 8080: the API, /live and /ready. 9091: /metrics, /health, /live, /ready,
# for the scraper and the orchestrator only.
EXPOSE 8080 9091

# registrar is PID 1 and handles SIGTERM itself: it stops accepting, drains
# in-flight requests for up to http.shutdown_grace_ms (15 s), then exits.
ENTRYPOINT ["registrar"]
CMD ["serve"]
