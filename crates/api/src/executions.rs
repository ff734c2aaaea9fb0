//! `POST /v1/executions` and `POST /v1/executions/stream`.
//!
//! Both take the same request. The first answers with the result once the
//! execution is over. The second answers with NDJSON (one JSON object per
//! line) as things happen: `started`, then `output` events with stdout and
//! stderr as the program writes them, then one `result` with the same result
//! the first would give. A streaming client that disconnects stops the
//! execution and frees its VM.
//!
//! Every check happens before anything starts, and before waiting for
//! capacity: the body is parsed here, then planned once by the runner
//! ([`runner_host::Runner::plan`]); a request is refused whole or run whole.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use runner_host::exec::{OutputChunk, RequestLimits, SourceFile, Stage};
use runner_host::judge::{CheckerRequest, Compare, DEFAULT_TOLERANCE};
use runner_host::{Execution, ExecutionRequest, ExecutionResult};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::App;
use crate::admission::Permit;
use crate::error::ApiError;
use crate::trace::TraceId;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionBody {
    /// Required, except in a session, whose language it is.
    #[serde(default)]
    pub language: String,
    /// The program; may be left out beside a `command`.
    #[serde(default)]
    pub files: Vec<FileBody>,
    /// A shell command to run instead of the language's program.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: RequestLimits,
    /// What the program must print (see [`runner_host::judge`]).
    #[serde(default)]
    pub expected_output: Option<String>,
    #[serde(default)]
    pub compare: Option<CompareBody>,
    /// Run the program on a terminal of this size: only over the
    /// WebSocket endpoints, whose client types into it.
    #[serde(default)]
    pub pty: Option<runner_host::exec::WindowSize>,
    /// Files to send back with the result: paths or patterns under the
    /// working directory.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// What the program may reach of the network (`{"allow": [...]}`).
    #[serde(default)]
    pub network: Option<runner_host::net::NetworkRequest>,
}

/// The `compare` object: `{"mode": "float", "absolute_tolerance": 1e-6}`,
/// `{"mode": "checker", "checker": {"language": ..., "files": [...]}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareBody {
    /// Checked by [`to_compare`], so that an unknown mode is refused with
    /// the modes named.
    pub mode: String,
    #[serde(default)]
    pub absolute_tolerance: Option<f64>,
    #[serde(default)]
    pub relative_tolerance: Option<f64>,
    #[serde(default)]
    pub checker: Option<CheckerBody>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CompareMode {
    Exact,
    Lines,
    Tokens,
    Float,
    Checker,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckerBody {
    pub language: String,
    pub files: Vec<FileBody>,
}

/// The comparison a `compare` object asks for; its fields must fit its mode.
pub(crate) fn to_compare(body: Option<CompareBody>) -> Result<Option<Compare>, ApiError> {
    let Some(body) = body else {
        return Ok(None);
    };
    let invalid = |message: &str| {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            message,
        ))
    };
    let mode = match body.mode.as_str() {
        "exact" => CompareMode::Exact,
        "lines" => CompareMode::Lines,
        "tokens" => CompareMode::Tokens,
        "float" => CompareMode::Float,
        "checker" => CompareMode::Checker,
        other => {
            return invalid(&format!(
                "compare.mode {other:?} is not one of exact, lines, tokens, float, checker"
            ));
        }
    };
    let tolerance = body.absolute_tolerance.or(body.relative_tolerance);
    if mode != CompareMode::Float && tolerance.is_some() {
        return invalid("compare: tolerances are for mode \"float\" only");
    }
    if mode != CompareMode::Checker && body.checker.is_some() {
        return invalid("compare.checker is for mode \"checker\" only");
    }
    Ok(Some(match mode {
        CompareMode::Exact => Compare::Exact,
        CompareMode::Lines => Compare::Lines,
        CompareMode::Tokens => Compare::Tokens,
        CompareMode::Float => Compare::Float {
            absolute_tolerance: body.absolute_tolerance.unwrap_or(DEFAULT_TOLERANCE),
            relative_tolerance: body.relative_tolerance.unwrap_or(DEFAULT_TOLERANCE),
        },
        CompareMode::Checker => {
            let Some(checker) = body.checker else {
                return invalid(
                    "compare.checker is missing: mode \"checker\" needs the checker program",
                );
            };
            Compare::Checker(CheckerRequest {
                language: checker.language,
                files: decode_files(checker.files)?,
            })
        }
    }))
}

