//! Sessions: one VM that serves an owner's many executions, one after the
//! other, keeping its files, installed packages and background processes
//! between them.
//!
//! - this file: the configuration of sessions, a session's request and its
//!   [`SessionPlan`] (checked once, as an execution's is), and the planning
//!   of an execution inside a session;
//! - [`vm`]: the session's VM: opened through the same acquisition as a
//!   one-shot execution (pool, snapshot, cold boot), then told it is a
//!   session's; executions and file operations on it;
//! - [`registry`]: the sessions of a server and who may use which:
//!   unguessable ids, owners and their limits, one request at a time;
//! - [`turn`]: what a request does with its turn: executions and files;
//! - [`pause`]: pausing to disk and resuming, and what an earlier server
//!   left (paused sessions taken up, running ones reported lost);
//! - [`reaper`]: idle and lifetime limits.
//!
//! A session's VM belongs to one owner and is never given to another: it is
//! destroyed when the session ends, whatever the reason.

mod pause;
mod reaper;
mod registry;
#[cfg(test)]
mod scripted;
mod turn;
mod vm;

use std::collections::BTreeMap;
use std::time::Duration;

use runner_protocol::Stage;
use serde::{Deserialize, Serialize};

pub use pause::files_of_paused;
pub use registry::{
    EndReason, OwnerSlot, PausedInfo, SessionError, SessionInfo, SessionState, Sessions,
};
pub use runner_protocol::{FileEntry, FileKind, FileProblem};
pub use turn::Turn;
pub use vm::{FileError, PauseError, PausedVm, ResumeError, SessionVm};

use crate::exec::{ExecutionRequest, Plan, PlanError, Planner, StageLimits};
use crate::lang::Language;
use crate::net::Egress;
use crate::vmm::vm_memory_mib;

/// The server's rules for sessions: defaults and maximums of what a
/// session may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session with no request for this long ends (its VM destroyed).
    pub idle_timeout_s: u64,
    /// The most a session may ask for as its `idle_timeout_s`.
    pub max_idle_timeout_s: u64,
    /// A session ends this long after it was created.
    pub lifetime_s: u64,
    /// The most a session may ask for as its `max_lifetime_s`.
    pub max_lifetime_s: u64,
    /// What a session's working directory may hold, unless it asks.
    pub default_disk_mib: u64,
    /// The most a session may ask for as its `disk_mib`.
    pub max_disk_mib: u64,
    /// How long an ended session can still be looked up (its state and why
    /// it ended) before it is forgotten.
    pub ended_kept_s: u64,
    /// Sessions one owner (an API key, or everyone when there are no keys)
    /// may have running at once, unless its key says otherwise.
    pub max_per_owner: usize,
    /// A session idle for its `idle_timeout_s` is paused (saved to disk,
    /// its VM freed) rather than ended; it ends at its `max_lifetime_s`.
    pub pause_when_idle: bool,
    /// Sessions one owner may have paused at once, unless its key says
    /// otherwise.
    pub max_paused_per_owner: usize,
    /// What all paused sessions together may take on disk; a pause past
    /// it is refused (and an idle session ends instead).
    pub paused_disk_mib: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout_s: 600,
            max_idle_timeout_s: 3_600,
            lifetime_s: 3_600,
            max_lifetime_s: 86_400,
            default_disk_mib: 256,
            max_disk_mib: 2_048,
            ended_kept_s: 3_600,
            max_per_owner: 16,
            pause_when_idle: true,
            max_paused_per_owner: 64,
            paused_disk_mib: 16_384,
        }
    }
}

/// What a caller asks of a new session: the body of `POST /v1/sessions`,
/// taken as it is (paused sessions' records hold it too).
pub use runner_wire::SessionBody as SessionRequest;

/// A session request, checked and resolved.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    pub language: Language,
    pub memory_mib: u64,
    pub vm_memory_mib: u32,
    pub disk_mib: u64,
    pub env: BTreeMap<String, String>,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// What its programs may reach of the network.
    pub network: Option<Egress>,
    /// What was asked, to plan the session again when a server takes up
    /// a paused one.
    pub request: SessionRequest,
}

/// Checks `request` against `config` and the limits of `planner`.
pub fn plan(
    planner: &Planner,
    config: &SessionConfig,
    request: SessionRequest,
) -> Result<SessionPlan, PlanError> {
    let language = planner.language(&request.language)?.clone();
    let asked = StageLimits {
        memory_mib: request.memory_mib,
        ..StageLimits::default()
    };
    let memory_mib = planner
        .limits()
        .resolve(Stage::Run, &asked, &language)
        .map_err(|e| PlanError::Invalid(e.replace("run.memory_mib", "memory_mib")))?
        .memory_mib;
    let disk_mib = request.disk_mib.unwrap_or(config.default_disk_mib);
    let bounded = |name: &str, value: u64, max: u64| {
        if value == 0 {
            Err(PlanError::Invalid(format!("{name} must be above 0")))
        } else if value > max {
            Err(PlanError::Invalid(format!(
                "{name} = {value} is above the server's maximum of {max}"
            )))
        } else {
            Ok(value)
        }
    };
    let disk_mib = bounded("disk_mib", disk_mib, config.max_disk_mib)?;
    if disk_mib > memory_mib {
        return Err(PlanError::Invalid(format!(
            "disk_mib = {disk_mib} is more than the session's memory_mib = {memory_mib}: \
             its files live in the VM's memory; ask for more memory_mib or less disk_mib"
        )));
    }
    let idle = bounded(
        "idle_timeout_s",
        request.idle_timeout_s.unwrap_or(config.idle_timeout_s),
        config.max_idle_timeout_s,
    )?;
    let lifetime = bounded(
        "max_lifetime_s",
        request.max_lifetime_s.unwrap_or(config.lifetime_s),
        config.max_lifetime_s,
    )?;
    crate::exec::check_exec_strings(&[], &request.env)?;
    let network = planner.network(request.network.as_ref())?;
    let mut env = language.env.clone();
    env.extend(request.env.clone());
    Ok(SessionPlan {
        vm_memory_mib: vm_memory_mib(memory_mib),
        language,
        memory_mib,
        disk_mib,
        env,
        idle_timeout: Duration::from_secs(idle),
        max_lifetime: Duration::from_secs(lifetime),
        network,
        request,
    })
}

