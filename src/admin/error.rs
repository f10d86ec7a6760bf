//! [`ApiError`]: every admin API failure, as a JSON body with a clear message and the
//! right status code.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::ConfigErrors;
use crate::health::StateError;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No token is configured, so changes are refused.
    #[error(
        "changes are disabled: no [admin] token_file or [[admin.token]] with a role above read is configured"
    )]
    ChangesDisabled,
    /// A reload found problems; the running config keeps serving.
    #[error("reload rejected; the running config keeps serving")]
    InvalidConfig(ConfigErrors),
    /// A run-time member was refused: its problems, by field.
    #[error("the member is refused; nothing changed")]
    MemberRefused(Vec<String>),
    /// A batch was refused whole: its problems, by position.
    #[error("the batch is refused; nothing was taken")]
    BatchRefused(Vec<String>),
    /// The request conflicts with the config file (a member it defines).
    #[error("{0}")]
    Conflict(String),
    /// The request's `Host` names no host of this server (DNS rebinding).
    #[error("{0}")]
    Misdirected(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// gto is stopping.
    #[error("gto is shutting down")]
    ShuttingDown,
    /// Missing or wrong bearer token.
    #[error("a valid bearer token is required for changes")]
    Unauthorized,
    /// The token's role does not allow the change.
    #[error("{0}")]
    Forbidden(String),
    /// Too many of something at once (event streams).
    #[error("{0}")]
    Busy(String),
    /// The fleet store cannot take the change now.
    #[error("{0}")]
    Fleet(#[from] crate::cluster::ClusterError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BatchRefused(_) => StatusCode::BAD_REQUEST,
            ApiError::ChangesDisabled => StatusCode::FORBIDDEN,
            ApiError::InvalidConfig(_) | ApiError::MemberRefused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Fleet(crate::cluster::ClusterError::Conflict) => StatusCode::CONFLICT,
            ApiError::Fleet(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<StateError> for ApiError {
    fn from(error: StateError) -> Self {
        match error {
            StateError::NoCapacity(..) | StateError::ZeroCapacity(..) => {
                ApiError::BadRequest(error.to_string())
            }
            StateError::NotFound(..) => ApiError::NotFound(error.to_string()),
            StateError::Stopped => ApiError::ShuttingDown,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::InvalidConfig(errors) => json!({
                "error": self.to_string(),
                "problems": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
            ApiError::MemberRefused(problems) | ApiError::BatchRefused(problems) => json!({
                "error": self.to_string(),
                "problems": problems,
            }),
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