/// A file. The entry point is the file named as the language expects
/// (`main.py`, ...); if there is none, the first file is given that name, as
/// is a first file without one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBody {
    #[serde(default)]
    pub name: Option<String>,
    pub content: String,
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

/// One line of a stream.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    Started {
        trace_id: &'a str,
        language: &'a str,
    },
    Output {
        stage: Stage,
        stream: &'static str,
        data: &'a str,
    },
    Result {
        result: &'a ExecutionResult,
    },
}

impl Event<'_> {
    fn line(&self) -> Bytes {
        let mut line = serde_json::to_vec(self).expect("events serialize");
        line.push(b'\n');
        Bytes::from(line)
    }
}

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    body: Body,
) -> Result<Response, ApiError> {
    let (execution, permit) = app.accept(body, &trace_id).await?;
    let stopping = app.stopping();
    let language = execution.plan().language.name.clone();
    let guard = Unfinished::new(&app, &trace_id, &language);
    let result = app.runner.execute_until(execution, None, stopping).await;
    guard.finish();
    drop(permit);
    app.metrics.record(&result, false);
    Ok(axum::Json(result).into_response())
}

pub async fn stream(
    State(app): State<Arc<App>>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    body: Body,
) -> Result<Response, ApiError> {
    let (execution, permit) = app.accept(body, &trace_id).await?;
    let (lines, body_lines) = mpsc::channel::<Bytes>(64);
    tokio::spawn(run_streaming(app, execution, permit, lines));
    Ok(ndjson(body_lines))
}

/// A streaming response of the lines `lines` receives.
pub(crate) fn ndjson(lines: mpsc::Receiver<Bytes>) -> Response {
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(lines).map(Ok::<_, Infallible>),
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Writes `started`, the output events of `chunks` as they come, and the
/// `result` that `execution` ends with to `lines`. Returns the result and
/// whether the client went away.
pub(crate) async fn stream_events(
    lines: &mpsc::Sender<Bytes>,
    trace_id: &str,
    language: &str,
    mut chunks: mpsc::UnboundedReceiver<OutputChunk>,
    execution: impl std::future::Future<Output = ExecutionResult>,
) -> (ExecutionResult, bool) {
    let _ = lines
        .send(Event::Started { trace_id, language }.line())
        .await;
    let forward = async {
        let mut text = Utf8Streams::default();
        while let Some(chunk) = chunks.recv().await {
            let stream = if chunk.stderr { "stderr" } else { "stdout" };
            let data = text.push(chunk.stage, stream, &chunk.bytes);
            if !data.is_empty() {
                let event = Event::Output {
                    stage: chunk.stage,
                    stream,
                    data: &data,
                };
                let _ = lines.send(event.line()).await;
            }
        }
        for ((stage, stream), data) in text.finish() {
            let event = Event::Output {
                stage,
                stream,
                data: &data,
            };
            let _ = lines.send(event.line()).await;
        }
    };
    let (result, ()) = tokio::join!(execution, forward);
    let cancelled = lines.is_closed();
    let _ = lines.send(Event::Result { result: &result }.line()).await;
    (result, cancelled)
}

/// Runs an accepted request, writing its events to `lines` until the client
/// goes away (the receiver is dropped), which stops the execution.
async fn run_streaming(
    app: Arc<App>,
    execution: Execution,
    _permit: Permit,
    lines: mpsc::Sender<Bytes>,
) {
    let trace_id = execution.plan().trace_id.clone();
    let language = execution.plan().language.name.clone();
    let (chunks, chunk_rx) = mpsc::unbounded_channel::<OutputChunk>();
    let gone = lines.clone();
    let shutdown = app.stopping();
    let stop = async move {
        tokio::select! {
            reason = shutdown => reason,
            () = gone.closed() => "the client disconnected".to_string(),
        }
    };
    let execution = app.runner.execute_until(execution, Some(chunks), stop);
    let (result, cancelled) =
        stream_events(&lines, &trace_id, &language, chunk_rx, execution).await;
    if cancelled {
        tracing::info!(trace_id = %trace_id, "client disconnected; execution stopped and its VM destroyed");
    }
    app.metrics.record(&result, cancelled);
}

impl App {
    /// Reads and plans a request, then waits for capacity. Nothing has
    /// started when this fails.
    async fn accept(&self, body: Body, trace_id: &str) -> Result<(Execution, Permit), ApiError> {
        self.plan_and_admit(body, trace_id)
            .await
            .map_err(|e| e.traced(trace_id))
    }

    async fn plan_and_admit(
        &self,
        body: Body,
        trace_id: &str,
    ) -> Result<(Execution, Permit), ApiError> {
        let body: ExecutionBody = read_json(body, self.server.max_body_bytes).await?;
        let asked = to_request(body, trace_id)?;
        self.admit_request(asked).await
    }

    /// Plans what was `asked`, then waits for capacity for it.
    pub(crate) async fn admit_request(
        &self,
        asked: Asked,
    ) -> Result<(Execution, Permit), ApiError> {
        let execution = self
            .runner
            .plan_execution(asked.request, asked.expected_output, asked.compare)
            .map_err(ApiError::from_plan)?;
        let permit = self
            .admission
            .admit(execution.vm_memory_mib(), self.draining())
            .await
            .map_err(|rejection| {
                self.metrics.reject(rejection.reason());
                ApiError::from_rejection(rejection)
            })?;
        Ok((execution, permit))
    }
}

/// What a body asks: the execution, and what its output must be.
pub(crate) struct Asked {
    pub request: ExecutionRequest,
    pub expected_output: Option<Vec<u8>>,
    pub compare: Option<Compare>,
}

impl Asked {
    /// The execution, for a session: there, nothing is judged.
    pub(crate) fn in_session(self) -> Result<ExecutionRequest, ApiError> {
        if self.expected_output.is_some() || self.compare.is_some() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "expected_output and compare judge one-shot executions (POST /v1/executions) \
                 and submissions; an execution in a session is not judged",
            ));
        }
        Ok(self.request)
    }
}

