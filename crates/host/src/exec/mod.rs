//! The execution engine, and [`Runner`], its facade.
//!
//! A request goes through one room per job:
//!
//! - [`plan`]: the request, checked once, becomes a [`Plan`] (typed stages,
//!   resolved limits); a wrong request stops here, before anything boots;
//! - [`acquire`]: a VM for the plan, from the warm pool, a snapshot or a
//!   cold boot, with the images and backend it needs;
//! - [`conversation`]: the host's half of the agent protocol, defending
//!   itself against a guest that breaks it;
//! - [`transcript`]: what came back, kept even when the execution fails,
//!   and the [`ExecutionResult`] it makes;
//! - [`oneshot`]: the one shape of work today: one VM, one execution,
//!   destroyed afterwards.
//!
//! Snapshot making lives in [`crate::snapshot`] and pool tending in
//! [`crate::pool`]; both get their VMs from [`acquire`].
//!
//! Once a request is planned it always gets a result: if Runner Codes
//! fails along the way, the status is `internal_error`, the message says
//! why, and whatever output had come back is kept.

pub(crate) mod acquire;
pub(crate) mod conversation;
mod limits;
pub(crate) mod oneshot;
pub mod outputs;
mod plan;
mod result;
pub(crate) mod transcript;

#[cfg(test)]
mod scripted;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

pub(crate) use acquire::Vms;
pub use acquire::{AGENT_BINARY, AcquireError, agent};
pub use conversation::{ConversationError, Input};
pub use limits::{LimitPolicy, LimitSet, RequestLimits, StageLimits};
pub use outputs::OutputFile;
pub(crate) use plan::check_exec_strings;
pub use plan::{
    ExecutionRequest, Part, Plan, PlanError, Planner, SourceFile, new_trace_id, vm_memory_mib,
};
pub use result::{ExecutionMetrics, ExecutionResult, StageResult, StartKind, Status};
pub use runner_protocol::Stage;
pub use runner_protocol::{Control, Interactive, SignalKind, WindowSize};
pub use transcript::OutputChunk;

use crate::capacity::MachineSlots;
use crate::config::Config;
use crate::image::{DebianSource, GuestImages, ImageError, ImageStore, Progress};
use crate::lang::{Language, LanguageError, Languages};
use crate::pool::{PoolConfig, Pools};
use crate::snapshot::{Snapshot, SnapshotError, SnapshotStore};
use crate::state::StateDir;
use crate::vmm::{Backend, BackendInfo, VmmError};

/// Why the runner cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot create the state directory {path} (set state_dir or RUNNER_HOME to move it)")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Languages(#[from] LanguageError),
}

/// Why a planned execution failed; its result carries this as its message.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    #[error("{}; console:\n{console}", crate::error_chain(error))]
    Agent {
        error: ConversationError,
        console: String,
    },
    /// The caller stopped the execution (see [`Runner::execute_until`]).
    #[error("stopped: {0}")]
    Stopped(String),
}

/// The result of `plan` stopped before it ran to its end, for `reason`.
pub(crate) fn stopped_result(plan: &Plan, reason: String) -> ExecutionResult {
    transcript::Transcript::new(None).finish(
        plan,
        std::time::Instant::now(),
        Err(ExecError::Stopped(reason)),
    )
}

/// Runs executions. Cheap to share behind an `Arc`.
pub struct Runner {
    planner: Planner,
    vms: Arc<Vms>,
    /// Warm pools and the task that tends them, while
    /// [`Runner::start_pools`] runs them.
    pools: Mutex<Option<(Arc<Pools>, tokio::task::JoinHandle<()>)>>,
}

impl Runner {
    /// A runner with `config`'s state directory, languages, limits, VMM and
    /// images. Removes run directories that dead runner processes left.
    pub fn new(config: &Config) -> Result<Self, RunnerError> {
        let state = StateDir::new(&config.state_dir);
        state.create().map_err(|source| RunnerError::StateDir {
            path: state.root().to_path_buf(),
            source,
        })?;
        let swept = state.sweep_stale_runs();
        if swept > 0 {
            tracing::info!(swept, "removed run directories of dead runner processes");
        }
        let images = ImageStore::new(
            state.images(),
            DebianSource::new(&config.debian_mirror),
            config.kernel_spec(),
        );
        Ok(Self {
            planner: Planner::new(
                config.all_languages()?,
                config.limits.clone(),
                &config.languages,
            )
            .with_network(config.network.clone()),
            vms: Arc::new(
                Vms::new(
                    state,
                    images,
                    config.vmm(),
                    config.snapshots,
                    config.prestart,
                )
                .with_slots(config.shared_capacity.then(|| {
                    MachineSlots::new(&config.state_dir, config.machine_vms())
                        .with_cpus(config.vm_cpus.clone())
                })),
            ),
            pools: Mutex::default(),
        })
    }

