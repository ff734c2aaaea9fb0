//! A typed client of a `runner serve`: every endpoint a program drives,
//! with the bodies of this crate both ways. `runner session` and `runner
//! mcp --server` use it; so can any Rust program:
//!
//! ```no_run
//! # async fn example() -> Result<(), runner_wire::ClientError> {
//! use runner_wire::{Client, ExecutionBody, FileBody};
//!
//! let client = Client::new("http://127.0.0.1:8080");
//! let result = client
//!     .execute(&ExecutionBody {
//!         language: "python".into(),
//!         files: vec![FileBody::new(None, b"print(6*7)".to_vec())],
//!         ..ExecutionBody::default()
//!     })
//!     .await?;
//! assert_eq!(result.run.unwrap().stdout, b"42\n");
//! # Ok(())
//! # }
//! ```

use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;

use crate::error::{ErrorBody, ErrorCode};
use crate::language::LanguageInfo;
use crate::request::{ExecutionBody, SessionBody, SubmissionBody};
use crate::result::{ExecutionEvent, ExecutionResult};
use crate::session::{FileEntry, FileListing, SessionInfo, SessionList};
use crate::submission::{SubmissionEvent, SubmissionResult};

/// Why a call did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message} ({code})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's code, as the server sent it (see [`ErrorCode`]).
        code: String,
        message: String,
        trace_id: Option<String>,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {base}: is `runner serve` running there?")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server's answer was cut short or not what this client reads.
    #[error("reading the server's answer")]
    Answer(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ClientError {
    /// The error's kind, when the server answered with one this client
    /// knows.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => ErrorCode::from_code(code),
            _ => None,
        }
    }

    /// Whether the caller can do something about it: the server refused
    /// the request as it was (a 4xx).
    pub fn is_callers(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if (400..500).contains(status))
    }
}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    api_key: Option<String>,
}

