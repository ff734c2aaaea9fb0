//! One execution, end to end: check the request, make sure the images exist,
//! boot a fresh VM, hand the agent the request, collect what comes back,
//! destroy the VM.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_protocol::{ExecRequest, File, Frame, Limits, StageReport, StageSpec};
use serde::{Serialize, Serializer};
use tokio::sync::{OnceCell, mpsc};

use crate::image::{DebianSource, GuestImages, ImageError, ImageStore, Progress};
use crate::lang::{Language, LanguageError, Languages};
use crate::state::StateDir;
use crate::vmm::qemu::QemuBackend;
use crate::vmm::{Accel, Backend, ChannelError, Vm, VmSpec, VmmError, accel};

/// The guest agent, built static by this crate's build script.
pub const AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runner-agent"));

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Language(#[from] LanguageError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("preparing guest images")]
    Image(#[from] ImageError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error("the agent did not say hello within {seconds} s; console:\n{console}")]
    BootTimeout { seconds: u64, console: String },
    #[error("lost the agent ({source}); console:\n{console}")]
    AgentLost {
        #[source]
        source: ChannelError,
        console: String,
    },
    #[error("the agent failed: {0}")]
    Agent(String),
    #[error("the agent broke the protocol: {0}")]
    Protocol(String),
    #[error(
        "the agent gave no result within {seconds} s of the time limit; the VM was killed; console:\n{console}"
    )]
    Unresponsive { seconds: u64, console: String },
}

/// Bounds on what a request may ask for, and the defaults it gets.
#[derive(Debug, Clone)]
pub struct LimitPolicy {
    pub default_wall: Duration,
    pub max_wall: Duration,
    pub default_output_bytes: u64,
    pub max_output_bytes: u64,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        Self {
            default_wall: Duration::from_secs(10),
            max_wall: Duration::from_secs(300),
            default_output_bytes: 1 << 20,
            max_output_bytes: 64 << 20,
        }
    }
}

/// A file of the request. The entry point is named like the language's
/// `source_file` (`main.py`, `main.sh`).
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub content: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct ExecutionRequest {
    pub language: String,
    pub files: Vec<SourceFile>,
    pub stdin: Vec<u8>,
    /// Appended to the run command.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub wall_limit: Option<Duration>,
    pub output_limit: Option<u64>,
    /// Given by the caller (e.g. from a `traceparent` header), else made up.
    pub trace_id: Option<String>,
}

/// Output as it is produced, for callers that stream it.
#[derive(Debug, Clone)]
pub enum OutputChunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub name: String,
    #[serde(serialize_with = "lossy")]
    pub stdout: Vec<u8>,
    #[serde(serialize_with = "lossy")]
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub output_truncated: bool,
    /// Milliseconds from spawn to exit, measured in the guest.
    pub wall_time: f64,
}

/// How the VM of an execution was obtained.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    Cold,
}

/// The seed's `ExecutionMetrics`; durations in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionMetrics {
    pub trace_id: String,
    pub language: String,
    pub start: StartKind,
    /// Starting the VMM until its devices are up (the agent channel connects).
    pub vm_boot_time: f64,
    /// From then until the agent said hello: kernel boot and init.
    pub ready_time: f64,
    /// From sending the request until the last stage reported.
    pub execution_time: f64,
    /// From taking the request until the result was ready.
    pub total_time: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecutionResult {
    pub trace_id: String,
    pub language: String,
    pub stages: Vec<StageResult>,
    pub metrics: ExecutionMetrics,
    pub backend: &'static str,
    pub accel: Accel,
}

impl ExecutionResult {
    /// The stage whose exit decides the outcome: the last one that ran.
    pub fn last_stage(&self) -> Option<&StageResult> {
        self.stages.last()
    }
}

fn lossy<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs executions. Cheap to share behind an `Arc`.
pub struct Runner {
    state: StateDir,
    languages: Languages,
    images: ImageStore,
    limits: LimitPolicy,
    backend: OnceCell<Arc<dyn Backend>>,
}

