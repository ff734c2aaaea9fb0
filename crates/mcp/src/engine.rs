//! What the tools run on: a [`Backend`], either an [`Engine`] (a
//! [`Runner`] and its [`Sessions`] in this process) or a [`Remote`]
//! `runner serve`. Both take the API's request bodies and give back its
//! results ([`runner_wire`]), so the tools get the same thing from either.
//! Every error a caller can cause comes back as a [`ToolError`]: a code
//! (from the one table of them) and a message.
//!
//! [`Remote`]: crate::Remote

use std::borrow::Cow;
use std::sync::Arc;

use runner_host::session::{SessionError, SessionInfo, Sessions};
use runner_host::{Config, LimitPolicy, PlanError, Runner};
use runner_wire::{
    ErrorCode, ExecutionBody, ExecutionResult, FileEntry, LanguageInfo, SessionBody,
};

/// A request the engine refused, or that failed: the code names the kind
/// (`unknown_language`, `invalid_request`, `session_not_found`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ToolError {
    /// A code of the API's error table (a remote server's, as it sent
    /// it), or `unreachable` when there was no server to answer.
    pub code: Cow<'static, str>,
    pub message: String,
}

impl ToolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_str().into(),
            message: message.into(),
        }
    }
}

impl From<PlanError> for ToolError {
    fn from(error: PlanError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

impl From<SessionError> for ToolError {
    fn from(error: SessionError) -> Self {
        Self::new(error.code(), runner_host::error_chain(&error))
    }
}

/// The languages a backend runs, and its limits where it knows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Languages {
    pub languages: Vec<LanguageInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitPolicy>,
}

/// What the tools ask of an engine, local or remote.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The caller when the transport names none (stdio).
    fn local_caller(&self) -> Caller;
    async fn languages(&self) -> Result<Languages, ToolError>;
    /// Runs `body` in a VM of its own, judged if it says what to expect.
    async fn run(&self, caller: &Caller, body: ExecutionBody)
    -> Result<ExecutionResult, ToolError>;
    async fn create_session(
        &self,
        caller: &Caller,
        body: SessionBody,
    ) -> Result<SessionInfo, ToolError>;
    async fn run_in_session(
        &self,
        caller: &Caller,
        id: &str,
        body: ExecutionBody,
    ) -> Result<ExecutionResult, ToolError>;
    async fn write_file(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
        content: Vec<u8>,
        executable: bool,
    ) -> Result<(), ToolError>;
    /// A regular file's content, if it has at most `limit` bytes.
    async fn read_file(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, ToolError>;
    async fn list_files(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
    ) -> Result<Vec<FileEntry>, ToolError>;
    async fn pause(&self, caller: &Caller, id: &str) -> Result<SessionInfo, ToolError>;
    async fn resume(&self, caller: &Caller, id: &str) -> Result<SessionInfo, ToolError>;
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

#[async_trait::async_trait]
impl Backend for Engine {
    fn local_caller(&self) -> Caller {
        self.local.clone()
    }

    async fn languages(&self) -> Result<Languages, ToolError> {
        Ok(Languages {
            languages: self.runner.language_infos(),
            limits: Some(self.runner.limits().clone()),
        })
    }

    async fn run(
        &self,
        caller: &Caller,
        body: ExecutionBody,
    ) -> Result<ExecutionResult, ToolError> {
        let asked = runner_host::bodies::execution(body, None, &caller.owner)?;
        let execution =
            self.runner
                .plan_execution(asked.request, asked.expected_output, asked.compare)?;
        let _place = self.capacity.admit(execution.vm_memory_mib(), true).await?;
        Ok(self.runner.execute(execution, None).await)
    }

    async fn create_session(
        &self,
        caller: &Caller,
        body: SessionBody,
    ) -> Result<SessionInfo, ToolError> {
        let plan = self.sessions.plan(body)?;
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
        Ok(info)
    }

    async fn run_in_session(
        &self,
        caller: &Caller,
        id: &str,
        body: ExecutionBody,
    ) -> Result<ExecutionResult, ToolError> {
        let request = runner_host::bodies::session_execution(body, None, &caller.owner)?;
        let plan = self.sessions.plan_execution(&caller.owner, id, request)?;
        let turn = self.turn(caller, id).await?;
        Ok(turn.execute(plan, None).await)
    }

    async fn write_file(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
        content: Vec<u8>,
        executable: bool,
    ) -> Result<(), ToolError> {
        Ok(self
            .turn(caller, id)
            .await?
            .write(path.to_string(), content, executable)
            .await?)
    }

    async fn read_file(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, ToolError> {
        Ok(self
            .turn(caller, id)
            .await?
            .read(path.to_string(), limit)
            .await?)
    }

    async fn list_files(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
    ) -> Result<Vec<FileEntry>, ToolError> {
        Ok(self.turn(caller, id).await?.list(path.to_string()).await?)
    }

    async fn pause(&self, caller: &Caller, id: &str) -> Result<SessionInfo, ToolError> {
        Ok(self.sessions.pause(&caller.owner, id).await?)
    }

    async fn resume(&self, caller: &Caller, id: &str) -> Result<SessionInfo, ToolError> {
        self.resume_session(caller, id).await
    }

    async fn delete(&self, caller: &Caller, id: &str) -> Result<(), ToolError> {
        Ok(self.sessions.delete(&caller.owner, id).await?)
    }
}
