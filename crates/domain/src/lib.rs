//! The service-accounts domain: the model, its rules, and the ports that storage implements.
//!
//! Pure by design: no transport, no database, no network. The `api` crate maps requests onto the
//! use cases in [`admin`] and [`introspection`]; the `persistence` crate implements [`store`].

pub mod admin;
pub mod audit;
pub mod cache;
pub mod changes;
pub mod error;
pub mod feed;
pub mod filter;
#[cfg(test)]
mod fixtures;
pub mod ids;
pub mod introspection;
pub mod issued;
pub mod labels;
pub mod last_used;
pub mod leaks;
pub mod listing;
pub mod network;
pub mod page;
pub mod policy;
#[cfg(test)]
mod properties;
pub mod query;
pub mod scope;
pub mod service_account;
pub mod store;
pub mod time;
pub mod token;

pub use error::{Error, FieldViolation, Invalid, StoreError, Violations};