impl Runner {
    pub fn new(state: StateDir, limits: LimitPolicy) -> Result<Self, ExecError> {
        state.create().map_err(|e| {
            ExecError::Invalid(format!("cannot create {}: {e}", state.root().display()))
        })?;
        let swept = state.sweep_stale_runs();
        if swept > 0 {
            tracing::info!(swept, "removed run directories of dead runner processes");
        }
        Ok(Self {
            images: ImageStore::new(state.images(), DebianSource::default()),
            languages: Languages::builtin()?,
            state,
            limits,
            backend: OnceCell::new(),
        })
    }

    pub fn languages(&self) -> &Languages {
        &self.languages
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Builds whatever image `language` is missing.
    pub async fn prepare(
        &self,
        language: &Language,
        progress: Arc<dyn Progress + Send>,
    ) -> Result<GuestImages, ExecError> {
        let images = self.images.clone();
        let language = language.clone();
        tokio::task::spawn_blocking(move || images.ensure(&language, AGENT_BINARY, &*progress))
            .await
            .expect("image build does not panic")
            .map_err(ExecError::from)
    }

    /// The backend, chosen on first use: this may boot a probe VM from
    /// `kernel` and `initramfs` to see whether KVM works.
    pub async fn backend(
        &self,
        kernel: &Path,
        initramfs: &Path,
    ) -> Result<Arc<dyn Backend>, ExecError> {
        let backend = self
            .backend
            .get_or_try_init(|| async {
                let binary = QemuBackend::locate()?;
                let version = QemuBackend::version(&binary).await?;
                let choice = accel::choose(
                    &binary,
                    &version,
                    kernel,
                    initramfs,
                    &self.state.runs(),
                    &self.state.root().join("accel.json"),
                )
                .await;
                tracing::info!(backend = "qemu", %version, accel = %choice.accel, reason = %choice.reason, "backend chosen");
                Ok::<_, ExecError>(
                    Arc::new(QemuBackend::new(binary, version, choice.accel, choice.reason))
                        as Arc<dyn Backend>,
                )
            })
            .await?;
        Ok(backend.clone())
    }

    /// Checks a request against the language and the limit policy, before
    /// anything is built or booted.
    pub fn plan(&self, request: &ExecutionRequest) -> Result<(Language, ExecRequest), ExecError> {
        let language = self.languages.get(&request.language)?.clone();
        let wall = request.wall_limit.unwrap_or(self.limits.default_wall);
        if wall.is_zero() || wall > self.limits.max_wall {
            return Err(ExecError::Invalid(format!(
                "time limit must be above 0 and at most {} s",
                self.limits.max_wall.as_secs_f64()
            )));
        }
        let output = request
            .output_limit
            .unwrap_or(self.limits.default_output_bytes);
        if output == 0 || output > self.limits.max_output_bytes {
            return Err(ExecError::Invalid(format!(
                "output limit must be above 0 and at most {} bytes",
                self.limits.max_output_bytes
            )));
        }
        if !request.files.iter().any(|f| f.name == language.source_file) {
            return Err(ExecError::Invalid(format!(
                "no {} among the files: {} code goes in {}",
                language.source_file, language.name, language.source_file
            )));
        }
        for file in &request.files {
            check_file_name(&file.name)?;
        }
        for (key, value) in &request.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err(ExecError::Invalid(format!(
                    "environment variable {key:?} is not a valid NAME=value pair"
                )));
            }
        }
        let limits = Limits {
            wall_ms: wall.as_millis() as u64,
            output_bytes: output,
        };
        let mut stages = Vec::new();
        if let Some(compile) = &language.compile {
            stages.push(StageSpec {
                name: "compile".into(),
                argv: compile.clone(),
                stdin: false,
                limits,
            });
        }
        let mut run = language.run.clone();
        run.extend(request.args.iter().cloned());
        stages.push(StageSpec {
            name: "run".into(),
            argv: run,
            stdin: true,
            limits,
        });
        let exec = ExecRequest {
            language: language.name.clone(),
            files: request
                .files
                .iter()
                .map(|f| File {
                    name: f.name.clone(),
                    content: f.content.clone(),
                })
                .collect(),
            stages,
            stdin: request.stdin.clone(),
            env: request.env.clone(),
        };
        Ok((language, exec))
    }

    /// Runs one execution in a fresh VM. If `output` is given, stdout and
    /// stderr chunks are sent there as they arrive. Dropping the returned
    /// future kills the VM and removes its files.
    pub async fn execute(
        &self,
        request: ExecutionRequest,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
    ) -> Result<ExecutionResult, ExecError> {
        let received = Instant::now();
        let (language, exec) = self.plan(&request)?;
        let images = self.prepare(&language, Arc::new(())).await?;
        let backend = self
            .backend(&images.kernel.vmlinux, &images.initramfs)
            .await?;
        let trace_id = request.trace_id.clone().unwrap_or_else(new_trace_id);
        let spec = VmSpec {
            id: trace_id.clone(),
            kernel: images.kernel.vmlinux.clone(),
            initramfs: images.initramfs.clone(),
            rootfs: Some(images.rootfs.clone()),
            memory_mib: language.memory_mib,
            vcpus: 1,
            kernel_args: Vec::new(),
            run_dir: self
                .state
                .runs()
                .join(format!("{}.{trace_id}", std::process::id())),
        };

        let boot_started = Instant::now();
        let mut vm = backend.start(spec).await?;
        let vm_boot = boot_started.elapsed();
        let boot_timeout = match backend.info().accel {
            Accel::Kvm => Duration::from_secs(20),
            Accel::Tcg => Duration::from_secs(90),
        };
        let outcome = converse(&mut *vm, &exec, boot_timeout, output).await;
        vm.destroy().await;
        let conversation = outcome?;

        let metrics = ExecutionMetrics {
            trace_id: trace_id.clone(),
            language: language.name.clone(),
            start: StartKind::Cold,
            vm_boot_time: ms(vm_boot),
            ready_time: ms(conversation.ready_at - boot_started - vm_boot),
            execution_time: ms(conversation.done_at - conversation.ready_at),
            total_time: ms(conversation.done_at - received),
        };
        let result = ExecutionResult {
            trace_id,
            language: language.name,
            stages: conversation.stages,
            metrics,
            backend: backend.info().name,
            accel: backend.info().accel,
        };
        log_execution(&result);
        Ok(result)
    }
}

