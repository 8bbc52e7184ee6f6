//! Compiles `proto/` with the pure-Rust `protox` compiler (no `protoc` install needed). The
//! clients are always generated; the server traits only with the `server` feature. The encoded
//! descriptor set is kept for the server's reflection.

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
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    std::fs::write(
        out_dir.join("service_accounts_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
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
