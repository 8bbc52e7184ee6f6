//! `ServiceAccountAdmin`: authenticates the caller, parses the request, calls the use case.

use std::sync::Arc;

use service_accounts_domain::admin::{
    Admin, AdminService, NewServiceAccount, NewToken, ServiceAccountPatch,
};
use service_accounts_domain::ids::{ServiceAccountId, TokenId};
use service_accounts_domain::page::Listing;
use service_accounts_domain::service_account::{AppAccess, Description, DisplayName};
use service_accounts_domain::store::AdminStore;
use service_accounts_domain::{Invalid, Violations};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::AdminAuthenticator;
use crate::convert::{self, parse_app_access, parse_app_ids, parse_scopes, parse_timestamp};
use crate::error::status;
use crate::pb;
use crate::pb::service_account_admin_server::ServiceAccountAdmin;

pub struct AdminApi<S> {
    service: AdminService<S>,
    auth: Arc<AdminAuthenticator>,
}

impl<S: AdminStore> AdminApi<S> {
    pub fn new(service: AdminService<S>, auth: Arc<AdminAuthenticator>) -> Self {
        Self { service, auth }
    }

    fn admin<T>(&self, request: &Request<T>) -> Result<Admin, Status> {
        let principal = self.auth.authenticate(request.metadata())?;
        tracing::Span::current().record("org_id", principal.org_id.as_str());
        Admin::authorize(principal, request_id(request.metadata())).map_err(status)
    }
}

