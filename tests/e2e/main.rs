//! End-to-end tests: the real server on an ephemeral port, real SQLite and PostgreSQL, and the
//! generated tonic clients.

mod support;

mod account_state;
mod accounts;
mod admin_guide;
mod app_access;
mod apply;
mod audit_search;
mod auth;
mod caller_cache;
mod client_layer;
mod coherence;
mod credential_report;
mod deployment;
mod envoy;
mod every_rpc;
mod flood;
mod forward_auth;
mod gateways;
mod introspection;
mod inventory;
mod jwks_rotation;
mod labels;
mod leaks;
mod lifecycle;
mod log_alerts;
mod mcp_rust;
mod networks;
mod oauth2_introspect;
mod operations;
mod pgbouncer;
mod quotas;
mod rotation;
mod secret_scanning;
mod slow_clients;
mod telemetry;
mod tls;
mod token_policy;
mod tokens;
mod upgrade;
mod validate_only;
mod watch_changes;
