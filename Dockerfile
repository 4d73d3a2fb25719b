# syntax=docker/dockerfile:1
# event-backbone image: build with cargo in the Rust image, run on a slim
# Debian as a non-root user. Build: docker build -t event-backbone .

ARG RUST_VERSION=1.91
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# Only what the binary needs: migrations/ and config/ are embedded at compile time.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
# Cache mounts keep the registry and target dir between builds; the binary is
# copied out because the cached target dir is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin event-backbone \
 && install -D -m 0755 target/release/event-backbone /out/event-backbone

# debian-slim rather than distroless: `kubectl exec … -- sh -c 'kill -USR1 1'`
# (DLQ replay by signal) needs a shell.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 backbone \
 && useradd --system --uid 10001 --gid backbone --no-create-home --home-dir /app --shell /usr/sbin/nologin backbone
WORKDIR /app
COPY --from=builder /out/event-backbone /usr/local/bin/event-backbone
# The env files on disk (./config), editable by mounting over them; the
# binary carries the same files built in.
COPY config ./config
COPY sql ./sql
# Numeric, so Kubernetes runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 9090
# Exec form: the daemon is PID 1 and receives SIGTERM and SIGUSR1 directly.
ENTRYPOINT ["/usr/local/bin/event-backbone"]
CMD ["run"]
