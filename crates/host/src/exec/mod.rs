//! One execution, end to end: check the request, make sure the images exist,
//! boot a fresh VM, hand the agent the request, collect what comes back,
//! destroy the VM.
//!
//! A request that is wrong (unknown language, limits out of range, bad file
//! names) is refused with an [`ExecError`] before anything is built or
//! booted. Once a request is accepted it always gets an [`ExecutionResult`]:
//! if Runner Codes fails along the way, the status is `internal_error`, the
//! message says why, and whatever output had come back is kept.

mod limits;
mod result;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use runner_protocol::{ExecRequest, File, Frame, PrestartSpec, StageReport, StageSpec, Wake};
use tokio::sync::{OnceCell, mpsc};

pub use limits::{LimitPolicy, LimitSet, StageLimits};
pub use result::{ExecutionMetrics, ExecutionResult, StageResult, StartKind, Status};

use crate::image::{Agent, DebianSource, GuestImages, ImageError, ImageStore, Progress};
use crate::lang::{Language, LanguageError, Languages};
use crate::pool::{PoolConfig, Pooled, Pools};
use crate::snapshot::{Snapshot, SnapshotKey, SnapshotStore};
use crate::state::StateDir;
use crate::vmm::qemu::QemuBackend;
use crate::vmm::{Accel, Backend, ChannelError, Memory, Vm, VmSpec, VmmError, accel};

/// The guest agent, built static by this crate's build script.
pub const AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runner-agent"));

/// [`AGENT_BINARY`] with its digest, taken on first use.
pub fn agent() -> &'static Agent {
    static AGENT: LazyLock<Agent> = LazyLock::new(|| Agent::new(AGENT_BINARY));
    &AGENT
}

/// Memory the VM has beyond its program's limit: the guest kernel, the agent
/// and the page cache of the interpreter.
const GUEST_RESERVE_MIB: u64 = 64;

/// The memory of a VM whose largest stage may use `program_mib`.
pub fn vm_memory_mib(program_mib: u64) -> u32 {
    (program_mib + GUEST_RESERVE_MIB) as u32
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Language(#[from] LanguageError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("cannot create the state directory {path} (set RUNNER_HOME to move it)")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    #[error("warming {language} before its snapshot failed: {message}")]
    Warm { language: String, message: String },
    #[error("the agent broke the protocol: {0}")]
    Protocol(String),
    #[error(
        "the agent gave no result within {seconds} s of the time limit; the VM was killed; console:\n{console}"
    )]
    Unresponsive { seconds: u64, console: String },
    /// The caller stopped the execution (see [`Runner::execute_until`]).
    #[error("stopped: {0}")]
    Stopped(String),
}

impl ExecError {
    /// Whether the caller caused this (and should change the request), as
    /// opposed to Runner Codes failing.
    pub fn is_client_error(&self) -> bool {
        matches!(self, ExecError::Language(_) | ExecError::Invalid(_))
    }
}

/// A file of the request. The entry point is named like the language's
/// `source_file` (`main.py`, `main.go`, ...).
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
    pub compile_limits: StageLimits,
    pub run_limits: StageLimits,
    /// Given by the caller (e.g. from a `traceparent` header), else made up.
    pub trace_id: Option<String>,
}

/// Output as it is produced, for callers that stream it.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    /// "compile" or "run".
    pub stage: String,
    pub stderr: bool,
    pub bytes: Vec<u8>,
}

