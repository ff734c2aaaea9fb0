//! Getting a VM for a plan: one waiting in the warm pool, else one restored
//! from the language's snapshot, else a cold boot. The images and the
//! backend every VM needs are made, or chosen, once; snapshot making and
//! pool tending get their VMs here too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runner_protocol::{ExecRequest, PrestartSpec, Wake};
use tokio::sync::OnceCell;

use super::conversation::{self, ConversationError};
use super::plan::Plan;
use super::result::StartKind;
use super::transcript::Timeline;
use crate::capacity::MachineSlots;
use crate::compile_cache::CompileCache;
use crate::image::{Agent, GuestImages, ImageError, ImageStore, Progress};
use crate::lang::Language;
use crate::pool::Pools;
use crate::snapshot::{Snapshot, SnapshotKey, SnapshotStore};
use crate::state::StateDir;
use crate::vmm::placement::{self, CpuList};
use crate::vmm::{self, Accel, Backend, BackendInfo, Memory, Vm, VmSpec, VmmConfig, VmmError};

/// The guest agent, built static by this crate's build script.
pub const AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runner-agent"));

/// [`AGENT_BINARY`] with its digest, taken on first use.
pub fn agent() -> &'static Agent {
    static AGENT: std::sync::LazyLock<Agent> =
        std::sync::LazyLock::new(|| Agent::new(AGENT_BINARY));
    &AGENT
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("preparing guest images")]
    Image(#[from] ImageError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// A restored VM's agent did not come back.
    #[error("the restored VM did not answer")]
    NotReady(#[source] ConversationError),
    /// A pooled VM's warm-up failed.
    #[error("the restored VM's warm-up failed")]
    WarmUp(#[source] ConversationError),
    #[error("taking a machine slot in {}", path.display())]
    Slot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes VMs: the images, the backend, the snapshots, and a count of the
/// VMs alive. Shared by executions, snapshot making and pool tending.
pub(crate) struct Vms {
    state: StateDir,
    images: ImageStore,
    snapshots: SnapshotStore,
    vmm: VmmConfig,
    backend: OnceCell<Arc<dyn Backend>>,
    running: Arc<AtomicUsize>,
    /// Restore from snapshots where they exist (else boot every VM cold).
    restore: AtomicBool,
    /// Snapshots hold the language's prestarted runtime where it has one.
    prestart: bool,
    /// The machine's slots an execution takes, unless opted out.
    slots: Option<MachineSlots>,
    /// The warm pools VMs are taken from first, while they run.
    pools: Mutex<Option<Arc<Pools>>>,
    /// What compiles made, unless the cache is off.
    compile_cache: Option<Arc<CompileCache>>,
}

/// How far a VM got before it was handed over.
pub(crate) enum Readiness {
    /// Its agent said hello (a pooled VM).
    Ready,
    /// Its agent says hello when it is up (a cold boot), or once woken with
    /// `wake` (a restored VM).
    AwaitHello { wake: Option<Wake> },
}

/// What VM a piece of work needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want<'a> {
    pub language: &'a Language,
    /// At least this much memory.
    pub memory_mib: u32,
    /// Names the VM (its run directory, its logs): the trace id or the
    /// session's id.
    pub id: &'a str,
}

impl Plan {
    /// The VM this plan needs.
    pub(crate) fn want(&self) -> Want<'_> {
        Want {
            language: &self.language,
            memory_mib: self.vm_memory_mib,
            id: &self.trace_id,
        }
    }
}

/// A VM for one plan, counted as running while it lives.
pub(crate) struct Acquired {
    pub vm: Box<dyn Vm>,
    pub start: StartKind,
    pub readiness: Readiness,
    /// How long its agent may take to say hello.
    pub boot_timeout: Duration,
    pub timeline: Timeline,
    pub _running: Running,
}

/// Counts a VM as running while it lives.
pub(crate) struct Running(Arc<AtomicUsize>);

impl Running {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Vms {
    pub fn new(
        state: StateDir,
        images: ImageStore,
        vmm: VmmConfig,
        restore: bool,
        prestart: bool,
    ) -> Self {
        Self {
            snapshots: SnapshotStore::new(state.root().join("snapshots")),
            state,
            images,
            vmm,
            backend: OnceCell::new(),
            running: Arc::default(),
            restore: AtomicBool::new(restore),
            prestart,
            slots: None,
            pools: Mutex::default(),
            compile_cache: None,
        }
    }

    /// Compiles are looked up in `cache` first, and kept there.
    pub fn with_compile_cache(mut self, cache: Option<CompileCache>) -> Self {
        self.compile_cache = cache.map(Arc::new);
        self
    }

    pub fn compile_cache(&self) -> Option<Arc<CompileCache>> {
        self.compile_cache.clone()
    }

    /// Executions take one of `slots` while they run.
    pub fn with_slots(mut self, slots: Option<MachineSlots>) -> Self {
        self.slots = slots;
        self
    }

    pub fn slots(&self) -> Option<&MachineSlots> {
        self.slots.as_ref()
    }

    /// Takes VMs from `pools` first from now on (none: no pools).
    pub fn set_pools(&self, pools: Option<Arc<Pools>>) {
        *self.pools.lock().unwrap() = pools;
    }

    /// The warm pools, while they run.
    pub fn pools(&self) -> Option<Arc<Pools>> {
        self.pools.lock().unwrap().clone()
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// VMs alive now (pooled ones only once they are taken).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    pub fn set_restore(&self, on: bool) {
        self.restore.store(on, Ordering::Relaxed);
    }

    /// Builds whatever image `language` is missing.
    pub async fn prepare(
        &self,
        language: &Language,
        progress: Arc<dyn Progress + Send>,
    ) -> Result<GuestImages, ImageError> {
        let images = self.images.clone();
        let language = language.clone();
        tokio::task::spawn_blocking(move || images.ensure(&language, agent(), &*progress))
            .await
            .expect("image build does not panic")
    }

    /// The backend, chosen on first use (see [`vmm::select`]).
    pub async fn backend(
        &self,
        kernel: &Path,
        initramfs: &Path,
    ) -> Result<Arc<dyn Backend>, VmmError> {
        let runs = self.state.runs();
        let accel_cache = self.state.root().join("accel.json");
        let gvisor_dir = self.state.root().join("gvisor");
        let files = vmm::SelectFiles {
            kernel,
            initramfs,
            run_dir: &runs,
            accel_cache: &accel_cache,
            gvisor_dir: &gvisor_dir,
            agent: AGENT_BINARY,
        };
        let backend = self
            .backend
            .get_or_try_init(|| vmm::select(&self.vmm, files))
            .await?;
        Ok(backend.clone())
    }

    /// The backend, if one has been chosen.
    pub fn backend_info(&self) -> Option<BackendInfo> {
        self.backend.get().map(|b| b.info().clone())
    }

    /// What to prestart in `language`'s snapshot, if anything.
    pub fn prestart(&self, language: &Language) -> Option<PrestartSpec> {
        let argv = language.prestart.clone().filter(|_| self.prestart)?;
        Some(PrestartSpec {
            argv,
            replaces: language.run.clone(),
            env: language.env.clone(),
        })
    }

    /// What `language`'s snapshot depends on, with these images and backend.
    pub fn snapshot_key(
        &self,
        language: &Language,
        images: &GuestImages,
        backend: &dyn Backend,
    ) -> SnapshotKey {
        SnapshotKey::of(language, images, backend, self.prestart(language))
    }

    /// A VM of `memory_mib` booting from `images`, its memory as `memory`
    /// says.
    pub fn spec(&self, images: &GuestImages, memory_mib: u32, id: &str, memory: Memory) -> VmSpec {
        VmSpec {
            id: id.to_string(),
            kernel: images.kernel.vmlinux.clone(),
            initramfs: images.initramfs.clone(),
            rootfs: Some(images.rootfs.clone()),
            memory_mib,
            vcpus: 1,
            kernel_args: images.kernel.args.clone(),
            run_dir: self.run_dir(id),
            memory,
            cpus: self.vmm.vm_cpus.clone(),
            background: false,
        }
    }

    /// Where VM `id` of this process keeps its sockets.
    pub fn run_dir(&self, id: &str) -> std::path::PathBuf {
        self.state
            .runs()
            .join(format!("{}.{id}", std::process::id()))
    }

    /// A VM that resumes `saved`, named `id`, on the executions' CPUs.
    pub fn resume_spec(&self, saved: &crate::vmm::Saved, id: &str) -> VmSpec {
        VmSpec {
            cpus: self.vmm.vm_cpus.clone(),
            ..saved.spec(id, self.run_dir(id))
        }
    }

    /// A VM of `snapshot`'s size that restores it instead of booting.
    fn restore_spec(&self, images: &GuestImages, snapshot: &Snapshot, id: &str) -> VmSpec {
        let memory = Memory::Restore {
            path: snapshot.memory(),
            state: snapshot.state(),
        };
        self.spec(images, snapshot.memory_mib(), id, memory)
    }

    /// Starts a VM and counts it as running.
    pub async fn start(
        &self,
        backend: &dyn Backend,
        spec: VmSpec,
    ) -> Result<(Box<dyn Vm>, Running), VmmError> {
        let vm = backend.start(spec).await?;
        Ok((vm, Running::new(&self.running)))
    }

    /// A VM as `want` says: from the warm pools if one waits there, else
    /// restored from the language's snapshot if there is one big enough,
    /// else booted.
    pub async fn acquire(
        &self,
        want: Want<'_>,
        images: &GuestImages,
        backend: &dyn Backend,
    ) -> Result<Acquired, AcquireError> {
        let boot_timeout = boot_timeout(backend.info().accel);
        if let Some(acquired) = self.take_pooled(want, boot_timeout).await {
            return Ok(acquired);
        }
        // A snapshot's VM may be bigger than the request needs: the cgroup
        // limits inside are what the program gets.
        let snapshot = self
            .restore
            .load(Ordering::Relaxed)
            .then(|| {
                self.snapshots
                    .find(&self.snapshot_key(want.language, images, backend))
            })
            .flatten()
            .filter(|s| s.memory_mib() >= want.memory_mib);
        match &snapshot {
            Some(snapshot) => {
                let spec = self.restore_spec(images, snapshot, want.id);
                match self
                    .started(backend, spec, StartKind::Snapshot, Some(wake()))
                    .await
                {
                    Ok(acquired) => Ok(acquired),
                    // A snapshot that passed its check and still did not
                    // restore (QEMU refused its device state): a fresh VM.
                    // One that fails later, before its hello, is the
                    // one-shot's to replace.
                    Err(error) => {
                        tracing::warn!(
                            snapshot = %snapshot.state().display(),
                            error = %crate::error_chain(&error),
                            "the VM restored from the snapshot never became ready; booting one instead"
                        );
                        self.boot(want, images, backend).await
                    }
                }
            }
            None => self.boot(want, images, backend).await,
        }
    }

    /// A VM as `want` says, booted, whatever snapshot or pool there is.
    pub async fn boot(
        &self,
        want: Want<'_>,
        images: &GuestImages,
        backend: &dyn Backend,
    ) -> Result<Acquired, AcquireError> {
        let spec = self.spec(images, want.memory_mib, want.id, Memory::Private);
        self.started(backend, spec, StartKind::Cold, None).await
    }

    /// The VM of `spec`, started as `start` says.
    async fn started(
        &self,
        backend: &dyn Backend,
        spec: VmSpec,
        start: StartKind,
        wake: Option<Wake>,
    ) -> Result<Acquired, AcquireError> {
        let boot_timeout = boot_timeout(backend.info().accel);
        let started = Instant::now();
        let (vm, running) = self.start(backend, spec).await?;
        Ok(Acquired {
            vm,
            start,
            readiness: Readiness::AwaitHello { wake },
            boot_timeout,
            timeline: Timeline {
                vm_started: Some(started),
                vm_up: Some(Instant::now()),
                ..Timeline::default()
            },
            _running: running,
        })
    }

    /// A VM from the warm pool, resumed and made unique again, if one waits
    /// and comes back to life. One that does not (killed from outside while
    /// it waited) is destroyed and the next tried, so the request is not
    /// lost.
    async fn take_pooled(&self, want: Want<'_>, boot_timeout: Duration) -> Option<Acquired> {
        let pools = self.pools()?;
        while let Some(pooled) = pools.take(&want.language.name, want.memory_mib) {
            let started = Instant::now();
            let mut vm = pooled.vm;
            let running = Running::new(&self.running);
            // To an execution's priority (a refill ran at the lowest), and
            // from the pools' CPUs (if they have their own) to the
            // executions'.
            let cpus = if self.vmm.pool_cpus.is_empty() {
                CpuList::default()
            } else {
                self.vmm.vm_cpus.or(&CpuList::allowed()).clone()
            };
            if let Err(e) = vm.bring_forward(&cpus) {
                tracing::warn!(error = %crate::error_chain(&e), "a pooled VM was not brought forward");
            }
            if vm.is_alive() && vm.pause(false).await.is_ok() {
                let up = Instant::now();
                let woken =
                    conversation::await_ready(vm.channel(), Some(wake()), POOL_WAKE_TIMEOUT).await;
                if woken.is_ok() {
                    return Some(Acquired {
                        vm,
                        start: StartKind::Pool,
                        readiness: Readiness::Ready,
                        boot_timeout,
                        timeline: Timeline {
                            vm_started: Some(started),
                            vm_up: Some(up),
                            ready: Some(Instant::now()),
                            done: None,
                        },
                        _running: running,
                    });
                }
            }
            tracing::warn!(language = %want.language.name, "a pooled VM did not come back; trying the next");
            vm.destroy().await;
        }
        None
    }

    /// A VM restored from `snapshot`, made unique, warmed up with
    /// `warm_up` if given (in a process of its own; the VM stays unserved),
    /// then paused: for a pool.
    pub async fn restore_paused(
        &self,
        images: &GuestImages,
        snapshot: &Snapshot,
        backend: &dyn Backend,
        warm_up: Option<&ExecRequest>,
    ) -> Result<Box<dyn Vm>, AcquireError> {
        let id = format!("pool-{}", super::new_trace_id());
        let spec = VmSpec {
            cpus: self.vmm.pool_cpus.or(&self.vmm.vm_cpus).clone(),
            background: placement::may_raise_priority(),
            ..self.restore_spec(images, snapshot, &id)
        };
        let vm = backend.start(spec).await?;
        settle_for_pool(vm, warm_up).await
    }
}

/// Runs `vm`'s vCPUs on its slot's `cpu`; a VM that cannot be pinned runs
/// unpinned (it is a matter of speed, not of correctness).
pub(crate) fn pin(vm: &dyn Vm, cpu: usize) {
    if let Err(e) = vm.pin_vcpus(cpu) {
        tracing::warn!(cpu, error = %crate::error_chain(&e), "vCPUs not pinned");
    }
}

/// Makes a VM just restored for a pool ready to wait there: woken, warmed
/// up with `warm_up` if given, then paused. A VM that fails a step is
/// destroyed.
async fn settle_for_pool(
    mut vm: Box<dyn Vm>,
    warm_up: Option<&ExecRequest>,
) -> Result<Box<dyn Vm>, AcquireError> {
    let settled = async {
        conversation::await_ready(vm.channel(), Some(wake()), POOL_RESTORE_TIMEOUT)
            .await
            .map_err(AcquireError::NotReady)?;
        if let Some(exec) = warm_up {
            conversation::warm(vm.channel(), exec.clone())
                .await
                .map_err(AcquireError::WarmUp)?;
        }
        vm.pause(true).await?;
        Ok::<_, AcquireError>(())
    };
    match settled.await {
        Ok(()) => Ok(vm),
        Err(e) => {
            vm.destroy().await;
            Err(e)
        }
    }
}

/// How long a pooled VM may take to answer once resumed.
const POOL_WAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a VM restored for a pool may take to answer.
const POOL_RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a booting guest may take to say hello.
pub(crate) fn boot_timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm | Accel::Systrap => Duration::from_secs(20),
        Accel::Tcg => Duration::from_secs(90),
    }
}