impl Client {
    /// A client of the server at `base`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            api_key: None,
        }
    }

    /// Sends `key` with every request, for a server with API keys.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The server's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The languages the server runs.
    pub async fn languages(&self) -> Result<Vec<LanguageInfo>, ClientError> {
        self.json(self.request(Method::GET, "/v1/languages")).await
    }

    /// Runs a program in a VM of its own, judged if the body says what to
    /// expect.
    pub async fn execute(&self, body: &ExecutionBody) -> Result<ExecutionResult, ClientError> {
        self.json(self.request(Method::POST, "/v1/executions").json(body))
            .await
    }

    /// [`Client::execute`], its output as it comes.
    pub async fn execute_stream(
        &self,
        body: &ExecutionBody,
    ) -> Result<Lines<ExecutionEvent>, ClientError> {
        self.lines(
            self.request(Method::POST, "/v1/executions/stream")
                .json(body),
        )
        .await
    }

    /// Judges a program against its tests.
    pub async fn submit(&self, body: &SubmissionBody) -> Result<SubmissionResult, ClientError> {
        self.json(self.request(Method::POST, "/v1/submissions").json(body))
            .await
    }

    /// [`Client::submit`], each test's verdict as it comes.
    pub async fn submit_stream(
        &self,
        body: &SubmissionBody,
    ) -> Result<Lines<SubmissionEvent>, ClientError> {
        self.lines(
            self.request(Method::POST, "/v1/submissions/stream")
                .json(body),
        )
        .await
    }

    /// Starts a session.
    pub async fn create_session(&self, body: &SessionBody) -> Result<SessionInfo, ClientError> {
        self.json(self.request(Method::POST, "/v1/sessions").json(body))
            .await
    }

    /// This key's sessions.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, ClientError> {
        let list: SessionList = self.json(self.request(Method::GET, "/v1/sessions")).await?;
        Ok(list.sessions)
    }

    pub async fn session(&self, id: &str) -> Result<SessionInfo, ClientError> {
        self.json(self.request(Method::GET, &session_path(id, "")))
            .await
    }

    /// Ends a session: its VM and files are gone.
    pub async fn delete_session(&self, id: &str) -> Result<(), ClientError> {
        self.empty(self.request(Method::DELETE, &session_path(id, "")))
            .await
    }

    /// Saves a session's VM to disk and frees it.
    pub async fn pause_session(&self, id: &str) -> Result<SessionInfo, ClientError> {
        self.json(self.request(Method::POST, &session_path(id, "/pause")))
            .await
    }

    /// Brings a paused session back.
    pub async fn resume_session(&self, id: &str) -> Result<SessionInfo, ClientError> {
        self.json(self.request(Method::POST, &session_path(id, "/resume")))
            .await
    }

    /// Runs code or a command in a session.
    pub async fn execute_in_session(
        &self,
        id: &str,
        body: &ExecutionBody,
    ) -> Result<ExecutionResult, ClientError> {
        let path = session_path(id, "/executions");
        self.json(self.request(Method::POST, &path).json(body))
            .await
    }

    /// [`Client::execute_in_session`], its output as it comes.
    pub async fn execute_in_session_stream(
        &self,
        id: &str,
        body: &ExecutionBody,
    ) -> Result<Lines<ExecutionEvent>, ClientError> {
        let path = session_path(id, "/executions/stream");
        self.lines(self.request(Method::POST, &path).json(body))
            .await
    }

    /// Writes a file of a session's working directory.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        content: Vec<u8>,
        executable: bool,
    ) -> Result<(), ClientError> {
        let mut url = session_path(id, &format!("/files/{}", encode_path(path)));
        if executable {
            url.push_str("?executable=true");
        }
        self.empty(self.request(Method::PUT, &url).body(content))
            .await
    }

    /// Reads a regular file of a session's working directory.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = session_path(id, &format!("/files/{}", encode_path(path)));
        let response = self.send(self.request(Method::GET, &url)).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Answer(e.into()))?;
        Ok(bytes.to_vec())
    }

    /// Removes a file or directory of a session's working directory.
    pub async fn remove_file(&self, id: &str, path: &str) -> Result<(), ClientError> {
        let url = session_path(id, &format!("/files/{}", encode_path(path)));
        self.empty(self.request(Method::DELETE, &url)).await
    }

    /// A directory of a session's working directory (`""` for itself).
    pub async fn list_files(&self, id: &str, path: &str) -> Result<Vec<FileEntry>, ClientError> {
        let url = session_path(id, &format!("/files?path={}", encode_path(path)));
        let listing: FileListing = self.json(self.request(Method::GET, &url)).await?;
        Ok(listing.entries)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends `request`; a success, or the server's error.
    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Option<ErrorBody> = response.json().await.ok();
        let (code, message, trace_id) = match body {
            Some(body) => (body.code, body.message, body.trace_id),
            None => (
                "error".to_string(),
                format!("the server answered {status}"),
                None,
            ),
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            code,
            message,
            trace_id,
        })
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Answer(e.into()))
    }

    async fn empty(&self, request: RequestBuilder) -> Result<(), ClientError> {
        self.send(request).await.map(drop)
    }

    async fn lines<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<Lines<T>, ClientError> {
        let response = self.send(request).await?;
        Ok(Lines {
            stream: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            _of: std::marker::PhantomData,
        })
    }
}

/// The lines of a streamed answer (NDJSON), each a `T`, as they come.
pub struct Lines<T> {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: Vec<u8>,
    _of: std::marker::PhantomData<T>,
}

impl<T: DeserializeOwned> Lines<T> {
    /// The next line; `None` once the answer is over.
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(
                    serde_json::from_slice(&line).map_err(|e| ClientError::Answer(e.into())),
                );
            }
            match self.stream.next().await {
                Some(Ok(piece)) => self.buffer.extend_from_slice(&piece),
                Some(Err(e)) => return Some(Err(ClientError::Answer(e.into()))),
                None if self.buffer.iter().all(u8::is_ascii_whitespace) => return None,
                None => {
                    let line = std::mem::take(&mut self.buffer);
                    return Some(
                        serde_json::from_slice(&line).map_err(|e| ClientError::Answer(e.into())),
                    );
                }
            }
        }
    }
}

/// `/v1/sessions/{id}{rest}`, the id encoded.
fn session_path(id: &str, rest: &str) -> String {
    format!("/v1/sessions/{}{rest}", encode_path(id))
}

/// A path for a URL: each segment percent-encoded, `/` kept.
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            segment
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_segment_by_segment() {
        assert_eq!(encode_path("a b/ü?.txt"), "a%20b/%C3%BC%3F.txt");
        assert_eq!(encode_path(""), "");
        assert_eq!(session_path("ses_1", "/pause"), "/v1/sessions/ses_1/pause");
    }
}
