//! Properties of every admin RPC, walked from the compiled descriptor set, so that a new RPC is
//! covered the day it is added.

use http::uri::PathAndQuery;
use prost::Message;
use service_accounts_api::methods;
use service_accounts_api::pb;
use service_accounts_api::pb::service_account_admin_server::SERVICE_NAME as ADMIN;
use tonic::{Code, Request, Status};

use crate::support::*;

/// The paths of the admin RPCs that stream their responses (from the descriptor set too).
fn admin_server_streaming() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut paths = Vec::new();
    for file in set.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            if name != ADMIN {
                continue;
            }
            for method in service.method.iter().filter(|m| m.server_streaming()) {
                paths.push(format!("/{name}/{}", method.name()));
            }
        }
    }
    paths
}

/// Calls `path` with an empty request message: authentication and authorisation come before
/// any field is read, so an empty message is enough to see them. A streaming RPC's refusal may
/// come with the response headers or as the stream's first item: either is its answer.
async fn call(
    app: &TestApp,
    path: &'static str,
    streaming: bool,
    jwt: Option<&str>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let mut request = Request::new(());
    if let Some(jwt) = jwt {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    if !streaming {
        return grpc
            .unary(request, PathAndQuery::from_static(path), codec)
            .await
            .map(drop);
    }
    let mut stream = grpc
        .server_streaming(request, PathAndQuery::from_static(path), codec)
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

#[tokio::test]
async fn every_admin_rpc_refuses_callers_who_are_not_org_admins() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let admin_jwt = app.admin_jwt("org-a");
    let viewer = app.jwt("org-a", "viewer", &["viewer", "org_member"]);
    let rpcs: Vec<&'static str> = methods::of_service(ADMIN).collect();
    assert!(rpcs.len() >= 13, "{rpcs:?}");
    let streaming = admin_server_streaming();
    let report = rpcs
        .iter()
        .copied()
        .find(|rpc| *rpc == format!("/{ADMIN}/ExportCredentialReport"))
        .expect("ExportCredentialReport is an admin RPC");
    assert_eq!(streaming, [report], "the streaming RPCs");
    for rpc in rpcs {
        let streams = streaming.iter().any(|s| s == rpc);
        let anonymous = call(&app, rpc, streams, None).await.expect_err(rpc);
        assert_eq!(
            anonymous.code(),
            Code::Unauthenticated,
            "{rpc}: {anonymous:?}"
        );
        let forged = call(&app, rpc, streams, Some("e30.e30.c2ln"))
            .await
            .expect_err(rpc);
        assert_eq!(forged.code(), Code::Unauthenticated, "{rpc}: {forged:?}");
        let denied = call(&app, rpc, streams, Some(&viewer))
            .await
            .expect_err(rpc);
        assert_eq!(denied.code(), Code::PermissionDenied, "{rpc}: {denied:?}");
    }
    // The streaming RPC answers an org admin (an empty org: the header row alone).
    call(&app, report, true, Some(&admin_jwt))
        .await
        .expect("an org admin gets the report");
    assert!(
        audit_actions(&app, &admin_jwt).await.is_empty(),
        "nothing changed"
    );
}
