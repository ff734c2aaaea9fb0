//! `/v1/sessions`: one VM that serves many executions, with its files.
//!
//! - `POST /v1/sessions` starts one (201, its description);
//! - `GET /v1/sessions`, `GET` and `DELETE /v1/sessions/{id}`;
//! - `POST /v1/sessions/{id}/executions` (and `/stream`) runs code or a
//!   command in it, with the request of `POST /v1/executions` (its
//!   `language` may be left out);
//! - `PUT`, `GET` and `DELETE /v1/sessions/{id}/files/{path}` write, read
//!   and remove a file of its working directory (the raw body), and
//!   `GET /v1/sessions/{id}/files?path=DIR` lists a directory.
//!
//! - `POST /v1/sessions/{id}/pause` saves its VM to disk and frees it;
//!   `POST /v1/sessions/{id}/resume` brings it back. A request for a
//!   paused session (an execution, a file) resumes it first, so that a
//!   session paused for being idle goes on where it was.
//!
//! A session takes one request at a time: a second one while the first
//! runs gets 409 `session_busy` at once. A running session holds its VM's
//! place in the capacity rule, as an execution does; when there is none, a
//! new session gets 429 `no_capacity` with `Retry-After` rather than
//! waiting in the queue.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use runner_host::session::{SessionError, SessionInfo, SessionState, Turn};
use runner_wire::{ErrorCode, ExecutionBody, FileListing, SessionBody, SessionList};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::App;
use crate::auth::Owner;
use crate::error::ApiError;
use crate::executions::{ndjson, read_json, stream_events, to_session_request};
use crate::trace::TraceId;

fn session_error(error: SessionError) -> ApiError {
    ApiError::from_session(error)
}

/// The turn of session `id`, resumed first if it is paused.
pub(crate) async fn turn(app: &App, owner: &Owner, id: &str) -> Result<Turn, ApiError> {
    match app.sessions.turn(&owner.name, id) {
        Err(SessionError::Paused(_)) => {
            resume_session(app, owner, id).await?;
            app.sessions.turn(&owner.name, id).map_err(session_error)
        }
        other => other.map_err(session_error),
    }
}

/// Resumes paused session `id` in a place of the capacity, as a new
/// session would take one.
async fn resume_session(app: &App, owner: &Owner, id: &str) -> Result<SessionInfo, ApiError> {
    let info = app.sessions.get(&owner.name, id).map_err(session_error)?;
    if info.state != SessionState::Paused {
        return Ok(info);
    }
    let slot = app
        .sessions
        .reserve(&owner.name, owner.max_sessions)
        .map_err(session_error)?;
    let permit = app
        .admission
        .admit_now(info.vm_memory_mib)
        .map_err(|rejection| {
            app.metrics.reject(rejection.reason());
            ApiError::from_rejection(rejection)
        })?;
    let begun = std::time::Instant::now();
    let info = app
        .sessions
        .resume(&owner.name, id, Box::new((slot, permit)))
        .await
        .map_err(session_error)?;
    app.metrics.resumed(begun.elapsed().as_secs_f64());
    Ok(info)
}

pub async fn pause(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let before = app.sessions.get(&owner.name, &id).map_err(session_error)?;
    let info = app
        .sessions
        .pause(&owner.name, &id)
        .await
        .map_err(|e| session_error(e).traced(&trace_id))?;
    if let (SessionState::Running, Some(paused)) = (before.state, &info.paused) {
        app.metrics.paused(paused.pause_time_ms / 1e3);
    }
    Ok(Json(info).into_response())
}

pub async fn resume(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let info = resume_session(&app, &owner, &id)
        .await
        .map_err(|e| e.traced(&trace_id))?;
    Ok(Json(info).into_response())
}

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    body: Body,
) -> Result<Response, ApiError> {
    if app.is_draining() {
        return Err(ApiError::from_rejection(
            crate::admission::Rejection::ShuttingDown,
        ));
    }
    let body: SessionBody = read_json(body, app.server.max_body_bytes).await?;
    let plan = app
        .sessions
        .plan(body)
        .map_err(|e| ApiError::from_plan(e).traced(&trace_id))?;
    let slot = app
        .sessions
        .reserve(&owner.name, owner.max_sessions)
        .map_err(|e| session_error(e).traced(&trace_id))?;
    let permit = app
        .admission
        .admit_now(plan.vm_memory_mib)
        .map_err(|rejection| {
            app.metrics.reject(rejection.reason());
            ApiError::from_rejection(rejection).traced(&trace_id)
        })?;
    let info = app
        .sessions
        .open(
            &owner.name,
            owner.max_paused,
            plan,
            Box::new((slot, permit)),
        )
        .await
        .map_err(|e| session_error(e).traced(&trace_id))?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
) -> Json<SessionList> {
    Json(SessionList {
        sessions: app.sessions.list(&owner.name),
    })
}

