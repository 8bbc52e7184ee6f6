//! Compiles the protos with the pure-Rust `protox` compiler (no `protoc` install needed) and
//! keeps the encoded descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "embrace/serviceaccounts/v1/leak_reporting.proto",
    "embrace/serviceaccounts/v1/resources.proto",
    "embrace/serviceaccounts/v1/service_account_admin.proto",
    "embrace/serviceaccounts/v1/token_introspection.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
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