/// Fresh entropy and the host's clock for a restored VM.
pub(crate) fn wake() -> Wake {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use runner_protocol::{AgentFailure, Frame};

    use super::*;
    use crate::exec::scripted::{self, Peer};

    fn warm_up() -> ExecRequest {
        ExecRequest {
            language: "bash".into(),
            files: Vec::new(),
            stages: Vec::new(),
            stdin: Vec::new(),
            env: Default::default(),
            collect: Vec::new(),
            collect_after: None,
            interactive: None,
            outputs: None,
            network: false,
        }
    }

    /// Settles a scripted VM for a pool while the guest plays `script`;
    /// returns whether it was settled and whether it was destroyed.
    async fn settle<F>(warm_up: Option<&ExecRequest>, script: fn(Peer) -> F) -> (bool, bool)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (vm, peer, destroyed) = scripted::pair();
        let guest = tokio::spawn(script(peer));
        let settled = settle_for_pool(Box::new(vm), warm_up).await;
        let settled = match settled {
            Ok(vm) => {
                drop(vm);
                true
            }
            Err(_) => false,
        };
        guest.await.unwrap();
        (settled, destroyed.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_pooled_vm_is_warmed_up_after_its_wake_and_before_it_waits() {
        let exec = warm_up();
        let (settled, destroyed) = settle(Some(&exec), |mut peer| async move {
            assert!(matches!(peer.recv().await, Some(Frame::Wake(_))));
            peer.hello().await;
            match peer.recv().await {
                Some(Frame::Warm(exec)) => assert_eq!(exec.language, "bash"),
                other => panic!("expected the warm-up, got {other:?}"),
            }
            peer.send(&Frame::Done).await;
            peer.until_closed().await;
        })
        .await;
        assert!(settled && !destroyed);
    }

    #[tokio::test]
    async fn without_a_warm_up_the_pooled_vm_is_only_woken() {
        let (settled, destroyed) = settle(None, |mut peer| async move {
            assert!(matches!(peer.recv().await, Some(Frame::Wake(_))));
            peer.hello().await;
            // Nothing more comes before the host lets the VM go.
            assert!(peer.recv().await.is_none());
        })
        .await;
        assert!(settled && !destroyed);
    }

    #[tokio::test]
    async fn a_pooled_vm_whose_warm_up_fails_is_destroyed_not_pooled() {
        let exec = warm_up();
        let (settled, destroyed) = settle(Some(&exec), |mut peer| async move {
            assert!(matches!(peer.recv().await, Some(Frame::Wake(_))));
            peer.hello().await;
            assert!(matches!(peer.recv().await, Some(Frame::Warm(_))));
            peer.send(&Frame::Error(AgentFailure {
                message: "no such interpreter".into(),
                file: None,
            }))
            .await;
            peer.until_closed().await;
        })
        .await;
        assert!(!settled && destroyed);
    }
}