pub async fn get(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let info = app.sessions.get(&owner.name, &id).map_err(session_error)?;
    Ok(Json(info).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.sessions
        .delete(&owner.name, &id)
        .await
        .map_err(session_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Plans an execution in session `id` and takes the session's turn.
async fn accept(
    app: &App,
    owner: &Owner,
    id: &str,
    body: Body,
    trace_id: &str,
) -> Result<(runner_host::Plan, runner_host::session::Turn), ApiError> {
    let body: ExecutionBody = read_json(body, app.server.max_body_bytes).await?;
    let request = to_session_request(body, trace_id, owner)?;
    let plan = app
        .sessions
        .plan_execution(&owner.name, id, request)
        .map_err(session_error)?;
    let turn = turn(app, owner, id).await?;
    Ok((plan, turn))
}

pub async fn execute(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (plan, turn) = accept(&app, &owner, &id, body, &trace_id)
        .await
        .map_err(|e| e.traced(&trace_id))?;
    let result = turn.execute(plan, None).await;
    app.metrics.record(&result, false);
    Ok(Json(result).into_response())
}

pub async fn execute_stream(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (plan, turn) = accept(&app, &owner, &id, body, &trace_id)
        .await
        .map_err(|e| e.traced(&trace_id))?;
    let (lines, body_lines) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let language = plan.language.name.clone();
        let (chunks, chunk_rx) = mpsc::unbounded_channel();
        // In a session, an execution whose client goes away runs to its
        // end: what it changes stays in the session either way.
        let execution = turn.execute(plan, Some(chunks));
        let (result, _) = stream_events(&lines, &trace_id, &language, chunk_rx, execution).await;
        app.metrics.record(&result, false);
    });
    Ok(ndjson(body_lines))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// Written with mode 0755 instead of 0644.
    #[serde(default)]
    pub executable: bool,
}

pub async fn put_file(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Path((id, path)): Path<(String, String)>,
    query: Result<Query<PutQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(ApiError::malformed_query)?;
    let info = app.sessions.get(&owner.name, &id).map_err(session_error)?;
    let limit = info.disk_mib << 20;
    let content = axum::body::to_bytes(body, limit as usize)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::FileTooLarge,
                format!(
                    "the file is over the session's disk limit of {} MiB (disk_mib)",
                    info.disk_mib
                ),
            )
        })?;
    let turn = turn(&app, &owner, &id).await?;
    turn.write(path, content.to_vec(), query.executable)
        .await
        .map_err(session_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn get_file(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let info = app.sessions.get(&owner.name, &id).map_err(session_error)?;
    let turn = turn(&app, &owner, &id).await?;
    let content = turn
        .read(path, info.disk_mib << 20)
        .await
        .map_err(session_error)?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        content,
    )
        .into_response())
}

pub async fn delete_file(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let turn = turn(&app, &owner, &id).await?;
    turn.remove(path).await.map_err(session_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A directory of the working directory; the working directory itself
    /// when left out.
    #[serde(default)]
    pub path: String,
}

pub async fn list_files(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(ApiError::malformed_query)?;
    let turn = turn(&app, &owner, &id).await?;
    let entries = turn.list(query.path.clone()).await.map_err(session_error)?;
    let listing = FileListing {
        path: query.path,
        entries,
    };
    Ok(Json(listing).into_response())
}

/// Sessions by state, for the metrics.
pub(crate) fn by_state(app: &App) -> Vec<(&'static str, usize)> {
    let sessions = app.sessions.all();
    let count = |state: SessionState| sessions.iter().filter(|s| s.state == state).count();
    vec![
        ("running", count(SessionState::Running)),
        ("paused", count(SessionState::Paused)),
        ("ended", count(SessionState::Ended)),
        ("failed", count(SessionState::Failed)),
    ]
}
