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

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use runner_host::bodies::OneShot;
use runner_host::exec::{OutputChunk, Stage};
use runner_host::{Execution, ExecutionResult};
use runner_wire::{ErrorCode, ExecutionBody, ExecutionEvent, Stream};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::App;
use crate::admission::Permit;
use crate::auth::Owner;
use crate::error::ApiError;
use crate::trace::TraceId;

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    body: Body,
) -> Result<Response, ApiError> {
    let (execution, permit) = app.accept(body, &trace_id, &owner).await?;
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
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    body: Body,
) -> Result<Response, ApiError> {
    let (execution, permit) = app.accept(body, &trace_id, &owner).await?;
    let (lines, body_lines) = mpsc::channel::<Bytes>(64);
    tokio::spawn(run_streaming(app, execution, permit, lines));
    Ok(ndjson(body_lines))
}

/// One line of a stream: `value` as JSON, then a newline.
pub(crate) fn line(value: &impl Serialize) -> Bytes {
    let mut line = serde_json::to_vec(value).expect("events serialize");
    line.push(b'\n');
    Bytes::from(line)
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
    let started = ExecutionEvent::Started {
        trace_id: trace_id.to_string(),
        language: language.to_string(),
    };
    let _ = lines.send(line(&started)).await;
    let forward = async {
        let mut text = Utf8Streams::default();
        while let Some(chunk) = chunks.recv().await {
            let stream = if chunk.stderr {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let data = text.push(chunk.stage, stream, &chunk.bytes);
            if !data.is_empty() {
                let event = ExecutionEvent::Output {
                    stage: chunk.stage,
                    stream,
                    data,
                };
                let _ = lines.send(line(&event)).await;
            }
        }
        for ((stage, stream), data) in text.finish() {
            let event = ExecutionEvent::Output {
                stage,
                stream,
                data,
            };
            let _ = lines.send(line(&event)).await;
        }
    };
    let (result, ()) = tokio::join!(execution, forward);
    let cancelled = lines.is_closed();
    let ended = ExecutionEvent::Result {
        result: Box::new(result),
    };
    let _ = lines.send(line(&ended)).await;
    let ExecutionEvent::Result { result } = ended else {
        unreachable!("made as a result")
    };
    (*result, cancelled)
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
    async fn accept(
        &self,
        body: Body,
        trace_id: &str,
        owner: &Owner,
    ) -> Result<(Execution, Permit), ApiError> {
        self.plan_and_admit(body, trace_id, owner)
            .await
            .map_err(|e| e.traced(trace_id))
    }

    async fn plan_and_admit(
        &self,
        body: Body,
        trace_id: &str,
        owner: &Owner,
    ) -> Result<(Execution, Permit), ApiError> {
        let body: ExecutionBody = read_json(body, self.server.max_body_bytes).await?;
        let asked = to_request(body, trace_id, owner)?;
        self.admit_request(asked).await
    }

    /// Plans what was `asked`, then waits for capacity for it.
    pub(crate) async fn admit_request(
        &self,
        asked: OneShot,
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

/// What a one-shot execution's body asks of `owner`'s.
pub(crate) fn to_request(
    body: ExecutionBody,
    trace_id: &str,
    owner: &Owner,
) -> Result<OneShot, ApiError> {
    refuse_pty(&body)?;
    runner_host::bodies::execution(body, Some(trace_id.to_string()), &owner.name)
        .map_err(ApiError::from_plan)
}

/// What an execution's body in a session asks: the same, judged by
/// nothing.
pub(crate) fn to_session_request(
    body: ExecutionBody,
    trace_id: &str,
    owner: &Owner,
) -> Result<runner_host::ExecutionRequest, ApiError> {
    refuse_pty(&body)?;
    runner_host::bodies::session_execution(body, Some(trace_id.to_string()), &owner.name)
        .map_err(ApiError::from_plan)
}

/// A terminal goes only with a client that types into it: the WebSocket
/// endpoints take `pty` out of the body first. Refused here, rather than
/// by [`runner_host::bodies`], to name the endpoints that take one.
fn refuse_pty(body: &ExecutionBody) -> Result<(), ApiError> {
    if body.pty.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "pty needs a client that types into the terminal: use the WebSocket endpoint \
             (GET /v1/executions/ws, or /v1/sessions/{id}/executions/ws)",
        ));
    }
    Ok(())
}

