//! `runner serve`: the HTTP API of Runner Codes.
//!
//! It takes the engine's configuration ([`runner_host::Config`]) and its
//! own ([`ServerConfig`]), both from the one file every command reads.
//!
//! - [`config`]: the server's own settings;
//! - `auth`: API keys, and the owner of each request;
//! - [`admission`]: how many VMs run at once and the queue before them;
//! - `executions`: the execution endpoints, plain and streaming;
//! - `interactive`: executions over a WebSocket, with input while they run;
//! - `submissions`: judge submissions, a program and its tests;
//! - `sessions`: sessions, one VM for many executions, and their files;
//! - `metrics`: Prometheus metrics;
//! - `trace`: trace ids from `traceparent` or `X-Request-Id`.
//!
//! The routes are listed in [`router`] and described in `openapi.json`,
//! which the server also serves.

pub mod admission;
pub mod auth;
pub mod config;
mod error;
mod executions;
mod interactive;
mod mcp;
mod metrics;
mod playground;
mod sessions;
mod submissions;
mod trace;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use runner_host::image::Progress;
use runner_host::session::Sessions;
use runner_host::{Config, Runner, error_chain};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use admission::Capacity;
pub use config::{ApiKey, ServerConfig, ServerConfigError, Switch};

use admission::Admission;
use error::ApiError;
use metrics::Metrics;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Capacity(String),
    #[error(transparent)]
    Runner(#[from] runner_host::RunnerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// What the handlers share.
pub struct App {
    /// The engine's settings.
    engine: Config,
    /// The server's own.
    server: ServerConfig,
    /// The names of the languages served, worked out once from `config`.
    served: Vec<String>,
    runner: Arc<Runner>,
    sessions: Arc<Sessions>,
    keys: auth::Keys,
    admission: Admission,
    metrics: Metrics,
    /// Per language, what the start-up image build is doing, if anything.
    preparing: Mutex<BTreeMap<String, String>>,
    backend_error: Mutex<Option<String>>,
    /// Cancelled on SIGTERM: no new work.
    draining: CancellationToken,
    /// Cancelled when the shutdown deadline passes: running executions stop.
    killing: CancellationToken,
    /// Executions stopped at the shutdown deadline.
    killed: Arc<AtomicUsize>,
}

impl App {
    pub fn new(engine: Config, server: ServerConfig) -> Result<Self, ServeError> {
        let capacity = Capacity::of_host(engine.reserved_memory_mib, engine.machine_vms())
            .map_err(ServeError::Capacity)?
            .with_pools(engine.pool.memory_mib, engine.pool.max_size > 0);
        let runner = Arc::new(Runner::new(&engine)?);
        let admission = Admission::new(
            capacity,
            server.queue_size,
            Duration::from_millis(server.queue_timeout_ms),
        );
        let served: Vec<String> = runner
            .enabled_languages()
            .into_iter()
            .map(|l| l.name.clone())
            .collect();
        Ok(Self {
            metrics: Metrics::new(&served, capacity.max_vms),
            served,
            sessions: runner.sessions(engine.sessions.clone()),
            keys: auth::Keys::new(&server, &engine.sessions),
            engine,
            server,
            runner,
            admission,
            preparing: Mutex::default(),
            backend_error: Mutex::default(),
            draining: CancellationToken::new(),
            killing: CancellationToken::new(),
            killed: Arc::default(),
        })
    }

    pub fn capacity(&self) -> &Capacity {
        self.admission.capacity()
    }

    /// The languages served, by their names.
    fn languages(&self) -> &[String] {
        &self.served
    }

    /// Completes, with the reason, when running executions must stop.
    fn stopping(&self) -> impl Future<Output = String> + Send + 'static {
        let killing = self.killing.clone();
        let deadline = self.server.shutdown_timeout_ms;
        let killed = self.killed.clone();
        async move {
            killing.cancelled().await;
            killed.fetch_add(1, Ordering::Relaxed);
            format!(
                "the server shut down and its {deadline} ms deadline for running executions passed"
            )
        }
    }

    fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Completes when the server stops taking work.
    fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        self.draining.clone().cancelled_owned()
    }

    /// Builds the images of every language served, then chooses the
    /// backend, recording progress for `/readyz`.
    async fn prepare(self: Arc<Self>) {
        for name in self.languages() {
            let language = self.runner.languages().get(name).expect("served").clone();
            if self.runner.images().rootfs_manifest(&language).is_some()
                && self
                    .runner
                    .images()
                    .boot_files(runner_host::exec::agent())
                    .is_some()
            {
                continue;
            }
            if !self.server.prepare_images {
                continue;
            }
            self.set_preparing(name, Some("building".into()));
            tracing::info!(language = %name, "building images");
            match self
                .runner
                .prepare(&language, Arc::new(()) as Arc<dyn Progress + Send>)
                .await
            {
                Ok(_) => self.set_preparing(name, None),
                Err(e) => {
                    let message = error_chain(&e);
                    tracing::error!(language = %name, error = %message, "image build failed");
                    self.set_preparing(name, Some(format!("failed: {message}")));
                }
            }
        }
        let Some((kernel, initramfs)) = self.runner.images().boot_files(runner_host::exec::agent())
        else {
            *self.backend_error.lock().unwrap() =
                Some("no kernel and initramfs: run `runner image build`".into());
            return;
        };
        match self.runner.backend(&kernel, &initramfs).await {
            Ok(_) => *self.backend_error.lock().unwrap() = None,
            Err(e) => {
                *self.backend_error.lock().unwrap() = Some(error_chain(&e));
                return;
            }
        }
        if self.server.prepare_snapshots {
            self.prepare_snapshots().await;
        }
        if self.engine.pool.max_size > 0 && !self.draining.is_cancelled() {
            let mut pool = self.engine.pool.clone();
            if pool.languages.is_empty() {
                pool.languages = self.languages().to_vec();
            }
            self.runner
                .start_pools(pool, self.capacity().pool_memory_mib);
        }
    }

    async fn prepare_snapshots(&self) {
        // Executions boot cold until their language's snapshot exists.
        for name in self.languages() {
            let language = self.runner.languages().get(name).expect("served").clone();
            match self.runner.snapshot(&language).await {
                Ok(snapshot) => {
                    tracing::info!(language = %name, snapshot = %snapshot.manifest.id, "snapshot ready")
                }
                Err(e) => {
                    tracing::error!(language = %name, error = %error_chain(&e), "snapshot failed; this language boots cold")
                }
            }
        }
    }

    fn set_preparing(&self, language: &str, state: Option<String>) {
        let mut preparing = self.preparing.lock().unwrap();
        match state {
            Some(state) => preparing.insert(language.to_string(), state),
            None => preparing.remove(language),
        };
    }
}

