//! The sessions of a server: ids nobody can guess, one owner each, one
//! request at a time, and an end for every session (deleted, idle, too
//! old, failed, or the server stopping) that destroys its VM.
//!
//! A running session can be paused: its VM saved to the state directory
//! (`sessions/paused/<id>/`) as a delta over its snapshot and destroyed,
//! which frees its memory and its place in the capacity. A paused session
//! outlives the server: a server starting later takes it up, and it
//! resumes on request, or by itself when a request comes for it. While a
//! server holds a paused session it holds a lock on its directory, so that
//! another server on the same state directory leaves it alone; a server
//! that is killed lets go of it, and the next one takes it up.
//!
//! A request on a session takes its [`Turn`]; a second request while one
//! holds it is refused as busy rather than queued, so that a client never
//! waits behind another's long execution without knowing. What a turn runs
//! runs in a task of its own: a client that goes away does not cut a
//! conversation with the agent in half.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedMutexGuard, mpsc, watch};

use super::vm::{FileError, PauseError, PausedVm, SessionVm, SessionVms};
use super::{SessionConfig, SessionPlan, SessionRequest};
use crate::error_chain;
use crate::exec::{
    ExecutionRequest, ExecutionResult, OutputChunk, Plan, PlanError, Planner, StartKind,
};

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
        "{owner} already has {limit} sessions running, its most; delete one (DELETE /v1/sessions/ID) or wait for one to end"
    )]
    TooMany { owner: String, limit: usize },
    #[error("the session's VM did not start: {0}")]
    Open(String),
    #[error("session {0} is paused; resume it (POST /v1/sessions/{0}/resume)")]
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

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Its VM runs and takes requests.
    Running,
    /// Its VM is saved to disk; it resumes on request.
    Paused,
    /// Its VM is gone, and its files with it; [`SessionInfo::ended`] says
    /// why.
    Ended,
    /// Ended because its VM failed.
    Failed,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum EndReason {
    /// No request came for its `idle_timeout_s`.
    Idle { seconds: u64 },
    /// It reached its `max_lifetime_s`.
    Lifetime { seconds: u64 },
    /// Its VM failed; the message says how.
    Failed { message: String },
    /// The server shut down.
    Shutdown,
    /// Its owner deleted it.
    Deleted,
    /// The server stopped without shutting down (killed, or the machine
    /// failed) while it ran; a server starting later says so.
    Lost,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::Idle { seconds } => {
                write!(
                    f,
                    "it was idle for its idle_timeout_s of {seconds} s; its VM and files are gone"
                )
            }
            EndReason::Lifetime { seconds } => write!(
                f,
                "it reached its max_lifetime_s of {seconds} s; its VM and files are gone"
            ),
            EndReason::Failed { message } => write!(
                f,
                "its VM failed ({message}); its files are gone: start a new session"
            ),
            EndReason::Shutdown => write!(f, "the server shut down; its VM and files are gone"),
            EndReason::Deleted => write!(f, "it was deleted"),
            EndReason::Lost => write!(
                f,
                "the server stopped unexpectedly (killed or crashed) while it ran; its VM and files are gone: start a new session"
            ),
        }
    }
}

/// What a client sees of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub language: String,
    pub state: SessionState,
    /// How its VM was started: `pool`, `snapshot` or `cold`.
    pub start: StartKind,
    pub created_unix_ms: u64,
    pub last_used_unix_ms: u64,
    pub memory_mib: u64,
    pub vm_memory_mib: u32,
    pub disk_mib: u64,
    pub idle_timeout_s: u64,
    pub max_lifetime_s: u64,
    pub executions: u64,
    /// Milliseconds from the request until the session's VM was ready.
    pub open_time_ms: f64,
    /// Why it ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<EndReason>,
    /// While it is paused: when, and what its saved VM takes on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PausedInfo>,
}

/// What a client sees of a paused session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PausedInfo {
    pub paused_unix_ms: u64,
    /// Bytes its saved VM takes on disk: what it changed of its snapshot's
    /// memory, and its devices.
    pub disk_bytes: u64,
    /// Milliseconds from the request to pause until the VM was saved.
    pub pause_time_ms: f64,
}

