# syntax=docker/dockerfile:1
# The standalone server (`scaled-sockets`) and the demo (`scaled-sockets-demo`:
# the same server plus the demo handlers and the page at /) in a small image.
#   docker build -t scaled-sockets .
#   docker run --rm -p 8080:8080 scaled-sockets --allow-anonymous
# Checked by tests/deploy_files.rs (the COPY sources exist, every workspace
# member and every file the crates embed is copied, the binaries it builds
# are targets of the workspace).

# --- build ----------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the build reads: the workspace manifests and members, and the
# JavaScript client and demo page that the binaries embed (include_str!).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY protocol ./protocol
COPY scalers ./scalers
COPY client/rust ./client/rust
COPY client/js/scaled-sockets.js ./client/js/scaled-sockets.js
COPY client/js/demo ./client/js/demo
COPY tests/harness ./tests/harness
COPY bench ./bench
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin scaled-sockets --example demo \
    && mkdir -p /out \
    && cp target/release/scaled-sockets /out/scaled-sockets \
    && cp target/release/examples/demo /out/scaled-sockets-demo

# --- run ------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin scaled
COPY --from=build /out/scaled-sockets /usr/local/bin/scaled-sockets
COPY --from=build /out/scaled-sockets-demo /usr/local/bin/scaled-sockets-demo
USER 10001:10001
# Inside a container the server must listen on all interfaces.
ENV SCALED_SOCKETS_LISTEN=0.0.0.0:8080
EXPOSE 8080
# SIGTERM drains (clients are told to reconnect elsewhere) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["scaled-sockets"]
