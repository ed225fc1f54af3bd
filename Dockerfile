# The standalone server and the demo in a small image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin scaled-sockets --example demo

FROM debian:bookworm-slim
COPY --from=build /src/target/release/scaled-sockets /usr/local/bin/scaled-sockets
COPY --from=build /src/target/release/examples/demo /usr/local/bin/scaled-sockets-demo
EXPOSE 8080
ENTRYPOINT ["scaled-sockets"]