/// An accepted request, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub language: Language,
    pub exec: ExecRequest,
    /// The VM's memory: the largest stage limit plus the guest's reserve.
    pub vm_memory_mib: u32,
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs executions. Cheap to share behind an `Arc`.
pub struct Runner {
    state: StateDir,
    languages: Languages,
    images: ImageStore,
    snapshots: SnapshotStore,
    /// Restore from snapshots where they exist (`RUNNER_SNAPSHOTS=off` boots
    /// every VM cold).
    use_snapshots: AtomicBool,
    /// Snapshots hold the language's prestarted runtime where it has one
    /// (`RUNNER_PRESTART=off` makes snapshots without).
    use_prestart: bool,
    limits: LimitPolicy,
    backend: OnceCell<Arc<dyn Backend>>,
    vms_running: Arc<AtomicUsize>,
    /// Warm pools, once [`Runner::start_pools`] started them.
    pools: std::sync::OnceLock<Arc<Pools>>,
    pool_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Counts a VM as running while it lives.
struct RunningVm(Arc<AtomicUsize>);

impl RunningVm {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What stops an execution early, with the reason to report.
type Stop<'a> = Pin<&'a mut (dyn Future<Output = String> + Send)>;

impl Runner {
    pub fn new(state: StateDir, limits: LimitPolicy) -> Result<Self, ExecError> {
        state.create().map_err(|source| ExecError::StateDir {
            path: state.root().to_path_buf(),
            source,
        })?;
        let swept = state.sweep_stale_runs();
        if swept > 0 {
            tracing::info!(swept, "removed run directories of dead runner processes");
        }
        Ok(Self {
            images: ImageStore::new(state.images(), DebianSource::default()),
            snapshots: SnapshotStore::new(state.root().join("snapshots")),
            use_snapshots: AtomicBool::new(!matches!(
                std::env::var("RUNNER_SNAPSHOTS").as_deref(),
                Ok("off" | "0" | "false")
            )),
            use_prestart: !matches!(
                std::env::var("RUNNER_PRESTART").as_deref(),
                Ok("off" | "0" | "false")
            ),
            languages: Languages::builtin()?,
            state,
            limits,
            backend: OnceCell::new(),
            vms_running: Arc::default(),
            pools: std::sync::OnceLock::new(),
            pool_task: std::sync::Mutex::default(),
        })
    }

    /// Whether executions restore from snapshots where they can (else they
    /// boot cold), e.g. for a benchmark of cold boots.
    pub fn set_snapshots(&self, on: bool) {
        self.use_snapshots.store(on, Ordering::Relaxed);
    }

    pub fn languages(&self) -> &Languages {
        &self.languages
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn limits(&self) -> &LimitPolicy {
        &self.limits
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The backend, if one has been chosen (see [`Runner::backend`]).
    pub fn backend_info(&self) -> Option<crate::vmm::BackendInfo> {
        self.backend.get().map(|b| b.info().clone())
    }

    /// VMs started by this runner and not yet destroyed.
    pub fn vms_running(&self) -> usize {
        self.vms_running.load(Ordering::Relaxed)
    }

    /// Builds whatever image `language` is missing.
    pub async fn prepare(
        &self,
        language: &Language,
        progress: Arc<dyn Progress + Send>,
    ) -> Result<GuestImages, ExecError> {
        let images = self.images.clone();
        let language = language.clone();
        tokio::task::spawn_blocking(move || images.ensure(&language, agent(), &*progress))
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
                Ok::<_, ExecError>(Arc::new(QemuBackend::new(
                    binary,
                    version,
                    choice.accel,
                    choice.reason,
                )) as Arc<dyn Backend>)
            })
            .await?;
        Ok(backend.clone())
    }