    /// The machine's slots this runner's executions take, if they share
    /// them (see [`crate::capacity`]).
    pub fn machine_slots(&self) -> Option<&MachineSlots> {
        self.vms.slots()
    }

    /// Whether executions restore from snapshots where they can (else they
    /// boot cold), e.g. for a benchmark of cold boots.
    pub fn set_snapshots(&self, on: bool) {
        self.vms.set_restore(on);
    }

    /// Every language this build knows.
    pub fn languages(&self) -> &Languages {
        self.planner.languages()
    }

    /// The languages that run here (the configuration's `languages`), in
    /// the table's order.
    pub fn enabled_languages(&self) -> Vec<&Language> {
        self.planner.enabled()
    }

    /// `name` (or an alias) if it runs here.
    pub fn language(&self, name: &str) -> Result<&Language, PlanError> {
        self.planner.language(name)
    }

    pub fn images(&self) -> &ImageStore {
        self.vms.images()
    }

    pub fn limits(&self) -> &LimitPolicy {
        self.planner.limits()
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        self.vms.snapshots()
    }

    pub fn state(&self) -> &StateDir {
        self.vms.state()
    }

    /// The backend, if one has been chosen (see [`Runner::backend`]).
    pub fn backend_info(&self) -> Option<BackendInfo> {
        self.vms.backend_info()
    }

    /// VMs started by this runner and not yet destroyed.
    pub fn vms_running(&self) -> usize {
        self.vms.running()
    }

    /// Builds whatever image `language` is missing.
    pub async fn prepare(
        &self,
        language: &Language,
        progress: Arc<dyn Progress + Send>,
    ) -> Result<GuestImages, ImageError> {
        self.vms.prepare(language, progress).await
    }

    /// The backend, chosen on first use: this may boot a probe VM from
    /// `kernel` and `initramfs` to see whether KVM works.
    pub async fn backend(
        &self,
        kernel: &Path,
        initramfs: &Path,
    ) -> Result<Arc<dyn Backend>, VmmError> {
        self.vms.backend(kernel, initramfs).await
    }

    /// Checks a request and resolves everything its execution needs; a
    /// wrong request is refused here, before anything is built or booted.
    pub fn plan(&self, request: ExecutionRequest) -> Result<Plan, PlanError> {
        self.planner.plan(request)
    }

    /// Runs `plan` in a fresh VM. If `output` is given, stdout and stderr
    /// chunks are sent there as they arrive. Dropping the returned future
    /// kills the VM and removes its files.
    pub async fn execute(
        &self,
        plan: Plan,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
    ) -> ExecutionResult {
        self.execute_until(plan, output, std::future::pending())
            .await
    }

    /// [`Runner::execute`], stopped early when `stop` completes: the VM is
    /// destroyed and the result is `internal_error` with `stop`'s reason in
    /// its message, keeping the output that came back until then.
    pub async fn execute_until(
        &self,
        plan: Plan,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
        stop: impl Future<Output = String> + Send,
    ) -> ExecutionResult {
        self.execute_interactive(plan, output, None, stop).await
    }

    /// [`Runner::execute_until`] with the client's `input` passed on while
    /// the program runs, for a plan made interactive
    /// ([`ExecutionRequest::interactive`]).
    pub async fn execute_interactive(
        &self,
        plan: Plan,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
        input: Option<conversation::Input>,
        stop: impl Future<Output = String> + Send,
    ) -> ExecutionResult {
        let pools = self.pools();
        oneshot::execute(
            &self.vms,
            pools.as_deref(),
            &plan,
            output,
            input,
            None,
            stop,
        )
        .await
        .0
    }

    /// The planner of this runner's languages and limits.
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// Checks a request for a session against `config`; a wrong one is
    /// refused here, before anything boots.
    pub fn plan_session(
        &self,
        config: &crate::session::SessionConfig,
        request: crate::session::SessionRequest,
    ) -> Result<crate::session::SessionPlan, PlanError> {
        crate::session::plan(&self.planner, config, request)
    }

    /// A VM for the session `plan` describes, ready for its executions,
    /// named `id`.
    pub async fn open_session(
        &self,
        plan: &crate::session::SessionPlan,
        id: &str,
    ) -> Result<crate::session::SessionVm, ExecError> {
        let pools = self.pools();
        crate::session::SessionVm::open(&self.vms, pools.as_deref(), plan, id).await
    }

    /// Brings back a session's VM saved by a pause, named `id`, with the
    /// network it had.
    pub async fn resume_session(
        &self,
        paused: &crate::session::PausedVm,
        id: &str,
        network: Option<&crate::net::Egress>,
    ) -> Result<crate::session::SessionVm, crate::session::ResumeError> {
        crate::session::SessionVm::resume(&self.vms, paused, id, network).await
    }

    /// Checks a submission and plans its compile and each of its tests;
    /// a wrong one is refused here, before anything boots.
    pub fn plan_submission(
        &self,
        request: crate::judge::SubmissionRequest,
    ) -> Result<crate::judge::SubmissionPlan, PlanError> {
        crate::judge::submission::plan(&self.planner, request)
    }