fn check_file_name(name: &str) -> Result<(), ExecError> {
    let path = std::path::Path::new(name);
    let inside = !name.is_empty()
        && name.len() <= 255
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if inside {
        Ok(())
    } else {
        Err(ExecError::Invalid(format!(
            "file name {name:?} must be a relative path inside the working directory"
        )))
    }
}

struct Conversation {
    ready_at: Instant,
    done_at: Instant,
    stages: Vec<StageResult>,
}

/// Hello, request, output until done.
async fn converse(
    vm: &mut dyn Vm,
    exec: &ExecRequest,
    boot_timeout: Duration,
    output: Option<mpsc::UnboundedSender<OutputChunk>>,
) -> Result<Conversation, ExecError> {
    let lost = |vm: &dyn Vm| {
        let console = vm.console_tail();
        move |source| ExecError::AgentLost { source, console }
    };
    match tokio::time::timeout(boot_timeout, vm.channel().recv()).await {
        Ok(Ok(Frame::Hello(_))) => {}
        Ok(Ok(other)) => {
            return Err(ExecError::Protocol(format!(
                "expected hello, got {:?}",
                other.kind()
            )));
        }
        Ok(Err(e)) => return Err(lost(vm)(e)),
        Err(_) => {
            return Err(ExecError::BootTimeout {
                seconds: boot_timeout.as_secs(),
                console: vm.console_tail(),
            });
        }
    }
    let ready_at = Instant::now();
    if let Err(e) = vm.channel().send(&Frame::Exec(exec.clone())).await {
        return Err(lost(vm)(e));
    }

    // The agent enforces the limits; this deadline only catches an agent
    // that stopped working.
    const GRACE: Duration = Duration::from_secs(15);
    let budget: Duration = exec
        .stages
        .iter()
        .map(|s| Duration::from_millis(s.limits.wall_ms) + GRACE)
        .sum();
    let deadline = tokio::time::Instant::now() + budget;
    let mut stages = Vec::new();
    let mut current = StageResult::empty();
    loop {
        let frame = match tokio::time::timeout_at(deadline, vm.channel().recv()).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => return Err(lost(vm)(e)),
            Err(_) => {
                return Err(ExecError::Unresponsive {
                    seconds: GRACE.as_secs(),
                    console: vm.console_tail(),
                });
            }
        };
        // The agent cuts output at the limit; a guest that does not is not
        // allowed to fill the host's memory.
        let room = exec.stages.get(stages.len()).map_or(0, |spec| {
            (spec.limits.output_bytes as usize)
                .saturating_sub(current.stdout.len() + current.stderr.len())
        });
        match frame {
            Frame::Stdout(mut bytes) => {
                bytes.truncate(room);
                current.stdout.extend_from_slice(&bytes);
                if let Some(tx) = &output {
                    let _ = tx.send(OutputChunk::Stdout(bytes));
                }
            }
            Frame::Stderr(mut bytes) => {
                bytes.truncate(room);
                current.stderr.extend_from_slice(&bytes);
                if let Some(tx) = &output {
                    let _ = tx.send(OutputChunk::Stderr(bytes));
                }
            }
            Frame::StageEnd(_) if stages.len() == exec.stages.len() => {
                return Err(ExecError::Protocol(
                    "more stages ended than were asked for".into(),
                ));
            }
            Frame::StageEnd(report) => {
                stages.push(std::mem::replace(&mut current, StageResult::empty()).finish(report));
            }
            Frame::Done => {
                return Ok(Conversation {
                    ready_at,
                    done_at: Instant::now(),
                    stages,
                });
            }
            Frame::Error(failure) => return Err(ExecError::Agent(failure.message)),
            other => {
                return Err(ExecError::Protocol(format!(
                    "unexpected {:?} frame",
                    other.kind()
                )));
            }
        }
    }
}

