//! Calls the service-accounts control plane from a Rust service.
//!
//! - [`pb`]: the generated messages and tonic clients of every service (`ServiceAccountAdmin`,
//!   `TokenIntrospection`, `LeakReporting`).
//! - [`IntrospectionClient`]: `Introspect` as one typed call that answers a [`Verdict`], over one
//!   reused HTTP/2 connection, with a deadline on every call.
//! - [`IntrospectLayer`]: a `tower` layer for tonic and axum servers that introspects the bearer
//!   token of every request against the route's [`Requirement`], puts the verified [`Identity`]
//!   into the request's extensions, and otherwise answers like the control plane's gateways do:
//!   401 / `UNAUTHENTICATED`, 403 / `PERMISSION_DENIED`, 503 / `UNAVAILABLE`, with RFC 6750
//!   `WWW-Authenticate: Bearer` challenges over plain HTTP.
//! - `mcp` (cargo feature `rmcp`): the identity and `require_scopes` / `require_app` for the tool
//!   handlers of an `rmcp` server behind the layer.
//!
//! Unless asked to, nothing here caches an answer: every request is decided by the control plane.
//! With [`IntrospectionClient::with_cache`], answers are cached and kept coherent by the
//! control plane's `WatchChanges` feed, and a cached token is decided here by the control
//! plane's own rules (see [`CacheOptions`] and the repository's `docs/caching.md`).

mod cache;
mod identity;
mod introspection;
mod layer;
#[cfg(feature = "rmcp")]
pub mod mcp;
pub mod pb;

pub use cache::CacheOptions;
pub use identity::Identity;
pub use introspection::{DEFAULT_DEADLINE, Error, IntrospectionClient, Requirement, Verdict};
pub use layer::{
    Fallback, FallbackRefusal, Introspect, IntrospectLayer, Policy, Routes, TOKEN_PREFIX, bearer,
    fallback_fn, policy_fn,
};
pub use pb::{DenialReason, InactiveReason};
/// The ids an [`Identity`] names (UUIDs; `Display` writes them as the control plane does).
pub use service_accounts_domain::ids::{ServiceAccountId, TokenId};
