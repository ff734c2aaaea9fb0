//! Error codes: the one table of what went wrong, its code on the wire
//! and its HTTP status. The server answers with it, the MCP server
//! reports its codes to models, and the CLI decides its exit status by
//! it, so all three say the same thing about the same error.

use serde::{Deserialize, Serialize};

/// Declares the table: each kind of error, its code and its status.
macro_rules! codes {
    ($($(#[$doc:meta])* $kind:ident = ($code:literal, $status:literal),)*) => {
        /// What went wrong, as every front end reports it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $kind,)*
        }

        impl ErrorCode {
            /// Every kind, in the table's order.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$kind,)*];

            /// The code on the wire, e.g. `session_busy`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$kind => $code,)*
                }
            }

            /// The HTTP status the server answers with.
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$kind => $status,)*
                }
            }
        }
    };
}

codes! {
    /// The body is not UTF-8.
    InvalidUtf8 = ("invalid_utf8", 400),
    /// The body is not JSON.
    MalformedJson = ("malformed_json", 400),
    /// A query string the endpoint does not take.
    MalformedQuery = ("malformed_query", 400),
    /// A plain request where a WebSocket handshake belongs.
    NotAWebsocket = ("not_a_websocket", 400),
    /// JSON, but not of the request's shape: unknown fields, wrong types.
    /// Its code is `invalid_request`, as a request of the right shape that
    /// cannot run; its status says which it is.
    MisshapenRequest = ("invalid_request", 400),
    /// The request is of the right shape but cannot run as asked (a limit
    /// out of range, a bad file name, ...); the message says what to
    /// change.
    InvalidRequest = ("invalid_request", 422),
    /// No such language, or not one this server runs.
    UnknownLanguage = ("unknown_language", 422),
    /// The request asks for network the server does not give.
    NetworkNotAllowed = ("network_not_allowed", 422),
    /// The request needs a VM larger than the server has memory for.
    TooLarge = ("too_large", 422),
    /// A session path outside its working directory, through a link, or
    /// not of the kind the operation takes.
    InvalidPath = ("invalid_path", 422),
    /// The body is over the server's limit.
    BodyTooLarge = ("body_too_large", 413),
    /// Within the body limit but more than one request may carry (files,
    /// tests, test data).
    RequestTooLarge = ("request_too_large", 413),
    /// A session's file is over what its operation takes.
    FileTooLarge = ("file_too_large", 413),
    /// No valid API key.
    Unauthorized = ("unauthorized", 401),
    /// A server without keys serves its own machine only.
    Forbidden = ("forbidden", 403),
    /// No such endpoint.
    NotFound = ("not_found", 404),
    /// No such session, or it is someone else's.
    SessionNotFound = ("session_not_found", 404),
    /// No such file in the session.
    FileNotFound = ("file_not_found", 404),
    /// The endpoint does not take this method.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// Another request is using the session.
    SessionBusy = ("session_busy", 409),
    /// The session has ended; the message says why.
    SessionEnded = ("session_ended", 409),
    /// The session had ended because its VM failed.
    SessionFailed = ("session_failed", 409),
    /// The session is paused and was not resumed for this request.
    SessionPaused = ("session_paused", 409),
    /// Every VM is busy and the queue is full.
    QueueFull = ("queue_full", 429),
    /// Every VM stayed busy for the queue's whole timeout.
    QueueTimeout = ("queue_timeout", 429),
    /// No room for a VM now, and the request does not wait (a session).
    NoCapacity = ("no_capacity", 429),
    /// The owner runs as many sessions as it may.
    TooManySessions = ("too_many_sessions", 429),
    /// The owner has as many sessions paused as it may.
    TooManyPausedSessions = ("too_many_paused_sessions", 429),
    /// Paused sessions fill the server's disk budget for them.
    NoDiskForPausedSessions = ("no_disk_for_paused_sessions", 429),
    /// The server is shutting down.
    ShuttingDown = ("shutting_down", 503),
    /// Runner Codes failed; the message says how.
    InternalError = ("internal_error", 500),
    /// This request's operation found the session's VM failed: the session
    /// has ended with it, and its files are gone.
    SessionBroken = ("session_failed", 500),
    /// Saving a session failed; it runs on as before.
    PauseFailed = ("pause_failed", 500),
    /// A paused session's VM did not come back; it has ended.
    ResumeFailed = ("resume_failed", 500),
    /// A session's working directory is full.
    DiskFull = ("disk_full", 507),
}

impl ErrorCode {
    /// The kind a code names; of two kinds with one code, the one a
    /// request of the right shape gets.
    pub fn from_code(code: &str) -> Option<ErrorCode> {
        let mut kinds = Self::ALL.iter().filter(|kind| kind.as_str() == code);
        let first = kinds.next().copied()?;
        Some(
            kinds
                .copied()
                .find(|k| k.http_status() != 400 && k.http_status() < 500)
                .unwrap_or(first),
        )
    }

    /// Whether the caller can do something about it (a 4xx): change the
    /// request, wait, or free something.
    pub fn is_callers(self) -> bool {
        (400..500).contains(&self.http_status())
    }

    /// Every code on the wire, once each.
    pub fn codes() -> Vec<&'static str> {
        let mut codes: Vec<&'static str> = Vec::new();
        for kind in Self::ALL {
            if !codes.contains(&kind.as_str()) {
                codes.push(kind.as_str());
            }
        }
        codes
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer: a stable code, a message for people,
/// and the request's trace id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_status_for_the_caller_and_one_for_the_server() {
        for code in ErrorCode::codes() {
            let kinds: Vec<&ErrorCode> = ErrorCode::ALL
                .iter()
                .filter(|k| k.as_str() == code)
                .collect();
            assert!(kinds.len() <= 2, "{code}: {kinds:?}");
            let statuses: Vec<u16> = kinds.iter().map(|k| k.http_status()).collect();
            let mut unique = statuses.clone();
            unique.dedup();
            assert_eq!(unique, statuses, "{code}: one kind per status");
        }
        assert_eq!(
            ErrorCode::from_code("invalid_request"),
            Some(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            ErrorCode::from_code("session_failed"),
            Some(ErrorCode::SessionFailed)
        );
        assert_eq!(ErrorCode::from_code("disk_full"), Some(ErrorCode::DiskFull));
        assert_eq!(ErrorCode::from_code("nope"), None);
        assert!(ErrorCode::QueueFull.is_callers() && !ErrorCode::PauseFailed.is_callers());
    }
}
