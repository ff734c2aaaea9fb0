//! The sessions of a server, and who may use which: ids nobody can guess,
//! one owner each, the owner's limits, one request at a time (its
//! [`Turn`], refused as busy rather than queued, so that a client never
//! waits behind another's long execution without knowing), and an end for
//! every session (deleted, idle, too old, failed, or the server stopping)
//! that destroys its VM.
//!
//! What a turn does is [`super::turn`]'s; pausing and resuming, and
//! taking up what an earlier server left, [`super::pause`]'s; ending idle
//! and old sessions, [`super::reaper`]'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use runner_wire::ErrorCode;
use tokio::sync::watch;

use super::pause::DirHold;
use super::turn::Turn;
use super::vm::{FileError, PausedVm, SessionVm, SessionVms};
use super::{SessionConfig, SessionPlan, SessionRequest};
use crate::error_chain;
use crate::exec::{ExecutionRequest, Plan, PlanError, Planner, StartKind};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session {0}")]
    NotFound(String),
    #[error("session {0} is busy with another request; a session takes one request at a time")]
    Busy(String),
    #[error("session {id} has ended: {reason}")]
    Ended { id: String, reason: EndReason },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "{owner} already has {limit} sessions running, its most; delete one or wait for one to end"
    )]
    TooMany { owner: String, limit: usize },
    #[error("the session's VM did not start: {0}")]
    Open(String),
    #[error("session {0} is paused; resume it")]
    Paused(String),
    #[error("{owner} already has {limit} paused sessions, its most; resume or delete one")]
    TooManyPaused { owner: String, limit: usize },
    #[error(
        "paused sessions take {used_mib} MiB of disk, this server's most (sessions.paused_disk_mib = {limit_mib}); resume or delete one, or try later"
    )]
    NoDisk { used_mib: u64, limit_mib: u64 },
    /// Saving failed; the session runs on.
    #[error("the session could not be paused; it runs on: {0}")]
    Pause(String),
    /// Resuming failed; the session has ended.
    #[error("the session could not resume, and has ended: {0}")]
    Resume(String),
    #[error(transparent)]
    File(FileError),
}

impl SessionError {
    /// The error's kind, as every front end reports it.
    pub fn code(&self) -> ErrorCode {
        match self {
            SessionError::NotFound(_) => ErrorCode::SessionNotFound,
            SessionError::Busy(_) => ErrorCode::SessionBusy,
            SessionError::Ended {
                reason: EndReason::Failed { .. },
                ..
            } => ErrorCode::SessionFailed,
            SessionError::Ended { .. } => ErrorCode::SessionEnded,
            SessionError::Plan(error) => error.code(),
            SessionError::TooMany { .. } => ErrorCode::TooManySessions,
            SessionError::Open(_) => ErrorCode::InternalError,
            SessionError::Paused(_) => ErrorCode::SessionPaused,
            SessionError::TooManyPaused { .. } => ErrorCode::TooManyPausedSessions,
            SessionError::NoDisk { .. } => ErrorCode::NoDiskForPausedSessions,
            SessionError::Pause(_) => ErrorCode::PauseFailed,
            SessionError::Resume(_) => ErrorCode::ResumeFailed,
            SessionError::File(error) => error.code(),
        }
    }
}

pub use runner_wire::{EndReason, PausedInfo, SessionInfo, SessionState};

/// A session a killed server left: only what its record said.
pub(super) struct Lost {
    pub(super) owner: String,
    pub(super) info: SessionInfo,
    pub(super) found: Instant,
}

/// The sessions of one server.
pub struct Sessions {
    pub(super) vms: Arc<dyn SessionVms>,
    pub(super) planner: Planner,
    pub(super) config: SessionConfig,
    pub(super) map: Mutex<HashMap<String, Arc<Session>>>,
    /// Per owner, the sessions that run or are starting.
    pub(super) owners: Arc<Mutex<HashMap<String, usize>>>,
    /// Where running sessions are recorded.
    pub(super) records: PathBuf,
    /// Sessions of a server that was killed, found by [`Sessions::recover`].
    pub(super) lost: Mutex<HashMap<String, Lost>>,
    /// Where paused sessions are saved, a directory each.
    pub(super) paused: PathBuf,
}

