//! `ServiceAccountAdmin`: each handler authenticates, parses, calls the use case and renders.

use std::sync::Arc;

use service_accounts_domain::admin::{Admin, AdminService, CredentialReport};
use service_accounts_domain::service_account::AccountState;
use service_accounts_domain::store::AdminStore;
use service_accounts_domain::token::TokenSecret;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::{AdminAuthenticator, AuthError};
use crate::error::{ApiError, handle, status};
use crate::jwks::JwksEndpoint;
use crate::pb;
use crate::pb::service_account_admin_server::ServiceAccountAdmin;
use crate::render;
use crate::requests::Parse;

pub struct AdminApi<S> {
    service: Arc<AdminService<S>>,
    auth: Arc<AdminAuthenticator>,
    jwks: Option<Arc<JwksEndpoint>>,
}

impl<S: AdminStore> AdminApi<S> {
    pub fn new(
        service: AdminService<S>,
        auth: Arc<AdminAuthenticator>,
        jwks: Option<Arc<JwksEndpoint>>,
    ) -> Self {
        Self {
            service: Arc::new(service),
            auth,
            jwks,
        }
    }

    /// The admin making a change, which may be only validated (`validate_only`).
    async fn mutator<T: Mutation>(&self, request: &Request<T>) -> Result<Admin, ApiError> {
        Ok(self
            .admin(request)
            .await?
            .validating(request.get_ref().validate_only()))
    }

    async fn admin<T>(&self, request: &Request<T>) -> Result<Admin, ApiError> {
        let principal = match (self.auth.authenticate(request.metadata()), &self.jwks) {
            // Perhaps the identity side has started signing with a new key: look again.
            (Err(AuthError::UnknownKey), Some(jwks)) => {
                jwks.refresh_for_unknown_key().await;
                self.auth.authenticate(request.metadata())?
            }
            (result, _) => result?,
        };
        tracing::Span::current().record("org_id", principal.org_id.as_str());
        Ok(Admin::authorize(principal, request_id(request.metadata()))?)
    }
}

/// A mutation request, which may ask only to be validated (AIP-163).
trait Mutation {
    fn validate_only(&self) -> bool;
}

macro_rules! mutations {
    ($($request:ident),* $(,)?) => {
        $(impl Mutation for pb::$request {
            fn validate_only(&self) -> bool {
                self.validate_only
            }
        })*
    };
}

mutations!(
    CreateServiceAccountRequest,
    UpdateServiceAccountRequest,
    DeleteServiceAccountRequest,
    SetAppAccessRequest,
    GrantAppAccessRequest,
    RevokeAppAccessRequest,
    CreateTokenRequest,
    RevokeTokenRequest,
    DisableServiceAccountRequest,
    EnableServiceAccountRequest,
    RotateTokenRequest,
    UpdateTokenRequest,
    UpdateTokenPolicyRequest,
);

/// A new token's secret as the response carries it: not at all when the request only validated,
/// since no such token exists.
fn shown(admin: &Admin, secret: &TokenSecret) -> String {
    if admin.validate_only() {
        String::new()
    } else {
        secret.expose().to_owned()
    }
}

/// The caller's `x-request-id` when it is a sane value, else a fresh one.
pub(crate) fn request_id(metadata: &MetadataMap) -> String {
    sane_request_id(metadata.get("x-request-id").and_then(|v| v.to_str().ok()))
}

