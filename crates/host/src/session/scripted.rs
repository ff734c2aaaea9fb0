//! The session registry against a scripted agent peer (see
//! [`crate::exec::scripted`]): owners and their limits, one request at a
//! time, a file operation the guest refuses or that breaks its VM, a pause
//! that fails, the reaper's ends, and the sessions a killed server left.
//! The VMs here are the peer's; what a real VM does in a session is the
//! real-VM suite's to show.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runner_protocol::{AgentFailure, FileOp, FileProblem, Frame, StageReport};
use runner_wire::ErrorCode;

use super::vm::{PausedVm, ResumeError, SessionVms};
use super::*;
use crate::exec::scripted::{self, Peer};
use crate::exec::{
    ExecError, ExecutionRequest, ExecutionResult, LimitPolicy, Planner, SourceFile, Status,
};
use crate::lang::Languages;
use crate::net::Egress;

/// How a scripted agent answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Agent {
    /// Runs every program (its output `ran`), keeps files in memory, and
    /// refuses to read what it does not have.
    WellBehaved,
    /// As [`Agent::WellBehaved`], but hangs up at its first file operation,
    /// as a guest whose agent died would.
    DiesAtFiles,
}

/// Session VMs whose agents are scripts.
struct ScriptedVms {
    agent: Agent,
    running: Arc<AtomicUsize>,
    /// Whether each VM opened has been destroyed, in order.
    destroyed: Mutex<Vec<Arc<AtomicBool>>>,
}

impl ScriptedVms {
    fn new(agent: Agent) -> Arc<Self> {
        Arc::new(Self {
            agent,
            running: Arc::default(),
            destroyed: Mutex::default(),
        })
    }

    fn destroyed(&self, index: usize) -> bool {
        self.destroyed.lock().unwrap()[index].load(Ordering::SeqCst)
    }

    fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl SessionVms for ScriptedVms {
    async fn open(&self, _: &SessionPlan, _: &str) -> Result<SessionVm, ExecError> {
        let (vm, peer, destroyed) = scripted::pair();
        self.destroyed.lock().unwrap().push(destroyed);
        tokio::spawn(agent(peer, self.agent));
        Ok(SessionVm::scripted(Box::new(vm), &self.running))
    }

    async fn resume(
        &self,
        paused: &PausedVm,
        _: &str,
        _: Option<&Egress>,
    ) -> Result<SessionVm, ResumeError> {
        Err(ResumeError::Missing(paused.saved.kernel.clone()))
    }
}

/// Plays `kind` until the host hangs up.
async fn agent(mut peer: Peer, kind: Agent) {
    let mut files: std::collections::HashMap<String, Vec<u8>> = Default::default();
    while let Some(frame) = peer.recv().await {
        match frame {
            Frame::Exec(request) => {
                peer.send(&Frame::Stdout(b"ran\n".to_vec())).await;
                for stage in &request.stages {
                    let report = StageReport {
                        exit_code: Some(0),
                        wall_time_us: 1_000,
                        ..StageReport::new(stage.stage)
                    };
                    peer.send(&Frame::StageEnd(report)).await;
                }
                peer.send(&Frame::Done).await;
            }
            Frame::Files(_) if kind == Agent::DiesAtFiles => return,
            Frame::Files(FileOp::Write { path, content, .. }) => {
                files.insert(path, content);
                peer.send(&Frame::Done).await;
            }
            Frame::Files(FileOp::Read { path }) => match files.get(&path) {
                Some(content) => {
                    let chunk = runner_protocol::CollectedChunk {
                        name: path,
                        offset: 0,
                        content: content.clone(),
                        executable: false,
                        last: true,
                    };
                    peer.send(&Frame::Collected(chunk)).await;
                    peer.send(&Frame::Done).await;
                }
                None => {
                    let failure = AgentFailure {
                        message: format!("no file {path}"),
                        file: Some(FileProblem::NotFound),
                    };
                    peer.send(&Frame::Error(failure)).await;
                }
            },
            other => panic!("the scripted agent got {:?}", other.kind()),
        }
    }
}

struct Fixture {
    sessions: Arc<Sessions>,
    vms: Arc<ScriptedVms>,
    dir: tempfile::TempDir,
}

fn fixture(agent: Agent, config: SessionConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let vms = ScriptedVms::new(agent);
    let planner = Planner::new(Languages::builtin().unwrap(), LimitPolicy::default(), &[]);
    let sessions = Sessions::new(vms.clone(), planner, config, dir.path());
    Fixture { sessions, vms, dir }
}

impl Fixture {
    /// A new Python session of `owner`'s, who may run `limit` at once.
    async fn open(&self, owner: &str, limit: usize) -> Result<SessionInfo, SessionError> {
        let plan = self.sessions.plan(SessionRequest {
            language: "python".into(),
            ..SessionRequest::default()
        })?;
        let slot = self.sessions.reserve(owner, limit)?;
        self.sessions.open(owner, 4, plan, Box::new(slot)).await
    }

