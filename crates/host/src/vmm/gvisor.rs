//! The gVisor backend: Debian's `runsc`, driven through its OCI runtime
//! interface as a container engine drives it (`run --detach`, `checkpoint`,
//! `restore`, `pause`, `delete`), with no patched gVisor.
//!
//! A sandbox is a bundle in the VM's run directory whose root is the
//! language's root filesystem image, mounted read-only on the host once per
//! image ([`Roots`]), under an overlay in the sandbox's memory
//! (`--overlay2=root:memory`), as a VM's root is under its tmpfs. The guest
//! agent is its first process, from a host directory bound at `/mnt` that
//! the agent covers at start. Its ports are its standard descriptors:
//! stdin the agent channel (a socket, both ways), stdout the network port,
//! stderr the console. `runsc restore` gives a restored sandbox new ones,
//! so a checkpoint restores like a VM's snapshot. `runsc` runs attached
//! (not `--detach`): the sandbox dies with it, and it with the runner.
//!
//! What walls it in: gVisor's user-space kernel (the sentry) under seccomp,
//! no network device (`--network=none`), and a host cgroup per sandbox
//! whose memory limit is the VM's memory plus the sentry's own
//! ([`SENTRY_RESERVE_MIB`]). The kernel, initramfs and acceleration of a VM
//! have no meaning here: the platform (`systrap`) runs the program's code
//! natively and traps its system calls.

use std::collections::HashSet;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rustix::process::{PidfdFlags, WaitId, WaitIdOptions};
use tokio::net::UnixStream;
use tokio::process::Command;

use super::console::Console;
use super::placement::{self, CpuList, POOL_NICE, VM_NICE};
use super::run_dir::RunDir;
use super::{
    Accel, AgentChannel, Backend, BackendInfo, Installed, Machine, Memory, Saved, VcpuClock, Vm,
    VmSpec, VmmConfig, VmmError,
};

