# Builds the `service-accounts` binary with the same cargo invocation CI uses, on Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p service-accounts-api --bin service-accounts

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/service-accounts service-accounts \
    && mkdir -p /var/lib/service-accounts && chown service-accounts /var/lib/service-accounts
COPY --from=build /src/target/release/service-accounts /usr/local/bin/service-accounts
USER service-accounts
ENV SERVICE_ACCOUNTS_DATA_DIR=/var/lib/service-accounts \
    SERVICE_ACCOUNTS_LISTEN=0.0.0.0:50051
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/service-accounts"]
CMD ["serve"]