    async fn execute(&self, owner: &str, id: &str) -> Result<ExecutionResult, SessionError> {
        let request = ExecutionRequest {
            files: vec![SourceFile::entry("print(1)")],
            ..ExecutionRequest::default()
        };
        let plan = self.sessions.plan_execution(owner, id, request)?;
        Ok(self.sessions.turn(owner, id)?.execute(plan, None).await)
    }

    /// Waits until session `id` is in `state`, failing after 10 s.
    async fn until(&self, owner: &str, id: &str, state: SessionState) -> SessionInfo {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = self.sessions.get(owner, id).unwrap();
            if info.state == state {
                return info;
            }
            assert!(Instant::now() < deadline, "never {state:?}: {info:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn code(error: SessionError) -> ErrorCode {
    error.code()
}

#[tokio::test]
async fn a_session_is_its_owners_alone_and_within_their_limit() {
    let f = fixture(Agent::WellBehaved, SessionConfig::default());
    let info = f.open("alice", 1).await.unwrap();
    assert_eq!(info.state, SessionState::Running);
    assert!(info.id.starts_with("ses_") && info.id.len() == 4 + 32);
    let result = f.execute("alice", &info.id).await.unwrap();
    assert_eq!(result.status, Status::Ok, "{:?}", result.message);
    assert_eq!(result.run.unwrap().stdout, b"ran\n");
    assert_eq!(f.sessions.get("alice", &info.id).unwrap().executions, 1);

    // Nobody else sees it, or can use it.
    assert_eq!(
        code(f.sessions.get("bob", &info.id).unwrap_err()),
        ErrorCode::SessionNotFound
    );
    assert_eq!(
        code(f.execute("bob", &info.id).await.unwrap_err()),
        ErrorCode::SessionNotFound
    );
    assert!(f.sessions.list("bob").is_empty());
    assert_eq!(f.sessions.list("alice").len(), 1);

    // One running at once for alice; bob has his own.
    let refused = f.open("alice", 1).await.unwrap_err();
    assert_eq!(code(refused), ErrorCode::TooManySessions);
    assert!(f.open("bob", 1).await.is_ok());

    // Deleting gives the place back and destroys the VM.
    f.sessions.delete("alice", &info.id).await.unwrap();
    assert!(f.vms.destroyed(0));
    let gone = f.execute("alice", &info.id).await.unwrap_err();
    assert_eq!(
        code(gone),
        ErrorCode::SessionNotFound,
        "a deleted session is gone"
    );
    assert!(f.open("alice", 1).await.is_ok(), "the place is free again");
}

#[tokio::test]
async fn a_session_takes_one_request_at_a_time() {
    let f = fixture(Agent::WellBehaved, SessionConfig::default());
    let id = f.open("alice", 4).await.unwrap().id;
    let turn = f.sessions.turn("alice", &id).unwrap();
    let busy = f.sessions.turn("alice", &id).err().unwrap();
    assert_eq!(code(busy), ErrorCode::SessionBusy);
    assert!(
        f.sessions.pause("alice", &id).await.is_err(),
        "no pause while a request runs"
    );
    drop(turn);
    assert!(
        f.sessions.turn("alice", &id).is_ok(),
        "free once it is done"
    );
}

#[tokio::test]
async fn a_file_the_guest_refuses_is_the_callers_error_and_the_session_goes_on() {
    let f = fixture(Agent::WellBehaved, SessionConfig::default());
    let id = f.open("alice", 4).await.unwrap().id;
    let turn = || f.sessions.turn("alice", &id).unwrap();
    turn()
        .write("data.txt".into(), b"hello".to_vec(), false)
        .await
        .unwrap();
    assert_eq!(turn().read("data.txt".into(), 100).await.unwrap(), b"hello");
    let missing = turn().read("missing.txt".into(), 100).await.unwrap_err();
    assert_eq!(code(missing), ErrorCode::FileNotFound);
    let large = turn().read("data.txt".into(), 2).await.unwrap_err();
    assert_eq!(code(large), ErrorCode::FileTooLarge);
    assert_eq!(
        f.sessions.get("alice", &id).unwrap().state,
        SessionState::Running
    );
    assert_eq!(f.execute("alice", &id).await.unwrap().status, Status::Ok);
}

#[tokio::test]
async fn a_path_the_working_directory_cannot_hold_is_refused_before_the_guest() {
    // The agent dies at its first file operation: none of these reach it.
    let f = fixture(Agent::DiesAtFiles, SessionConfig::default());
    let id = f.open("alice", 1).await.unwrap().id;
    let long = "é".repeat(130);
    for path in [
        "a\0b",
        &"x".repeat(300),
        &long,
        "../x",
        "/etc/passwd",
        "-rf",
    ] {
        let turn = f.sessions.turn("alice", &id).unwrap();
        let refused = turn
            .write(path.to_string(), Vec::new(), false)
            .await
            .unwrap_err();
        assert_eq!(code(refused), ErrorCode::InvalidPath, "{path:?}");
        let turn = f.sessions.turn("alice", &id).unwrap();
        assert!(turn.read(path.to_string(), 10).await.is_err(), "{path:?}");
    }
    assert_eq!(
        f.sessions.get("alice", &id).unwrap().state,
        SessionState::Running
    );
    assert!(!f.vms.destroyed(0));
}

#[tokio::test]
async fn a_guest_that_fails_in_a_file_operation_ends_its_session() {
    let f = fixture(Agent::DiesAtFiles, SessionConfig::default());
    let id = f.open("alice", 1).await.unwrap().id;
    let broken = f
        .sessions
        .turn("alice", &id)
        .unwrap()
        .write("a".into(), Vec::new(), false)
        .await
        .unwrap_err();
    assert_eq!(code(broken), ErrorCode::SessionBroken);
    let info = f.sessions.get("alice", &id).unwrap();
    assert_eq!(info.state, SessionState::Failed);
    assert!(f.vms.destroyed(0));
    assert_eq!(f.vms.running(), 0, "no VM counted as running");
    let after = f.execute("alice", &id).await.unwrap_err();
    assert_eq!(code(after), ErrorCode::SessionFailed);
    assert!(f.open("alice", 1).await.is_ok(), "its place is free");
}

#[tokio::test]
async fn a_pause_that_cannot_save_leaves_the_session_running() {
    let f = fixture(Agent::WellBehaved, SessionConfig::default());
    let id = f.open("alice", 1).await.unwrap().id;
    let failed = f.sessions.pause("alice", &id).await.unwrap_err();
    assert_eq!(code(failed), ErrorCode::PauseFailed);
    assert_eq!(
        f.sessions.get("alice", &id).unwrap().state,
        SessionState::Running
    );
    assert_eq!(f.execute("alice", &id).await.unwrap().status, Status::Ok);
    assert!(!f.vms.destroyed(0));
}

#[tokio::test]
async fn the_reaper_ends_idle_and_old_sessions() {
    let config = SessionConfig {
        idle_timeout_s: 1,
        pause_when_idle: false,
        ..SessionConfig::default()
    };
    let f = fixture(Agent::WellBehaved, config);
    let idle = f.open("alice", 4).await.unwrap().id;
    let plan = f
        .sessions
        .plan(SessionRequest {
            language: "python".into(),
            idle_timeout_s: Some(60),
            max_lifetime_s: Some(1),
            ..SessionRequest::default()
        })
        .unwrap();
    let slot = f.sessions.reserve("alice", 4).unwrap();
    let old = f
        .sessions
        .open("alice", 4, plan, Box::new(slot))
        .await
        .unwrap()
        .id;
    f.sessions.reap().await;
    assert_eq!(
        f.sessions.get("alice", &idle).unwrap().state,
        SessionState::Running,
        "not idle for long enough yet"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    f.sessions.reap().await;
    let info = f.until("alice", &idle, SessionState::Ended).await;
    assert_eq!(info.ended, Some(EndReason::Idle { seconds: 1 }));
    let info = f.until("alice", &old, SessionState::Ended).await;
    assert_eq!(info.ended, Some(EndReason::Lifetime { seconds: 1 }));
    assert!(f.vms.destroyed(0) && f.vms.destroyed(1));
}

#[tokio::test]
async fn an_idle_session_that_cannot_be_paused_ends() {
    let config = SessionConfig {
        idle_timeout_s: 1,
        pause_when_idle: true,
        ..SessionConfig::default()
    };
    let f = fixture(Agent::WellBehaved, config);
    let id = f.open("alice", 1).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    f.sessions.reap().await;
    let info = f.until("alice", &id, SessionState::Ended).await;
    assert_eq!(info.ended, Some(EndReason::Idle { seconds: 1 }));
}

#[tokio::test]
async fn the_sessions_of_a_killed_server_are_reported_lost() {
    let f = fixture(Agent::WellBehaved, SessionConfig::default());
    let id = f.open("alice", 1).await.unwrap().id;
    // As if this server had been killed: its record names a process that
    // no longer runs.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let ours = f
        .dir
        .path()
        .join(format!("{}.{id}.json", std::process::id()));
    let theirs = f.dir.path().join(format!("{dead_pid}.{id}.json"));
    std::fs::rename(&ours, &theirs).unwrap();

    let planner = Planner::new(Languages::builtin().unwrap(), LimitPolicy::default(), &[]);
    let later = Sessions::new(
        ScriptedVms::new(Agent::WellBehaved),
        planner,
        SessionConfig::default(),
        f.dir.path(),
    );
    assert_eq!(later.recover(), (1, 0));
    assert!(!theirs.exists(), "the record is taken");
    let info = later.get("alice", &id).unwrap();
    assert_eq!(info.state, SessionState::Ended);
    assert_eq!(info.ended, Some(EndReason::Lost));
    assert!(later.get("bob", &id).is_err(), "still alice's alone");
    let turn = later.turn("alice", &id).err().unwrap();
    assert_eq!(code(turn), ErrorCode::SessionEnded);
    later.delete("alice", &id).await.unwrap();
    assert!(later.get("alice", &id).is_err(), "forgotten once deleted");
}
