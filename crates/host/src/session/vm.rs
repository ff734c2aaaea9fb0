//! A session's VM: acquired as a one-shot execution's is, then told it is a
//! session's; executions and file operations on it, one at a time.
//!
//! The guest is as untrusted here as anywhere: every answer is bounded and
//! has a deadline. A file operation the agent refuses (a missing file, a
//! bad path, a full disk) is the caller's error and the session goes on;
//! anything else (a lost agent, a broken protocol) means the VM cannot be
//! trusted to serve the session any more, and the caller ends it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_protocol::{FILE_CHUNK, FileEntry, FileOp, FileProblem, Frame, SessionSpec};
use runner_wire::ErrorCode;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::SessionPlan;
use crate::capacity::MachineSlots;
use crate::exec::acquire::{self, AcquireError, Running, Vms, Want};
use crate::exec::conversation::{self, ConversationError};
use crate::exec::transcript::{OutputChunk, Transcript};
use crate::exec::{ExecError, ExecutionResult, Plan, StartKind};
use crate::net::{Egress, Proxy};
use crate::vmm::{Accel, Saved, Vm, VmmError};

/// Why a file operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The agent refused it, for what it asked.
    #[error("{message}")]
    Refused {
        problem: FileProblem,
        message: String,
    },
    /// The file is bigger than the caller takes.
    #[error("{path} is over {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    /// The VM failed; the session cannot go on.
    #[error("the session's VM failed, and the session has ended with its files")]
    Broken(#[source] ConversationError),
}

impl FileError {
    /// The error's kind, as every front end reports it.
    pub fn code(&self) -> ErrorCode {
        match self {
            FileError::Refused { problem, .. } => match problem {
                FileProblem::NotFound => ErrorCode::FileNotFound,
                FileProblem::Invalid => ErrorCode::InvalidPath,
                FileProblem::Full => ErrorCode::DiskFull,
            },
            FileError::TooLarge { .. } => ErrorCode::FileTooLarge,
            FileError::Broken(_) => ErrorCode::SessionBroken,
        }
    }
}

/// Why a session's VM was not saved.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// Saving failed; the VM runs on as before.
    #[error("saving the session's VM failed; it runs on")]
    Save(#[source] VmmError),
    /// Saving failed, and the VM could not go on.
    #[error("saving the session's VM failed, and it could not go on")]
    Broken(#[source] VmmError),
}

/// Why a saved session's VM did not come back.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{} is gone", .0.display())]
    Missing(PathBuf),
    #[error("it was saved under {saved}, and this server runs {now}")]
    Backend { saved: String, now: String },
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    #[error(
        "the resumed VM did not answer: {}; console:\n{console}",
        crate::error_chain(error)
    )]
    NotReady {
        error: ConversationError,
        console: String,
    },
}

/// A session's VM saved to disk by [`SessionVm::pause`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PausedVm {
    pub saved: Saved,
    /// The language's version, for results.
    pub version: String,
    /// Milliseconds from the request to pause until the VM was saved and
    /// gone.
    pub pause_time_ms: f64,
}

/// Where a registry's session VMs come from: the engine's VMs ([`Vms`]),
/// or a scripted agent peer in the registry's unit tests.
#[async_trait::async_trait]
pub(crate) trait SessionVms: Send + Sync {
    /// A VM for the session `plan` describes, named `id`, ready for its
    /// executions.
    async fn open(&self, plan: &SessionPlan, id: &str) -> Result<SessionVm, ExecError>;
    /// The VM `paused` describes, back as session `id`'s, with `network`.
    async fn resume(
        &self,
        paused: &PausedVm,
        id: &str,
        network: Option<&Egress>,
    ) -> Result<SessionVm, ResumeError>;
}

#[async_trait::async_trait]
impl SessionVms for Vms {
    async fn open(&self, plan: &SessionPlan, id: &str) -> Result<SessionVm, ExecError> {
        SessionVm::open(self, plan, id).await
    }

    async fn resume(
        &self,
        paused: &PausedVm,
        id: &str,
        network: Option<&Egress>,
    ) -> Result<SessionVm, ResumeError> {
        SessionVm::resume(self, paused, id, network).await
    }
}