/// One of an owner's places for a running session, given back on drop
/// (when the session's VM is destroyed, or its start failed).
pub struct OwnerSlot {
    owners: Arc<Mutex<HashMap<String, usize>>>,
    owner: String,
}

impl Drop for OwnerSlot {
    fn drop(&mut self) {
        let mut owners = self.owners.lock().unwrap();
        if let Some(count) = owners.get_mut(&self.owner) {
            *count -= 1;
            if *count == 0 {
                owners.remove(&self.owner);
            }
        }
    }
}

pub(super) struct Session {
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) plan: SessionPlan,
    pub(super) created: SystemTime,
    pub(super) born: Instant,
    pub(super) start: StartKind,
    pub(super) open_time_ms: f64,
    pub(super) life: Mutex<Life>,
    /// `None` once it ended, or while it is paused.
    pub(super) vm: Arc<tokio::sync::Mutex<Option<SessionVm>>>,
    /// Sessions its owner may have paused.
    pub(super) max_paused: usize,
    /// Where it is saved while paused.
    pub(super) paused_dir: PathBuf,
    /// This server's hold on `paused_dir`, while it is there.
    pub(super) dir_hold: Mutex<Option<DirHold>>,
    /// Its record in the state directory, removed when it ends.
    pub(super) record: PathBuf,
    /// Set to stop what the session's turn is running (the session ended).
    pub(super) stop: watch::Sender<bool>,
    /// What the server holds for it (its place in the capacity), given
    /// back when the VM is destroyed.
    pub(super) hold: Mutex<Option<Box<dyn Send>>>,
}

pub(super) struct Life {
    pub(super) last_used: Instant,
    pub(super) last_used_at: SystemTime,
    pub(super) executions: u64,
    pub(super) ended: Option<(EndReason, Instant)>,
    pub(super) paused: Option<(PausedVm, SystemTime)>,
}

impl Session {
    pub(super) fn info(&self) -> SessionInfo {
        let life = self.life.lock().unwrap();
        let state = match (&life.ended, &life.paused) {
            (None, None) => SessionState::Running,
            (None, Some(_)) => SessionState::Paused,
            (Some((EndReason::Failed { .. }, _)), _) => SessionState::Failed,
            (Some(_), _) => SessionState::Ended,
        };
        SessionInfo {
            id: self.id.clone(),
            language: self.plan.language.name.clone(),
            state,
            start: self.start,
            created_unix_ms: unix_ms(self.created),
            last_used_unix_ms: unix_ms(life.last_used_at),
            memory_mib: self.plan.memory_mib,
            vm_memory_mib: self.plan.vm_memory_mib,
            disk_mib: self.plan.disk_mib,
            idle_timeout_s: self.plan.idle_timeout.as_secs(),
            max_lifetime_s: self.plan.max_lifetime.as_secs(),
            executions: life.executions,
            open_time_ms: self.open_time_ms,
            ended: life.ended.as_ref().map(|(reason, _)| reason.clone()),
            paused: life.paused.as_ref().map(|(vm, at)| PausedInfo {
                paused_unix_ms: unix_ms(*at),
                disk_bytes: vm.saved.bytes,
                pause_time_ms: vm.pause_time_ms,
            }),
        }
    }

    pub(super) fn is_paused(&self) -> bool {
        self.life.lock().unwrap().paused.is_some()
    }

    /// Removes its saved VM's directory, if this server holds one.
    pub(super) fn remove_paused_dir(&self) {
        if let Some(hold) = self.dir_hold.lock().unwrap().take() {
            let _ = std::fs::remove_dir_all(&self.paused_dir);
            drop(hold);
        }
    }

    /// Bytes its saved VM takes, while it is paused.
    pub(super) fn paused_bytes(&self) -> u64 {
        let life = self.life.lock().unwrap();
        life.paused.as_ref().map_or(0, |(vm, _)| vm.saved.bytes)
    }

    pub(super) fn used(&self) {
        let mut life = self.life.lock().unwrap();
        life.last_used = Instant::now();
        life.last_used_at = SystemTime::now();
    }

    pub(super) fn ended(&self) -> Option<EndReason> {
        self.life
            .lock()
            .unwrap()
            .ended
            .as_ref()
            .map(|(r, _)| r.clone())
    }
}

/// `owner` as a message names it.
pub(super) fn owner_name(owner: &str) -> String {
    if owner.is_empty() {
        "this server's one owner (it has no API keys)".to_string()
    } else {
        format!("API key {owner:?}")
    }
}

