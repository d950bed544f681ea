//! One mapping from every failure to an RFC 9457 `application/problem+json`
//! response. Internal causes are logged, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::command::CommandError;
use herald_core::store::StoreError;
use serde_json::{Map, Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("authentication required: {0}")]
    Unauthorized(&'static str),
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A risky command needs a recent passkey verification (step-up).
    #[error("reauthentication required: {0}")]
    ReauthRequired(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    #[error("request body over {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("version conflict on {stream}")]
    Conflict { stream: String, expected: u64, actual: u64 },
    #[error("{title}: {detail}")]
    Unprocessable { title: &'static str, detail: String },
    #[error("too many requests: {detail}")]
    TooManyRequests { detail: String, retry_after_secs: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The request's `Host` is not one of herald's names (DNS rebinding).
    #[error("misdirected request: {0}")]
    MisdirectedRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict {
                stream,
                expected,
                actual,
            } => ApiError::Conflict {
                stream,
                expected: match expected {
                    herald_core::ExpectedVersion::Exact(v) => v,
                    _ => 0,
                },
                actual,
            },
            StoreError::CommandIdReused { command_id } => ApiError::Unprocessable {
                title: "command_id reused",
                detail: format!("command_id {command_id:?} was already used for a different command"),
            },
            StoreError::InvalidAppend(detail) => ApiError::BadRequest(detail),
            StoreError::ShuttingDown => ApiError::Unavailable("herald is shutting down".into()),
            StoreError::Unavailable(detail) => ApiError::Unavailable(detail),
            e @ (StoreError::Corrupt(_) | StoreError::Backend(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownType { command_type, known } => ApiError::BadRequest(format!(
                "type: unknown command type {command_type:?}; known types: {}",
                known.join(", ")
            )),
            CommandError::Invalid(invalid) => ApiError::BadRequest(invalid.0),
            CommandError::Rejected(rejection) => ApiError::Unprocessable {
                title: rejection.rule,
                detail: rejection.detail,
            },
            CommandError::Conflict {
                stream,
                expected,
                actual,
            } => ApiError::Conflict {
                stream,
                expected,
                actual,
            },
            CommandError::CommandIdReused(command_id) => StoreError::CommandIdReused { command_id }.into(),
            CommandError::StepUpRequired(t) => ApiError::ReauthRequired(format!(
                "{t} needs a recent passkey verification; verify with your passkey and send it again"
            )),
            CommandError::Store(store) => store.into(),
        }
    }
}

fn problem(status: StatusCode, slug: &str, title: &str, detail: &str, extra: Map<String, Value>) -> Response {
    let mut body = json!({
        "type": format!("/problems/{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(map) = body.as_object_mut() {
        map.extend(extra);
    }
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let none = Map::new;
        match self {
            ApiError::BadRequest(detail) => {
                problem(StatusCode::BAD_REQUEST, "bad-request", "Bad request", &detail, none())
            }
            ApiError::Unauthorized(detail) => {
                let mut r = problem(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Authentication required",
                    detail,
                    none(),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"herald\""),
                );
                r
            }
            ApiError::AuthFailed(detail) => problem(
                StatusCode::UNAUTHORIZED,
                "authentication-failed",
                "Authentication failed",
                &detail,
                none(),
            ),
            ApiError::Forbidden(detail) => problem(StatusCode::FORBIDDEN, "forbidden", "Forbidden", &detail, none()),
            ApiError::ReauthRequired(detail) => {
                let mut extra = Map::new();
                extra.insert("reauth_required".into(), json!(true));
                problem(
                    StatusCode::FORBIDDEN,
                    "reauth-required",
                    "Passkey verification required",
                    &detail,
                    extra,
                )
            }
            ApiError::NotFound(detail) => problem(StatusCode::NOT_FOUND, "not-found", "Not found", &detail, none()),
            ApiError::MethodNotAllowed(detail) => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                &detail,
                none(),
            ),
            ApiError::PayloadTooLarge { limit } => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                &format!("the request body is over the limit of {limit} bytes"),
                none(),
            ),
            ApiError::UnsupportedMediaType => problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as JSON with Content-Type: application/json",
                none(),
            ),
            ApiError::Conflict {
                stream,
                expected,
                actual,
            } => {
                let mut extra = Map::new();
                extra.insert("stream".into(), json!(stream));
                extra.insert("expected_version".into(), json!(expected));
                extra.insert("actual_version".into(), json!(actual));
                problem(
                    StatusCode::CONFLICT,
                    "version-conflict",
                    "Version conflict",
                    &format!("{stream} is at version {actual}, the command expected version {expected}"),
                    extra,
                )
            }
            ApiError::Unprocessable { title, detail } => problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rule-violated",
                title,
                &detail,
                none(),
            ),
            ApiError::TooManyRequests {
                detail,
                retry_after_secs,
            } => {
                let mut r = problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-requests",
                    "Too many requests",
                    &detail,
                    none(),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                r
            }
            ApiError::Unavailable(detail) => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                &detail,
                none(),
            ),
            ApiError::MisdirectedRequest(detail) => problem(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected-request",
                "Misdirected request",
                &detail,
                none(),
            ),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "something went wrong on the server; it has been logged",
                    none(),
                )
            }
        }
    }
}