/// Reads a body of at most `limit` bytes and parses it as JSON.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("the request body is over the limit of {limit} bytes"),
        )
    })?;
    parse(&bytes)
}

/// The body as a `T`, or why not, in terms a client can fix.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bad = ApiError::new;
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(bad(
            ErrorCode::InvalidUtf8,
            format!(
                "the body is not UTF-8: invalid byte at offset {}",
                e.valid_up_to()
            ),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => bad(
            ErrorCode::MisshapenRequest,
            format!("the body does not fit the request schema: {e}"),
        ),
        _ => bad(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        ),
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
    pending: HashMap<(Stage, Stream), Vec<u8>>,
}

impl Utf8Streams {
    fn push(&mut self, stage: Stage, stream: Stream, bytes: &[u8]) -> String {
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
    fn finish(self) -> Vec<((Stage, Stream), String)> {
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
        let (run, out) = (Stage::Run, Stream::Stdout);
        assert_eq!(streams.push(run, out, &[b'a', snowman[0]]), "a");
        assert_eq!(streams.push(run, Stream::Stderr, b"e"), "e");
        assert_eq!(streams.push(Stage::Compile, out, &snowman[..1]), "");
        assert_eq!(streams.push(run, out, &snowman[1..]), "☃");
        assert_eq!(streams.push(run, out, b"\xffb"), "\u{fffd}b");
        assert_eq!(streams.push(run, out, &snowman[..2]), "");
        let mut rest = streams.finish();
        rest.sort();
        assert_eq!(
            rest,
            vec![
                ((Stage::Compile, out), "\u{fffd}".into()),
                ((run, out), "\u{fffd}".into())
            ]
        );
    }

    #[test]
    fn a_session_execution_is_not_judged_and_has_no_terminal_over_http() {
        let body = |json: &str| serde_json::from_str::<ExecutionBody>(json).unwrap();
        let judged = body(r#"{"files": [{"content": "1"}], "expected_output": "1"}"#);
        let e = to_session_request(judged, "t", &Owner::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("not judged"), "{}", e.message);
        let on_terminal = body(r#"{"files": [{"content": "1"}], "pty": {"rows": 24, "cols": 80}}"#);
        for e in [
            to_session_request(on_terminal.clone(), "t", &Owner::default()).unwrap_err(),
            to_request(on_terminal, "t", &Owner::default())
                .map(drop)
                .unwrap_err(),
        ] {
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.message.contains("/executions/ws"), "{}", e.message);
        }
        let plain = body(r#"{"files": [{"content": "1"}], "stdin": "x"}"#);
        assert_eq!(
            to_session_request(plain, "t", &Owner::default())
                .unwrap()
                .stdin,
            b"x"
        );
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let code = |body: &[u8]| parse::<ExecutionBody>(body).unwrap_err().code;
        assert_eq!(code(b"{"), ErrorCode::MalformedJson);
        assert_eq!(code(b"\xff{}"), ErrorCode::InvalidUtf8);
        assert_eq!(
            code(br#"{"language":"python","files":[],"colour":1}"#),
            ErrorCode::MisshapenRequest
        );
        assert_eq!(
            code(br#"{"language":3,"files":[]}"#),
            ErrorCode::MisshapenRequest
        );
        assert!(
            parse::<ExecutionBody>(br#"{"language":"python","files":[{"content":"print(1)"}]}"#)
                .is_ok()
        );
    }
}