pub const NAME: &str = "gvisor";
const RUNSC_BINARY: &str = "runsc";
/// gVisor's platform: `systrap` needs no KVM and runs on any Linux host.
const PLATFORM: &str = "systrap";
/// Host memory a sandbox may use beyond its VM memory: the sentry's own
/// heap, its page tables and the gofer.
pub const SENTRY_RESERVE_MIB: u64 = 192;
/// The one file `runsc checkpoint` writes (compressed), which `runsc
/// restore` reads from its `--image-path`.
const CHECKPOINT_FILE: &str = "checkpoint.img";
/// The period of the sandbox's CPU quota.
const CPU_PERIOD_US: u64 = 100_000;
/// How long `runsc` may take to end once its sandbox was killed.
const RUNSC_EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long `runsc` may take to start or restore a sandbox.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The oldest gVisor release this backend is tested with (Debian's
/// `0.0~20240729.0`): `--overlay2=root:memory`, `--cpu-num-from-quota`,
/// restore with new standard descriptors.
const OLDEST_RELEASE: u32 = 20240729;

/// The date in a gVisor version (`0.0~20240729.0` as Debian numbers it,
/// `release-20240729.0` as gVisor does), as a number.
fn release_date(version: &str) -> Option<u32> {
    let start = version.find(|c: char| c.is_ascii_digit() && c != '0')?;
    let digits: String = version[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (digits.len() == 8).then(|| digits.parse().ok()).flatten()
}

/// Capabilities the agent keeps inside the sandbox (gVisor's, not the
/// host's): mounting, cgroups, dropping to the run user, killing a stage,
/// an address on the loopback.
/// Programs run as the run user with none.
const AGENT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_NET_ADMIN",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SYS_ADMIN",
    "CAP_SYS_RESOURCE",
];

pub struct GvisorBackend {
    binary: PathBuf,
    info: BackendInfo,
    /// `runsc --root`: its own state of the sandboxes it runs.
    state: PathBuf,
    /// The agent's directory, bound at `/mnt` in every sandbox.
    agent_dir: PathBuf,
    roots: Roots,
}

impl GvisorBackend {
    /// `runsc` as configured, or on `PATH`.
    pub fn binary(config: &VmmConfig) -> PathBuf {
        config
            .runsc
            .clone()
            .unwrap_or_else(|| PathBuf::from(RUNSC_BINARY))
    }

    /// `runsc --version`'s version, or why it cannot be had.
    pub async fn version(binary: &Path) -> Result<String, VmmError> {
        let output = match Command::new(binary).arg("--version").output().await {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VmmError::Missing {
                    binary: binary.display().to_string(),
                    remedy: "install Debian's runsc (apt-get install -t bookworm-backports runsc \
                             on Debian 12), set runsc (RUNNER_RUNSC) to its path, \
                             or set backend = \"qemu\"",
                });
            }
            Err(source) => {
                return Err(VmmError::Spawn {
                    binary: binary.display().to_string(),
                    source,
                });
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text
            .lines()
            .find_map(|line| line.strip_prefix("runsc version "))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(VmmError::Unsupported(
                "runsc --version did not say its version: is it gVisor's runsc?",
            ))?;
        match release_date(version) {
            Some(date) if date >= OLDEST_RELEASE => Ok(version.to_string()),
            _ => Err(VmmError::TooOld {
                binary: binary.display().to_string(),
                version: version.to_string(),
                needs: format!(
                    "release {OLDEST_RELEASE} or newer (Debian 12's bookworm-backports has one)"
                ),
                remedy: "install Debian's runsc from bookworm-backports, or set backend = \"qemu\"",
            }),
        }
    }

    /// The backend with `installed`'s `runsc`, its own state under
    /// `dir`, and `agent` as every sandbox's first process, chosen for
    /// `reason`.
    pub fn new(
        installed: Installed,
        dir: &Path,
        agent: &[u8],
        reason: String,
    ) -> Result<Self, VmmError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| VmmError::Io { what, path, source }
        };
        let digest = {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(agent)[..8])
        };
        let agent_dir = dir.join(format!("agent-{digest}"));
        let binary = agent_dir.join("runner-agent");
        if !binary.exists() {
            fs::create_dir_all(&agent_dir).map_err(io("create", &agent_dir))?;
            let scratch = agent_dir.join(format!(".runner-agent.{}", std::process::id()));
            fs::write(&scratch, agent).map_err(io("write", &scratch))?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&scratch, fs::Permissions::from_mode(0o755))
                .map_err(io("chmod", &scratch))?;
            fs::rename(&scratch, &binary).map_err(io("rename", &binary))?;
        }
        let state = dir.join("runsc");
        fs::create_dir_all(&state).map_err(io("create", &state))?;
        // A sandbox's processes outlive their `runsc` for a moment; the
        // runner collects them (see [`Held`]).
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(|e| {
            VmmError::Control {
                operation: "become the subreaper of",
                source: Box::new(std::io::Error::from(e)),
            }
        })?;
        sweep(&installed.binary, &state);
        Ok(Self {
            binary: installed.binary,
            info: BackendInfo {
                name: NAME,
                version: installed.version,
                accel: Accel::Systrap,
                machine: Machine::default(),
                reason,
            },
            state,
            agent_dir,
            roots: Roots::new(dir.join("roots")),
        })
    }

    /// `runsc` with the flags every command of a sandbox takes.
    fn runsc(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg(format!("--root={}", self.state.display()))
            .arg("--network=none")
            .arg(format!("--platform={PLATFORM}"))
            .arg("--overlay2=root:memory")
            .arg("--cpu-num-from-quota")
            .kill_on_drop(true);
        command
    }

    /// The OCI runtime configuration of a sandbox for `spec` whose root is
    /// `root`.
    fn config(&self, spec: &VmSpec, root: &Path) -> serde_json::Value {
        let memory_bytes = (spec.memory_mib as u64 + SENTRY_RESERVE_MIB) << 20;
        // As many CPUs as the VM would have vCPUs: the quota caps the
        // sandbox's host CPU time, and `--cpu-num-from-quota` makes it the
        // count programs see. Which CPUs is the affinity's business (as
        // for QEMU: set at start, moved when an execution takes a pooled
        // sandbox), not a cpuset's, which would pin it to them for good.
        let resources = serde_json::json!({
            "memory": { "limit": memory_bytes, "swap": memory_bytes },
            "cpu": { "quota": CPU_PERIOD_US * spec.vcpus as u64, "period": CPU_PERIOD_US },
        });
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": [
                    "/mnt/runner-agent",
                    runner_protocol::GVISOR_AGENT_ARG,
                ],
                "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": AGENT_CAPABILITIES,
                    "effective": AGENT_CAPABILITIES,
                    "permitted": AGENT_CAPABILITIES,
                },
                "noNewPrivileges": false,
            },
            "root": { "path": root, "readonly": false },
            "hostname": runner_protocol::GUEST_HOSTNAME,
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "noexec", "mode=0755"] },
                { "destination": "/mnt", "type": "bind", "source": self.agent_dir,
                  "options": ["ro", "rbind", "nosuid", "nodev"] },
            ],
            "linux": {
                "namespaces": [
                    { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                    { "type": "uts" }, { "type": "mount" },
                ],
                "cgroupsPath": format!("/runner/{}", container_id(&spec.id)),
                "resources": resources,
            },
        })
    }
}