/// `given` when it is a sane request id (1-128 visible ASCII characters), else a fresh one.
pub(crate) fn sane_request_id(given: Option<&str>) -> String {
    given
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Streams a report a chunk at a time: the next chunk is read from the store only once the
/// previous one has been taken, so memory stays one chunk deep whatever the org's size.
fn report_stream<S: AdminStore>(
    service: Arc<AdminService<S>>,
    report: CredentialReport,
) -> ReportStream {
    Box::pin(futures_util::stream::try_unfold(
        (service, report),
        |(service, mut report)| async move {
            match service.next_report_chunk(&mut report).await {
                Ok(Some(chunk)) => Ok(Some((
                    pb::ExportCredentialReportResponse { chunk },
                    (service, report),
                ))),
                Ok(None) => Ok(None),
                Err(error) => Err(status(ApiError::from(error))),
            }
        },
    ))
}

/// The credential report's chunks.
pub type ReportStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::ExportCredentialReportResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl<S: AdminStore> ServiceAccountAdmin for AdminApi<S> {
    type ExportCredentialReportStream = ReportStream;

    async fn export_credential_report(
        &self,
        request: Request<pb::ExportCredentialReportRequest>,
    ) -> Result<Response<ReportStream>, Status> {
        handle(async {
            let admin = self.admin(&request).await?;
            let filter = request.get_ref().parse()?;
            let report = self.service.credential_report(&admin, filter);
            Ok(report_stream(self.service.clone(), report))
        })
        .await
    }

    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::CreateServiceAccountResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let new = request.get_ref().parse()?;
            let account = self.service.create_service_account(&admin, new).await?;
            Ok(pb::CreateServiceAccountResponse {
                service_account: Some(render::service_account(&account)),
            })
        })
        .await
    }

    async fn get_service_account(
        &self,
        request: Request<pb::GetServiceAccountRequest>,
    ) -> Result<Response<pb::GetServiceAccountResponse>, Status> {
        handle(async {
            let admin = self.admin(&request).await?;
            let id = request.get_ref().parse()?;
            let account = self.service.get_service_account(&admin, id).await?;
            Ok(pb::GetServiceAccountResponse {
                service_account: Some(render::service_account(&account)),
            })
        })
        .await
    }

    async fn list_service_accounts(
        &self,
        request: Request<pb::ListServiceAccountsRequest>,
    ) -> Result<Response<pb::ListServiceAccountsResponse>, Status> {
        handle(async {
            let admin = self.admin(&request).await?;
            let page = request.get_ref().parse()?;
            let page = self.service.list_service_accounts(&admin, page).await?;
            Ok(pb::ListServiceAccountsResponse {
                service_accounts: page.items.iter().map(render::service_account).collect(),
                next_page_token: page.next_page_token,
            })
        })
        .await
    }

    async fn update_service_account(
        &self,
        request: Request<pb::UpdateServiceAccountRequest>,
    ) -> Result<Response<pb::UpdateServiceAccountResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let (id, patch) = request.get_ref().parse()?;
            let account = self
                .service
                .update_service_account(&admin, id, patch)
                .await?;
            Ok(pb::UpdateServiceAccountResponse {
                service_account: Some(render::service_account(&account)),
            })
        })
        .await
    }

    async fn delete_service_account(
        &self,
        request: Request<pb::DeleteServiceAccountRequest>,
    ) -> Result<Response<pb::DeleteServiceAccountResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let id = request.get_ref().parse()?;
            self.service.delete_service_account(&admin, id).await?;
            Ok(pb::DeleteServiceAccountResponse {})
        })
        .await
    }

    async fn set_app_access(
        &self,
        request: Request<pb::SetAppAccessRequest>,
    ) -> Result<Response<pb::SetAppAccessResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let (id, access) = request.get_ref().parse()?;
            let account = self.service.set_app_access(&admin, id, access).await?;
            Ok(pb::SetAppAccessResponse {
                service_account: Some(render::service_account(&account)),
            })
        })
        .await
    }

    async fn grant_app_access(
        &self,
        request: Request<pb::GrantAppAccessRequest>,
    ) -> Result<Response<pb::GrantAppAccessResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let (id, apps) = request.get_ref().parse()?;
            let account = self.service.grant_app_access(&admin, id, apps).await?;
            Ok(pb::GrantAppAccessResponse {
                service_account: Some(render::service_account(&account)),
            })
        })
        .await
    }

    async fn revoke_app_access(
        &self,
        request: Request<pb::RevokeAppAccessRequest>,
    ) -> Result<Response<pb::RevokeAppAccessResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let (id, apps) = request.get_ref().parse()?;
            let account = self.service.revoke_app_access(&admin, id, apps).await?;
            Ok(pb::RevokeAppAccessResponse {
                service_account: Some(render::service_account(&account)),
            })
        })
        .await
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let (id, new) = request.get_ref().parse()?;
            let (token, secret) = self.service.create_token(&admin, id, new).await?;
            Ok(pb::CreateTokenResponse {
                token: Some(render::token(&token)),
                secret: shown(&admin, &secret),
            })
        })
        .await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        handle(async {
            let admin = self.admin(&request).await?;
            let listing = request.get_ref().parse()?;
            let page = self.service.list_tokens(&admin, listing).await?;
            Ok(pb::ListTokensResponse {
                tokens: page.items.iter().map(render::token).collect(),
                next_page_token: page.next_page_token,
            })
        })
        .await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let (id, token_id) = request.get_ref().parse()?;
            let token = self.service.revoke_token(&admin, id, token_id).await?;
            Ok(pb::RevokeTokenResponse {
                token: Some(render::token(&token)),
            })
        })
        .await
    }

    async fn disable_service_account(
        &self,
        request: Request<pb::DisableServiceAccountRequest>,
    ) -> Result<Response<pb::DisableServiceAccountResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let id = request.get_ref().parse()?;
            let account = self
                .service
                .set_service_account_state(&admin, id, AccountState::Disabled)
                .await?;
            Ok(pb::DisableServiceAccountResponse {
                service_account: Some(render::service_account(&account)),
            })
        })
        .await
    }

    async fn enable_service_account(
        &self,
        request: Request<pb::EnableServiceAccountRequest>,
    ) -> Result<Response<pb::EnableServiceAccountResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let id = request.get_ref().parse()?;
            let account = self
                .service
                .set_service_account_state(&admin, id, AccountState::Active)
                .await?;
            Ok(pb::EnableServiceAccountResponse {
                service_account: Some(render::service_account(&account)),
            })
        })
        .await
    }

    async fn rotate_token(
        &self,
        request: Request<pb::RotateTokenRequest>,
    ) -> Result<Response<pb::RotateTokenResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let (id, token_id, rotation) = request.get_ref().parse()?;
            let (token, secret, previous) = self
                .service
                .rotate_token(&admin, id, token_id, rotation)
                .await?;
            Ok(pb::RotateTokenResponse {
                token: Some(render::token(&token)),
                secret: shown(&admin, &secret),
                previous_token: Some(render::token(&previous)),
            })
        })
        .await
    }

    async fn update_token(
        &self,
        request: Request<pb::UpdateTokenRequest>,
    ) -> Result<Response<pb::UpdateTokenResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let (id, token_id, patch) = request.get_ref().parse()?;
            let token = self
                .service
                .update_token(&admin, id, token_id, patch)
                .await?;
            Ok(pb::UpdateTokenResponse {
                token: Some(render::token(&token)),
            })
        })
        .await
    }

    async fn list_expiring_tokens(
        &self,
        request: Request<pb::ListExpiringTokensRequest>,
    ) -> Result<Response<pb::ListExpiringTokensResponse>, Status> {
        handle(async {
            let admin = self.admin(&request).await?;
            let (within, page) = request.get_ref().parse()?;
            let page = self
                .service
                .list_expiring_tokens(&admin, within, page)
                .await?;
            Ok(pb::ListExpiringTokensResponse {
                tokens: page.items.iter().map(render::token).collect(),
                next_page_token: page.next_page_token,
            })
        })
        .await
    }

    async fn get_token_policy(
        &self,
        request: Request<pb::GetTokenPolicyRequest>,
    ) -> Result<Response<pb::GetTokenPolicyResponse>, Status> {
        handle(async {
            let admin = self.admin(&request).await?;
            request.get_ref().parse()?;
            let policy = self.service.get_token_policy(&admin).await?;
            Ok(pb::GetTokenPolicyResponse {
                token_policy: Some(render::token_policy(&policy)),
            })
        })
        .await
    }

    async fn update_token_policy(
        &self,
        request: Request<pb::UpdateTokenPolicyRequest>,
    ) -> Result<Response<pb::UpdateTokenPolicyResponse>, Status> {
        handle(async {
            let admin = self.mutator(&request).await?;
            let patch = request.get_ref().parse()?;
            let policy = self.service.update_token_policy(&admin, patch).await?;
            Ok(pb::UpdateTokenPolicyResponse {
                token_policy: Some(render::token_policy(&policy)),
            })
        })
        .await
    }

    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        handle(async {
            self.admin(&request).await?;
            request.get_ref().parse()?;
            Ok(pb::ListScopesResponse {
                scopes: render::scopes(),
            })
        })
        .await
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        handle(async {
            let admin = self.admin(&request).await?;
            let listing = request.get_ref().parse()?;
            let page = self.service.list_audit_events(&admin, listing).await?;
            Ok(pb::ListAuditEventsResponse {
                audit_events: page.items.iter().map(render::audit_event).collect(),
                next_page_token: page.next_page_token,
            })
        })
        .await
    }
}
