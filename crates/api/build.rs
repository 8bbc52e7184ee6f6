//! Envoy's ext_authz protos are only compiled to a descriptor set, with the pure-Rust `protox`
//! compiler: their Rust code comes from the `envoy-types` crate, which ships no descriptor set
//! of its own, so gRPC reflection gets one from the copies in `third_party/envoy-api` (see the
//! README there). Our own protos are compiled by `service-accounts-client`, except for the
//! `TokenIntrospection` server trait, generated here over that crate's messages so that
//! `Introspect` answers with `IntrospectReply`, which encodes the response straight from the
//! cached record (`src/introspection_api/reply.rs`).

use std::path::PathBuf;

/// The Envoy service the server answers; its imports come along.
const ENVOY_PROTOS: &[&str] = &["envoy/service/auth/v3/external_auth.proto"];

const INTROSPECTION_PROTO: &str = "embrace/serviceaccounts/v1/token_introspection.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let envoy_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../third_party/envoy-api");
    println!("cargo:rerun-if-changed={}", envoy_root.display());
    // Encoded by protox itself, so the custom options (validation rules, deprecation notes) that
    // `prost_types` would drop reach `grpcurl describe` too.
    let envoy = protox::Compiler::new([&envoy_root])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(ENVOY_PROTOS)?
        .encode_file_descriptor_set();
    std::fs::write(out_dir.join("envoy_descriptor.bin"), envoy)?;

    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let introspection = protox::compile([INTROSPECTION_PROTO], [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(
            ".embrace.serviceaccounts.v1",
            "::service_accounts_client::pb",
        )
        .extern_path(
            ".embrace.serviceaccounts.v1.IntrospectResponse",
            "crate::introspection_api::IntrospectReply",
        )
        .compile_fds(introspection)?;
    Ok(())
}