/// `runsc`'s name for the sandbox of VM `id`: unique among this host's
/// runner processes.
fn container_id(id: &str) -> String {
    format!("runner-{}-{id}", std::process::id())
}

#[async_trait]
impl Backend for GvisorBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn cpu_model(&self) -> &'static str {
        "host"
    }

    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        let rootfs = spec.rootfs.as_deref().ok_or(VmmError::Unsupported(
            "a gVisor sandbox needs a root filesystem",
        ))?;
        let root = self.roots.mount(rootfs)?;
        let run_dir = RunDir::create(spec.run_dir.clone())?;
        let bundle = run_dir.path.join("bundle");
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| VmmError::Io { what, path, source }
        };
        fs::create_dir_all(&bundle).map_err(io("create", &bundle))?;
        let config = bundle.join("config.json");
        fs::write(&config, self.config(&spec, &root).to_string()).map_err(io("write", &config))?;

        let pair = || std::os::unix::net::UnixStream::pair().map_err(io("socketpair for", &bundle));
        let (agent_host, agent_sandbox) = pair()?;
        let (net_host, net_sandbox) = pair()?;
        let (console_read, console_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io("pipe for", &bundle)(e.into()))?;

        let id = container_id(&spec.id);
        let pid_file = run_dir.path.join("pid");
        let mut command = self.runsc();
        match &spec.memory {
            Memory::Private => {
                command.arg("run");
            }
            // The snapshot's memory is in its checkpoint: the file the store
            // keeps for a VM's memory stays empty.
            Memory::Template { path } => {
                fs::write(path, b"").map_err(io("create", path))?;
                command.arg("run");
            }
            Memory::Restore { state, .. } | Memory::Resume { state, .. } => {
                let image = run_dir.path.join("image");
                fs::create_dir_all(&image).map_err(io("create", &image))?;
                let link = image.join(CHECKPOINT_FILE);
                std::os::unix::fs::symlink(state, &link).map_err(io("link", &link))?;
                command
                    .arg("restore")
                    .arg(format!("--image-path={}", image.display()));
            }
        }
        // Attached (no --detach): the sandbox dies with this `runsc`, and
        // this `runsc` with the runner (PDEATHSIG), as a VM's QEMU does.
        command
            .arg(format!("--bundle={}", bundle.display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .arg(&id)
            .stdin(Stdio::from(OwnedFd::from(agent_sandbox)))
            .stdout(Stdio::from(OwnedFd::from(net_sandbox)))
            .stderr(Stdio::from(console_write));
        let cpus = spec.cpus.to_set();
        let background = spec.background;
        // SAFETY: prctl, sched_setaffinity and setpriority are
        // async-signal-safe system calls; the set is the child's copy.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The sandbox's processes inherit its CPUs and priority.
                if let Some(cpus) = &cpus {
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus)?;
                }
                let nice = if background { POOL_NICE } else { VM_NICE };
                if libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0 && background {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| VmmError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        })?;
        // The sandbox holds its own copies of its three descriptors.
        drop(command);
        let console = Console::default();
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(console_read)
            .map_err(io("read the console of", &bundle))?;
        console.capture(Some(reader));
        // Started once `runsc` wrote the sandbox's process id.
        let started = async {
            loop {
                if let Some(pid) = fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|text| text.trim().parse::<u32>().ok())
                {
                    return pid;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let pid = tokio::select! {
            pid = started => pid,
            status = child.wait() => {
                delete(&self.binary, &self.state, &id);
                return Err(VmmError::ExitedEarly {
                    status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    console: console.settle_and_tail().await,
                });
            }
            () = tokio::time::sleep(START_TIMEOUT) => {
                delete(&self.binary, &self.state, &id);
                return Err(VmmError::ConnectTimeout {
                    seconds: START_TIMEOUT.as_secs(),
                    console: console.tail(),
                });
            }
        };
        let stream = |socket: std::os::unix::net::UnixStream| {
            socket.set_nonblocking(true)?;
            UnixStream::from_std(socket)
        };
        let agent = stream(agent_host).map_err(io("connect to", &bundle))?;
        let net = stream(net_host).map_err(io("connect to", &bundle))?;
        let mut held = Held::default();
        if let Some(runsc) = child.id() {
            held.take_under(runsc);
        }
        Ok(Box::new(GvisorVm {
            id,
            child,
            held,
            pid,
            binary: self.binary.clone(),
            state: self.state.clone(),
            channel: AgentChannel::new(agent),
            net: Some(net),
            console,
            spec,
            backend: self.info.describe(),
            run_dir: Some(run_dir),
            paused: false,
        }))
    }
}

