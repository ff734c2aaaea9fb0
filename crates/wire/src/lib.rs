//! Runner Codes' HTTP API on the wire: what clients send
//! ([`request`]), what they get back ([`result`], [`session`],
//! [`submission`], [`language`]), the error codes of every front end
//! ([`error`]), and, with the `client` feature, a typed client of a
//! `runner serve` ([`Client`]).
//!
//! The server, the MCP server and the CLI speak these types; the engine
//! returns its results in them. `openapi.json` describes the same shapes.

pub mod error;
pub mod language;
pub mod request;
pub mod result;
pub mod session;
pub mod submission;

#[cfg(feature = "client")]
mod client;

#[cfg(feature = "client")]
pub use client::{Client, ClientError, Lines, encode_path};
pub use error::{ErrorBody, ErrorCode};
pub use language::LanguageInfo;
pub use request::{
    CheckerBody, CompareBody, Encoding, ExecutionBody, FileBody, NetworkRequest, RequestLimits,
    SessionBody, StageLimits, SubmissionBody, TestBody,
};
pub use result::{
    Accel, Connection, Difference, ExecutionEvent, ExecutionMetrics, ExecutionResult,
    NetworkReport, OutputFile, StageResult, StartKind, Status, Stream,
};
pub use runner_protocol::{Stage, WindowSize};
pub use session::{
    EndReason, FileEntry, FileKind, FileListing, PausedInfo, SessionInfo, SessionList, SessionState,
};
pub use submission::{SubmissionEvent, SubmissionResult, Summary, TestResult};