pub(super) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new session id: 128 random bits, so that knowing one id tells
/// nothing about another.
pub(super) fn new_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    format!("ses_{}", hex::encode(bytes))
}

impl Sessions {
    /// The sessions of a server whose VMs come from `vms`, planned by
    /// `planner` under `config`, recorded under `dir` (a state
    /// directory's `sessions`).
    pub(crate) fn new(
        vms: Arc<dyn SessionVms>,
        planner: Planner,
        config: SessionConfig,
        dir: &Path,
    ) -> Arc<Self> {
        Arc::new(Self {
            vms,
            planner,
            config,
            map: Mutex::default(),
            owners: Arc::default(),
            records: dir.to_path_buf(),
            paused: dir.join("paused"),
            lost: Mutex::default(),
        })
    }

    /// `owner`'s lost session `id`, if there is one.
    pub(super) fn lost(&self, owner: &str, id: &str) -> Option<SessionInfo> {
        self.lost
            .lock()
            .unwrap()
            .get(id)
            .filter(|l| l.owner == owner)
            .map(|l| l.info.clone())
    }

    /// Session `id` of `owner` that a request can use: a lost one has
    /// ended.
    pub(super) fn usable(&self, owner: &str, id: &str) -> Result<Arc<Session>, SessionError> {
        self.find(owner, id)
            .map_err(|e| match self.lost(owner, id) {
                Some(info) => SessionError::Ended {
                    id: id.to_string(),
                    reason: info.ended.unwrap_or(EndReason::Lost),
                },
                None => e,
            })
    }

