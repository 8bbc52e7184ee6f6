//! Compiles the protos with the pure-Rust `protox` compiler (no `protoc` install needed) and
//! keeps the encoded descriptor set for gRPC server reflection. Envoy's ext_authz protos are
//! only compiled to a descriptor set: their Rust code comes from the `envoy-types` crate, which
//! ships no descriptor set of its own, so reflection gets one from the copies in
//! `third_party/envoy-api` (see the README there).

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "embrace/serviceaccounts/v1/leak_reporting.proto",
    "embrace/serviceaccounts/v1/resources.proto",
    "embrace/serviceaccounts/v1/service_account_admin.proto",
    "embrace/serviceaccounts/v1/token_introspection.proto",
];

/// The Envoy service the server answers; its imports come along.
const ENVOY_PROTOS: &[&str] = &["envoy/service/auth/v3/external_auth.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
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

    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    std::fs::write(
        out_dir.join("service_accounts_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // These carry token plaintexts; pb.rs gives them a redacting Debug.
        .skip_debug([
            ".embrace.serviceaccounts.v1.IntrospectRequest",
            ".embrace.serviceaccounts.v1.CreateTokenResponse",
            ".embrace.serviceaccounts.v1.RotateTokenResponse",
            ".embrace.serviceaccounts.v1.ReportLeakedTokensRequest",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