    /// Judges a planned submission: compiles it once, then runs each test
    /// in a fresh VM with the compiled program, up to `parallel` at once,
    /// each admitted by `capacity` (see [`crate::judge::batch`]). Events go
    /// to `events` as they happen; `stop` ends it early.
    pub async fn judge(
        &self,
        plan: crate::judge::SubmissionPlan,
        capacity: Arc<dyn crate::judge::Capacity>,
        parallel: usize,
        events: Option<mpsc::UnboundedSender<crate::judge::SubmissionEvent>>,
        stop: impl Future<Output = String> + Send + 'static,
    ) -> crate::judge::SubmissionResult {
        crate::judge::batch::run(
            self.vms.clone(),
            self.pools(),
            plan,
            capacity,
            parallel,
            events,
            stop,
        )
        .await
    }

    /// `language`'s snapshot, made first if it does not exist: a VM booted
    /// until its agent is ready, warmed with the language's `warm` program,
    /// its runtime prestarted, then saved.
    pub async fn snapshot(&self, language: &Language) -> Result<Snapshot, SnapshotError> {
        let warm = match &language.warm {
            Some(code) => Some(self.planner.warm_up(language, code)?.exec),
            None => None,
        };
        crate::snapshot::make(&self.vms, language, warm).await
    }

    /// The ids of the snapshots this runner restores: one per language
    /// whose images are built (nothing is built here; choosing the
    /// backend may boot its probe VM once).
    pub async fn current_snapshot_ids(&self) -> Result<Vec<String>, SnapshotError> {
        let languages: Vec<&Language> = self.languages().all().iter().collect();
        let readiness = self.snapshot_readiness(&languages).await?;
        Ok(readiness.into_iter().map(|(id, _)| id).collect())
    }

    /// For each of `languages` whose images are built: the id of the
    /// snapshot this runner would restore, and whether it is there to
    /// restore (made, whole, for these images and this agent). Nothing is
    /// built; choosing the backend may boot its probe VM once.
    pub async fn snapshot_readiness(
        &self,
        languages: &[&Language],
    ) -> Result<Vec<(String, bool)>, SnapshotError> {
        let mut found = Vec::new();
        for language in languages {
            let built = self.vms.images().rootfs_manifest(language).is_some()
                && self.vms.images().boot_files(agent()).is_some();
            if !built {
                continue;
            }
            let images = self.vms.prepare(language, Arc::new(())).await?;
            let backend = self
                .vms
                .backend(&images.kernel.vmlinux, &images.initramfs)
                .await?;
            let key = self.vms.snapshot_key(language, &images, &*backend);
            found.push((key.id(), self.snapshots().find(&key).is_some()));
        }
        Ok(found)
    }

    /// Starts warm pools: a task that keeps restored, paused VMs ready per
    /// language (see [`crate::pool`]) until the runner is dropped or
    /// [`Runner::stop_pools`] is called. `memory_mib` bounds all pooled VMs
    /// together. Does nothing while pools run already.
    pub fn start_pools(&self, config: PoolConfig, memory_mib: u64) {
        let mut running = self.pools.lock().unwrap();
        if running.is_some() {
            return;
        }
        let languages = self.languages().clone();
        let warm_ups = languages
            .selected(&config.languages)
            .into_iter()
            .filter_map(|language| {
                let code = language.warm.as_ref()?;
                match self.planner.warm_up(language, code) {
                    Ok(plan) => Some((language.name.clone(), plan.exec)),
                    Err(e) => {
                        tracing::warn!(language = %language.name, error = %e, "no warm-up for pooled VMs");
                        None
                    }
                }
            })
            .collect();
        let pools = Arc::new(Pools::new(config, memory_mib));
        let task = crate::pool::start(
            pools.clone(),
            Arc::downgrade(&self.vms),
            languages,
            warm_ups,
        );
        *running = Some((pools, task));
    }

    /// The warm pools, while they run.
    fn pools(&self) -> Option<Arc<Pools>> {
        self.pools
            .lock()
            .unwrap()
            .as_ref()
            .map(|(pools, _)| pools.clone())
    }

    /// Stops refilling and destroys every pooled VM.
    pub async fn stop_pools(&self) {
        let running = self.pools.lock().unwrap().take();
        if let Some((pools, task)) = running {
            task.abort();
            let _ = task.await;
            for pooled in pools.drain() {
                pooled.vm.destroy().await;
            }
        }
    }

    /// VMs waiting in `language`'s warm pool.
    pub fn pool_size(&self, language: &str) -> usize {
        self.pools().map_or(0, |p| p.size(language))
    }

    /// How many VMs `language`'s warm pool should hold now (0 without
    /// pools).
    pub fn pool_target(&self, language: &str) -> usize {
        self.pools().map_or(0, |p| p.target(language))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some((_, task)) = self.pools.lock().unwrap().take() {
            task.abort();
        }
    }
}
