//! Errors a request can get: a JSON body with a stable `code`, a `message`
//! for people and the trace id, under the status the code's kind has in
//! the one table of them ([`ErrorCode`]).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runner_host::PlanError;
use runner_host::session::SessionError;
use runner_wire::{ErrorBody, ErrorCode};

use crate::admission::Rejection;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub trace_id: Option<String>,
    pub retry_after_s: Option<u64>,
}

/// When to try a pause again that found the disk budget used up: paused
/// sessions are resumed, deleted or reach their lifetime in minutes.
const NO_DISK_RETRY_S: u64 = 60;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
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

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).expect("the table's statuses are valid")
    }

    /// A query string the handler's parameters do not take.
    pub fn malformed_query(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Self::new(ErrorCode::MalformedQuery, rejection.body_text())
    }

    /// A plain request where a WebSocket handshake belongs.
    pub fn not_a_websocket(
        rejection: axum::extract::ws::rejection::WebSocketUpgradeRejection,
    ) -> Self {
        Self::new(
            ErrorCode::NotAWebsocket,
            format!(
                "this endpoint speaks WebSocket only: {}",
                rejection.body_text()
            ),
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }

    /// A request that is wrong: the caller should change it.
    pub fn from_plan(error: PlanError) -> Self {
        let code = error.code();
        match error {
            PlanError::TooLarge(message)
            | PlanError::Invalid(message)
            | PlanError::Network(message) => Self::new(code, message),
            other @ (PlanError::Language(_) | PlanError::NotEnabled { .. }) => {
                Self::new(code, other.to_string())
            }
        }
    }

    /// What a session's request got, under its code.
    pub fn from_session(error: SessionError) -> Self {
        match error {
            SessionError::Plan(error) => Self::from_plan(error),
            error => {
                let mut answer = Self::new(error.code(), runner_host::error_chain(&error));
                if error.code() == ErrorCode::NoDiskForPausedSessions {
                    answer.retry_after_s = Some(NO_DISK_RETRY_S);
                }
                answer
            }
        }
    }

    pub fn from_rejection(rejection: Rejection) -> Self {
        let code = rejection.code();
        let (error, retry) = match rejection {
            Rejection::QueueFull { retry_after_s } => (
                Self::new(code, "every VM is busy and the queue is full; retry later"),
                Some(retry_after_s),
            ),
            Rejection::QueueTimeout { retry_after_s } => (
                Self::new(
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
                    code,
                    format!(
                        "this request needs a VM of {vm_memory_mib} MiB, more than the {budget_mib} MiB this server has for all VMs; ask for less memory"
                    ),
                ),
                None,
            ),
            Rejection::NoCapacity { retry_after_s } => (
                Self::new(
                    code,
                    "every VM is busy; a session starts only when there is room now: retry later",
                ),
                Some(retry_after_s),
            ),
            Rejection::ShuttingDown => (Self::new(code, "the server is shutting down"), Some(5)),
        };
        Self {
            retry_after_s: retry,
            ..error
        }
    }

    /// The body the client gets.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.as_str().to_string(),
            message: self.message.clone(),
            trace_id: self.trace_id.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openapi.json` lists every code of the table, and no other.
    #[test]
    fn the_document_lists_the_tables_codes() {
        let document: serde_json::Value = serde_json::from_str(crate::OPENAPI).unwrap();
        let listed: std::collections::BTreeSet<&str> =
            document["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|code| code.as_str().unwrap())
                .collect();
        let table: std::collections::BTreeSet<&str> = ErrorCode::codes().into_iter().collect();
        assert_eq!(listed, table);
    }

    #[test]
    fn an_error_answers_with_its_kinds_status() {
        let error = ApiError::new(ErrorCode::SessionBusy, "busy").traced("t");
        assert_eq!(error.status(), StatusCode::CONFLICT);
        let body = error.body();
        assert_eq!(
            (body.code.as_str(), body.trace_id.as_deref()),
            ("session_busy", Some("t"))
        );
        let shape = ApiError::new(ErrorCode::MisshapenRequest, "x");
        assert_eq!(shape.status(), StatusCode::BAD_REQUEST);
        assert_eq!(shape.body().code, "invalid_request");
    }
}
