//! What the tools run on: a [`Backend`], either an [`Engine`] (a
//! [`Runner`] and its [`Sessions`] in this process) or a client of a
//! `runner serve` (the CLI's). Results travel as the HTTP API's JSON, so
//! that both give the tools the same thing. Every error a caller can
//! cause comes back as a [`ToolError`]: a code (as the HTTP API's) and a
//! message.

use std::borrow::Cow;
use std::sync::Arc;

use runner_host::session::{SessionError, SessionInfo, SessionRequest, Sessions};
use runner_host::{Config, ExecutionRequest, PlanError, Runner};
use serde_json::{Value, json};

/// A request the engine refused, or that failed: the code names the kind
/// (`unknown_language`, `invalid_request`, `session_not_found`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ToolError {
    /// A code of the HTTP API's (a remote server's, as it sent it).
    pub code: Cow<'static, str>,
    pub message: String,
}

impl From<PlanError> for ToolError {
    fn from(error: PlanError) -> Self {
        Self {
            code: error.code().into(),
            message: error.to_string(),
        }
    }
}

impl From<SessionError> for ToolError {
    fn from(error: SessionError) -> Self {
        let code = match &error {
            SessionError::NotFound(_) => "session_not_found",
            SessionError::Busy(_) => "session_busy",
            SessionError::TooMany { .. } => "too_many_sessions",
            SessionError::Ended { .. } => "session_ended",
            SessionError::Plan(e) => e.code(),
            SessionError::Paused(_) => "session_paused",
            SessionError::TooManyPaused { .. } | SessionError::NoDisk { .. } => "no_capacity",
            SessionError::File(_) => "file_error",
            _ => "internal_error",
        };
        Self {
            code: code.into(),
            message: error.to_string(),
        }
    }
}

/// What the tools ask of an engine, local or remote.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The caller when the transport names none (stdio).
    fn local_caller(&self) -> Caller;
    /// `{"languages": [...]}` as `GET /v1/languages` lists them, and the
    /// limits' defaults and maximums (`"limits"`) where known.
    async fn languages(&self) -> Result<Value, ToolError>;
    /// Runs `request` in a VM of its own, judged against
    /// `expected_output` if given: the result's JSON.
    async fn run(
        &self,
        caller: &Caller,
        request: ExecutionRequest,
        expected_output: Option<Vec<u8>>,
    ) -> Result<Value, ToolError>;
    /// A new session: its description's JSON.
    async fn create_session(
        &self,
        caller: &Caller,
        request: SessionRequest,
    ) -> Result<Value, ToolError>;
    async fn run_in_session(
        &self,
        caller: &Caller,
        id: &str,
        request: ExecutionRequest,
    ) -> Result<Value, ToolError>;
    async fn write_file(
        &self,
        caller: &Caller,
        id: &str,
        path: String,
        content: Vec<u8>,
        executable: bool,
    ) -> Result<(), ToolError>;
    async fn read_file(
        &self,
        caller: &Caller,
        id: &str,
        path: String,
        limit: u64,
    ) -> Result<Vec<u8>, ToolError>;
    /// A directory's entries' JSON (an array).
    async fn list_files(&self, caller: &Caller, id: &str, path: String)
    -> Result<Value, ToolError>;
    async fn pause(&self, caller: &Caller, id: &str) -> Result<Value, ToolError>;
    async fn resume(&self, caller: &Caller, id: &str) -> Result<Value, ToolError>;
    async fn delete(&self, caller: &Caller, id: &str) -> Result<(), ToolError>;
}

/// Who calls: the owner of the sessions it creates, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub owner: String,
    pub max_sessions: usize,
    pub max_paused: usize,
}

/// Places for VMs: an execution or a session holds one while its VM
/// lives. `runner serve` shares its own with its HTTP API.
#[async_trait::async_trait]
pub trait Capacity: Send + Sync {
    /// A place for a VM of `vm_memory_mib`, given back when dropped; an
    /// execution may wait in the queue (`wait`), a session does not.
    async fn admit(&self, vm_memory_mib: u32, wait: bool) -> Result<Box<dyn Send>, ToolError>;
}

/// No bound but the host's: `runner mcp` on its own, as `runner run`.
struct Unbounded;

#[async_trait::async_trait]
impl Capacity for Unbounded {
    async fn admit(&self, _: u32, _: bool) -> Result<Box<dyn Send>, ToolError> {
        Ok(Box::new(()))
    }
}

/// The engine the tools run on.
pub struct Engine {
    runner: Arc<Runner>,
    sessions: Arc<Sessions>,
    capacity: Arc<dyn Capacity>,
    /// Who calls when the transport does not say (stdio).
    local: Caller,
}

impl Engine {
    /// This process's own engine, with `config`'s languages, limits,
    /// images and sessions settings; its sessions belong to `owner`.
    /// Starts the task that ends idle and old sessions.
    pub fn local(config: &Config, owner: &str) -> Result<Arc<Self>, runner_host::RunnerError> {
        let runner = Arc::new(Runner::new(config)?);
        let sessions = runner.sessions(config.sessions.clone());
        sessions.start_reaper();
        let local = Caller {
            owner: owner.to_string(),
            max_sessions: config.sessions.max_per_owner,
            max_paused: config.sessions.max_paused_per_owner,
        };
        Ok(Self::shared(runner, sessions, Arc::new(Unbounded), local))
    }

