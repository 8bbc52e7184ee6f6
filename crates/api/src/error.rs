//! The one place errors become answers, with the same rules for every service and transport:
//! each error has one [`ErrorCode`], which says both its gRPC status code and its HTTP status.
//! Internal details are logged, not returned.

use std::future::Future;

use http::StatusCode;
use service_accounts_domain::feed::FeedDown;
use service_accounts_domain::{Error, StoreError};
use tonic::{Code, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, QuotaViolation, StatusExt};

use crate::auth::AuthError;

/// Every way a request can fail, on any transport.
#[derive(Debug)]
pub enum ApiError {
    Domain(Error),
    Unauthenticated(AuthError),
    /// mTLS is configured and the caller presented no client certificate.
    NoClientCertificate,
    /// This replica does not hear other replicas' changes now, so it has no change feed.
    FeedDown(FeedDown),
}

/// What kind of failure an error is, independent of the transport that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    Aborted,
    /// No or bad credentials (an admin JWT, an introspection client's secret).
    Unauthenticated,
    /// mTLS is configured and the caller presented no certificate: on HTTP a 403, since a 401
    /// would ask for a bearer token, which would not help.
    NoClientCertificate,
    /// Storage is unavailable: retry later; never a guess.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn grpc_status_code(self) -> Code {
        match self {
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::FailedPrecondition => Code::FailedPrecondition,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ErrorCode::Aborted => Code::Aborted,
            ErrorCode::Unauthenticated | ErrorCode::NoClientCertificate => Code::Unauthenticated,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Internal => Code::Internal,
        }
    }

    /// As Google's APIs map gRPC codes to HTTP (AIP-193), but for the missing certificate.
    pub fn http_status_code(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::FailedPrecondition => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists | ErrorCode::Aborted => StatusCode::CONFLICT,
            ErrorCode::PermissionDenied | ErrorCode::NoClientCertificate => StatusCode::FORBIDDEN,
            ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::NoClientCertificate => ErrorCode::NoClientCertificate,
            ApiError::FeedDown(_) => ErrorCode::Unavailable,
            ApiError::Domain(error) => match error {
                Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
                Error::NotFound { .. } => ErrorCode::NotFound,
                Error::AlreadyExists { .. } => ErrorCode::AlreadyExists,
                Error::FailedPrecondition(_) | Error::PolicyViolation { .. } => {
                    ErrorCode::FailedPrecondition
                }
                Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
                Error::ResourceExhausted { .. } => ErrorCode::ResourceExhausted,
                Error::Aborted | Error::StaleEtag => ErrorCode::Aborted,
                Error::Store(_) => ErrorCode::Unavailable,
            },
        }
    }

    /// What the caller is told, in words; storage failures are logged here, once.
    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthenticated(error) => error.to_string(),
            ApiError::NoClientCertificate => NO_CLIENT_CERTIFICATE.to_owned(),
            ApiError::FeedDown(down) => {
                format!("{down}; watch another replica or retry shortly")
            }
            ApiError::Domain(error) => match error {
                Error::InvalidArgument(violations) => {
                    format!("invalid argument: {}", summary(violations))
                }
                Error::NotFound { kind } => format!("{kind} not found"),
                Error::AlreadyExists { message, .. }
                | Error::FailedPrecondition(message)
                | Error::PermissionDenied(message) => message.clone(),
                Error::ResourceExhausted { description, .. }
                | Error::PolicyViolation { description, .. } => description.clone(),
                Error::Aborted => "the resource changed concurrently; retry".to_owned(),
                Error::StaleEtag => "the etag does not match: the resource changed since it was \
                                     read; get it again and retry"
                    .to_owned(),
                Error::Store(error) => {
                    log_store_error(error);
                    "storage is unavailable; retry later".to_owned()
                }
            },
        }
    }
}

/// Said to a caller that presented no client certificate where one is required.
pub const NO_CLIENT_CERTIFICATE: &str =
    "this service requires a client certificate from the configured CA";

/// The one rule for callers that ask about tokens (`Introspect`, Envoy's `Check`, leak reports,
/// `/v1/forward-auth`, `/oauth2/introspect`): with `--tls-client-ca`, they must present a
/// certificate. The handshake has already checked that a presented one chains to the CA.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertRule {
    pub required: bool,
}

impl ClientCertRule {
    pub fn check(self, presented: bool) -> Result<(), ApiError> {
        if self.required && !presented {
            return Err(ApiError::NoClientCertificate);
        }
        Ok(())
    }

    pub fn check_grpc<T>(self, request: &tonic::Request<T>) -> Result<(), ApiError> {
        self.check(request.peer_certs().is_some_and(|certs| !certs.is_empty()))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::Domain(error)
    }
}

impl From<FeedDown> for ApiError {
    fn from(down: FeedDown) -> Self {
        ApiError::FeedDown(down)
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        ApiError::Unauthenticated(error)
    }
}

/// Runs a handler body and maps its failure once.
pub async fn handle<T>(
    body: impl Future<Output = Result<T, ApiError>>,
) -> Result<Response<T>, Status> {
    body.await.map(Response::new).map_err(status)
}

/// The gRPC status of an error: its code, its message, and the details a client decodes.
pub fn status(error: ApiError) -> Status {
    let code = error.code().grpc_status_code();
    let message = error.message();
    let ApiError::Domain(error) = error else {
        return Status::new(code, message);
    };
    let details = match error {
        Error::InvalidArgument(violations) => ErrorDetails::with_bad_request(
            violations
                .into_iter()
                .map(|v| FieldViolation::new(v.field, v.description))
                .collect::<Vec<_>>(),
        ),
        Error::AlreadyExists { field, message } => {
            ErrorDetails::with_bad_request(vec![FieldViolation::new(field, message)])
        }
        Error::ResourceExhausted {
            subject,
            description,
        } => ErrorDetails::with_quota_failure(vec![QuotaViolation::new(subject, description)]),
        Error::PolicyViolation {
            subject,
            description,
        } => ErrorDetails::with_precondition_failure(vec![PreconditionViolation::new(
            "TOKEN_POLICY",
            subject,
            description,
        )]),
        _ => return Status::new(code, message),
    };
    Status::with_error_details(code, message, details)
}

/// Storage failures are UNAVAILABLE everywhere: the caller may retry, and nobody is ever
/// answered with a guess (introspection fails closed). Unexpected ones are logged as errors.
fn log_store_error(error: &StoreError) {
    match error {
        StoreError::Unavailable(detail) => {
            tracing::warn!(%detail, "storage unavailable");
        }
        other => {
            tracing::error!(error = %other, "storage error");
        }
    }
}

/// The first violation; the details carry them all (at most 21).
fn summary(violations: &[service_accounts_domain::FieldViolation]) -> String {
    match violations {
        [] => "the request is malformed".to_owned(),
        [only] => format!("{}: {}", only.field, only.description),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more in the details)",
            first.field,
            first.description,
            rest.len()
        ),
    }
}
