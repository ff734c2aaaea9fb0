//! The engine's floor: what every shape of work stands on to get a VM,
//! talk to its agent and make a result. It knows nothing of what it is
//! used for: one-shot executions, judges, sessions and the work done ahead
//! of requests all build on it.
//!
//! - [`plan`]: a request, checked once, becomes a [`Plan`] (typed stages,
//!   resolved limits); a wrong request stops here, before anything boots;
//! - [`limits`]: per-stage defaults and maximums;
//! - [`acquire`]: a VM for a plan, from the warm pool, a snapshot or a
//!   cold boot, with the images and backend it needs ([`acquire::Vms`]);
//! - [`conversation`]: the host's half of the agent protocol, defending
//!   itself against a guest that breaks it;
//! - [`transcript`]: what came back, kept even when the execution fails,
//!   and the [`ExecutionResult`] it makes;
//! - [`result`]: statuses, stage results, metrics;
//! - [`outputs`]: files back from a run.
//!
//! Once a request is planned it always gets a result: if Runner Codes
//! fails along the way, the status is `internal_error`, the message says
//! why, and whatever output had come back is kept.

pub(crate) mod acquire;
pub(crate) mod conversation;
mod limits;
pub mod outputs;
mod plan;
pub(crate) mod result;
pub(crate) mod transcript;

#[cfg(test)]
pub(crate) mod scripted;

pub use acquire::{AGENT_BINARY, AcquireError, agent};
pub use conversation::{ConversationError, Input};
pub use limits::{LimitPolicy, LimitSet, RequestLimits, StageLimits};
pub use outputs::OutputFile;
pub use plan::{ExecutionRequest, Part, Plan, PlanError, Planner, SourceFile, new_trace_id};
pub(crate) use plan::{check_exec_strings, fits_one_frame, path_problem};
pub(crate) use result::log;
pub use result::{Difference, ExecutionMetrics, ExecutionResult, StageResult, StartKind, Status};
pub use runner_protocol::Stage;
pub use runner_protocol::{Control, Interactive, SignalKind, WindowSize};
pub use transcript::OutputChunk;

/// Why a planned execution failed; its result carries this as its message.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    #[error("{}; console:\n{console}", crate::error_chain(error))]
    Agent {
        error: ConversationError,
        console: String,
    },
    /// The caller stopped the execution.
    #[error("stopped: {0}")]
    Stopped(String),
}

/// The result of `plan` stopped before it ran to its end, for `reason`.
pub(crate) fn stopped_result(plan: &Plan, reason: String) -> ExecutionResult {
    transcript::Transcript::new(None).finish(
        plan,
        std::time::Instant::now(),
        Err(ExecError::Stopped(reason)),
    )
}