/// Every route of the API.
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new();
    if app.server.playground_served() {
        router = router
            .route("/", get(playground::index))
            .route("/playground.css", get(playground::style))
            .route("/playground.js", get(playground::script))
            .route("/status", get(playground::status_page))
            .route("/status.js", get(playground::status_script));
    }
    router
        .route("/v1/executions", post(executions::create))
        .route("/v1/executions/stream", post(executions::stream))
        .route("/v1/executions/ws", get(interactive::execution))
        .route("/v1/submissions", post(submissions::create))
        .route("/v1/submissions/stream", post(submissions::stream))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/v1/sessions/{id}/pause", post(sessions::pause))
        .route(
            "/v1/sessions/{id}/executions/ws",
            get(interactive::session_execution),
        )
        .route("/v1/sessions/{id}/resume", post(sessions::resume))
        .route("/v1/sessions/{id}/executions", post(sessions::execute))
        .route(
            "/v1/sessions/{id}/executions/stream",
            post(sessions::execute_stream),
        )
        .route("/v1/sessions/{id}/files", get(sessions::list_files))
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(sessions::get_file)
                .put(sessions::put_file)
                .delete(sessions::delete_file),
        )
        .route("/v1/languages", get(languages))
        .route("/v1/status", get(status))
        .nest_service("/mcp", mcp::service(&app))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::layer,
        ))
        .layer(axum::middleware::from_fn(trace::layer))
        .with_state(app)
}

