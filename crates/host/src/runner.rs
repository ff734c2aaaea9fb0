//! [`Runner`], the engine's facade: one object that front ends (the HTTP
//! API, the MCP server, the CLI, the benchmark) hold, above the shapes of
//! work it composes:
//!
//! - [`crate::oneshot`]: one VM, one execution, destroyed afterwards;
//! - [`crate::judge`]: an execution's output judged, and submissions of
//!   many tests;
//! - [`crate::session`]: one VM serving an owner's many executions;
//! - [`crate::prepare`]: snapshots made and warm pools tended ahead of
//!   requests.
//!
//! Each of them stands on the engine's floor ([`crate::exec`]) and none
//! calls back up into this room. A future shape (a queued job of a
//! cluster's worker, a code context) plugs in here beside them.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use runner_wire::LanguageInfo;
use tokio::sync::mpsc;

use crate::capacity::MachineSlots;
use crate::compile_cache::CompileCache;
use crate::config::Config;
use crate::exec::acquire::Vms;
use crate::exec::conversation::Input;
use crate::exec::{
    ExecutionRequest, ExecutionResult, LimitPolicy, OutputChunk, Plan, PlanError, Planner, agent,
};
use crate::image::{DebianSource, GuestImages, ImageError, ImageStore, Progress};
use crate::judge::{
    Capacity, Compare, Expected, JudgedPlan, SubmissionEvent, SubmissionPlan, SubmissionRequest,
    SubmissionResult,
};
use crate::lang::{Language, LanguageError, Languages};
use crate::pool::{PoolConfig, Pools};
use crate::prepare::SnapshotError;
use crate::session::{SessionConfig, Sessions};
use crate::snapshot::{Snapshot, SnapshotStore};
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

/// A one-shot execution ready to run: a plan, and what its output is
/// judged against if the request said what to expect.
#[derive(Debug, Clone)]
pub enum Execution {
    Plain(Plan),
    Judged(JudgedPlan),
}

impl Execution {
    /// The plan that runs.
    pub fn plan(&self) -> &Plan {
        match self {
            Execution::Plain(plan) => plan,
            Execution::Judged(judged) => &judged.plan,
        }
    }

    /// The largest VM it needs, judging included.
    pub fn vm_memory_mib(&self) -> u32 {
        match self {
            Execution::Plain(plan) => plan.vm_memory_mib,
            Execution::Judged(judged) => judged.vm_memory_mib(),
        }
    }
}

impl From<Plan> for Execution {
    fn from(plan: Plan) -> Self {
        Execution::Plain(plan)
    }
}

impl From<JudgedPlan> for Execution {
    fn from(judged: JudgedPlan) -> Self {
        Execution::Judged(judged)
    }
}