    /// Checks a request against the language and the limit policy, before
    /// anything is built or booted.
    pub fn plan(&self, request: &ExecutionRequest) -> Result<Plan, ExecError> {
        let language = self.languages.get(&request.language)?.clone();
        if !request.files.iter().any(|f| f.name == language.source_file) {
            return Err(ExecError::Invalid(format!(
                "no {} among the files: {} code goes in {}",
                language.source_file, language.name, language.source_file
            )));
        }
        for file in &request.files {
            check_file_name(&file.name)?;
        }
        if request
            .files
            .iter()
            .enumerate()
            .any(|(i, f)| request.files[..i].iter().any(|g| g.name == f.name))
        {
            return Err(ExecError::Invalid("two files have the same name".into()));
        }
        for (key, value) in &request.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err(ExecError::Invalid(format!(
                    "environment variable {key:?} is not a valid NAME=value pair"
                )));
            }
        }
        let mut stages = Vec::new();
        if let Some(compile) = &language.compile {
            let limits = self
                .limits
                .resolve("compile", &request.compile_limits, &language)
                .map_err(ExecError::Invalid)?;
            stages.push((
                limits,
                StageSpec {
                    name: "compile".into(),
                    argv: compile.clone(),
                    stdin: false,
                    limits: limits.to_protocol(),
                },
            ));
        }
        let limits = self
            .limits
            .resolve("run", &request.run_limits, &language)
            .map_err(ExecError::Invalid)?;
        let mut run = language.run.clone();
        run.extend(request.args.iter().cloned());
        stages.push((
            limits,
            StageSpec {
                name: "run".into(),
                argv: run,
                stdin: true,
                limits: limits.to_protocol(),
            },
        ));
        let largest = stages.iter().map(|(l, _)| l.memory_mib).max().unwrap_or(0);
        // The language's environment, then the request's on top.
        let mut env = language.env.clone();
        env.extend(request.env.clone());
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
            stages: stages.into_iter().map(|(_, spec)| spec).collect(),
            stdin: request.stdin.clone(),
            env,
        };
        Ok(Plan {
            language,
            exec,
            vm_memory_mib: vm_memory_mib(largest),
        })
    }

    /// Runs one execution in a fresh VM. If `output` is given, stdout and
    /// stderr chunks are sent there as they arrive. Dropping the returned
    /// future kills the VM and removes its files.
    ///
    /// Errors only for requests that are wrong; every accepted request gets
    /// a result, `internal_error` included.
    pub async fn execute(
        &self,
        request: ExecutionRequest,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
    ) -> Result<ExecutionResult, ExecError> {
        self.execute_until(request, output, std::future::pending())
            .await
    }

    /// [`Runner::execute`], stopped early when `stop` completes: the VM is
    /// destroyed and the result is `internal_error` with `stop`'s reason in
    /// its message, keeping the output that came back until then.
    pub async fn execute_until(
        &self,
        request: ExecutionRequest,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
        stop: impl Future<Output = String> + Send,
    ) -> Result<ExecutionResult, ExecError> {
        let received = Instant::now();
        let plan = self.plan(&request)?;
        let trace_id = request.trace_id.clone().unwrap_or_else(new_trace_id);
        let mut transcript = Transcript::new(output);
        let mut stop = std::pin::pin!(stop);
        let outcome = self
            .boot_and_run(&plan, &trace_id, &mut transcript, stop.as_mut())
            .await;
        let result = transcript.finish(&plan, trace_id, received, outcome);
        log_execution(&result);
        Ok(result)
    }

    async fn boot_and_run(
        &self,
        plan: &Plan,
        trace_id: &str,
        transcript: &mut Transcript,
        mut stop: Stop<'_>,
    ) -> Result<(), ExecError> {
        let images = tokio::select! {
            images = self.prepare(&plan.language, Arc::new(())) => images?,
            reason = &mut stop => return Err(ExecError::Stopped(reason)),
        };
        transcript.version = images.rootfs_manifest.version.clone();
        let backend = self
            .backend(&images.kernel.vmlinux, &images.initramfs)
            .await?;
        transcript.backend = Some((backend.info().name, backend.info().accel));
        let boot_timeout = match backend.info().accel {
            Accel::Kvm => Duration::from_secs(20),
            Accel::Tcg => Duration::from_secs(90),
        };
        if let Some(vm) = self.take_pooled(plan, transcript).await {
            let _running = RunningVm::new(&self.vms_running);
            return run_on(vm, &plan.exec, None, boot_timeout, transcript, stop).await;
        }
        // A snapshot's VM may be bigger than the request needs: the cgroup
        // limits inside are what the program gets.
        let snapshot = self
            .use_snapshots
            .load(Ordering::Relaxed)
            .then(|| {
                self.snapshots
                    .find(&self.snapshot_key(&plan.language, &images, &*backend))
            })
            .flatten()
            .filter(|s| s.memory_mib() >= plan.vm_memory_mib);
        let spec = match &snapshot {
            Some(snapshot) => {
                transcript.start = StartKind::Snapshot;
                self.restore_spec(&images, snapshot, trace_id)
            }
            None => self.vm_spec(&images, plan.vm_memory_mib, trace_id),
        };
        let boot_started = Instant::now();
        let vm = tokio::select! {
            vm = backend.start(spec) => vm?,
            reason = &mut stop => return Err(ExecError::Stopped(reason)),
        };
        let _running = RunningVm::new(&self.vms_running);
        transcript.vm_started = Some(boot_started);
        transcript.vm_up = Some(Instant::now());
        let wake = snapshot.is_some().then(wake);
        run_on(vm, &plan.exec, Some(wake), boot_timeout, transcript, stop).await
    }

    /// A VM from the warm pool, resumed and made unique again, if one waits
    /// and comes back to life. One that does not (killed from outside while
    /// it waited) is destroyed and the next tried, so the request is not
    /// lost.
    async fn take_pooled(&self, plan: &Plan, transcript: &mut Transcript) -> Option<Box<dyn Vm>> {
        let pools = self.pools.get()?;
        while let Some(pooled) = pools.take(&plan.language.name, plan.vm_memory_mib) {
            let started = Instant::now();
            let mut vm = pooled.vm;
            if vm.is_alive() && vm.pause(false).await.is_ok() {
                let up = Instant::now();
                if await_ready(&mut *vm, Some(wake()), Duration::from_secs(10))
                    .await
                    .is_ok()
                {
                    transcript.start = StartKind::Pool;
                    transcript.vm_started = Some(started);
                    transcript.vm_up = Some(up);
                    transcript.ready_at = Some(Instant::now());
                    transcript.stage_started = transcript.ready_at;
                    return Some(vm);
                }
            }
            tracing::warn!(language = %plan.language.name, "a pooled VM did not come back; trying the next");
            vm.destroy().await;
        }
        None
    }
}

