//! Properties of every admin RPC, walked from the compiled descriptor set, so that a new RPC is
//! covered the day it is added.

use http::uri::PathAndQuery;
use service_accounts_api::methods;
use service_accounts_api::pb::service_account_admin_server::SERVICE_NAME as ADMIN;
use tonic::{Code, Request, Status};

use crate::support::*;

/// Calls `path` with an empty request message: authentication and authorisation come before
/// any field is read, so an empty message is enough to see them.
async fn call(app: &TestApp, path: &'static str, jwt: Option<&str>) -> Result<(), Status> {
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
    grpc.unary(request, PathAndQuery::from_static(path), codec)
        .await
        .map(drop)
}

#[tokio::test]
async fn every_admin_rpc_refuses_callers_who_are_not_org_admins() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let admin_jwt = app.admin_jwt("org-a");
    let viewer = app.jwt("org-a", "viewer", &["viewer", "org_member"]);
    let rpcs: Vec<&'static str> = methods::of_service(ADMIN).collect();
    assert!(rpcs.len() >= 13, "{rpcs:?}");
    for rpc in rpcs {
        let anonymous = call(&app, rpc, None).await.expect_err(rpc);
        assert_eq!(
            anonymous.code(),
            Code::Unauthenticated,
            "{rpc}: {anonymous:?}"
        );
        let forged = call(&app, rpc, Some("e30.e30.c2ln")).await.expect_err(rpc);
        assert_eq!(forged.code(), Code::Unauthenticated, "{rpc}: {forged:?}");
        let denied = call(&app, rpc, Some(&viewer)).await.expect_err(rpc);
        assert_eq!(denied.code(), Code::PermissionDenied, "{rpc}: {denied:?}");
    }
    assert!(
        audit_actions(&app, &admin_jwt).await.is_empty(),
        "nothing changed"
    );
}
