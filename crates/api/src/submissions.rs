//! `POST /v1/submissions` and `POST /v1/submissions/stream`: a program and
//! its tests, judged (see [`runner_host::judge`]).
//!
//! The program is compiled once; each test then runs in a fresh VM with the
//! compiled program. Every VM of a submission is admitted like an
//! execution, so a submission shares the machine's capacity with
//! everything else, with up to `max_vms` of its tests at once. The stream
//! answers with NDJSON: `started`, `compiled` (compiled languages), one
//! `test` per finished test, then the `result`. A streaming client that
//! disconnects stops the submission.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use runner_host::judge::{Capacity, SubmissionEvent, SubmissionPlan, SubmissionResult};
use runner_wire::SubmissionBody;
use tokio::sync::mpsc;

use crate::App;
use crate::admission::Rejection;
use crate::auth::Owner;
use crate::error::ApiError;
use crate::executions::{line, ndjson, read_json};
use crate::trace::TraceId;

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    body: Body,
) -> Result<Response, ApiError> {
    let plan = app.plan_submission(body, &trace_id, &owner).await?;
    let result = judge(&app, plan, None, app.stopping()).await;
    Ok(axum::Json(result).into_response())
}

pub async fn stream(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<Owner>,
    Extension(TraceId(trace_id)): Extension<TraceId>,
    body: Body,
) -> Result<Response, ApiError> {
    let plan = app.plan_submission(body, &trace_id, &owner).await?;
    let (lines, body_lines) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let started = SubmissionEvent::Started {
            trace_id: plan.trace_id.clone(),
            language: plan.language.name.clone(),
            tests: plan.tests.len(),
        };
        let _ = lines.send(line(&started)).await;
        let (events, mut event_rx) = mpsc::unbounded_channel::<SubmissionEvent>();
        let gone = lines.clone();
        let shutdown = app.stopping();
        let stop = async move {
            tokio::select! {
                reason = shutdown => reason,
                () = gone.closed() => "the client disconnected".to_string(),
            }
        };
        let judged = judge(&app, plan, Some(events), stop);
        let forward = async {
            while let Some(event) = event_rx.recv().await {
                let _ = lines.send(line(&event)).await;
            }
        };
        let (result, ()) = tokio::join!(judged, forward);
        let ended = SubmissionEvent::Result {
            result: Box::new(result),
        };
        let _ = lines.send(line(&ended)).await;
    });
    Ok(ndjson(body_lines))
}

/// Judges `plan` with the server's capacity and records its metrics.
async fn judge(
    app: &Arc<App>,
    plan: SubmissionPlan,
    events: Option<mpsc::UnboundedSender<SubmissionEvent>>,
    stop: impl Future<Output = String> + Send + 'static,
) -> SubmissionResult {
    let capacity: Arc<dyn Capacity> = Arc::new(Admitted(app.clone()));
    let parallel = app.capacity().max_vms;
    let result = app
        .runner
        .judge(plan, capacity, parallel, events, stop)
        .await;
    app.metrics.record_submission(&result);
    result
}

/// The server's admission, for the VMs of a submission.
struct Admitted(Arc<App>);

#[async_trait]
impl Capacity for Admitted {
    async fn admit(&self, vm_memory_mib: u32) -> Result<Box<dyn Send + Sync>, String> {
        let app = &self.0;
        match app.admission.admit(vm_memory_mib, app.draining()).await {
            Ok(permit) => Ok(Box::new(permit)),
            Err(rejection) => {
                app.metrics.reject(rejection.reason());
                Err(ApiError::from_rejection(rejection).message)
            }
        }
    }
}

impl App {
    /// Reads and plans a submission. Nothing has started when this fails.
    async fn plan_submission(
        &self,
        body: Body,
        trace_id: &str,
        owner: &Owner,
    ) -> Result<SubmissionPlan, ApiError> {
        let planned = async {
            let body: SubmissionBody = read_json(body, self.server.max_submission_bytes).await?;
            let request =
                runner_host::bodies::submission(body, Some(trace_id.to_string()), &owner.name)
                    .map_err(ApiError::from_plan)?;
            let plan = self
                .runner
                .plan_submission(request)
                .map_err(ApiError::from_plan)?;
            // Refused at once, as an execution would be, when no VM of it can
            // ever run here or the server is going away.
            let largest = plan.vm_memory_mib();
            let budget = self.capacity().vm_memory_budget_mib;
            if u64::from(largest) > budget {
                return Err(ApiError::from_rejection(Rejection::TooLarge {
                    vm_memory_mib: largest,
                    budget_mib: budget,
                }));
            }
            if self.draining.is_cancelled() {
                return Err(ApiError::from_rejection(Rejection::ShuttingDown));
            }
            Ok(plan)
        };
        planned.await.map_err(|e: ApiError| e.traced(trace_id))
    }
}
