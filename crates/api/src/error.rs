//! Errors a request can get: a status code and a JSON body with a stable
//! `code`, a `message` for people, and the trace id.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runner_host::PlanError;
use serde::Serialize;

use crate::admission::Rejection;

#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip)]
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            trace_id: None,
            retry_after_s: None,
        }
    }

    pub fn traced(mut self, trace_id: &str) -> Self {
        self.trace_id = Some(trace_id.to_string());
        self
    }

    /// A query string the handler's parameters do not take.
    pub fn malformed_query(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_query",
            rejection.body_text(),
        )
    }

    /// A plain request where a WebSocket handshake belongs.
    pub fn not_a_websocket(
        rejection: axum::extract::ws::rejection::WebSocketUpgradeRejection,
    ) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "not_a_websocket",
            format!(
                "this endpoint speaks WebSocket only: {}",
                rejection.body_text()
            ),
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// A request that is wrong: the caller should change it.
    pub fn from_plan(error: PlanError) -> Self {
        let code = error.code();
        match error {
            PlanError::TooLarge(message) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message),
            PlanError::Invalid(message) | PlanError::Network(message) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            unknown @ (PlanError::Language(_) | PlanError::NotEnabled { .. }) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, unknown.to_string())
            }
        }
    }

    pub fn from_rejection(rejection: Rejection) -> Self {
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        let code = rejection.reason();
        let (error, retry) = match rejection {
            Rejection::QueueFull { retry_after_s } => (
                Self::new(
                    too_many,
                    code,
                    "every VM is busy and the queue is full; retry later",
                ),
                Some(retry_after_s),
            ),
            Rejection::QueueTimeout { retry_after_s } => (
                Self::new(
                    too_many,
                    code,
                    "every VM stayed busy for the queue's whole timeout; retry later",
                ),
                Some(retry_after_s),
            ),
            Rejection::TooLarge {
                vm_memory_mib,
                budget_mib,
            } => (
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    code,
                    format!(
                        "this request needs a VM of {vm_memory_mib} MiB, more than the {budget_mib} MiB this server has for all VMs; ask for less memory"
                    ),
                ),
                None,
            ),
            Rejection::NoCapacity { retry_after_s } => (
                Self::new(
                    too_many,
                    code,
                    "every VM is busy; a session starts only when there is room now: retry later",
                ),
                Some(retry_after_s),
            ),
            Rejection::ShuttingDown => (
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "the server is shutting down",
                ),
                Some(5),
            ),
        };
        Self {
            retry_after_s: retry,
            ..error
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let retry = self.retry_after_s;
        let mut response = (status, Json(self)).into_response();
        if let Some(seconds) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
