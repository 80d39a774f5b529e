# The `lambda` binary, for every role of docker-compose.yml.
# Multi-stage: build with the Rust toolchain, run on a slim Debian as a
# non-root user. The build image has OpenSSL's headers; the runtime needs libssl3
# for librdkafka's TLS and SASL.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cli && cp target/release/lambda /usr/local/bin/lambda

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl procps libssl3 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data lambda && mkdir -p /data /corpus && chown lambda /data
COPY --from=build /usr/local/bin/lambda /usr/local/bin/lambda
COPY cli/src/corpus.txt /corpus/sample.txt
USER lambda
WORKDIR /data
ENV LAMBDA_DATA_DIR=/data RUST_LOG=info
ENTRYPOINT ["lambda"]
