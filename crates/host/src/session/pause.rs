//! Pausing a session and resuming it. A running session can be paused:
//! its VM saved to the state directory (`sessions/paused/<id>/`) as a
//! delta over its snapshot and destroyed, which frees its memory and its
//! place in the capacity. A paused session outlives the server: a server
//! starting later takes it up, and it resumes on request, or by itself
//! when a request comes for it. While a server holds a paused session it
//! holds a lock on its directory, so that another server on the same state
//! directory leaves it alone; a server that is killed lets go of it, and
//! the next one takes it up. A running session's record lets a server
//! started after a killed one report it lost.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::SessionRequest;
use super::registry::{
    EndReason, Life, Lost, Session, SessionError, SessionInfo, SessionState, Sessions, fail,
    owner_name,
};
use super::vm::{PauseError, PausedVm};
use crate::error_chain;

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
pub(super) type DirHold = nix::fcntl::Flock<std::fs::File>;

/// Holds the paused session directory `dir` unless another living server
/// does; `None` then (or if it cannot be opened: it was just removed).
pub(super) fn hold_paused_dir(dir: &Path) -> Option<DirHold> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(PAUSED_LOCK))
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
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

/// Creates `dir`, readable by this user only: a saved VM holds the
/// guest's memory.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Sessions {
    /// Where this server records running session `id`: `<pid>.<id>.json`,
    /// so that a later server tells a dead server's records from a live
    /// one's.
    pub(super) fn record_path(&self, id: &str) -> PathBuf {
        self.records
            .join(format!("{}.{id}.json", std::process::id()))
    }

    /// Writes the record of running session `session`, so that a server
    /// started after this one is killed can report it lost.
    pub(super) fn record_running(&self, session: &Session) {
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
                record: self.record_path(&id),
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

    pub(super) async fn pause_session(
        &self,
        session: &Arc<Session>,
    ) -> Result<SessionInfo, SessionError> {
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
}
