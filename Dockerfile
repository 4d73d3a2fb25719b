# syntax=docker/dockerfile:1
# event-backbone image: build with cargo in the Rust image, run on a slim
# Debian as a non-root user. Build: docker build -t event-backbone .

ARG RUST_VERSION=1.91
ARG DEBIAN_RELEASE=bookworm

# cargo-chef splits the build in two layers: the dependencies, cooked from a
# recipe that changes only with Cargo.toml/Cargo.lock, and the crate itself.
# A source edit then rebuilds only the crate, even on a builder without a
# cache mount (CI).
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo chef cook --release --locked --recipe-path recipe.json --workspace
# Only what the binaries need: the workspace's crates; migrations/ and
# config/ are embedded at compile time, and the library's build.rs makes an
# edited migration trigger a rebuild.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY migrations ./migrations
COPY config ./config
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked --bin event-backbone --bin backbone-bench \
 && install -D -m 0755 target/release/event-backbone /out/event-backbone \
 && install -D -m 0755 target/release/backbone-bench /out/backbone-bench

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
# The benchmarks beside it (`kubectl exec … -- backbone-bench pipeline`):
# they start the daemon found beside them.
COPY --from=builder /out/backbone-bench /usr/local/bin/backbone-bench
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