/// Waits for `vm` to be ready (`ready`: whether to wake it first, and how
/// long to wait; `None` when it is ready already), runs `exec` on it, and
/// destroys it.
async fn run_on(
    mut vm: Box<dyn Vm>,
    exec: &ExecRequest,
    ready: Option<Option<Wake>>,
    boot_timeout: Duration,
    transcript: &mut Transcript,
    mut stop: Stop<'_>,
) -> Result<(), ExecError> {
    let outcome = tokio::select! {
        outcome = async {
            if let Some(wake) = ready {
                await_ready(&mut *vm, wake, boot_timeout).await?;
                transcript.ready_at = Some(Instant::now());
                transcript.stage_started = transcript.ready_at;
            }
            converse(&mut *vm, exec, transcript).await
        } => outcome,
        reason = &mut stop => Err(ExecError::Stopped(reason)),
    };
    vm.destroy().await;
    outcome
}

impl Runner {
    /// Starts warm pools: a task that keeps restored, paused VMs ready per
    /// language (see [`crate::pool`]) until the runner is dropped or
    /// [`Runner::stop_pools`] is called. `memory_mib` bounds all pooled VMs
    /// together.
    pub fn start_pools(self: &Arc<Self>, config: PoolConfig, memory_mib: u64) {
        let interval = Duration::from_millis(config.refill_interval_ms.max(10));
        let pools = Arc::new(Pools::new(config, memory_mib));
        if self.pools.set(pools.clone()).is_err() {
            return;
        }
        let runner = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                let Some(runner) = runner.upgrade() else {
                    return;
                };
                runner.tend_pools(&pools).await;
                drop(runner);
                tokio::select! {
                    () = pools.wake.notified() => {}
                    () = tokio::time::sleep(interval) => {}
                }
            }
        });
        *self.pool_task.lock().unwrap() = Some(task);
    }

    /// Stops refilling and destroys every pooled VM.
    pub async fn stop_pools(&self) {
        let task = self.pool_task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        if let Some(pools) = self.pools.get() {
            for pooled in pools.drain() {
                pooled.vm.destroy().await;
            }
        }
    }

    /// VMs waiting in `language`'s warm pool.
    pub fn pool_size(&self, language: &str) -> usize {
        self.pools.get().map_or(0, |p| p.size(language))
    }

    /// Recycles stale pool VMs and restores new ones up to each pool's
    /// target. Only languages whose images and snapshot exist get a pool.
    async fn tend_pools(&self, pools: &Pools) {
        for pooled in pools.stale() {
            tracing::info!(language = %pooled.language, "recycling a pooled VM (too old, or its VMM died)");
            pooled.vm.destroy().await;
        }
        let agent = agent();
        for language in self.languages.selected(&pools.config.languages) {
            for pooled in pools.surplus(&language.name) {
                tracing::info!(language = %pooled.language, "shrinking the warm pool: demand fell off");
                pooled.vm.destroy().await;
            }
            // A full pool needs no images, backend or snapshot looked up:
            // this runs every refill interval for every language.
            if !pools.below_target(&language.name) {
                continue;
            }
            if self.images.rootfs_manifest(language).is_none()
                || self.images.boot_files(agent).is_none()
            {
                continue;
            }
            let Ok(images) = self.prepare(language, Arc::new(())).await else {
                continue;
            };
            let Ok(backend) = self
                .backend(&images.kernel.vmlinux, &images.initramfs)
                .await
            else {
                continue;
            };
            let Some(snapshot) = self
                .snapshots
                .find(&self.snapshot_key(language, &images, &*backend))
            else {
                continue;
            };
            while pools.reserve(&language.name, snapshot.memory_mib()) {
                match self.restore_paused(&images, &snapshot, &*backend).await {
                    Ok(vm) => pools.put(Pooled {
                        vm,
                        language: language.name.clone(),
                        memory_mib: snapshot.memory_mib(),
                        created: Instant::now(),
                    }),
                    Err(e) => {
                        pools.unreserve(&language.name, snapshot.memory_mib());
                        tracing::warn!(language = %language.name, error = %e, "could not fill the warm pool");
                        break;
                    }
                }
            }
        }
    }

    /// A VM restored from `snapshot`, made unique, then paused.
    async fn restore_paused(
        &self,
        images: &GuestImages,
        snapshot: &Snapshot,
        backend: &dyn Backend,
    ) -> Result<Box<dyn Vm>, ExecError> {
        let id = format!("pool-{}", new_trace_id());
        let mut vm = backend
            .start(self.restore_spec(images, snapshot, &id))
            .await?;
        let ready = async {
            await_ready(&mut *vm, Some(wake()), Duration::from_secs(30)).await?;
            vm.pause(true).await?;
            Ok::<_, ExecError>(())
        };
        match ready.await {
            Ok(()) => Ok(vm),
            Err(e) => {
                vm.destroy().await;
                Err(e)
            }
        }
    }

    /// A VM of `snapshot`'s size that restores it instead of booting.
    fn restore_spec(&self, images: &GuestImages, snapshot: &Snapshot, id: &str) -> VmSpec {
        VmSpec {
            memory: Memory::Restore {
                path: snapshot.memory(),
                state: snapshot.state(),
            },
            ..self.vm_spec(images, snapshot.memory_mib(), id)
        }
    }

    fn vm_spec(&self, images: &GuestImages, memory_mib: u32, id: &str) -> VmSpec {
        VmSpec {
            id: id.to_string(),
            kernel: images.kernel.vmlinux.clone(),
            initramfs: images.initramfs.clone(),
            rootfs: Some(images.rootfs.clone()),
            memory_mib,
            vcpus: 1,
            kernel_args: Vec::new(),
            run_dir: self
                .state
                .runs()
                .join(format!("{}.{id}", std::process::id())),
            memory: Memory::Private,
        }
    }

    /// What `language`'s snapshot depends on, with these images and backend.
    fn snapshot_key(
        &self,
        language: &Language,
        images: &GuestImages,
        backend: &dyn Backend,
    ) -> SnapshotKey {
        let id = |path: &Path| {
            path.parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let info = backend.info();
        SnapshotKey::new(
            &language.name,
            &images.kernel.id,
            &id(&images.initramfs),
            &id(&images.rootfs),
            format!("{} {}", info.name, info.version),
            info.accel.to_string(),
            // `-cpu host` is whatever this machine's CPU is.
            match backend.cpu_model() {
                "host" => format!("host: {}", crate::machine::host_cpu_signature()),
                model => model.to_string(),
            },
            vm_memory_mib(language.memory_mib.into()),
            language.warm.clone(),
            self.prestart(language).map(|spec| spec.argv),
        )
    }

    /// `language`'s snapshot, made first if it does not exist: a VM booted
    /// until its agent is ready, warmed with the language's `warm` program,
    /// then saved.
    pub async fn snapshot(&self, language: &Language) -> Result<Snapshot, ExecError> {
        let images = self.prepare(language, Arc::new(())).await?;
        let backend = self
            .backend(&images.kernel.vmlinux, &images.initramfs)
            .await?;
        let key = self.snapshot_key(language, &images, &*backend);
        let memory_mib = key.memory_mib;
        let store = self.snapshots.clone();
        let begun = tokio::task::spawn_blocking(move || store.begin(&key))
            .await
            .expect("locking does not panic")?;
        let pending = match begun {
            Ok(pending) => pending,
            Err(existing) => return Ok(existing),
        };
        let id = format!("snapshot-{}-{}", language.name, new_trace_id());
        let mut spec = self.vm_spec(&images, memory_mib, &id);
        spec.memory = Memory::Template {
            path: pending.memory(),
        };
        let mut vm = backend.start(spec).await?;
        let _running = RunningVm::new(&self.vms_running);
        let made = self.warm_and_save(&mut *vm, language, &pending).await;
        let console = vm.console_tail();
        vm.destroy().await;
        made.map_err(|e| match e {
            ExecError::Warm { language, message } => ExecError::Warm {
                language,
                message: format!("{message}; console:\n{console}"),
            },
            other => other,
        })?;
        Ok(pending.finish()?)
    }

    async fn warm_and_save(
        &self,
        vm: &mut dyn Vm,
        language: &Language,
        pending: &crate::snapshot::Pending,
    ) -> Result<(), ExecError> {
        let failed = |message: String| ExecError::Warm {
            language: language.name.clone(),
            message,
        };
        // A boot that fails says so with the console, as for executions.
        await_ready(vm, None, Duration::from_secs(90)).await?;
        if let Some(code) = &language.warm {
            let request = ExecutionRequest {
                language: language.name.clone(),
                files: vec![SourceFile {
                    name: language.source_file.clone(),
                    content: code.clone().into_bytes(),
                }],
                ..ExecutionRequest::default()
            };
            let plan = self.plan(&request)?;
            vm.channel()
                .send(&Frame::Warm(plan.exec))
                .await
                .map_err(|e| failed(e.to_string()))?;
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(300), vm.channel().recv())
                    .await
                    .map_err(|_| failed("no end within 300 s".into()))?
                    .map_err(|e| failed(e.to_string()))?;
                match frame {
                    Frame::StageEnd(report) if report.exit_code != Some(0) => {
                        return Err(failed(format!(
                            "its {} stage ended with {report:?}",
                            report.name
                        )));
                    }
                    Frame::Done => break,
                    Frame::Error(e) => return Err(failed(e.message)),
                    _ => {}
                }
            }
        }
        if let Some(spec) = self.prestart(language) {
            vm.channel()
                .send(&Frame::Prestart(spec))
                .await
                .map_err(|e| failed(e.to_string()))?;
            let frame = tokio::time::timeout(Duration::from_secs(120), vm.channel().recv())
                .await
                .map_err(|_| failed("the prestarted runtime was not ready within 120 s".into()))?
                .map_err(|e| failed(e.to_string()))?;
            match frame {
                Frame::Done => {}
                Frame::Error(e) => return Err(failed(format!("prestart: {}", e.message))),
                other => return Err(failed(format!("prestart: unexpected {:?}", other.kind()))),
            }
        }
        tokio::time::sleep(SETTLE).await;
        vm.snapshot(&pending.state()).await?;
        Ok(())
    }

    /// What to prestart in `language`'s snapshot: its `prestart` command
    /// unless `RUNNER_PRESTART=off`.
    fn prestart(&self, language: &Language) -> Option<PrestartSpec> {
        let argv = language.prestart.clone().filter(|_| self.use_prestart)?;
        Some(PrestartSpec {
            argv,
            replaces: language.run.clone(),
            env: language.env.clone(),
        })
    }
}