impl StageResult {
    fn empty() -> Self {
        Self {
            name: String::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code: None,
            signal: None,
            timed_out: false,
            output_truncated: false,
            wall_time: 0.0,
        }
    }

    fn finish(self, report: StageReport) -> Self {
        Self {
            name: report.name,
            exit_code: report.exit_code,
            signal: report.signal,
            timed_out: report.timed_out,
            output_truncated: report.output_truncated,
            wall_time: report.wall_time_us as f64 / 1e3,
            ..self
        }
    }
}

/// A W3C trace id: 32 lowercase hex digits.
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The one structured log line of an execution.
fn log_execution(result: &ExecutionResult) {
    let m = &result.metrics;
    let last = result.last_stage();
    tracing::info!(
        target: "runner::execution",
        trace_id = %m.trace_id,
        language = %m.language,
        start = ?m.start,
        vm_boot_time = m.vm_boot_time,
        ready_time = m.ready_time,
        execution_time = m.execution_time,
        total_time = m.total_time,
        exit_code = last.and_then(|s| s.exit_code),
        signal = last.and_then(|s| s.signal),
        timed_out = last.is_some_and(|s| s.timed_out),
        output_truncated = last.is_some_and(|s| s.output_truncated),
        accel = %result.accel,
        "execution finished"
    );
}