/// The caller's `x-request-id` when it is a sane value, else a fresh one.
fn request_id(metadata: &MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

fn account_id(violations: &mut Violations, raw: &str) -> Option<ServiceAccountId> {
    violations.check("service_account_id", ServiceAccountId::parse(raw))
}

/// Parses only an account id, the whole of several requests.
fn only_account_id(raw: &str) -> Result<ServiceAccountId, Status> {
    ServiceAccountId::parse(raw).map_err(|invalid| {
        status(service_accounts_domain::Error::invalid(
            "service_account_id",
            invalid.0,
        ))
    })
}

const EVERY_NONE_RECORDED_A_VIOLATION: &str = "every unparsed field recorded a violation";

#[tonic::async_trait]
impl<S: AdminStore> ServiceAccountAdmin for AdminApi<S> {
    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::CreateServiceAccountResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let display_name = v.check("display_name", DisplayName::parse(&req.display_name));
        let description = v.check("description", Description::parse(&req.description));
        let app_access = match &req.app_access {
            Some(access) => parse_app_access(&mut v, "app_access", access),
            None => Some(AppAccess::none()),
        };
        v.finish().map_err(status)?;
        let (Some(display_name), Some(description), Some(app_access)) =
            (display_name, description, app_access)
        else {
            unreachable!("{EVERY_NONE_RECORDED_A_VIOLATION}")
        };
        let new = NewServiceAccount {
            display_name,
            description,
            app_access,
        };
        let account = self
            .service
            .create_service_account(&admin, new)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateServiceAccountResponse {
            service_account: Some(convert::service_account(&account)),
        }))
    }

    async fn get_service_account(
        &self,
        request: Request<pb::GetServiceAccountRequest>,
    ) -> Result<Response<pb::GetServiceAccountResponse>, Status> {
        let admin = self.admin(&request)?;
        let id = only_account_id(&request.get_ref().service_account_id)?;
        let account = self
            .service
            .get_service_account(&admin, id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetServiceAccountResponse {
            service_account: Some(convert::service_account(&account)),
        }))
    }

    async fn list_service_accounts(
        &self,
        request: Request<pb::ListServiceAccountsRequest>,
    ) -> Result<Response<pb::ListServiceAccountsResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let page = convert::page_request(
            &mut v,
            Listing::ServiceAccounts,
            req.page_size,
            &req.page_token,
        );
        v.finish().map_err(status)?;
        let Some(page) = page else {
            unreachable!("{EVERY_NONE_RECORDED_A_VIOLATION}")
        };
        let page = self
            .service
            .list_service_accounts(&admin, page)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListServiceAccountsResponse {
            service_accounts: page.items.iter().map(convert::service_account).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_service_account(
        &self,
        request: Request<pb::UpdateServiceAccountRequest>,
    ) -> Result<Response<pb::UpdateServiceAccountResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.into_inner();
        let Some(account) = req.service_account else {
            return Err(status(service_accounts_domain::Error::invalid(
                "service_account",
                "is required",
            )));
        };
        let mut v = Violations::new();
        let id = v.check(
            "service_account.service_account_id",
            ServiceAccountId::parse(&account.service_account_id),
        );
        // AIP-134: without a mask, the populated fields are the ones to change.
        let paths: Vec<String> = match req.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths,
            _ => [
                ("display_name", !account.display_name.is_empty()),
                ("description", !account.description.is_empty()),
            ]
            .into_iter()
            .filter(|(_, populated)| *populated)
            .map(|(path, _)| path.to_owned())
            .collect(),
        };
        let (mut name, mut description) = (false, false);
        for (i, path) in paths.iter().enumerate() {
            match path.as_str() {
                "display_name" => name = true,
                "description" => description = true,
                "*" => (name, description) = (true, true),
                other => v.add(
                    format!("update_mask.paths[{i}]"),
                    format!("{other:?} cannot be updated: only display_name and description can (app access has its own RPCs)"),
                ),
            }
        }
        let patch = ServiceAccountPatch {
            display_name: name
                .then(|| {
                    v.check(
                        "service_account.display_name",
                        DisplayName::parse(&account.display_name),
                    )
                })
                .flatten(),
            description: description
                .then(|| {
                    v.check(
                        "service_account.description",
                        Description::parse(&account.description),
                    )
                })
                .flatten(),
        };
        if paths.is_empty() {
            v.add(
                "update_mask",
                "nothing to update: name the fields in update_mask or populate them",
            );
        }
        v.finish().map_err(status)?;
        let Some(id) = id else {
            unreachable!("{EVERY_NONE_RECORDED_A_VIOLATION}")
        };
        let account = self
            .service
            .update_service_account(&admin, id, patch)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateServiceAccountResponse {
            service_account: Some(convert::service_account(&account)),
        }))
    }

    async fn delete_service_account(
        &self,
        request: Request<pb::DeleteServiceAccountRequest>,
    ) -> Result<Response<pb::DeleteServiceAccountResponse>, Status> {
        let admin = self.admin(&request)?;
        let id = only_account_id(&request.get_ref().service_account_id)?;
        self.service
            .delete_service_account(&admin, id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteServiceAccountResponse {}))
    }

    async fn set_app_access(
        &self,
        request: Request<pb::SetAppAccessRequest>,
    ) -> Result<Response<pb::SetAppAccessResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = account_id(&mut v, &req.service_account_id);
        let access = match &req.app_access {
            Some(access) => parse_app_access(&mut v, "app_access", access),
            None => {
                v.add("app_access", "is required");
                None
            }
        };
        v.finish().map_err(status)?;
        let (Some(id), Some(access)) = (id, access) else {
            unreachable!("{EVERY_NONE_RECORDED_A_VIOLATION}")
        };
        let account = self
            .service
            .set_app_access(&admin, id, access)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetAppAccessResponse {
            service_account: Some(convert::service_account(&account)),
        }))
    }

    async fn grant_app_access(
        &self,
        request: Request<pb::GrantAppAccessRequest>,
    ) -> Result<Response<pb::GrantAppAccessResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.into_inner();
        let (id, apps) = account_and_apps(&req.service_account_id, &req.app_ids)?;
        let account = self
            .service
            .grant_app_access(&admin, id, apps)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GrantAppAccessResponse {
            service_account: Some(convert::service_account(&account)),
        }))
    }

    async fn revoke_app_access(
        &self,
        request: Request<pb::RevokeAppAccessRequest>,
    ) -> Result<Response<pb::RevokeAppAccessResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.into_inner();
        let (id, apps) = account_and_apps(&req.service_account_id, &req.app_ids)?;
        let account = self
            .service
            .revoke_app_access(&admin, id, apps)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeAppAccessResponse {
            service_account: Some(convert::service_account(&account)),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = account_id(&mut v, &req.service_account_id);
        let display_name = v.check("display_name", DisplayName::parse(&req.display_name));
        let scopes = parse_scopes(&mut v, "scopes", &req.scopes);
        let expire_time = match &req.expire_time {
            Some(t) => v
                .check("expire_time", parse_timestamp(t).and_then(future))
                .map(Some),
            None => Some(None),
        };
        v.finish().map_err(status)?;
        let (Some(id), Some(display_name), Some(scopes), Some(expire_time)) =
            (id, display_name, scopes, expire_time)
        else {
            unreachable!("{EVERY_NONE_RECORDED_A_VIOLATION}")
        };
        let new = NewToken {
            display_name,
            scopes,
            expire_time,
        };
        let (token, secret) = self
            .service
            .create_token(&admin, id, new)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(convert::token(&token)),
            secret: secret.expose().to_owned(),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let id = account_id(&mut v, &req.service_account_id);
        let page = convert::page_request(&mut v, Listing::Tokens, req.page_size, &req.page_token);
        v.finish().map_err(status)?;
        let (Some(id), Some(page)) = (id, page) else {
            unreachable!("{EVERY_NONE_RECORDED_A_VIOLATION}")
        };
        let page = self
            .service
            .list_tokens(&admin, id, page)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: page.items.iter().map(convert::token).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let id = account_id(&mut v, &req.service_account_id);
        let token_id = v.check("token_id", TokenId::parse(&req.token_id));
        v.finish().map_err(status)?;
        let (Some(id), Some(token_id)) = (id, token_id) else {
            unreachable!("{EVERY_NONE_RECORDED_A_VIOLATION}")
        };
        let token = self
            .service
            .revoke_token(&admin, id, token_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(convert::token(&token)),
        }))
    }

    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        self.admin(&request)?;
        Ok(Response::new(pb::ListScopesResponse {
            scopes: convert::scopes(),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let page =
            convert::page_request(&mut v, Listing::AuditEvents, req.page_size, &req.page_token);
        v.finish().map_err(status)?;
        let Some(page) = page else {
            unreachable!("{EVERY_NONE_RECORDED_A_VIOLATION}")
        };
        let page = self
            .service
            .list_audit_events(&admin, page)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            audit_events: page.items.iter().map(convert::audit_event).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}

/// An expiry must lie ahead (the use case checks again against its own clock).
fn future(
    t: service_accounts_domain::time::Timestamp,
) -> Result<service_accounts_domain::time::Timestamp, Invalid> {
    if t > service_accounts_domain::time::now() {
        Ok(t)
    } else {
        Err(Invalid::new("must be in the future"))
    }
}

fn account_and_apps(
    raw_id: &str,
    raw_apps: &[String],
) -> Result<
    (
        ServiceAccountId,
        std::collections::BTreeSet<service_accounts_domain::service_account::AppId>,
    ),
    Status,
> {
    let mut v = Violations::new();
    let id = account_id(&mut v, raw_id);
    let apps = if raw_apps.is_empty() {
        v.add("app_ids", "at least one app id is required");
        None
    } else {
        parse_app_ids(&mut v, "app_ids", raw_apps)
    };
    v.finish().map_err(status)?;
    let (Some(id), Some(apps)) = (id, apps) else {
        unreachable!("{EVERY_NONE_RECORDED_A_VIOLATION}")
    };
    Ok((id, apps))
}