    /// An engine on a server's runner, sessions and capacity.
    pub fn shared(
        runner: Arc<Runner>,
        sessions: Arc<Sessions>,
        capacity: Arc<dyn Capacity>,
        local: Caller,
    ) -> Arc<Self> {
        Arc::new(Self {
            runner,
            sessions,
            capacity,
            local,
        })
    }

    /// Session `id`'s turn, resuming it first if it is paused.
    async fn turn(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<runner_host::session::Turn, ToolError> {
        match self.sessions.turn(&caller.owner, id) {
            Err(SessionError::Paused(_)) => {
                self.resume_session(caller, id).await?;
                Ok(self.sessions.turn(&caller.owner, id)?)
            }
            turn => Ok(turn?),
        }
    }

    /// Resumes paused session `id` in a place of the capacity.
    async fn resume_session(&self, caller: &Caller, id: &str) -> Result<SessionInfo, ToolError> {
        let info = self.sessions.get(&caller.owner, id)?;
        if info.paused.is_none() {
            return Ok(info);
        }
        let slot = self.sessions.reserve(&caller.owner, caller.max_sessions)?;
        let place = self.capacity.admit(info.vm_memory_mib, false).await?;
        Ok(self
            .sessions
            .resume(&caller.owner, id, Box::new((slot, place)))
            .await?)
    }

    /// Ends every session (the server is stopping).
    pub async fn close(&self) {
        self.sessions.close_all().await;
    }
}

fn to_json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("results serialize")
}

#[async_trait::async_trait]
impl Backend for Engine {
    fn local_caller(&self) -> Caller {
        self.local.clone()
    }

    async fn languages(&self) -> Result<Value, ToolError> {
        let languages: Vec<Value> = self
            .runner
            .enabled_languages()
            .into_iter()
            .map(|l| {
                json!({
                    "language": l.name,
                    "aliases": l.aliases,
                    "source_file": l.source_file,
                    "compiled": l.compile.is_some(),
                    "memory_mib": l.memory_mib,
                })
            })
            .collect();
        Ok(json!({ "languages": languages, "limits": self.runner.limits() }))
    }

    async fn run(
        &self,
        _: &Caller,
        request: ExecutionRequest,
        expected_output: Option<Vec<u8>>,
    ) -> Result<Value, ToolError> {
        let execution = self.runner.plan_execution(request, expected_output, None)?;
        let _place = self.capacity.admit(execution.vm_memory_mib(), true).await?;
        Ok(to_json(self.runner.execute(execution, None).await))
    }

    async fn create_session(
        &self,
        caller: &Caller,
        request: SessionRequest,
    ) -> Result<Value, ToolError> {
        let plan = self.sessions.plan(request)?;
        let slot = self.sessions.reserve(&caller.owner, caller.max_sessions)?;
        let place = self.capacity.admit(plan.vm_memory_mib, false).await?;
        let info = self
            .sessions
            .open(
                &caller.owner,
                caller.max_paused,
                plan,
                Box::new((slot, place)),
            )
            .await?;
        Ok(to_json(info))
    }

    async fn run_in_session(
        &self,
        caller: &Caller,
        id: &str,
        request: ExecutionRequest,
    ) -> Result<Value, ToolError> {
        let plan = self.sessions.plan_execution(&caller.owner, id, request)?;
        let turn = self.turn(caller, id).await?;
        Ok(to_json(turn.execute(plan, None).await))
    }

    async fn write_file(
        &self,
        caller: &Caller,
        id: &str,
        path: String,
        content: Vec<u8>,
        executable: bool,
    ) -> Result<(), ToolError> {
        Ok(self
            .turn(caller, id)
            .await?
            .write(path, content, executable)
            .await?)
    }

    async fn read_file(
        &self,
        caller: &Caller,
        id: &str,
        path: String,
        limit: u64,
    ) -> Result<Vec<u8>, ToolError> {
        Ok(self.turn(caller, id).await?.read(path, limit).await?)
    }

    async fn list_files(
        &self,
        caller: &Caller,
        id: &str,
        path: String,
    ) -> Result<Value, ToolError> {
        Ok(to_json(self.turn(caller, id).await?.list(path).await?))
    }

    async fn pause(&self, caller: &Caller, id: &str) -> Result<Value, ToolError> {
        Ok(to_json(self.sessions.pause(&caller.owner, id).await?))
    }

    async fn resume(&self, caller: &Caller, id: &str) -> Result<Value, ToolError> {
        Ok(to_json(self.resume_session(caller, id).await?))
    }

    async fn delete(&self, caller: &Caller, id: &str) -> Result<(), ToolError> {
        Ok(self.sessions.delete(&caller.owner, id).await?)
    }
}