/// What the state directory keeps of a running session until it ends.
#[derive(Serialize, Deserialize)]
struct Record {
    owner: String,
    info: SessionInfo,
}

/// What the state directory keeps of a paused session, next to its saved
/// VM, for a server that starts later.
#[derive(Serialize, Deserialize)]
struct PausedRecord {
    owner: String,
    info: SessionInfo,
    request: SessionRequest,
    max_paused: usize,
    vm: PausedVm,
}

/// The file of a paused session's record, in its directory.
const PAUSED_RECORD: &str = "session.json";
/// The file of its saved VM.
const PAUSED_STATE: &str = "state";
/// The file the server holding it keeps locked.
const PAUSED_LOCK: &str = "lock";

/// A server's hold on a paused session's directory: an exclusive `flock`
/// on its lock file, let go when dropped or when the server dies.
type DirHold = nix::fcntl::Flock<std::fs::File>;

/// Holds the paused session directory `dir` unless another living server
/// does; `None` then (or if it cannot be opened: it was just removed).
fn hold_paused_dir(dir: &Path) -> Option<DirHold> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(PAUSED_LOCK))
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
}

/// A session a killed server left: only what its record said.
struct Lost {
    owner: String,
    info: SessionInfo,
    found: Instant,
}

/// The sessions of one server.
pub struct Sessions {
    vms: Arc<dyn SessionVms>,
    planner: Planner,
    config: SessionConfig,
    map: Mutex<HashMap<String, Arc<Session>>>,
    /// Per owner, the sessions that run or are starting.
    owners: Arc<Mutex<HashMap<String, usize>>>,
    /// Where running sessions are recorded.
    records: PathBuf,
    /// Sessions of a server that was killed, found by [`Sessions::recover`].
    lost: Mutex<HashMap<String, Lost>>,
    /// Where paused sessions are saved, a directory each.
    paused: PathBuf,
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

struct Session {
    id: String,
    owner: String,
    plan: SessionPlan,
    created: SystemTime,
    born: Instant,
    start: StartKind,
    open_time_ms: f64,
    life: Mutex<Life>,
    /// `None` once it ended, or while it is paused.
    vm: Arc<tokio::sync::Mutex<Option<SessionVm>>>,
    /// Sessions its owner may have paused.
    max_paused: usize,
    /// Where it is saved while paused.
    paused_dir: PathBuf,
    /// This server's hold on `paused_dir`, while it is there.
    dir_hold: Mutex<Option<DirHold>>,
    /// Its record in the state directory, removed when it ends.
    record: PathBuf,
    /// Set to stop what the session's turn is running (the session ended).
    stop: watch::Sender<bool>,
    /// What the server holds for it (its place in the capacity), given
    /// back when the VM is destroyed.
    hold: Mutex<Option<Box<dyn Send>>>,
}

struct Life {
    last_used: Instant,
    last_used_at: SystemTime,
    executions: u64,
    ended: Option<(EndReason, Instant)>,
    paused: Option<(PausedVm, SystemTime)>,
}

impl Session {
    fn info(&self) -> SessionInfo {
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

    fn is_paused(&self) -> bool {
        self.life.lock().unwrap().paused.is_some()
    }

    /// Removes its saved VM's directory, if this server holds one.
    fn remove_paused_dir(&self) {
        if let Some(hold) = self.dir_hold.lock().unwrap().take() {
            let _ = std::fs::remove_dir_all(&self.paused_dir);
            drop(hold);
        }
    }

    /// Bytes its saved VM takes, while it is paused.
    fn paused_bytes(&self) -> u64 {
        let life = self.life.lock().unwrap();
        life.paused.as_ref().map_or(0, |(vm, _)| vm.saved.bytes)
    }

    fn used(&self) {
        let mut life = self.life.lock().unwrap();
        life.last_used = Instant::now();
        life.last_used_at = SystemTime::now();
    }

    fn ended(&self) -> Option<EndReason> {
        self.life
            .lock()
            .unwrap()
            .ended
            .as_ref()
            .map(|(r, _)| r.clone())
    }
}

/// The files the sessions paused under `sessions` (a state directory's
/// `sessions`) need to resume: images, snapshot memory, saved state.
pub fn files_of_paused(sessions: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sessions.join("paused")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join(PAUSED_RECORD)).ok())
        .filter_map(|bytes| serde_json::from_slice::<PausedRecord>(&bytes).ok())
        .flat_map(|record| {
            record
                .vm
                .saved
                .needs()
                .into_iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `owner` as a message names it.
fn owner_name(owner: &str) -> String {
    if owner.is_empty() {
        "this server's one owner (it has no API keys)".to_string()
    } else {
        format!("API key {owner:?}")
    }
}

/// Creates `dir`, readable by this user only: a saved VM holds the
/// guest's memory.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new session id: 128 random bits, so that knowing one id tells
/// nothing about another.
fn new_id() -> String {
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

    /// Writes the record of running session `session`, so that a server
    /// started after this one is killed can report it lost.
    fn record_running(&self, session: &Session) {
        let record = Record {
            owner: session.owner.clone(),
            info: session.info(),
        };
        let written = std::fs::create_dir_all(&self.records).and_then(|()| {
            std::fs::write(
                &session.record,
                serde_json::to_vec(&record).expect("a record serializes"),
            )
        });
        if let Err(e) = written {
            tracing::warn!(target: "runner::session", session = %session.id, error = %e, "cannot record the session; a killed server will not report it lost");
        }
    }

    /// Takes up the sessions paused by earlier servers: each is paused
    /// here as it was there. One that no longer plans under this server's
    /// configuration is reported failed. Returns how many were taken up.
    fn take_up_paused(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.paused) else {
            return 0;
        };
        let mut found = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(hold) = hold_paused_dir(&dir) else {
                // Another server on this state directory holds it.
                continue;
            };
            let record = std::fs::read(dir.join(PAUSED_RECORD))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<PausedRecord>(&bytes).ok());
            let Some(record) = record else {
                // A pause that did not finish (the server was killed in
                // it): the session was reported lost with the others.
                tracing::warn!(target: "runner::session", dir = %dir.display(), "unfinished pause removed");
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            };
            let id = record.info.id.clone();
            if self.map.lock().unwrap().contains_key(&id) {
                continue;
            }
            let plan = match self.plan(record.request.clone()) {
                Ok(plan) => plan,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    let mut info = record.info;
                    info.state = SessionState::Failed;
                    info.paused = None;
                    info.ended = Some(EndReason::Failed {
                        message: format!(
                            "it was paused, and no longer fits this server's configuration: {}",
                            error_chain(&e)
                        ),
                    });
                    let lost = Lost {
                        owner: record.owner,
                        info,
                        found: Instant::now(),
                    };
                    self.lost.lock().unwrap().insert(id, lost);
                    continue;
                }
            };
            let created =
                SystemTime::UNIX_EPOCH + Duration::from_millis(record.info.created_unix_ms);
            let age = SystemTime::now()
                .duration_since(created)
                .unwrap_or_default();
            let last_used_at =
                SystemTime::UNIX_EPOCH + Duration::from_millis(record.info.last_used_unix_ms);
            let paused_at = record.info.paused.as_ref().map_or(last_used_at, |p| {
                SystemTime::UNIX_EPOCH + Duration::from_millis(p.paused_unix_ms)
            });
            let now = Instant::now();
            let session = Arc::new(Session {
                id: id.clone(),
                owner: record.owner,
                created,
                born: now.checked_sub(age).unwrap_or(now),
                start: record.info.start,
                open_time_ms: record.info.open_time_ms,
                plan,
                life: Mutex::new(Life {
                    last_used: now,
                    last_used_at,
                    executions: record.info.executions,
                    ended: None,
                    paused: Some((record.vm, paused_at)),
                }),
                vm: Arc::new(tokio::sync::Mutex::new(None)),
                max_paused: record.max_paused,
                paused_dir: dir,
                dir_hold: Mutex::new(Some(hold)),
                record: self
                    .records
                    .join(format!("{}.{id}.json", std::process::id())),
                stop: watch::channel(false).0,
                hold: Mutex::new(None),
            });
            tracing::info!(target: "runner::session", session = %id, "paused session taken up");
            self.map.lock().unwrap().insert(id, session);
            found += 1;
        }
        found
    }

    /// Takes the records of sessions whose server no longer runs (it was
    /// killed: its VMs died with it): each is reported `ended` with reason
    /// `lost` to its owner, for `ended_kept_s`; and takes up the paused
    /// sessions earlier servers left, which resume as if nothing happened.
    /// Returns how many were lost and how many were taken up.
    pub fn recover(&self) -> (usize, usize) {
        for staged in crate::state::left_by_dead_processes(&self.records.join("saving")) {
            let _ = std::fs::remove_dir_all(staged);
        }
        let taken_up = self.take_up_paused();
        let mut found = 0;
        for path in crate::state::left_by_dead_processes(&self.records) {
            let record = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok());
            let _ = std::fs::remove_file(&path);
            let Some(Record { owner, mut info }) = record else {
                tracing::warn!(target: "runner::session", record = %path.display(), "unreadable session record removed");
                continue;
            };
            info.state = SessionState::Ended;
            info.ended = Some(EndReason::Lost);
            tracing::warn!(target: "runner::session", session = %info.id, "session lost: its server stopped without shutting down");
            let lost = Lost {
                owner,
                info,
                found: Instant::now(),
            };
            self.lost.lock().unwrap().insert(lost.info.id.clone(), lost);
            found += 1;
        }
        (found, taken_up)
    }

    /// `owner`'s lost session `id`, if there is one.
    fn lost(&self, owner: &str, id: &str) -> Option<SessionInfo> {
        self.lost
            .lock()
            .unwrap()
            .get(id)
            .filter(|l| l.owner == owner)
            .map(|l| l.info.clone())
    }

    /// Session `id` of `owner` that a request can use: a lost one has
    /// ended.
    fn usable(&self, owner: &str, id: &str) -> Result<Arc<Session>, SessionError> {
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
            record: self
                .records
                .join(format!("{}.{id}.json", std::process::id())),
            stop: watch::channel(false).0,
            hold: Mutex::new(Some(hold)),
        });
        let info = session.info();
        self.record_running(&session);
        self.map.lock().unwrap().insert(id, session);
        Ok(info)
    }

    fn find(&self, owner: &str, id: &str) -> Result<Arc<Session>, SessionError> {
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

    /// Makes `dir`, the directory session `id` is paused into, already
    /// held: it is made and locked under another name (`saving/<pid>.<id>`)
    /// and moved into place, so that another server never finds it
    /// unheld while this one saves into it.
    fn new_paused_dir(&self, id: &str, dir: &Path) -> std::io::Result<DirHold> {
        let saving = self.records.join("saving");
        let staged = saving.join(format!("{}.{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staged);
        create_private_dir(&staged)?;
        let hold = hold_paused_dir(&staged)
            .ok_or_else(|| std::io::Error::other(format!("cannot lock {}", staged.display())))?;
        create_private_dir(&self.paused)?;
        if let Err(e) = std::fs::rename(&staged, dir) {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e);
        }
        Ok(hold)
    }

    /// Pauses session `id`: saves its VM to disk and destroys it, which
    /// gives back its memory and its place in the capacity. A paused
    /// session is left as it is. If saving fails the session runs on.
    pub async fn pause(&self, owner: &str, id: &str) -> Result<SessionInfo, SessionError> {
        let session = self.usable(owner, id)?;
        self.pause_session(&session).await
    }

    async fn pause_session(&self, session: &Arc<Session>) -> Result<SessionInfo, SessionError> {
        let ended = |session: &Session| SessionError::Ended {
            id: session.id.clone(),
            reason: session.ended().expect("ended"),
        };
        if session.ended().is_some() {
            return Err(ended(session));
        }
        if session.is_paused() {
            return Ok(session.info());
        }
        let paused_by_owner = self
            .map
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.owner == session.owner && s.is_paused())
            .count();
        if paused_by_owner >= session.max_paused {
            return Err(SessionError::TooManyPaused {
                owner: owner_name(&session.owner),
                limit: session.max_paused,
            });
        }
        let used = self.paused_bytes();
        if used >= self.config.paused_disk_mib << 20 {
            return Err(SessionError::NoDisk {
                used_mib: used >> 20,
                limit_mib: self.config.paused_disk_mib,
            });
        }
        let mut guard = session
            .vm
            .clone()
            .try_lock_owned()
            .map_err(|_| SessionError::Busy(session.id.clone()))?;
        let Some(vm) = guard.take() else {
            return match session.is_paused() {
                true => Ok(session.info()),
                false => Err(ended(session)),
            };
        };
        let dir = &session.paused_dir;
        match self.new_paused_dir(&session.id, dir) {
            Ok(hold) => *session.dir_hold.lock().unwrap() = Some(hold),
            Err(e) => {
                *guard = Some(vm);
                return Err(SessionError::Pause(format!(
                    "create {}: {e}",
                    dir.display()
                )));
            }
        }
        match vm.pause(&dir.join(PAUSED_STATE)).await {
            Ok(paused) => {
                let at = SystemTime::now();
                tracing::info!(
                    target: "runner::session",
                    session = %session.id,
                    disk_bytes = paused.saved.bytes,
                    pause_time_ms = paused.pause_time_ms,
                    "session paused"
                );
                session.life.lock().unwrap().paused = Some((paused.clone(), at));
                let record = PausedRecord {
                    owner: session.owner.clone(),
                    info: session.info(),
                    request: session.plan.request.clone(),
                    max_paused: session.max_paused,
                    vm: paused,
                };
                let path = dir.join(PAUSED_RECORD);
                let temporary = dir.join(".session.json");
                let written = std::fs::write(
                    &temporary,
                    serde_json::to_vec(&record).expect("a record serializes"),
                )
                .and_then(|()| std::fs::rename(&temporary, &path));
                if let Err(e) = written {
                    tracing::warn!(target: "runner::session", session = %session.id, error = %e, "cannot record the paused session; it will not outlive this server");
                }
                let _ = std::fs::remove_file(&session.record);
                session.hold.lock().unwrap().take();
                Ok(session.info())
            }
            Err((vm, PauseError::Save(error))) => {
                *guard = Some(vm);
                session.remove_paused_dir();
                let message = error_chain(&error);
                tracing::warn!(target: "runner::session", session = %session.id, error = %message, "pause failed; the session runs on");
                Err(SessionError::Pause(message))
            }
            Err((vm, error @ PauseError::Broken(_))) => {
                let message = error_chain(&error);
                drop(guard);
                vm.destroy().await;
                fail(session, message.clone()).await;
                Err(SessionError::Pause(message))
            }
        }
    }

    /// Resumes paused session `id` holding `hold` (its place in the
    /// capacity, as [`Sessions::open`] takes it): its VM comes back from
    /// disk with its files, processes and memory, fresh entropy and the
    /// host's clock. A running session is left as it is. A session that
    /// cannot resume ends, with the reason.
    pub async fn resume(
        &self,
        owner: &str,
        id: &str,
        hold: Box<dyn Send>,
    ) -> Result<SessionInfo, SessionError> {
        let session = self.usable(owner, id)?;
        if let Some(reason) = session.ended() {
            return Err(SessionError::Ended {
                id: id.to_string(),
                reason,
            });
        }
        let mut guard = session
            .vm
            .clone()
            .try_lock_owned()
            .map_err(|_| SessionError::Busy(id.to_string()))?;
        if guard.is_some() {
            return Ok(session.info());
        }
        let paused = session.life.lock().unwrap().paused.clone();
        let Some((paused, _)) = paused else {
            return Err(SessionError::Ended {
                id: id.to_string(),
                reason: session.ended().unwrap_or(EndReason::Deleted),
            });
        };
        let begun = Instant::now();
        match self
            .vms
            .resume(&paused, &session.id, session.plan.network.as_ref())
            .await
        {
            Ok(vm) => {
                *guard = Some(vm);
                drop(guard);
                session.life.lock().unwrap().paused = None;
                *session.hold.lock().unwrap() = Some(hold);
                session.used();
                self.record_running(&session);
                session.remove_paused_dir();
                tracing::info!(
                    target: "runner::session",
                    session = %id,
                    resume_time_ms = begun.elapsed().as_secs_f64() * 1e3,
                    "session resumed"
                );
                Ok(session.info())
            }
            Err(error) => {
                let message = error_chain(&error);
                drop(guard);
                fail(&session, format!("it could not resume: {message}")).await;
                Err(SessionError::Resume(message))
            }
        }
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

    /// Ends sessions old past their limits, pauses (or ends) those idle
    /// past theirs, and forgets ended ones after `ended_kept_s`. Called
    /// every second by [`Sessions::start_reaper`].
    pub async fn reap(self: &Arc<Self>) {
        let now = Instant::now();
        let kept = Duration::from_secs(self.config.ended_kept_s);
        self.lost
            .lock()
            .unwrap()
            .retain(|_, lost| now - lost.found < kept);
        let sessions: Vec<Arc<Session>> = self.map.lock().unwrap().values().cloned().collect();
        for session in sessions {
            let (idle_for, ended_at) = {
                let life = session.life.lock().unwrap();
                (now - life.last_used, life.ended.as_ref().map(|(_, at)| *at))
            };
            if let Some(at) = ended_at {
                if now - at >= kept {
                    self.map.lock().unwrap().remove(&session.id);
                }
                continue;
            }
            let plan = &session.plan;
            let reason = if now - session.born >= plan.max_lifetime {
                EndReason::Lifetime {
                    seconds: plan.max_lifetime.as_secs(),
                }
            } else if idle_for >= plan.idle_timeout
                && !session.is_paused()
                && session.vm.try_lock().is_ok()
            {
                EndReason::Idle {
                    seconds: plan.idle_timeout.as_secs(),
                }
            } else {
                continue;
            };
            if let (EndReason::Idle { .. }, true) = (&reason, self.config.pause_when_idle) {
                let sessions = self.clone();
                let session = session.clone();
                tokio::spawn(async move {
                    match sessions.pause_session(&session).await {
                        Ok(_) => {}
                        Err(SessionError::Busy(_)) => {}
                        Err(error) => {
                            tracing::info!(target: "runner::session", session = %session.id, error = %error, "an idle session could not be paused; it ends");
                            finish(&session, reason).await;
                        }
                    }
                });
                continue;
            }
            tracing::info!(target: "runner::session", session = %session.id, reason = %reason, "session ended");
            let session = session.clone();
            tokio::spawn(async move { finish(&session, reason).await });
        }
    }

    /// Reaps every second until the returned task is aborted.
    pub fn start_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(sessions) = sessions.upgrade() else {
                    return;
                };
                sessions.reap().await;
            }
        })
    }
}

