//! Connection limits of the two listeners: caps, idle and handshake deadlines, keepalive.

use std::time::Duration;

use clap::Args;

use super::positive_duration;

#[derive(Debug, Clone, Args)]
pub struct ConnectionLimits {
    /// Connections the HTTP listener holds open at once. At the cap, a new connection closes the
    /// one that has waited longest without sending a complete request (an idle keep-alive
    /// connection, or one still sending its headers); when every connection is serving a
    /// request, the new one is closed (over plain HTTP, answered 503 first; over HTTPS, closed
    /// before the TLS handshake).
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_HTTP_MAX_CONNECTIONS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub http_max_connections: u32,

    /// An HTTP keep-alive connection with no request in progress is closed after this. Keep it
    /// longer than the gateway's own idle timeout for its upstream connections (nginx's
    /// `keepalive_timeout` is 60s), so that the gateway closes first.
    #[arg(long, env = "SERVICE_ACCOUNTS_HTTP_IDLE_TIMEOUT", default_value = "90s", value_parser = positive_duration)]
    pub http_idle_timeout: Duration,

    /// An HTTP request's headers must be complete within this, counted from the connection's
    /// opening (TLS handshake included) or, on a keep-alive connection, from the request's
    /// first byte; otherwise the connection is closed.
    #[arg(long, env = "SERVICE_ACCOUNTS_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub http_header_timeout: Duration,

    /// Connections the gRPC port holds open at once. At the cap, a new connection closes the one
    /// that has waited longest with no RPC open (in its handshake, or idle since its last RPC;
    /// clients reconnect); when every connection has an RPC open, the new one is closed.
    #[arg(
        long,
        env = "SERVICE_ACCOUNTS_GRPC_MAX_CONNECTIONS",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub grpc_max_connections: u32,

    /// A gRPC connection must finish its TLS handshake and send the HTTP/2 preface within this
    /// of opening; otherwise it is closed.
    #[arg(long, env = "SERVICE_ACCOUNTS_GRPC_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub grpc_handshake_timeout: Duration,

    /// How often the server pings each gRPC connection (HTTP/2 PING); a peer that does not
    /// answer within --grpc-keepalive-timeout is disconnected.
    #[arg(long, env = "SERVICE_ACCOUNTS_GRPC_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = positive_duration)]
    pub grpc_keepalive_interval: Duration,

    /// How long a gRPC peer has to answer a keepalive ping.
    #[arg(long, env = "SERVICE_ACCOUNTS_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = positive_duration)]
    pub grpc_keepalive_timeout: Duration,
}