/// Runs executions. Cheap to share behind an `Arc`.
pub struct Runner {
    planner: Planner,
    vms: Arc<Vms>,
    /// The task that tends the warm pools, while
    /// [`Runner::start_pools`] runs them.
    tending: Mutex<Option<tokio::task::JoinHandle<()>>>,
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
                }))
                .with_compile_cache(CompileCache::new(
                    config.state_dir.join("compile-cache"),
                    &config.compile_cache,
                )),
            ),
            tending: Mutex::default(),
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

    /// The languages that run here as a client sees them: with the version
    /// their image has, once it is built.
    pub fn language_infos(&self) -> Vec<LanguageInfo> {
        self.enabled_languages()
            .into_iter()
            .map(|language| {
                let version = self.images().rootfs_manifest(language).map(|m| m.version);
                LanguageInfo {
                    language: language.name.clone(),
                    aliases: language.aliases.clone(),
                    ready: version.is_some(),
                    version,
                    source_file: language.source_file.clone(),
                    compiled: language.compile.is_some(),
                    memory_mib: language.memory_mib,
                    min_memory_mib: language.min_memory_mib,
                }
            })
            .collect()
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

    /// The planner of this runner's languages and limits.
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// Checks a request and resolves everything its execution needs; a
    /// wrong request is refused here, before anything is built or booted.
    pub fn plan(&self, request: ExecutionRequest) -> Result<Plan, PlanError> {
        self.planner.plan(request)
    }

    /// [`Runner::plan`], judged against `expected_output` (compared as
    /// `compare` says, lines when it says nothing) if it is given.
    pub fn plan_execution(
        &self,
        request: ExecutionRequest,
        expected_output: Option<Vec<u8>>,
        compare: Option<Compare>,
    ) -> Result<Execution, PlanError> {
        let plan = self.planner.plan(request)?;
        let expected = Expected::plan(
            &self.planner,
            expected_output,
            compare,
            &plan.trace_id,
            &plan.owner,
        )?;
        Ok(match expected {
            Some(expected) => Execution::Judged(JudgedPlan { plan, expected }),
            None => Execution::Plain(plan),
        })
    }

    /// Runs `execution` in a fresh VM, and judges it if it is judged. If
    /// `output` is given, stdout and stderr chunks are sent there as they
    /// arrive. Dropping the returned future kills the VM and removes its
    /// files.
    pub async fn execute(
        &self,
        execution: impl Into<Execution>,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
    ) -> ExecutionResult {
        self.execute_until(execution, output, std::future::pending())
            .await
    }

    /// [`Runner::execute`], stopped early when `stop` completes: the VM is
    /// destroyed and the result is `internal_error` with `stop`'s reason in
    /// its message, keeping the output that came back until then.
    pub async fn execute_until(
        &self,
        execution: impl Into<Execution>,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
        stop: impl Future<Output = String> + Send,
    ) -> ExecutionResult {
        self.execute_interactive(execution, output, None, stop)
            .await
    }

    /// [`Runner::execute_until`] with the client's `input` passed on while
    /// the program runs, for a plan made interactive
    /// ([`ExecutionRequest::interactive`]).
    pub async fn execute_interactive(
        &self,
        execution: impl Into<Execution>,
        output: Option<mpsc::UnboundedSender<OutputChunk>>,
        input: Option<Input>,
        stop: impl Future<Output = String> + Send,
    ) -> ExecutionResult {
        let result = match execution.into() {
            Execution::Plain(plan) => {
                crate::oneshot::execute(&self.vms, &plan, output, input, stop)
                    .await
                    .0
            }
            Execution::Judged(judged) => {
                crate::judge::execute(&self.vms, &judged, output, input, stop).await
            }
        };
        crate::exec::log(&result);
        result
    }

    /// The sessions of a server on this runner's VMs, planned with its
    /// languages and limits under `config`.
    pub fn sessions(&self, config: SessionConfig) -> Arc<Sessions> {
        Sessions::new(
            self.vms.clone(),
            self.planner.clone(),
            config,
            &self.vms.state().sessions(),
        )
    }

    /// Checks a submission and plans its compile and each of its tests;
    /// a wrong one is refused here, before anything boots.
    pub fn plan_submission(&self, request: SubmissionRequest) -> Result<SubmissionPlan, PlanError> {
        crate::judge::submission::plan(&self.planner, request)
    }

    /// Judges a planned submission: compiles it once, then runs each test
    /// in a fresh VM with the compiled program, up to `parallel` at once,
    /// each admitted by `capacity` (see [`crate::judge::batch`]). Events go
    /// to `events` as they happen; `stop` ends it early.
    pub async fn judge(
        &self,
        plan: SubmissionPlan,
        capacity: Arc<dyn Capacity>,
        parallel: usize,
        events: Option<mpsc::UnboundedSender<SubmissionEvent>>,
        stop: impl Future<Output = String> + Send + 'static,
    ) -> SubmissionResult {
        crate::judge::batch::run(self.vms.clone(), plan, capacity, parallel, events, stop).await
    }

    /// `language`'s snapshot, made first if it does not exist: a VM booted
    /// until its agent is ready, warmed with the language's `warm` program,
    /// its runtime prestarted, then saved.
    pub async fn snapshot(&self, language: &Language) -> Result<Snapshot, SnapshotError> {
        let warm = match &language.warm {
            Some(code) => Some(self.planner.warm_up(language, code)?.exec),
            None => None,
        };
        crate::prepare::snapshot::make(&self.vms, language, warm).await
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
        let mut tending = self.tending.lock().unwrap();
        if tending.is_some() {
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
        self.vms.set_pools(Some(pools.clone()));
        *tending = Some(crate::prepare::pools::start(
            pools,
            Arc::downgrade(&self.vms),
            languages,
            warm_ups,
        ));
    }

    /// Stops refilling and destroys every pooled VM.
    pub async fn stop_pools(&self) {
        let task = self.tending.lock().unwrap().take();
        let pools = self.vms.pools();
        self.vms.set_pools(None);
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        if let Some(pools) = pools {
            for pooled in pools.drain() {
                pooled.vm.destroy().await;
            }
        }
    }

    /// VMs waiting in `language`'s warm pool.
    pub fn pool_size(&self, language: &str) -> usize {
        self.vms.pools().map_or(0, |p| p.size(language))
    }

    /// How many VMs `language`'s warm pool should hold now (0 without
    /// pools).
    pub fn pool_target(&self, language: &str) -> usize {
        self.vms.pools().map_or(0, |p| p.target(language))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(task) = self.tending.lock().unwrap().take() {
            task.abort();
        }
    }
}