/// Ends `session` for `reason` (unless it has ended already): stops its
/// turn, destroys its VM and gives back what it held.
async fn finish(session: &Session, reason: EndReason) {
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

/// One request's hold on a session: the only one that may use its VM until
/// it is dropped.
pub struct Turn {
    session: Arc<Session>,
    guard: OwnedMutexGuard<Option<SessionVm>>,
}

impl Turn {
    /// Runs `plan` (from [`Sessions::plan_execution`]) in the session's VM.
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
        self.files(move |vm| Box::pin(async move { vm.write(&path, &content, executable).await }))
            .await
    }

    /// Reads a regular file of the working directory, up to `limit` bytes.
    pub async fn read(self, path: String, limit: u64) -> Result<Vec<u8>, SessionError> {
        self.files(move |vm| Box::pin(async move { vm.read(&path, limit).await }))
            .await
    }

    /// Lists a directory of the working directory.
    pub async fn list(self, path: String) -> Result<Vec<super::FileEntry>, SessionError> {
        self.files(move |vm| Box::pin(async move { vm.list(&path).await }))
            .await
    }

    /// Removes a file or directory of the working directory.
    pub async fn remove(self, path: String) -> Result<(), SessionError> {
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

/// Ends `session` because its VM failed.
async fn fail(session: &Session, message: String) {
    tracing::warn!(target: "runner::session", session = %session.id, error = %message, "session failed");
    finish(session, EndReason::Failed { message }).await;
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