/// What a body asks: files decoded from their transport encoding;
/// everything else is checked by the plan.
pub(crate) fn to_request(body: ExecutionBody, trace_id: &str) -> Result<Asked, ApiError> {
    if body.pty.is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "pty needs a client that types into the terminal: use the WebSocket endpoint \
             (GET /v1/executions/ws, or /v1/sessions/{id}/executions/ws)",
        ));
    }
    let request = ExecutionRequest {
        language: body.language,
        files: decode_files(body.files)?,
        stdin: body.stdin.into_bytes(),
        args: body.args,
        env: body.env,
        limits: body.limits,
        trace_id: Some(trace_id.to_string()),
        command: body.command,
        interactive: None,
        outputs: body.outputs,
        network: body.network,
    };
    Ok(Asked {
        request,
        expected_output: body.expected_output.map(String::into_bytes),
        compare: to_compare(body.compare)?,
    })
}

/// Files decoded from their transport encoding.
pub(crate) fn decode_files(bodies: Vec<FileBody>) -> Result<Vec<SourceFile>, ApiError> {
    let mut files = Vec::with_capacity(bodies.len());
    for (i, file) in bodies.into_iter().enumerate() {
        let content = match file.encoding {
            Encoding::Utf8 => file.content.into_bytes(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(file.content.as_bytes())
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_request",
                        format!("files[{i}] is not valid base64: {e}"),
                    )
                })?,
        };
        files.push(SourceFile {
            name: file.name,
            content,
        });
    }
    Ok(files)
}

/// Reads a body of at most `limit` bytes and parses it as JSON.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        )
    })?;
    parse(&bytes)
}

/// The body as a `T`, or why not, in terms a client can fix.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bad = |code, message: String| ApiError::new(StatusCode::BAD_REQUEST, code, message);
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(bad(
            "invalid_utf8",
            format!(
                "the body is not UTF-8: invalid byte at offset {}",
                e.valid_up_to()
            ),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => bad(
            "invalid_request",
            format!("the body does not fit the request schema: {e}"),
        ),
        _ => bad("malformed_json", format!("the body is not valid JSON: {e}")),
    })
}

/// Logs and counts an execution whose request went away before its result
/// (the client disconnected and the server dropped the handler).
struct Unfinished<'a> {
    app: &'a App,
    trace_id: &'a str,
    language: &'a str,
    finished: bool,
}

impl<'a> Unfinished<'a> {
    fn new(app: &'a App, trace_id: &'a str, language: &'a str) -> Self {
        Self {
            app,
            trace_id,
            language,
            finished: false,
        }
    }

    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.app.metrics.cancelled(self.language);
            tracing::info!(trace_id = %self.trace_id, "client disconnected; execution stopped and its VM destroyed");
        }
    }
}