impl SessionPlan {
    /// Plans `request` as an execution in this session: its language is
    /// the session's, its environment goes on top of the session's, and
    /// its stages get the session's memory unless they ask for less.
    pub fn plan_execution(
        &self,
        planner: &Planner,
        mut request: ExecutionRequest,
    ) -> Result<Plan, PlanError> {
        if request.language.is_empty() {
            request.language = self.language.name.clone();
        } else if planner.language(&request.language)?.name != self.language.name {
            return Err(PlanError::Invalid(format!(
                "this session runs {}; start another session for {}",
                self.language.name, request.language
            )));
        }
        for stage in [&mut request.limits.compile, &mut request.limits.run] {
            stage.memory_mib.get_or_insert(self.memory_mib);
        }
        if request.network.is_some() {
            return Err(PlanError::Invalid(
                "network is the session's: set it when the session is created".into(),
            ));
        }
        request.network = self.request.network.clone();
        let mut env = self.env.clone();
        env.extend(std::mem::take(&mut request.env));
        request.env = env;
        let plan = planner.plan(request)?;
        if plan.vm_memory_mib > self.vm_memory_mib {
            return Err(PlanError::Invalid(format!(
                "the execution asks for more memory than the session has ({} MiB); \
                 start a session with a larger memory_mib",
                self.memory_mib
            )));
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{LimitPolicy, SourceFile};
    use crate::lang::Languages;

    fn planner() -> Planner {
        Planner::new(Languages::builtin().unwrap(), LimitPolicy::default(), &[])
    }

    fn request(language: &str) -> SessionRequest {
        SessionRequest {
            language: language.into(),
            ..SessionRequest::default()
        }
    }

    #[test]
    fn a_session_takes_the_language_defaults() {
        let plan = plan(&planner(), &SessionConfig::default(), request("py")).unwrap();
        assert_eq!(plan.language.name, "python");
        assert_eq!(plan.memory_mib, 512);
        assert_eq!(plan.vm_memory_mib, 576);
        assert_eq!(plan.disk_mib, 256);
        assert_eq!(plan.idle_timeout, Duration::from_secs(600));
        assert_eq!(plan.max_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn bad_sessions_are_refused_with_what_is_wrong() {
        let config = SessionConfig::default();
        let cases = [
            (request("cobol"), "cobol"),
            (
                SessionRequest {
                    disk_mib: Some(600),
                    ..request("python")
                },
                "more than the session's memory_mib",
            ),
            (
                SessionRequest {
                    disk_mib: Some(0),
                    ..request("python")
                },
                "disk_mib must be above 0",
            ),
            (
                SessionRequest {
                    idle_timeout_s: Some(10_000),
                    ..request("python")
                },
                "idle_timeout_s = 10000 is above the server's maximum of 3600",
            ),
            (
                SessionRequest {
                    max_lifetime_s: Some(0),
                    ..request("python")
                },
                "max_lifetime_s must be above 0",
            ),
            (
                SessionRequest {
                    memory_mib: Some(64),
                    ..request("python")
                },
                "memory_mib = 64 is below python's minimum",
            ),
            (
                SessionRequest {
                    env: BTreeMap::from([("A=B".into(), "c".into())]),
                    ..request("python")
                },
                "contains '='",
            ),
        ];
        for (request, expected) in cases {
            let error = plan(&planner(), &config, request.clone()).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{request:?}: {error} does not say {expected:?}"
            );
        }
    }

    #[test]
    fn executions_in_a_session_run_its_language_within_its_memory() {
        let planner = planner();
        let session = plan(
            &planner,
            &SessionConfig::default(),
            SessionRequest {
                memory_mib: Some(300),
                env: BTreeMap::from([("A".into(), "session".into())]),
                ..request("python")
            },
        )
        .unwrap();
        let execution = |language: &str, memory: Option<u64>| ExecutionRequest {
            language: language.into(),
            files: vec![SourceFile::entry("print(1)")],
            env: BTreeMap::from([("B".into(), "execution".into())]),
            limits: crate::exec::RequestLimits {
                run: StageLimits {
                    memory_mib: memory,
                    ..StageLimits::default()
                },
                ..Default::default()
            },
            ..ExecutionRequest::default()
        };
        let plan = session
            .plan_execution(&planner, execution("", None))
            .unwrap();
        assert_eq!(plan.language.name, "python");
        assert_eq!(plan.exec.stages[0].limits.memory_bytes, 300 << 20);
        assert_eq!(plan.exec.env["A"], "session");
        assert_eq!(plan.exec.env["B"], "execution");
        let error = session
            .plan_execution(&planner, execution("node", None))
            .unwrap_err();
        assert!(
            error.to_string().contains("this session runs python"),
            "{error}"
        );
        let error = session
            .plan_execution(&planner, execution("python", Some(400)))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("more memory than the session has"),
            "{error}"
        );
    }
}
