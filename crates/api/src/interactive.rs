//! Interactive executions over a WebSocket: a program that takes input
//! while it runs, on pipes or on a terminal.
//!
//! `GET /v1/executions/ws` (a one-shot execution) and
//! `GET /v1/sessions/{id}/executions/ws` (one in a session) upgrade to a
//! WebSocket. The client's first message is the execution's request, as
//! `POST /v1/executions` takes it, with `"pty": {"rows": R, "cols": C}` to
//! run the program on a terminal of that size (stdout and stderr are then
//! one stream, `stdout`). The server sends the events of the streaming
//! endpoints (`started`, `output`, `result`), one per text message, and
//! closes after `result`. Meanwhile the client sends:
//!
//! - binary messages: bytes for the program's stdin (after the request's
//!   `stdin`, if it has one);
//! - `{"type": "stdin", "data": "text"}`: the same, as text;
//! - `{"type": "stdin_end"}`: the end of its input (Ctrl-D on a terminal);
//! - `{"type": "signal", "signal": "interrupt" | "terminate" | "kill"}`;
//! - `{"type": "resize", "rows": R, "cols": C}`: the terminal's new size.
//!
//! A message that is none of these gets an `error` event and is otherwise
//! ignored. A request that is refused gets an `error` event (the body an
//! HTTP error would have, with its `status`) and the socket closes. A
//! one-shot execution whose client goes away is stopped; one in a session
//! runs on to its end with its input ended, as a streamed one does.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use runner_host::ExecutionResult;
use runner_host::bodies::OneShot;
use runner_host::exec::{Control, Interactive, OutputChunk, SignalKind, WindowSize};
use runner_wire::{ErrorCode, ExecutionBody};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::App;
use crate::auth::Owner;
use crate::error::ApiError;
use crate::executions::{stream_events, to_request, to_session_request};
use crate::trace::TraceId;

/// What a client sends after its request.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Stdin { data: String },
    StdinEnd,
    Signal { signal: SignalKind },
    Resize { rows: u16, cols: u16 },
}

/// `GET /v1/executions/ws`.
pub async fn execution(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let limit = app.server.max_body_bytes;
    let id = trace_id.clone();
    accept(upgrade, limit, &id, move |socket| {
        one_shot(app, owner, trace_id, socket)
    })
}

/// `GET /v1/sessions/{id}/executions/ws`.
pub async fn session_execution(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let limit = app.server.max_body_bytes;
    let trace = trace_id.clone();
    accept(upgrade, limit, &trace, move |socket| {
        in_session(app, owner, id, trace_id, socket)
    })
}

/// Completes the handshake and hands the socket to `serve`; a request that
/// is no handshake gets a JSON error, like every other error of the API.
fn accept<F, Fut>(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    max_message_bytes: usize,
    trace_id: &str,
    serve: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match upgrade {
        Ok(upgrade) => upgrade
            .max_message_size(max_message_bytes)
            .on_upgrade(serve),
        Err(e) => ApiError::not_a_websocket(e)
            .traced(trace_id)
            .into_response(),
    }
}

async fn one_shot(app: Arc<App>, owner: Owner, trace_id: String, mut socket: WebSocket) {
    let accepted = async {
        let body = first_request(&mut socket).await?;
        let request = interactive_request(body, &trace_id, &owner)?;
        app.admit_request(request).await
    }
    .await;
    let (execution, permit) = match accepted {
        Ok(accepted) => accepted,
        Err(error) => return refuse(socket, error.traced(&trace_id)).await,
    };
    let (gone, gone_rx) = watch::channel(false);
    let stop = {
        let shutdown = app.stopping();
        let mut gone_rx = gone_rx;
        async move {
            tokio::select! {
                reason = shutdown => reason,
                _ = gone_rx.wait_for(|gone| *gone) => "the client disconnected".to_string(),
            }
        }
    };
    let runner = app.clone();
    let plan = execution.plan();
    let named = (plan.trace_id.clone(), plan.language.name.clone());
    converse(&app, socket, named, gone, move |output, input| async move {
        let result = runner
            .runner
            .execute_interactive(execution, Some(output), Some(input), stop)
            .await;
        drop(permit);
        result
    })
    .await;
}

async fn in_session(
    app: Arc<App>,
    owner: Owner,
    id: String,
    trace_id: String,
    mut socket: WebSocket,
) {
    let accepted = async {
        let body = first_request(&mut socket).await?;
        let (body, pty) = take_pty(body);
        let mut request = to_session_request(body, &trace_id, &owner)?;
        request.interactive = Some(Interactive { pty });
        let plan = app
            .sessions
            .plan_execution(&owner.name, &id, request)
            .map_err(ApiError::from_session)?;
        let turn = crate::sessions::turn(&app, &owner, &id).await?;
        Ok::<_, ApiError>((plan, turn))
    }
    .await;
    let (plan, turn) = match accepted {
        Ok(accepted) => accepted,
        Err(error) => return refuse(socket, error.traced(&trace_id)).await,
    };
    // In a session the execution runs to its end whoever goes away.
    let (gone, _) = watch::channel(false);
    let named = (plan.trace_id.clone(), plan.language.name.clone());
    converse(&app, socket, named, gone, move |output, input| {
        turn.execute_interactive(plan, Some(output), Some(input))
    })
    .await;
}