/// Deletes the sandboxes of runner processes that are gone (killed before
/// they could delete their own): their agents ended with the runner's end
/// of the channel, but `runsc` keeps their state until told.
fn sweep(binary: &Path, state: &Path) {
    let listed = std::process::Command::new(binary)
        .arg(format!("--root={}", state.display()))
        .args(["list", "-quiet"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(listed) = listed else { return };
    for id in String::from_utf8_lossy(&listed.stdout).lines() {
        let owner = id
            .strip_prefix("runner-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok());
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        if owner.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0) {
            tracing::info!(sandbox = id, "deleting a sandbox its runner left");
            delete(binary, state, id);
        }
    }
}

/// Kills sandbox `id` and removes what `runsc` keeps of it (its state, its
/// host cgroup), waiting for neither.
fn delete(binary: &Path, state: &Path, id: &str) {
    let mut command = std::process::Command::new(binary);
    command
        .arg(format!("--root={}", state.display()))
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Ok(mut child) = command.spawn() {
        std::thread::spawn(move || child.wait());
    }
}

struct GvisorVm {
    id: String,
    /// `runsc run` (or `restore`), attached: the sandbox lives as long.
    child: tokio::process::Child,
    /// The processes under it.
    held: Held,
    /// The sandbox process on the host.
    pid: u32,
    binary: PathBuf,
    state: PathBuf,
    channel: AgentChannel,
    net: Option<UnixStream>,
    console: Console,
    spec: VmSpec,
    backend: String,
    /// Removed once the sandbox is gone.
    run_dir: Option<RunDir>,
    /// Whether `runsc pause` stopped it.
    paused: bool,
}

impl GvisorVm {
    /// The sandbox's processes on the host: its `runsc` and everything
    /// under it (the sandbox, its stub processes, the gofer).
    fn processes(&self) -> Vec<u32> {
        self.child
            .id()
            .map_or_else(|| vec![self.pid], placement::descendants)
    }

    async fn runsc(&self, args: &[&str], operation: &'static str) -> Result<(), VmmError> {
        let output = Command::new(&self.binary)
            .arg(format!("--root={}", self.state.display()))
            .args(args)
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| VmmError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        Err(VmmError::Control {
            operation,
            source: String::from_utf8_lossy(&output.stderr)
                .trim()
                .to_string()
                .into(),
        })
    }

    /// Checkpoints the sandbox into the file `state` (`runsc` writes a
    /// directory, beside it, whose one file becomes `state`). The sandbox
    /// is gone afterwards, unless `leave_running`: then it runs on, saved
    /// or not.
    async fn checkpoint(&mut self, state: &Path, leave_running: bool) -> Result<(), VmmError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| VmmError::Io { what, path, source }
        };
        let mut dir = state.as_os_str().to_owned();
        dir.push(".gvisor");
        let dir = PathBuf::from(dir);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let image_path = format!("--image-path={}", dir.display());
        let mut args = vec!["checkpoint", "--compression=flate-best-speed", &image_path];
        if leave_running {
            args.push("--leave-running");
        } else if let Some(runsc) = self.child.id() {
            // The sandbox ends with the checkpoint.
            self.held.take_under(runsc);
        }
        let saved = self.runsc(&args, "save").await;
        let moved = saved.and_then(|()| {
            let names: Vec<_> = fs::read_dir(&dir)
                .map_err(io("read", &dir))?
                .flatten()
                .map(|entry| entry.file_name())
                .collect();
            if names != [CHECKPOINT_FILE] {
                return Err(VmmError::Control {
                    operation: "save",
                    source: format!(
                        "runsc checkpoint wrote {names:?}, where this runner knows only \
                         {CHECKPOINT_FILE}"
                    )
                    .into(),
                });
            }
            let image = dir.join(CHECKPOINT_FILE);
            fs::rename(&image, state).map_err(io("move", &image))
        });
        let _ = fs::remove_dir_all(&dir);
        moved
    }
}

