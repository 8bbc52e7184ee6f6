//! Code generated from `proto/` (messages, server traits and clients).

#![allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]

tonic::include_proto!("embrace.serviceaccounts.v1");

/// The encoded descriptor set of our protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/service_accounts_descriptor.bin"));