/// How long a file operation may take beyond its size's share.
const FILE_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries a listing may have.
const MAX_LISTING: usize = 100_000;

/// A running VM that serves one session.
pub struct SessionVm {
    vm: Box<dyn Vm>,
    _running: Running,
    /// How the VM was started.
    pub start: StartKind,
    /// When it was asked for and when its agent was ready for the session.
    pub started: Instant,
    pub ready: Instant,
    version: String,
    backend: (&'static str, Accel),
    /// Its network port, served for its life if the session may use the
    /// network.
    proxy: Option<Proxy>,
    /// The machine's slots, one taken for each execution (not between
    /// them: an idle session's VM uses no CPU).
    slots: Option<MachineSlots>,
}

impl SessionVm {
    /// A VM for `plan`: from the pool, a snapshot or a cold boot, as a
    /// one-shot execution gets; then the agent is told it serves a session.
    pub(crate) async fn open(vms: &Vms, plan: &SessionPlan, id: &str) -> Result<Self, ExecError> {
        let started = Instant::now();
        let images = vms
            .prepare(&plan.language, Arc::new(()))
            .await
            .map_err(AcquireError::from)?;
        let backend = vms
            .backend(&images.kernel.vmlinux, &images.initramfs)
            .await
            .map_err(AcquireError::from)?;
        let want = Want {
            language: &plan.language,
            memory_mib: plan.vm_memory_mib,
            id,
        };
        let acquired = vms.acquire(want, &images, &*backend).await?;
        let mut vm = acquired.vm;
        let opened = async {
            if let acquire::Readiness::AwaitHello { wake } = acquired.readiness {
                conversation::await_ready(vm.channel(), wake, acquired.boot_timeout).await?;
            }
            let spec = SessionSpec {
                disk_bytes: plan.disk_mib << 20,
            };
            request(vm.channel(), Frame::Session(spec), FILE_TIMEOUT, "session").await
        };
        if let Err(error) = opened.await {
            let console = vm.console_tail();
            vm.destroy().await;
            return Err(ExecError::Agent { error, console });
        }
        let proxy = serve_network(&mut *vm, plan.network.as_ref());
        Ok(Self {
            slots: vms.slots().cloned(),
            vm,
            proxy,
            _running: acquired._running,
            start: acquired.start,
            started,
            ready: Instant::now(),
            version: images.rootfs_manifest.version.clone(),
            backend: (backend.info().name, backend.info().accel),
        })
    }

    /// Runs `plan` in this VM; output goes to `output` as it comes. The
    /// second value is false when the VM failed and must not be used again.
    pub(crate) async fn execute(
        &mut self,
        plan: &Plan,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
        mut input: Option<crate::exec::Input>,
    ) -> (ExecutionResult, bool) {
        let _slot = match &self.slots {
            Some(slots) => match slots.take().await {
                Ok(slot) => {
                    if let Some(cpu) = slot.cpu() {
                        acquire::pin(&*self.vm, cpu);
                    }
                    Some(slot)
                }
                Err(source) => {
                    let error = AcquireError::Slot {
                        path: slots.dir().to_path_buf(),
                        source,
                    };
                    let result = Transcript::new(output).finish(
                        plan,
                        Instant::now(),
                        Err(ExecError::Acquire(error)),
                    );
                    return (result, true);
                }
            },
            None => None,
        };
        let received = Instant::now();
        let mut transcript = Transcript::new(output);
        transcript.start = StartKind::Session;
        transcript.version = self.version.clone();
        transcript.backend = Some(self.backend);
        transcript.ready(received);
        // What happened on the network between executions is nobody's; a
        // proxy that stopped serves again.
        if let Some(proxy) = &self.proxy {
            proxy.revive();
            proxy.report();
        }
        let clock = self.vm.vcpu_clock();
        let outcome = match conversation::converse(
            self.vm.channel(),
            &plan.exec,
            &mut transcript,
            input.as_mut(),
            clock.as_ref(),
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(error) => Err(ExecError::Agent {
                error,
                console: self.vm.console_tail(),
            }),
        };
        transcript.network = self.proxy.as_ref().map(Proxy::report);
        let healthy = outcome.is_ok() && self.vm.is_alive();
        (transcript.finish(plan, received, outcome), healthy)
    }