/// The request, from the client's first message.
async fn first_request(socket: &mut WebSocket) -> Result<ExecutionBody, ApiError> {
    loop {
        let text = match socket.recv().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => text.into(),
                Err(_) => return Err(invalid("the request is not UTF-8 JSON")),
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                return Err(invalid("the client left before sending its request"));
            }
        };
        return serde_json::from_str(text.as_str()).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the first message must be the execution's request: {e}"),
            )
        });
    }
}

/// The request `body` asks for, interactive, on a terminal if it says.
fn interactive_request(
    body: ExecutionBody,
    trace_id: &str,
    owner: &Owner,
) -> Result<OneShot, ApiError> {
    let (body, pty) = take_pty(body);
    let mut asked = to_request(body, trace_id, owner)?;
    asked.request.interactive = Some(Interactive { pty });
    Ok(asked)
}

/// The body without its terminal, and the terminal: over a WebSocket its
/// client types into it.
fn take_pty(mut body: ExecutionBody) -> (ExecutionBody, Option<WindowSize>) {
    let pty = body.pty.take();
    (body, pty)
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(ErrorCode::MisshapenRequest, message)
}

/// Sends `error` as an `error` event, and closes.
async fn refuse(mut socket: WebSocket, error: ApiError) {
    let _ = socket.send(error_event(&error)).await;
    let _ = socket.send(Message::Close(None)).await;
}

fn error_event(error: &ApiError) -> Message {
    let mut event = serde_json::to_value(error.body()).expect("errors serialize");
    event["type"] = "error".into();
    event["status"] = error.status().as_u16().into();
    Message::Text(event.to_string().into())
}

/// Runs the execution `execute` starts (its trace id and language
/// `named`) while passing the client's messages to it as input and its
/// events to the client; `gone` is set when the client leaves.
async fn converse<F, Fut>(
    app: &App,
    mut socket: WebSocket,
    named: (String, String),
    gone: watch::Sender<bool>,
    execute: F,
) where
    F: FnOnce(mpsc::UnboundedSender<OutputChunk>, mpsc::UnboundedReceiver<Control>) -> Fut,
    Fut: std::future::Future<Output = ExecutionResult> + Send + 'static,
{
    let (trace_id, language) = named;
    let (lines, mut lines_rx) = mpsc::channel::<Bytes>(64);
    let (input, input_rx) = mpsc::unbounded_channel::<Control>();
    let (chunks, chunk_rx) = mpsc::unbounded_channel::<OutputChunk>();
    let execution = execute(chunks, input_rx);
    let events = tokio::spawn(async move {
        stream_events(&lines, &trace_id, &language, chunk_rx, execution)
            .await
            .0
    });
    let mut input = Some(input);
    let mut here = true;
    loop {
        tokio::select! {
            line = lines_rx.recv() => match line {
                Some(line) if here => {
                    let text = String::from_utf8_lossy(line.trim_ascii_end()).into_owned();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        here = false;
                    }
                }
                Some(_) => {}
                None => break,
            },
            message = socket.recv(), if here => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    send(&input, Control::Input { data: bytes.to_vec() });
                }
                Some(Ok(Message::Text(text))) => match control(text.as_str()) {
                    Ok(control) => {
                        let ends = control == Control::InputEnd;
                        send(&input, control);
                        if ends {
                            input = None;
                        }
                    }
                    Err(error) => {
                        let _ = socket.send(error_event(&error)).await;
                    }
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The input ends with its channel.
                    here = false;
                    input = None;
                    gone.send_replace(true);
                }
            },
        }
    }
    let result = events.await.expect("streaming does not panic");
    app.metrics.record(&result, !here);
    if here {
        let _ = socket.send(Message::Close(None)).await;
    }
}

fn send(input: &Option<mpsc::UnboundedSender<Control>>, control: Control) {
    if let Some(input) = input {
        let _ = input.send(control);
    }
}

/// What a text message after the request asks.
fn control(text: &str) -> Result<Control, ApiError> {
    let message: ClientMessage = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "not a message this endpoint takes ({e}): send stdin as binary messages or \
                 {{\"type\": \"stdin\", \"data\": ...}}, or one of stdin_end, signal, resize"
            ),
        )
    })?;
    Ok(match message {
        ClientMessage::Stdin { data } => Control::Input {
            data: data.into_bytes(),
        },
        ClientMessage::StdinEnd => Control::InputEnd,
        ClientMessage::Signal { signal } => Control::Signal { signal },
        ClientMessage::Resize { rows, cols } => Control::Resize {
            size: WindowSize { rows, cols },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_become_controls() {
        assert_eq!(
            control(r#"{"type":"stdin","data":"1+1\n"}"#).unwrap(),
            Control::Input {
                data: b"1+1\n".to_vec()
            }
        );
        assert_eq!(
            control(r#"{"type":"stdin_end"}"#).unwrap(),
            Control::InputEnd
        );
        assert_eq!(
            control(r#"{"type":"signal","signal":"interrupt"}"#).unwrap(),
            Control::Signal {
                signal: SignalKind::Interrupt
            }
        );
        assert_eq!(
            control(r#"{"type":"resize","rows":40,"cols":120}"#).unwrap(),
            Control::Resize {
                size: WindowSize {
                    rows: 40,
                    cols: 120
                }
            }
        );
        for bad in [
            r#"{"type":"signal","signal":"hup"}"#,
            r#"{"type":"paste"}"#,
            "not json",
        ] {
            let error = control(bad).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{bad}");
        }
    }
}
