//! Calls the service-accounts control plane from a Rust service.
//!
//! - [`pb`]: the generated messages and tonic clients of every service (`ServiceAccountAdmin`,
//!   `TokenIntrospection`, `LeakReporting`).
//! - [`IntrospectionClient`]: `Introspect` as one typed call that answers a [`Verdict`], over one
//!   reused HTTP/2 connection, with a deadline on every call.
//! - [`IntrospectLayer`]: a `tower` layer for tonic and axum servers that introspects the bearer
//!   token of every request against the route's [`Requirement`], puts the verified [`Identity`]
//!   into the request's extensions, and otherwise answers like the control plane's gateways do:
//!   401 / `UNAUTHENTICATED`, 403 / `PERMISSION_DENIED`, 503 / `UNAVAILABLE`.
//!
//! Nothing here caches an answer: every request is decided by the control plane, whose own cache
//! is invalidated when a token is revoked, so a revoked token is refused as soon as `Introspect`
//! refuses it.

mod introspection;
mod layer;
pub mod pb;

pub use introspection::{
    DEFAULT_DEADLINE, Error, Identity, IntrospectionClient, Requirement, Verdict,
};
pub use layer::{Introspect, IntrospectLayer, Policy, Routes, bearer, policy_fn};
pub use pb::{DenialReason, InactiveReason};
