//! A request's turn on a session: the only one that may use its VM until
//! it is done. What a turn runs runs in a task of its own, so that a
//! client that goes away does not cut a conversation with the agent in
//! half; a VM that fails in it ends the session.

use std::sync::Arc;

use tokio::sync::{OwnedMutexGuard, mpsc};

use super::registry::{Session, SessionError, fail};
use super::vm::{FileError, SessionVm};
use crate::error_chain;
use crate::exec::{ExecutionResult, OutputChunk, Plan};

/// One request's hold on a session: the only one that may use its VM until
/// it is dropped.
pub struct Turn {
    pub(super) session: Arc<Session>,
    pub(super) guard: OwnedMutexGuard<Option<SessionVm>>,
}

impl Turn {
    /// Runs `plan` (from [`super::Sessions::plan_execution`]) in the session's VM.
    /// It runs to its end even if the caller goes away; if the session
    /// ends meanwhile, it is stopped and its result says so.
    pub async fn execute(
        self,
        plan: Plan,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
    ) -> ExecutionResult {
        self.execute_interactive(plan, output, None).await
    }

    /// [`Turn::execute`] with the client's `input` passed on while the
    /// program runs, for an interactive plan.
    pub async fn execute_interactive(
        self,
        plan: Plan,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
        input: Option<crate::exec::Input>,
    ) -> ExecutionResult {
        let Turn { session, mut guard } = self;
        let task = tokio::spawn(async move {
            let mut stop = session.stop.subscribe();
            let vm = guard.as_mut().expect("a turn has a VM");
            let (result, healthy) = tokio::select! {
                done = vm.execute(&plan, output, input) => done,
                _ = stop.wait_for(|stop| *stop) => (stopped(&plan, &session), false),
            };
            session.life.lock().unwrap().executions += 1;
            session.used();
            log_execution(&session.id, &result);
            if !healthy && session.ended().is_none() {
                let message = result.message.clone().unwrap_or_default();
                drop(guard);
                fail(&session, message).await;
            }
            result
        });
        task.await.expect("a session's execution does not panic")
    }

    /// Writes a file of the working directory.
    pub async fn write(
        self,
        path: String,
        content: Vec<u8>,
        executable: bool,
    ) -> Result<(), SessionError> {
        checked(&path)?;
        self.files(move |vm| Box::pin(async move { vm.write(&path, &content, executable).await }))
            .await
    }

    /// Reads a regular file of the working directory, up to `limit` bytes.
    pub async fn read(self, path: String, limit: u64) -> Result<Vec<u8>, SessionError> {
        checked(&path)?;
        self.files(move |vm| Box::pin(async move { vm.read(&path, limit).await }))
            .await
    }

    /// Lists a directory of the working directory (`""` for itself).
    pub async fn list(self, path: String) -> Result<Vec<super::FileEntry>, SessionError> {
        if !path.is_empty() && path != "." {
            checked(&path)?;
        }
        self.files(move |vm| Box::pin(async move { vm.list(&path).await }))
            .await
    }

    /// Removes a file or directory of the working directory.
    pub async fn remove(self, path: String) -> Result<(), SessionError> {
        checked(&path)?;
        self.files(move |vm| Box::pin(async move { vm.remove(&path).await }))
            .await
    }

    /// Runs a file operation in a task of its own; a VM that fails in it
    /// ends the session.
    async fn files<T: Send + 'static>(
        self,
        op: impl for<'a> FnOnce(
            &'a mut SessionVm,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, FileError>> + Send + 'a>,
        > + Send
        + 'static,
    ) -> Result<T, SessionError> {
        let Turn { session, mut guard } = self;
        let task = tokio::spawn(async move {
            let vm = guard.as_mut().expect("a turn has a VM");
            let outcome = op(vm).await;
            session.used();
            if let Err(FileError::Broken(error)) = &outcome {
                let message = error_chain(error);
                drop(guard);
                fail(&session, message).await;
            }
            outcome.map_err(SessionError::File)
        });
        task.await
            .expect("a session's file operation does not panic")
    }
}

/// The result of an execution stopped because its session ended.
fn stopped(plan: &Plan, session: &Session) -> ExecutionResult {
    let reason = session
        .ended()
        .map_or_else(|| "it ended".to_string(), |r| r.to_string());
    crate::exec::stopped_result(
        plan,
        format!("the session ended while this execution ran: {reason}"),
    )
}

fn log_execution(session: &str, result: &ExecutionResult) {
    tracing::info!(
        target: "runner::execution",
        session,
        trace_id = %result.trace_id,
        language = %result.language,
        status = %result.status,
        execution_time = result.metrics.execution_time_ms,
        "session execution finished"
    );
}

/// `path`, if the working directory can hold it by the rule for a
/// request's files; refused before it reaches the guest otherwise.
fn checked(path: &str) -> Result<(), SessionError> {
    match crate::exec::path_problem(path) {
        Some(why) => Err(SessionError::File(FileError::Refused {
            problem: runner_protocol::FileProblem::Invalid,
            message: format!("{path:?} {why}"),
        })),
        None => Ok(()),
    }
}
