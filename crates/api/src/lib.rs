//! gRPC transport for the service-accounts control plane: request parsing, admin
//! authentication, error mapping, and the server wiring used by the `service-accounts` binary.

mod admin_api;
pub mod apply;
pub mod auth;
pub mod config;
mod connections;
pub mod dev_key;
mod envoy_api;
mod error;
pub mod gateway;
pub mod http;
mod introspection_api;
pub mod introspection_clients;
pub mod jwks;
mod leak_api;
pub mod methods;
pub use service_accounts_client::pb;
mod render;
pub mod requests;
pub mod secret_scanning;
pub mod server;
pub mod telemetry;