    /// Writes `content` to `path` of the working directory, in pieces.
    pub async fn write(
        &mut self,
        path: &str,
        content: &[u8],
        executable: bool,
    ) -> Result<(), FileError> {
        let mut offset = 0;
        let mut pieces = content.chunks(FILE_CHUNK).peekable();
        let empty: &[u8] = &[];
        let first = if pieces.peek().is_none() {
            Some(empty)
        } else {
            None
        };
        for piece in first.into_iter().chain(pieces) {
            let op = FileOp::Write {
                path: path.to_string(),
                offset,
                content: piece.to_vec(),
                executable,
            };
            self.file_request(op).await?;
            offset += piece.len() as u64;
        }
        Ok(())
    }

    /// The content of the regular file `path`, if it has at most `limit`
    /// bytes.
    pub async fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, FileError> {
        let channel = self.vm.channel();
        channel
            .send(&Frame::Files(FileOp::Read {
                path: path.to_string(),
            }))
            .await
            .map_err(|e| FileError::Broken(ConversationError::Lost(e)))?;
        let mut content = Vec::new();
        let mut received = 0u64;
        let mut ended = false;
        loop {
            match recv(channel, FILE_TIMEOUT).await? {
                Frame::Collected(chunk)
                    if !ended && chunk.name == path && chunk.offset == received =>
                {
                    received += chunk.content.len() as u64;
                    // Past the limit, the rest is read and dropped so that
                    // the conversation stays in step.
                    if received <= limit {
                        content.extend_from_slice(&chunk.content);
                    }
                    ended = chunk.last;
                }
                Frame::Done if ended && received > limit => {
                    return Err(FileError::TooLarge {
                        path: path.to_string(),
                        limit,
                    });
                }
                Frame::Done if ended => return Ok(content),
                Frame::Error(failure) => return Err(refused(failure)),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// What the directory `path` holds (`""` for the working directory).
    pub async fn list(&mut self, path: &str) -> Result<Vec<FileEntry>, FileError> {
        let channel = self.vm.channel();
        channel
            .send(&Frame::Files(FileOp::List {
                path: path.to_string(),
            }))
            .await
            .map_err(|e| FileError::Broken(ConversationError::Lost(e)))?;
        let mut entries = Vec::new();
        loop {
            match recv(channel, FILE_TIMEOUT).await? {
                Frame::Listing(piece) if entries.len() + piece.len() <= MAX_LISTING => {
                    entries.extend(piece)
                }
                Frame::Done => return Ok(entries),
                Frame::Error(failure) => return Err(refused(failure)),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Removes the file or directory `path`.
    pub async fn remove(&mut self, path: &str) -> Result<(), FileError> {
        self.file_request(FileOp::Remove {
            path: path.to_string(),
        })
        .await
    }

    async fn file_request(&mut self, op: FileOp) -> Result<(), FileError> {
        let channel = self.vm.channel();
        channel
            .send(&Frame::Files(op))
            .await
            .map_err(|e| FileError::Broken(ConversationError::Lost(e)))?;
        match recv(channel, FILE_TIMEOUT).await? {
            Frame::Done => Ok(()),
            Frame::Error(failure) => Err(refused(failure)),
            other => Err(unexpected(other)),
        }
    }

    /// Saves the VM to `state` (see [`Vm::save`]) and destroys it. On
    /// error it runs on, unless the error says it could not.
    pub(crate) async fn pause(mut self, state: &Path) -> Result<PausedVm, (Self, PauseError)> {
        let begun = Instant::now();
        match self.vm.save(state).await {
            Ok(saved) => {
                self.vm.destroy().await;
                Ok(PausedVm {
                    saved,
                    version: self.version,
                    pause_time_ms: begun.elapsed().as_secs_f64() * 1e3,
                })
            }
            Err(error) => {
                let _ = std::fs::remove_file(state);
                match self.vm.pause(false).await {
                    Ok(()) => Err((self, PauseError::Save(error))),
                    Err(_) => Err((self, PauseError::Broken(error))),
                }
            }
        }
    }

    /// Brings back the VM `paused` describes, as session `id`'s, with
    /// fresh entropy and the host's clock.
    pub(crate) async fn resume(
        vms: &Vms,
        paused: &PausedVm,
        id: &str,
        network: Option<&Egress>,
    ) -> Result<Self, ResumeError> {
        let started = Instant::now();
        let saved = &paused.saved;
        if let Some(missing) = saved.needs().into_iter().find(|path| !path.exists()) {
            return Err(ResumeError::Missing(missing.to_path_buf()));
        }
        let backend = vms.backend(&saved.kernel, &saved.initramfs).await?;
        let now = backend.info().describe();
        if now != saved.backend {
            return Err(ResumeError::Backend {
                saved: saved.backend.clone(),
                now,
            });
        }
        let (mut vm, running) = vms.start(&*backend, vms.resume_spec(saved, id)).await?;
        let timeout = acquire::boot_timeout(backend.info().accel);
        let woken = conversation::await_ready(vm.channel(), Some(acquire::wake()), timeout).await;
        if let Err(error) = woken {
            let console = vm.console_tail();
            vm.destroy().await;
            return Err(ResumeError::NotReady { error, console });
        }
        let proxy = serve_network(&mut *vm, network);
        Ok(Self {
            slots: vms.slots().cloned(),
            vm,
            proxy,
            _running: running,
            start: StartKind::Snapshot,
            started,
            ready: Instant::now(),
            version: paused.version.clone(),
            backend: (backend.info().name, backend.info().accel),
        })
    }

    /// A session's VM on `vm` as it is, its agent ready: for the
    /// registry's tests against a scripted agent peer.
    #[cfg(test)]
    pub(crate) fn scripted(vm: Box<dyn Vm>, running: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        let now = Instant::now();
        Self {
            vm,
            _running: Running::new(running),
            start: StartKind::Snapshot,
            started: now,
            ready: now,
            version: "scripted".into(),
            backend: ("scripted", Accel::Tcg),
            proxy: None,
            slots: None,
        }
    }

    /// The end of the guest's console, for an error message.
    pub fn console_tail(&self) -> String {
        self.vm.console_tail()
    }

    pub async fn destroy(self) {
        self.vm.destroy().await;
    }
}

/// Serves `vm`'s network port under `network`, if the session may use
/// the network.
fn serve_network(vm: &mut dyn Vm, network: Option<&Egress>) -> Option<Proxy> {
    Some(Proxy::serve(vm.take_network()?, network?.clone()))
}

/// Sends `frame` and waits for the agent's `Done`.
async fn request(
    channel: &mut crate::vmm::AgentChannel,
    frame: Frame,
    timeout: Duration,
    what: &'static str,
) -> Result<(), ConversationError> {
    channel
        .send(&frame)
        .await
        .map_err(ConversationError::Lost)?;
    match tokio::time::timeout(timeout, channel.recv()).await {
        Ok(Ok(Frame::Done)) => Ok(()),
        Ok(Ok(Frame::Error(failure))) => Err(ConversationError::Agent(failure.message)),
        Ok(Ok(other)) => Err(ConversationError::Protocol(format!(
            "{what} answered with {:?}",
            other.kind()
        ))),
        Ok(Err(e)) => Err(ConversationError::Lost(e)),
        Err(_) => Err(ConversationError::Timeout {
            what,
            seconds: timeout.as_secs(),
        }),
    }
}

async fn recv(
    channel: &mut crate::vmm::AgentChannel,
    timeout: Duration,
) -> Result<Frame, FileError> {
    match tokio::time::timeout(timeout, channel.recv()).await {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(e)) => Err(FileError::Broken(ConversationError::Lost(e))),
        Err(_) => Err(FileError::Broken(ConversationError::Timeout {
            what: "file operation",
            seconds: timeout.as_secs(),
        })),
    }
}

/// The agent's refusal: the caller's error if it names a file problem,
/// else the VM's.
fn refused(failure: runner_protocol::AgentFailure) -> FileError {
    match failure.file {
        Some(problem) => FileError::Refused {
            problem,
            message: failure.message,
        },
        None => FileError::Broken(ConversationError::Agent(failure.message)),
    }
}

fn unexpected(frame: Frame) -> FileError {
    FileError::Broken(ConversationError::Protocol(format!(
        "unexpected {:?} frame in a file operation",
        frame.kind()
    )))
}
