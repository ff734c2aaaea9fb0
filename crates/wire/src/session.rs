//! What a client sees of sessions: their description, why one ended, and
//! the entries of its working directory.

use serde::{Deserialize, Serialize};

pub use runner_protocol::{FileEntry, FileKind};

use crate::result::StartKind;

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

impl SessionState {
    /// Its name, as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Running => "running",
            SessionState::Paused => "paused",
            SessionState::Ended => "ended",
            SessionState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PausedInfo {
    pub paused_unix_ms: u64,
    /// Bytes its saved VM takes on disk: what it changed of its snapshot's
    /// memory, and its devices.
    pub disk_bytes: u64,
    /// Milliseconds from the request to pause until the VM was saved.
    pub pause_time_ms: f64,
}

/// `GET /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

/// `GET /v1/sessions/{id}/files?path=DIR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileListing {
    pub path: String,
    pub entries: Vec<FileEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_states_name_is_the_one_the_api_writes() {
        use SessionState::*;
        for state in [Running, Paused, Ended, Failed] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }
}