async fn languages(State(app): State<Arc<App>>) -> Json<Vec<runner_wire::LanguageInfo>> {
    Json(app.runner.language_infos())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the server takes work, the backend is chosen and usable, and
/// every language served has its images.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let preparing = app.preparing.lock().unwrap().clone();
    let boot_files = app
        .runner
        .images()
        .boot_files(runner_host::exec::agent())
        .is_some();
    let mut languages = serde_json::Map::new();
    let mut all_built = boot_files;
    for name in app.languages() {
        let language = app.runner.languages().get(name).expect("served");
        let state = match (
            preparing.get(name),
            app.runner.images().rootfs_manifest(language),
        ) {
            (Some(state), _) => state.clone(),
            (None, Some(_)) if boot_files => "ready".into(),
            _ => "missing: run `runner image build`".into(),
        };
        all_built &= state == "ready";
        languages.insert(name.clone(), json!(state));
    }
    let backend = app.runner.backend_info();
    let backend_error = app.backend_error.lock().unwrap().clone();
    let draining = app.draining.is_cancelled();
    let ready = all_built && backend.is_some() && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "draining": draining,
        "backend": backend,
        "backend_error": backend_error,
        "languages": languages,
        "capacity": app.capacity(),
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let pools: Vec<(String, usize)> = app
        .languages()
        .iter()
        .map(|l| (l.clone(), app.runner.pool_size(l)))
        .collect();
    let text = app.metrics.encode(
        app.runner.vms_running(),
        app.admission.queue_length(),
        &pools,
        &sessions::by_state(&app),
        app.sessions.paused_bytes(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// What the status page shows: the capacity rule and what uses it,
/// sessions, pools, the latest executions.
async fn status(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let capacity = app.admission.capacity();
    let (vms, memory_mib) = app.admission.in_use();
    let pools: Vec<_> = app
        .languages()
        .iter()
        .map(|l| {
            json!({
                "language": l,
                "size": app.runner.pool_size(l),
                "target": app.runner.pool_target(l),
            })
        })
        .collect();
    let sessions: serde_json::Map<String, serde_json::Value> = sessions::by_state(&app)
        .into_iter()
        .map(|(state, count)| (state.to_string(), json!(count)))
        .collect();
    Json(json!({
        "capacity": {
            "cpus": capacity.cpus,
            "max_vms": capacity.max_vms,
            "vm_memory_budget_mib": capacity.vm_memory_budget_mib,
            "pool_memory_mib": capacity.pool_memory_mib,
            "admitted_vms": vms,
            "admitted_memory_mib": memory_mib,
            "vms_running": app.runner.vms_running(),
            "queue_length": app.admission.queue_length(),
            "queue_size": app.server.queue_size,
        },
        "sessions": sessions,
        "pools": pools,
        "recent": app.metrics.recent(),
    }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {}; see /openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        runner_wire::ErrorCode::MethodNotAllowed,
        format!(
            "{} does not take this method; see /openapi.json",
            uri.path()
        ),
    )
}

/// Serves until SIGTERM or SIGINT, then shuts down: no new connections or
/// requests, running executions get `shutdown_timeout_ms` to finish, then
/// are stopped (their clients get a result saying so) and their VMs
/// destroyed.
pub async fn serve(engine: Config, server: ServerConfig) -> Result<(), ServeError> {
    let addr = server.listen;
    let app = Arc::new(App::new(engine, server)?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    let capacity = *app.capacity();
    tracing::info!(
        addr = %local,
        max_vms = capacity.max_vms,
        vm_memory_budget_mib = capacity.vm_memory_budget_mib,
        queue_size = app.server.queue_size,
        languages = %app.languages().join(","),
        api_keys = app.server.api_keys.len(),
        "listening"
    );
    if app.keys.is_empty() && !local.ip().is_loopback() {
        tracing::warn!(
            addr = %local,
            "no API keys: only clients on this machine are served; add api_keys to serve others"
        );
    }
    tokio::spawn(app.clone().prepare());
    let (lost, paused) = app.sessions.recover();
    if lost > 0 {
        tracing::warn!(
            lost,
            "sessions of a server that stopped without shutting down are reported lost"
        );
    }
    if paused > 0 {
        tracing::info!(paused, "paused sessions of an earlier server taken up");
    }
    let reaper = app.sessions.start_reaper();

    let shutdown = {
        let app = app.clone();
        async move {
            let signal = terminated().await;
            let running = app.runner.vms_running();
            let deadline = Duration::from_millis(app.server.shutdown_timeout_ms);
            tracing::info!(
                signal,
                running,
                deadline_ms = app.server.shutdown_timeout_ms,
                "shutting down: no new requests; running executions may finish until the deadline"
            );
            app.draining.cancel();
            app.runner.stop_pools().await;
            app.sessions.close_all().await;
            let killing = app.killing.clone();
            tokio::spawn(async move {
                tokio::time::sleep(deadline).await;
                killing.cancel();
            });
        }
    };
    axum::serve(
        listener,
        router(app.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(ServeError::Serve)?;
    app.runner.stop_pools().await;
    reaper.abort();
    app.sessions.close_all().await;
    let killed = app.killed.load(Ordering::Relaxed);
    tracing::info!(
        killed,
        vms_running = app.runner.vms_running(),
        "shutdown complete"
    );
    Ok(())
}

/// Waits for SIGTERM or SIGINT and names it.
async fn terminated() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