#[async_trait]
impl Vm for GvisorVm {
    fn channel(&mut self) -> &mut AgentChannel {
        &mut self.channel
    }

    fn take_network(&mut self) -> Option<UnixStream> {
        self.net.take()
    }

    fn console_tail(&self) -> String {
        self.console.tail()
    }

    /// systrap counts a program's CPU time by the sandbox's clock while
    /// the program's code runs, waiting for a host CPU included: the host
    /// counts the waiting, as for a VM under TCG (see [`VcpuClock`]).
    fn vcpu_clock(&self) -> Option<VcpuClock> {
        self.child.id().map(VcpuClock::tree)
    }

    /// Every process of the sandbox: systrap runs the program's code in
    /// stub processes of the sandbox's own.
    fn bring_forward(&self, cpus: &CpuList) -> Result<(), VmmError> {
        for pid in self.processes() {
            placement::bring_forward(pid, cpus).map_err(|e| VmmError::Control {
                operation: "move the threads of",
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// The whole sandbox on `cpu`: gVisor's threads run the program's.
    fn pin_vcpus(&self, cpu: usize) -> Result<(), VmmError> {
        let mut set = nix::sched::CpuSet::new();
        let pin = |e: nix::Error| VmmError::Control {
            operation: "pin the threads of",
            source: Box::new(e),
        };
        set.set(cpu).map_err(pin)?;
        for pid in self.processes() {
            for tid in placement::threads(pid) {
                // A thread may end meanwhile.
                match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set) {
                    Ok(()) | Err(nix::Error::ESRCH) => {}
                    Err(e) => return Err(pin(e)),
                }
            }
        }
        Ok(())
    }

    async fn pause(&mut self, paused: bool) -> Result<(), VmmError> {
        match (paused, self.paused) {
            (true, false) => self.runsc(&["pause"], "pause").await?,
            (false, true) => self.runsc(&["resume"], "resume").await?,
            // Running or paused already (a save leaves it running).
            _ => {}
        }
        self.paused = paused;
        Ok(())
    }

    fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn snapshot(&mut self, state: &Path) -> Result<(), VmmError> {
        if !matches!(self.spec.memory, Memory::Template { .. }) {
            return Err(VmmError::Unsupported(
                "only a sandbox started for a snapshot is snapshotted",
            ));
        }
        self.checkpoint(state, false).await
    }

    /// The sandbox is left running: if the save fails (a full disk), it
    /// goes on as it was; if it succeeds, the caller destroys it.
    async fn save(&mut self, state: &Path) -> Result<Saved, VmmError> {
        self.checkpoint(state, true).await?;
        let bytes = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(state).map_or(0, |meta| meta.blocks() * 512)
        };
        let memory = Memory::Resume {
            base: None,
            state: state.to_path_buf(),
        };
        Ok(Saved::of(&self.spec, memory, self.backend.clone(), bytes))
    }

    /// The sandbox's processes are killed and collected before `runsc
    /// delete`, which otherwise waits for whoever collects them.
    async fn destroy(mut self: Box<Self>) {
        if let Some(runsc) = self.child.id() {
            self.held.take_under(runsc);
        }
        self.held.kill();
        // `runsc` ends with its sandbox.
        if tokio::time::timeout(RUNSC_EXIT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        let held = std::mem::take(&mut self.held);
        let _ = tokio::task::spawn_blocking(|| held.reap()).await;
        let _ = self.runsc(&["delete", "--force"], "delete").await;
        reap_strays();
        self.run_dir.take();
    }
}

impl Drop for GvisorVm {
    fn drop(&mut self) {
        if self.run_dir.is_some() {
            // Its `runsc` is killed on drop, and the sandbox with it; a
            // thread collects them once `runsc` has ended.
            let runsc = self.child.id().and_then(|pid| {
                self.held.take_under(pid);
                pidfd(pid)
            });
            self.held.kill();
            let _ = self.child.start_kill();
            let held = std::mem::take(&mut self.held);
            let (binary, state, id) = (self.binary.clone(), self.state.clone(), self.id.clone());
            std::thread::spawn(move || {
                if let Some(runsc) = runsc {
                    // Ended, and left for tokio to collect.
                    let _ = rustix::process::waitid(
                        WaitId::PidFd(runsc.as_fd()),
                        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
                    );
                }
                held.reap();
                delete(&binary, &state, &id);
                reap_strays();
            });
        }
    }
}

/// The host processes under a sandbox's `runsc`: the sandbox, its gofer,
/// systrap's stub processes. Held by pidfd, so that a process number
/// reused after one ended is never signalled.
///
/// The runner is their child subreaper (set in [`GvisorBackend::new`], as
/// containerd's shim is for its containers): `runsc` ends before them, and
/// they become the runner's children, collected here at once. Left to
/// init, they may wait for seconds (this machine's init collects orphans
/// every few seconds), and `runsc delete` waits for them: an execution's
/// end took 1.3–1.8 s more than its program.
#[derive(Default)]
struct Held(Vec<(u32, OwnedFd)>);

impl Held {
    /// Holds every process under `runsc` not held yet.
    fn take_under(&mut self, runsc: u32) {
        for pid in placement::descendants(runsc) {
            if pid == runsc || self.0.iter().any(|(held, _)| *held == pid) {
                continue;
            }
            if let Some(fd) = pidfd(pid) {
                self.0.push((pid, fd));
            }
        }
    }

    fn kill(&self) {
        for (_, fd) in &self.0 {
            // One that has ended already says so.
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }

    /// Collects each that is the runner's child, waiting for it to end;
    /// once their `runsc` has ended, all of them are. Blocks.
    fn reap(self) {
        for (_, fd) in self.0 {
            // Not the runner's child (its own parent collected it): ECHILD.
            let _ = rustix::process::waitid(WaitId::PidFd(fd.as_fd()), WaitIdOptions::EXITED);
        }
    }
}

/// A pidfd of process `pid`, if it is there.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok()
}

/// Collects the runner's children that ended unheld: gVisor's processes
/// (named `exe`: `runsc` runs itself again for each) that began after the
/// last [`Held::take_under`]. The runner starts no other process of that
/// name, and a process that has ended keeps its number until collected.
fn reap_strays() {
    for pid in placement::children(std::process::id()) {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ...`
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        if comm == "exe" && rest.starts_with('Z') {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid as i32),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// Root filesystem images mounted read-only on the host, one mount point
/// per image, shared by every sandbox of it and left mounted: they are
/// read-only, and the next runner finds them mounted. Beside each mount
/// point a record names its image; an image that is gone (`runner image
/// prune` removed it) is unmounted when the next backend starts, so its
/// space is not held for ever.
struct Roots {
    dir: PathBuf,
    mounted: Mutex<HashSet<PathBuf>>,
}

impl Roots {
    fn new(dir: PathBuf) -> Self {
        let roots = Self {
            dir,
            mounted: Mutex::default(),
        };
        roots.sweep();
        roots
    }

    /// The record of the image mounted at `target`.
    fn record(target: &Path) -> PathBuf {
        target.with_extension("image")
    }

    /// Unmounts the mount points whose images are gone.
    fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let record = entry.path();
            if record.extension().is_none_or(|e| e != "image") {
                continue;
            }
            let image = fs::read_to_string(&record).unwrap_or_default();
            if Path::new(image.trim()).exists() {
                continue;
            }
            let target = record.with_extension("");
            tracing::info!(mount = %target.display(), "unmounting a removed image");
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(&target)
                .status();
            if !is_mount_point(&target) {
                let _ = fs::remove_dir(&target);
                let _ = fs::remove_file(&record);
            }
        }
    }

    /// The mount point of `image`, mounted if it is not yet.
    fn mount(&self, image: &Path) -> Result<PathBuf, VmmError> {
        let name = image
            .parent()
            .and_then(Path::file_name)
            .ok_or(VmmError::Unsupported(
                "a root filesystem image has no directory",
            ))?;
        let target = self.dir.join(name);
        let mut mounted = self.mounted.lock().unwrap();
        if mounted.contains(&target) {
            return Ok(target);
        }
        fs::create_dir_all(&target).map_err(|source| VmmError::Io {
            what: "create",
            path: target.clone(),
            source,
        })?;
        if !is_mount_point(&target) {
            let output = std::process::Command::new("mount")
                .args(["-o", "ro,loop,noload,nodev,nosuid", "-t", "ext4"])
                .arg(image)
                .arg(&target)
                .output()
                .map_err(|source| VmmError::Spawn {
                    binary: "mount".into(),
                    source,
                })?;
            if !output.status.success() && !is_mount_point(&target) {
                return Err(VmmError::Control {
                    operation: "mount the root filesystem of",
                    source: String::from_utf8_lossy(&output.stderr)
                        .trim()
                        .to_string()
                        .into(),
                });
            }
        }
        let record = Self::record(&target);
        fs::write(&record, image.as_os_str().as_encoded_bytes()).map_err(|source| {
            VmmError::Io {
                what: "write",
                path: record.clone(),
                source,
            }
        })?;
        mounted.insert(target.clone());
        Ok(target)
    }
}

/// Whether `path` is a mount point: on another device than its parent.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(meta), Some(Ok(parent))) => meta.dev() != parent.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{Roots, is_mount_point, release_date};

    #[test]
    fn an_image_is_mounted_once_and_unmounted_once_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let image_dir = dir.path().join("rootfs-x-0123");
        std::fs::create_dir(&image_dir).unwrap();
        let image = image_dir.join("rootfs.ext4");
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .arg("4M")
            .status()
            .unwrap();
        assert!(made.success());
        let roots = Roots::new(dir.path().join("roots"));
        let target = roots.mount(&image).unwrap();
        assert!(is_mount_point(&target));
        assert_eq!(roots.mount(&image).unwrap(), target, "once");
        // Another runner finds it mounted and keeps it while its image is.
        let again = Roots::new(dir.path().join("roots"));
        assert!(is_mount_point(&target));
        assert_eq!(again.mount(&image).unwrap(), target);
        std::fs::remove_dir_all(&image_dir).unwrap();
        let _next = Roots::new(dir.path().join("roots"));
        assert!(!is_mount_point(&target) && !target.exists(), "unmounted");
    }

    #[test]
    fn a_release_is_dated_as_debian_and_gvisor_number_it() {
        assert_eq!(release_date("0.0~20240729.0"), Some(20240729));
        assert_eq!(release_date("release-20231113.0"), Some(20231113));
        assert_eq!(release_date("0.0~git20220101"), Some(20220101));
        assert_eq!(release_date("unknown"), None);
    }
}