/// How long a template VM idles before its snapshot. Work the guest kernel
/// defers after the warm-up (presumably freeing the warm-up's processes
/// and cgroup) then happens once here instead of after every restore: it
/// took restore-to-ready for Node from 133 to 92 ms (median of 4 and 6)
/// under TCG.
const SETTLE: Duration = Duration::from_secs(1);

/// Fresh entropy and the host's clock for a restored VM.
fn wake() -> Wake {
    use std::io::Read;
    let mut entropy = vec![0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut entropy))
        .expect("/dev/urandom is readable");
    let unix_time_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Wake {
        entropy,
        unix_time_ns,
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

/// Everything that came back so far, kept even when the execution fails.
struct Transcript {
    output: Option<mpsc::UnboundedSender<OutputChunk>>,
    start: StartKind,
    version: String,
    backend: Option<(&'static str, Accel)>,
    vm_started: Option<Instant>,
    vm_up: Option<Instant>,
    ready_at: Option<Instant>,
    /// When the stage the agent is running began (as the host saw it).
    stage_started: Option<Instant>,
    done_at: Option<Instant>,
    stages: Vec<(String, StageResult)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Transcript {
    fn new(output: Option<mpsc::UnboundedSender<OutputChunk>>) -> Self {
        Self {
            output,
            start: StartKind::Cold,
            version: String::new(),
            backend: None,
            vm_started: None,
            vm_up: None,
            ready_at: None,
            stage_started: None,
            done_at: None,
            stages: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    fn finish(
        mut self,
        plan: &Plan,
        trace_id: String,
        received: Instant,
        outcome: Result<(), ExecError>,
    ) -> ExecutionResult {
        let now = Instant::now();
        let span = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
            (Some(from), Some(to)) => ms(to - from),
            _ => 0.0,
        };
        let metrics = ExecutionMetrics {
            trace_id: trace_id.clone(),
            language: plan.language.name.clone(),
            start: self.start,
            vm_boot_time: span(self.vm_started, self.vm_up),
            ready_time: span(self.vm_up, self.ready_at),
            execution_time: span(self.ready_at, self.done_at.or(Some(now))),
            total_time: ms(self.done_at.unwrap_or(now) - received),
        };
        // A stage cut short by a failure keeps the output it had produced.
        let unfinished = plan.exec.stages.get(self.stages.len());
        if let (Err(_), Some(started), Some(spec)) = (&outcome, self.stage_started, unfinished) {
            let report = StageReport {
                name: spec.name.clone(),
                wall_time_us: (now - started).as_micros() as u64,
                ..StageReport::default()
            };
            let stdout = std::mem::take(&mut self.stdout);
            let stderr = std::mem::take(&mut self.stderr);
            let mut stage = StageResult::new(stdout, stderr, report);
            stage.status = Status::InternalError;
            self.stages.push((spec.name.clone(), stage));
        }
        let mut take = |name: &str| {
            let index = self.stages.iter().position(|(n, _)| n == name)?;
            Some(self.stages.remove(index).1)
        };
        let compile = take("compile");
        let run = take("run");
        let (status, message) = match outcome {
            Ok(()) => ExecutionResult::verdict(compile.as_ref(), run.as_ref()),
            Err(e) => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message += &format!(": {cause}");
                    source = cause.source();
                }
                if matches!(e, ExecError::Stopped(_)) {
                    tracing::info!(trace_id = %trace_id, reason = %message, "execution stopped");
                } else {
                    tracing::error!(trace_id = %trace_id, error = %message, "execution failed");
                }
                (Status::InternalError, Some(message))
            }
        };
        let (backend, accel) = match self.backend {
            Some((name, accel)) => (name, Some(accel)),
            None => ("qemu", None),
        };
        ExecutionResult {
            trace_id,
            language: plan.language.name.clone(),
            version: self.version,
            status,
            message,
            compile,
            run,
            metrics,
            backend,
            accel,
        }
    }
}

/// Hello, request, output until done.
/// The agent's hello, after a [`Wake`] for a restored VM.
async fn await_ready(
    vm: &mut dyn Vm,
    wake: Option<Wake>,
    boot_timeout: Duration,
) -> Result<(), ExecError> {
    let lost = |vm: &dyn Vm| {
        let console = vm.console_tail();
        move |source| ExecError::AgentLost { source, console }
    };
    // A restored VM's agent said hello long ago, to the snapshot's host; it
    // says it again once it is unique.
    if let Some(wake) = wake {
        if let Err(e) = vm.channel().send(&Frame::Wake(wake)).await {
            return Err(lost(vm)(e));
        }
    }
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
    Ok(())
}

/// Request, then output until done, on a ready VM.
async fn converse(
    vm: &mut dyn Vm,
    exec: &ExecRequest,
    transcript: &mut Transcript,
) -> Result<(), ExecError> {
    let lost = |vm: &dyn Vm| {
        let console = vm.console_tail();
        move |source| ExecError::AgentLost { source, console }
    };
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
        // Output and stage ends belong to the stage the agent is running.
        let current = exec.stages.get(transcript.stages.len());
        let kind = frame.kind();
        let stage = || {
            current
                .ok_or_else(|| ExecError::Protocol(format!("{kind:?} frame after the last stage")))
        };
        match frame {
            Frame::Stdout(bytes) => transcript.output(stage()?, false, bytes),
            Frame::Stderr(bytes) => transcript.output(stage()?, true, bytes),
            Frame::StageEnd(report) => {
                let name = stage()?.name.clone();
                let stdout = std::mem::take(&mut transcript.stdout);
                let stderr = std::mem::take(&mut transcript.stderr);
                transcript
                    .stages
                    .push((name, StageResult::new(stdout, stderr, report)));
                transcript.stage_started = Some(Instant::now());
            }
            Frame::Done => {
                transcript.done_at = Some(Instant::now());
                return Ok(());
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

impl Transcript {
    /// Keeps and forwards output of the current stage. The agent cuts output
    /// at the limit; a guest that does not may not fill the host's memory.
    fn output(&mut self, spec: &StageSpec, stderr: bool, mut bytes: Vec<u8>) {
        let room = (spec.limits.output_bytes as usize)
            .saturating_sub(self.stdout.len() + self.stderr.len());
        bytes.truncate(room);
        if stderr {
            self.stderr.extend_from_slice(&bytes);
        } else {
            self.stdout.extend_from_slice(&bytes);
        }
        if let Some(tx) = &self.output {
            let _ = tx.send(OutputChunk {
                stage: spec.name.clone(),
                stderr,
                bytes,
            });
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
    tracing::info!(
        target: "runner::execution",
        trace_id = %m.trace_id,
        language = %m.language,
        status = %result.status,
        start = m.start.as_str(),
        vm_boot_time = m.vm_boot_time,
        ready_time = m.ready_time,
        execution_time = m.execution_time,
        total_time = m.total_time,
        exit_code = result.run.as_ref().and_then(|s| s.exit_code),
        signal = result.run.as_ref().and_then(|s| s.signal),
        accel = result.accel.map(|a| a.to_string()),
        "execution finished"
    );
}