    /// Takes one of `owner`'s places for a running session, of which it has
    /// `limit`; refused when all are taken. The slot goes into the hold
    /// given to [`Sessions::open`].
    pub fn reserve(&self, owner: &str, limit: usize) -> Result<OwnerSlot, SessionError> {
        let mut owners = self.owners.lock().unwrap();
        let count = owners.entry(owner.to_string()).or_insert(0);
        if *count >= limit {
            return Err(SessionError::TooMany {
                owner: owner_name(owner),
                limit,
            });
        }
        *count += 1;
        Ok(OwnerSlot {
            owners: self.owners.clone(),
            owner: owner.to_string(),
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Checks a request for a new session; a wrong one is refused here,
    /// before anything boots.
    pub fn plan(&self, request: SessionRequest) -> Result<SessionPlan, PlanError> {
        super::plan(&self.planner, &self.config, request)
    }

    /// Starts the session `plan` describes for `owner`, holding `hold`
    /// (its place in the server's capacity) until it ends.
    pub async fn open(
        &self,
        owner: &str,
        max_paused: usize,
        plan: SessionPlan,
        hold: Box<dyn Send>,
    ) -> Result<SessionInfo, SessionError> {
        let id = new_id();
        let received = Instant::now();
        let vm = self
            .vms
            .open(&plan, &id)
            .await
            .map_err(|e| SessionError::Open(error_chain(&e)))?;
        let open_time_ms = (vm.ready - received).as_secs_f64() * 1e3;
        tracing::info!(
            target: "runner::session",
            session = %id,
            language = %plan.language.name,
            start = vm.start.as_str(),
            open_time_ms,
            "session started"
        );
        let now = SystemTime::now();
        let session = Arc::new(Session {
            id: id.clone(),
            owner: owner.to_string(),
            created: now,
            born: Instant::now(),
            start: vm.start,
            open_time_ms,
            plan,
            life: Mutex::new(Life {
                last_used: Instant::now(),
                last_used_at: now,
                executions: 0,
                ended: None,
                paused: None,
            }),
            vm: Arc::new(tokio::sync::Mutex::new(Some(vm))),
            max_paused,
            paused_dir: self.paused.join(&id),
            dir_hold: Mutex::new(None),
            record: self.record_path(&id),
            stop: watch::channel(false).0,
            hold: Mutex::new(Some(hold)),
        });
        let info = session.info();
        self.record_running(&session);
        self.map.lock().unwrap().insert(id, session);
        Ok(info)
    }

    pub(super) fn find(&self, owner: &str, id: &str) -> Result<Arc<Session>, SessionError> {
        self.map
            .lock()
            .unwrap()
            .get(id)
            .filter(|s| s.owner == owner)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.to_string()))
    }

    pub fn get(&self, owner: &str, id: &str) -> Result<SessionInfo, SessionError> {
        match self.find(owner, id) {
            Ok(session) => Ok(session.info()),
            Err(e) => self.lost(owner, id).ok_or(e),
        }
    }

    /// `owner`'s sessions, oldest first.
    pub fn list(&self, owner: &str) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> = self
            .map
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.owner == owner)
            .map(|s| s.info())
            .collect();
        sessions.extend(
            self.lost
                .lock()
                .unwrap()
                .values()
                .filter(|l| l.owner == owner)
                .map(|l| l.info.clone()),
        );
        sessions.sort_by_key(|s| (s.created_unix_ms, s.id.clone()));
        sessions
    }

    /// Every owner's sessions, for counting.
    pub fn all(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self
            .map
            .lock()
            .unwrap()
            .values()
            .map(|s| s.info())
            .collect();
        all.extend(self.lost.lock().unwrap().values().map(|l| l.info.clone()));
        all
    }

    /// Sessions whose VM runs.
    pub fn running(&self) -> usize {
        self.map
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.ended().is_none() && !s.is_paused())
            .count()
    }

    /// Bytes all paused sessions take on disk.
    pub fn paused_bytes(&self) -> u64 {
        self.map
            .lock()
            .unwrap()
            .values()
            .map(|s| s.paused_bytes())
            .sum()
    }

    /// Plans `request` as an execution in session `id`.
    pub fn plan_execution(
        &self,
        owner: &str,
        id: &str,
        request: ExecutionRequest,
    ) -> Result<Plan, SessionError> {
        let session = self.usable(owner, id)?;
        Ok(session.plan.plan_execution(&self.planner, request)?)
    }

    /// The session's turn: refused if another request has it, or if the
    /// session has ended.
    pub fn turn(&self, owner: &str, id: &str) -> Result<Turn, SessionError> {
        let session = self.usable(owner, id)?;
        let ended = |session: &Session| SessionError::Ended {
            id: session.id.clone(),
            reason: session.ended().expect("ended"),
        };
        if session.ended().is_some() {
            return Err(ended(&session));
        }
        let guard = session
            .vm
            .clone()
            .try_lock_owned()
            .map_err(|_| SessionError::Busy(id.to_string()))?;
        if guard.is_none() {
            if session.is_paused() {
                return Err(SessionError::Paused(id.to_string()));
            }
            return Err(ended(&session));
        }
        session.used();
        Ok(Turn { session, guard })
    }

    /// Ends session `id` now: what it runs is stopped and its VM destroyed.
    pub async fn delete(&self, owner: &str, id: &str) -> Result<(), SessionError> {
        if self.lost(owner, id).is_some() {
            self.lost.lock().unwrap().remove(id);
            return Ok(());
        }
        let session = self.find(owner, id)?;
        self.map.lock().unwrap().remove(id);
        finish(&session, EndReason::Deleted).await;
        tracing::info!(target: "runner::session", session = %id, "session deleted");
        Ok(())
    }

    /// Ends every session (the server is stopping).
    pub async fn close_all(&self) {
        let sessions: Vec<Arc<Session>> = self.map.lock().unwrap().values().cloned().collect();
        for session in sessions {
            // A paused session stays on disk for the next server.
            if !session.is_paused() {
                finish(&session, EndReason::Shutdown).await;
            }
        }
    }
}

/// Ends `session` for `reason` (unless it has ended already): stops its
/// turn, destroys its VM and gives back what it held.
pub(super) async fn finish(session: &Session, reason: EndReason) {
    {
        let mut life = session.life.lock().unwrap();
        if life.ended.is_none() {
            life.ended = Some((reason, Instant::now()));
        }
    }
    session.stop.send_replace(true);
    let _ = std::fs::remove_file(&session.record);
    session.life.lock().unwrap().paused = None;
    session.remove_paused_dir();
    let vm = session.vm.lock().await.take();
    if let Some(vm) = vm {
        vm.destroy().await;
    }
    session.hold.lock().unwrap().take();
}

/// Ends `session` because its VM failed.
pub(super) async fn fail(session: &Session, message: String) {
    tracing::warn!(target: "runner::session", session = %session.id, error = %message, "session failed");
    finish(session, EndReason::Failed { message }).await;
}