/// Turns output chunks into text without splitting a UTF-8 character that
/// spans two chunks; bytes that are not UTF-8 become U+FFFD.
#[derive(Default)]
struct Utf8Streams {
    pending: HashMap<(Stage, &'static str), Vec<u8>>,
}

impl Utf8Streams {
    fn push(&mut self, stage: Stage, stream: &'static str, bytes: &[u8]) -> String {
        let buffer = self.pending.entry((stage, stream)).or_default();
        buffer.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(buffer) {
                Ok(valid) => {
                    text.push_str(valid);
                    buffer.clear();
                    return text;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&buffer[..valid]).expect("checked"));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more.
                        None => {
                            buffer.drain(..valid);
                            return text;
                        }
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            buffer.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end, lossily.
    fn finish(self) -> Vec<((Stage, &'static str), String)> {
        self.pending
            .into_iter()
            .filter(|(_, rest)| !rest.is_empty())
            .map(|(key, rest)| (key, String::from_utf8_lossy(&rest).into_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_stay_whole() {
        let mut streams = Utf8Streams::default();
        let snowman = "☃".as_bytes();
        let run = Stage::Run;
        assert_eq!(streams.push(run, "stdout", &[b'a', snowman[0]]), "a");
        assert_eq!(streams.push(run, "stderr", b"e"), "e");
        assert_eq!(streams.push(Stage::Compile, "stdout", &snowman[..1]), "");
        assert_eq!(streams.push(run, "stdout", &snowman[1..]), "☃");
        assert_eq!(streams.push(run, "stdout", b"\xffb"), "\u{fffd}b");
        assert_eq!(streams.push(run, "stdout", &snowman[..2]), "");
        let mut rest = streams.finish();
        rest.sort();
        assert_eq!(
            rest,
            vec![
                ((Stage::Compile, "stdout"), "\u{fffd}".into()),
                ((run, "stdout"), "\u{fffd}".into())
            ]
        );
    }

    #[test]
    fn comparisons_take_the_fields_of_their_mode() {
        let compare = |json: &str| {
            let body: Option<CompareBody> =
                serde_json::from_str(json).map_err(|e| e.to_string())?;
            to_compare(body).map_err(|e| e.message)
        };
        assert_eq!(compare(r#"{"mode": "exact"}"#), Ok(Some(Compare::Exact)));
        assert_eq!(
            compare(r#"{"mode": "float", "absolute_tolerance": 0.01}"#),
            Ok(Some(Compare::Float {
                absolute_tolerance: 0.01,
                relative_tolerance: DEFAULT_TOLERANCE
            }))
        );
        assert!(
            compare(r#"{"mode": "fuzzy"}"#)
                .unwrap_err()
                .contains("fuzzy")
        );
        assert!(compare(r#"{"mode": "lines", "tolerance": 1}"#).is_err());
        assert!(
            compare(r#"{"mode": "tokens", "absolute_tolerance": 1}"#)
                .unwrap_err()
                .contains("float")
        );
        assert!(
            compare(r#"{"mode": "checker"}"#)
                .unwrap_err()
                .contains("checker is missing")
        );
        let checker = compare(
            r#"{"mode": "checker", "checker": {"language": "py", "files": [{"content": "aW1wb3J0IHN5cw==", "encoding": "base64"}]}}"#,
        )
        .unwrap()
        .unwrap();
        let Compare::Checker(checker) = checker else {
            panic!("{checker:?}")
        };
        assert_eq!(checker.language, "py");
        assert_eq!(checker.files[0].content, b"import sys");
        assert_eq!(compare("null"), Ok(None));
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let code = |body: &[u8]| parse::<ExecutionBody>(body).unwrap_err().code;
        assert_eq!(code(b"{"), "malformed_json");
        assert_eq!(code(b"\xff{}"), "invalid_utf8");
        assert_eq!(
            code(br#"{"language":"python","files":[],"colour":1}"#),
            "invalid_request"
        );
        assert_eq!(code(br#"{"language":3,"files":[]}"#), "invalid_request");
        assert!(
            parse::<ExecutionBody>(br#"{"language":"python","files":[{"content":"print(1)"}]}"#)
                .is_ok()
        );
    }
}
