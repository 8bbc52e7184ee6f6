//! The one place domain errors become gRPC statuses. Internal details are logged, not returned.

use service_accounts_domain::{Error, StoreError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

pub fn status(error: Error) -> Status {
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
        Error::Aborted => Status::aborted("the resource changed concurrently; retry"),
        Error::Store(error) => store_status(error),
    }
}

/// Storage failures: UNAVAILABLE when retrying may help, INTERNAL otherwise.
pub fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Unavailable(detail) => {
            tracing::warn!(%detail, "storage unavailable");
            Status::unavailable("storage is unavailable; retry later")
        }
        other => {
            tracing::error!(error = %other, "storage error");
            Status::internal("internal error")
        }
    }
}

pub fn invalid_argument(violations: Vec<service_accounts_domain::FieldViolation>) -> Status {
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
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
