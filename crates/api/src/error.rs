//! The one place errors become gRPC statuses, with the same rules for every service. Internal
//! details are logged, not returned.

use std::future::Future;

use service_accounts_domain::{Error, StoreError};
use tonic::{Code, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, QuotaViolation, StatusExt};

use crate::auth::AuthError;

/// Every way an RPC can fail.
#[derive(Debug)]
pub enum RpcError {
    Domain(Error),
    Unauthenticated(AuthError),
    /// mTLS is configured and the caller presented no client certificate.
    NoClientCertificate,
}

impl From<Error> for RpcError {
    fn from(error: Error) -> Self {
        RpcError::Domain(error)
    }
}

impl From<AuthError> for RpcError {
    fn from(error: AuthError) -> Self {
        RpcError::Unauthenticated(error)
    }
}

/// Runs a handler body and maps its failure once.
pub async fn handle<T>(
    body: impl Future<Output = Result<T, RpcError>>,
) -> Result<Response<T>, Status> {
    body.await.map(Response::new).map_err(status)
}

pub fn status(error: RpcError) -> Status {
    match error {
        RpcError::Unauthenticated(error) => Status::unauthenticated(error.to_string()),
        RpcError::NoClientCertificate => Status::unauthenticated(
            "this service requires a client certificate from the configured CA",
        ),
        RpcError::Domain(error) => domain_status(error),
    }
}

fn domain_status(error: Error) -> Status {
    match error {
        Error::InvalidArgument(violations) => invalid_argument(violations),
        Error::NotFound { kind } => Status::not_found(format!("{kind} not found")),
        Error::AlreadyExists { field, message } => Status::with_error_details(
            Code::AlreadyExists,
            message.clone(),
            ErrorDetails::with_bad_request(vec![FieldViolation::new(field, message)]),
        ),
        Error::FailedPrecondition(message) => Status::failed_precondition(message),
        Error::PermissionDenied(message) => Status::permission_denied(message),
        Error::ResourceExhausted {
            subject,
            description,
        } => Status::with_error_details(
            Code::ResourceExhausted,
            description.clone(),
            ErrorDetails::with_quota_failure(vec![QuotaViolation::new(subject, description)]),
        ),
        Error::Aborted => Status::aborted("the resource changed concurrently; retry"),
        Error::StaleEtag => Status::aborted(
            "the etag does not match: the resource changed since it was read; get it again and \
             retry",
        ),
        Error::PolicyViolation {
            subject,
            description,
        } => Status::with_error_details(
            Code::FailedPrecondition,
            description.clone(),
            ErrorDetails::with_precondition_failure(vec![PreconditionViolation::new(
                "TOKEN_POLICY",
                subject,
                description,
            )]),
        ),
        Error::Store(error) => store_status(error),
    }
}

/// Storage failures are UNAVAILABLE on every RPC: the caller may retry, and nobody is ever
/// answered with a guess (introspection fails closed). Unexpected ones are logged as errors.
fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Unavailable(detail) => {
            tracing::warn!(%detail, "storage unavailable");
        }
        other => {
            tracing::error!(error = %other, "storage error");
        }
    }
    Status::unavailable("storage is unavailable; retry later")
}

/// The message names the first violation; the details carry them all (at most 21).
fn invalid_argument(violations: Vec<service_accounts_domain::FieldViolation>) -> Status {
    let summary = match violations.as_slice() {
        [] => "the request is malformed".to_owned(),
        [only] => format!("{}: {}", only.field, only.description),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more in the details)",
            first.field,
            first.description,
            rest.len()
        ),
    };
    let details: Vec<FieldViolation> = violations
        .into_iter()
        .map(|v| FieldViolation::new(v.field, v.description))
        .collect();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid argument: {summary}"),
        ErrorDetails::with_bad_request(details),
    )
}
