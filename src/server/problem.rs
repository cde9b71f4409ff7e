//! Errors as `application/problem+json` (RFC 9457), one stable `type` per kind
//! (`docs/api-v1.md`), and the mapping of every library error onto them.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::error::{InputError, StoreError};
use crate::hybrid::HybridError;
use crate::read::ReadError;

/// One error answer.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// The kind (`/problems/{kind}`).
    pub kind: &'static str,
    /// One line.
    pub detail: String,
    /// Members beyond the standard ones.
    pub extra: Map<String, Value>,
}

impl Problem {
    /// A problem of `kind` with `status` and `detail`.
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind,
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    /// Adds a member.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Problem {
        self.extra.insert(name.to_owned(), value.into());
        self
    }

    /// 400 naming the bad field or parameter.
    pub fn bad_request(field: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail).with("field", field)
    }

    /// 503: the daemon cannot take this now.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    fn title(&self) -> &'static str {
        match self.kind {
            "bad-request" => "Bad request",
            "unauthorized" => "Unauthorized",
            "forbidden" => "Forbidden",
            "not-found" => "Not found",
            "wrong-expected-version" => "Wrong expected version",
            "transition-refused" => "Transition refused",
            "payload-too-large" => "Payload too large",
            "idempotency-conflict" => "Idempotency conflict",
            "unavailable" => "Unavailable",
            "not-served-here" => "Not served here",
            "timeout" => "Timeout",
            "erased" => "Erased",
            "unknown-subject" => "Unknown subject",
            _ => "Internal error",
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("/problems/{}", self.kind),
            "title": self.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(members) = &mut body {
            members.extend(self.extra);
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Problem {
        let detail = crate::error::one_line(&error);
        match error {
            StoreError::Input(input) => Problem::from(input),
            StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => Problem::new(StatusCode::CONFLICT, "wrong-expected-version", detail)
                .with("stream", stream.to_string())
                .with(
                    "expected",
                    serde_json::to_value(expected).unwrap_or_default(),
                )
                .with("actual_version", actual.map(|v| v.0)),
            StoreError::NotCaughtUp { .. } => {
                Problem::new(StatusCode::GATEWAY_TIMEOUT, "timeout", detail)
            }
            StoreError::Log(_)
            | StoreError::Closed
            | StoreError::ProjectionStopped { .. }
            | StoreError::Task(_) => Problem::unavailable(detail),
            StoreError::Decode { .. } | StoreError::KeyStore(_) => {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
            }
        }
    }
}

impl From<InputError> for Problem {
    fn from(error: InputError) -> Problem {
        let detail = error.to_string();
        match &error {
            InputError::EventTooLarge { max, .. } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", detail)
                    .with("limit_bytes", *max)
            }
            InputError::AppendTooLarge { max, .. } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", detail)
                    .with("limit_bytes", *max)
            }
            InputError::IdempotencyConflict => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-conflict",
                detail,
            ),
            InputError::InvalidStreamId { .. } | InputError::WrongStreamKind { .. } => {
                Problem::bad_request("stream", detail)
            }
            InputError::InvalidBotId { .. } => Problem::bad_request("bot", detail),
            InputError::UnknownSubject { .. } => {
                Problem::new(StatusCode::NOT_FOUND, "unknown-subject", detail)
            }
            InputError::UnknownComponent { .. } => Problem::bad_request("component", detail),
            _ => Problem::bad_request("events", detail),
        }
    }
}

impl From<ReadError> for Problem {
    fn from(error: ReadError) -> Problem {
        let detail = crate::error::one_line(&error);
        match error {
            ReadError::NotCaughtUp { .. } => {
                Problem::new(StatusCode::GATEWAY_TIMEOUT, "timeout", detail)
            }
            ReadError::NotServedHere {
                component, state, ..
            } => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-served-here", detail)
                .with("component", component.as_str())
                .with("state", state.as_str()),
            ReadError::Unavailable { .. } => Problem::unavailable(detail),
            ReadError::Erased { position, .. } => {
                Problem::new(StatusCode::GONE, "erased", detail).with("erased_at", position.0)
            }
            ReadError::Store(store) => Problem::from(store),
        }
    }
}

impl From<HybridError> for Problem {
    fn from(error: HybridError) -> Problem {
        let detail = crate::error::one_line(&error);
        match error {
            HybridError::Store(store) => Problem::from(store),
            HybridError::Read(read) => Problem::from(read),
            HybridError::Refused(refused) => {
                Problem::new(StatusCode::CONFLICT, "transition-refused", detail)
                    .with("reason", refused.to_string())
            }
            HybridError::NoLog => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-served-here", detail)
            }
            HybridError::Postgres(_) | HybridError::Cache(_) => Problem::unavailable(detail),
        }
    }
}
