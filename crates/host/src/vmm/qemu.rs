//! The QEMU backend: `qemu-system-x86_64` from Debian, KVM where a probe shows
//! it works, TCG elsewhere.
//!
//! The agent talks over a virtio-serial port whose QEMU end connects to a Unix
//! socket the host listens on before QEMU starts, so there is no wait for a
//! socket file to appear; the file is unlinked as soon as QEMU connected. The
//! VM has no network device and its root disk is read-only. A QMP monitor
//! on a second socket stops, saves and loads it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

use super::console::Console;
use super::placement::{self, CpuList, HugePages, Nodes, POOL_NICE, VM_NICE};
use super::qmp::{Qmp, QmpError};
use super::run_dir::RunDir;
use super::{
    Accel, AccelChoice, AgentChannel, Backend, BackendInfo, Installed, Machine, Memory, Saved,
    VcpuClock, Vm, VmSpec, VmmConfig, VmmError,
};

pub const NAME: &str = "qemu";
const QEMU_BINARY: &str = "qemu-system-x86_64";
/// How long QEMU may take to start and connect to the agent socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Kernel arguments for every VM: console on the serial port (kept for error
/// reports), quiet, and a panic ends the VM at once (`-no-reboot` turns the
/// reboot into a QEMU exit).
const KERNEL_ARGS: &[&str] = &[
    "console=ttyS0",
    "quiet",
    "loglevel=3",
    "panic=-1",
    "rdinit=/init",
];

/// Kernel arguments for a guest under TCG, whose timers are QEMU's and
/// always work: the checks a kernel makes of real hardware at boot only
/// cost time there. `no_timer_check` skips waiting for the timer interrupt
/// to arrive (4 ticks, 40 ms at the guest's 100 Hz; KVM guests skip it by
/// themselves). `noapictimer` ticks from the PIT instead of the local
/// APIC's timer, whose rate the kernel would otherwise count against it
/// for 100 ms: TCG's APIC has no TSC-deadline mode, which is what lets a
/// kernel skip that. Sleeps in a restored VM stay precise (p50 0.70 ms
/// for 0.5 ms). Under KVM the APIC timer needs no counting.
const TCG_KERNEL_ARGS: &[&str] = &["no_timer_check", "noapictimer"];

/// Added for q35, which also boots without ACPI under TCG: the kernel
/// interpreting q35's ACPI tables took ~200 ms of every cold boot (820 ms
/// against 610 ms to the agent's hello, 10 boots each). PCI is then found
/// by probing, the tick comes from the PIT, and a VM's end is QEMU's exit
/// at the agent's power-off (no ACPI to power off with: the kernel panics,
/// and `-no-reboot` ends QEMU), as on microvm, which never had ACPI here.
const TCG_Q35_KERNEL_ARGS: &[&str] = &["acpi=off"];

pub struct QemuBackend {
    binary: PathBuf,
    info: BackendInfo,
    /// Added to [`KERNEL_ARGS`] for every VM.
    kernel_args: Vec<String>,
    huge_pages: HugePages,
    /// The host's nodes, to bind each VM's memory to its CPUs' node;
    /// `None` when not asked to (`numa_bind`).
    nodes: Option<Nodes>,
}

impl QemuBackend {
    /// The binary the configuration names, else the one on `PATH`.
    pub fn binary(config: &VmmConfig) -> PathBuf {
        config
            .qemu
            .clone()
            .unwrap_or_else(|| PathBuf::from(QEMU_BINARY))
    }

    /// `qemu-system-x86_64 --version`, first line; says what to install
    /// when there is no such program.
    pub async fn version(binary: &Path) -> Result<String, VmmError> {
        let output = match Command::new(binary).arg("--version").output().await {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VmmError::Missing {
                    binary: binary.display().to_string(),
                    remedy: "install the Debian package qemu-system-x86, \
                             or set qemu (RUNNER_QEMU) to its path",
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
        Ok(text.lines().next().unwrap_or("unknown").to_string())
    }

    /// The backend for `config` (its machine, kernel arguments and memory
    /// placement) with `installed`'s QEMU, accelerated as `choice` says
    /// (KVM or TCG: [`Accel::Systrap`] is gVisor's, and taken as TCG here).
    pub fn new(installed: Installed, config: &VmmConfig, choice: AccelChoice) -> Self {
        Self {
            binary: installed.binary,
            info: BackendInfo {
                name: NAME,
                version: installed.version,
                accel: choice.accel,
                machine: config.machine,
                reason: choice.reason,
            },
            kernel_args: config.kernel_args.clone(),
            huge_pages: config.huge_pages,
            nodes: config.numa_bind.then(Nodes::of_host),
        }
    }

    /// The host's TSC rate, for guests under emulation, which would
    /// measure it at boot (see `super::tsc`): against the PIT, which fails
    /// now and then and leaves microvm (no HPET) on jiffies, and then, on
    /// q35, against the HPET, which costs every cold boot ~80 ms. Under KVM
    /// kvmclock tells the guest.
    fn tsc_khz(&self) -> Option<u64> {
        match self.info.accel {
            Accel::Tcg | Accel::Systrap => super::tsc::host_khz(),
            Accel::Kvm => None,
        }
    }

    /// The arguments this backend adds to every boot of its own: the
    /// host's TSC rate, then [`TCG_KERNEL_ARGS`] (and, on q35,
    /// [`TCG_Q35_KERNEL_ARGS`]) under TCG; nothing under KVM. With `values`
    /// as the kernel is given them; otherwise as a snapshot's key holds
    /// them, the TSC rate by name only (it is measured per process).
    fn own_args(&self, values: bool) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(khz) = self.tsc_khz() {
            args.push(match values {
                true => format!("tsc_early_khz={khz}"),
                false => "tsc_early_khz".into(),
            });
        }
        let (every, q35): (&[&str], &[&str]) = match self.info.accel {
            Accel::Tcg | Accel::Systrap => (TCG_KERNEL_ARGS, TCG_Q35_KERNEL_ARGS),
            Accel::Kvm => (&[], &[]),
        };
        args.extend(every.iter().map(|a| a.to_string()));
        if self.info.machine == Machine::Q35 {
            args.extend(q35.iter().map(|a| a.to_string()));
        }
        args
    }

    fn command(&self, spec: &VmSpec, socket: &Path, net: &Path, qmp: &Path) -> Command {
        let mut command = Command::new(&self.binary);
        let accel = match self.info.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg | Accel::Systrap => "tcg",
        };
        let cpu = self.cpu_model();
        // Snapshots: memory in a file (x-ignore-shared leaves it out of the
        // migration stream); every VM has a QMP monitor to stop, save and
        // load it.
        let (memory_file, share) = match &spec.memory {
            Memory::Private | Memory::Resume { base: None, .. } => (None, false),
            Memory::Template { path } => (Some(path), true),
            Memory::Restore { path, .. } => (Some(path), false),
            Memory::Resume {
                base: Some(path), ..
            } => (Some(path), false),
        };
        let memory_backend = if memory_file.is_some() {
            ",memory-backend=mem"
        } else {
            ""
        };
        // q35's devices sit on PCI, microvm's on virtio-mmio.
        let (machine, bus) = match self.info.machine {
            Machine::Q35 => (format!("q35,accel={accel},smm=off,vmport=off"), "pci"),
            Machine::Microvm => (
                format!("microvm,accel={accel},acpi=off,pit=on,pic=on,rtc=on,isa-serial=on"),
                "device",
            ),
        };
        let mut kernel_args: Vec<String> = KERNEL_ARGS.iter().map(|a| a.to_string()).collect();
        kernel_args.extend(self.own_args(true));
        kernel_args.extend(spec.kernel_args.iter().cloned());
        kernel_args.extend(self.kernel_args.iter().cloned());
        command
            .arg("-name")
            .arg(format!("runner-{}", spec.id))
            .args([
                "-nodefaults",
                "-no-user-config",
                "-no-reboot",
                "-display",
                "none",
            ])
            // QEMU's seccomp filter: no new processes, no privilege changes.
            .args([
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            ])
            .args(["-machine", &format!("{machine}{memory_backend}")])
            .args(["-cpu", cpu])
            .args(["-smp", &spec.vcpus.to_string()])
            .args(["-m", &format!("{}M", spec.memory_mib)])
            .arg("-kernel")
            .arg(&spec.kernel)
            .arg("-initrd")
            .arg(&spec.initramfs)
            .args(["-append", &kernel_args.join(" ")])
            .args(["-serial", "stdio"])
            .args(["-nic", "none"])
            .args(["-device", &format!("virtio-serial-{bus},id=serial0")])
            .arg("-chardev")
            .arg(format!("socket,id=agent,path={}", socket.display()))
            .arg("-device")
            .arg(format!(
                "virtserialport,bus=serial0.0,chardev=agent,name={}",
                runner_protocol::AGENT_PORT_NAME
            ))
            // The network port: nothing goes over it unless the host serves
            // it (the egress proxy); a VM without it could not be restored
            // from a snapshot of one with it, so every VM has it.
            .arg("-chardev")
            .arg(format!("socket,id=net,path={}", net.display()))
            .arg("-device")
            .arg(format!(
                "virtserialport,bus=serial0.0,chardev=net,name={}",
                runner_protocol::net::NET_PORT_NAME
            ))
            .args(["-object", "rng-random,id=rng0,filename=/dev/urandom"])
            .args(["-device", &format!("virtio-rng-{bus},rng=rng0")]);
        if let Some(path) = memory_file {
            // A restored VM opens the snapshot's memory read-only and maps it
            // privately (readonly=on with rom=off, QEMU 8.2+): even a
            // compromised QEMU cannot write into the snapshot other VMs use.
            let access = if share {
                "share=on"
            } else {
                "share=off,readonly=on,rom=off"
            };
            // Mapped at a 2 MiB boundary, so that the host can map the
            // file's 2 MiB page-cache pages whole (transparent huge pages
            // for files; QEMU marks all guest memory MADV_HUGEPAGE, which
            // also makes the kernel read the file ahead in such pages).
            command.arg("-object").arg(format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},align=2M,{access}",
                spec.memory_mib,
                path.display(),
            ));
        }
        command
            .arg("-chardev")
            .arg(format!("socket,id=qmp,path={}", qmp.display()))
            .args(["-mon", "chardev=qmp,mode=control"]);
        if let Memory::Restore { .. } | Memory::Resume { .. } = spec.memory {
            command.args(["-incoming", "defer"]);
        }
        if let Some(rootfs) = &spec.rootfs {
            command
                .arg("-drive")
                .arg(format!(
                    "if=none,id=root,format=raw,readonly=on,file={}",
                    rootfs.display()
                ))
                .args(["-device", &format!("virtio-blk-{bus},drive=root")]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Made before the fork: the child only hands them to the kernel.
        let cpus = spec.cpus.to_set();
        let background = spec.background;
        let no_huge_pages = self.huge_pages == HugePages::Off;
        let node_mask = self
            .nodes
            .as_ref()
            .and_then(|nodes| nodes.node_of(&spec.cpus))
            .map(placement::node_mask);
        // SAFETY: prctl, sched_setaffinity, set_mempolicy and setpriority
        // are async-signal-safe system calls; the set and the mask are the
        // child's copies, only read.
        unsafe {
            command.pre_exec(move || {
                // If the runner dies without cleaning up, so does its VM.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Kept across exec, for every thread and mapping of QEMU's.
                if no_huge_pages && libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The memory of a VM whose CPUs lie in one node comes from
                // that node (inherited across exec like the CPUs). Where the
                // kernel refuses (a cpuset changed since the nodes were
                // read), the VM runs unbound rather than not at all; its
                // /proc/<pid>/numa_maps shows which.
                if let Some(mask) = &node_mask {
                    let _ = placement::bind_memory(mask);
                }
                // Every thread QEMU starts inherits its CPUs and priority.
                if let Some(cpus) = &cpus {
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus)?;
                }
                // A pool's VM behind everything else; an execution's ahead
                // from its first instruction (its restore is part of the
                // execution), where this process may raise priorities.
                let nice = if background { POOL_NICE } else { VM_NICE };
                if libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0 && background {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    /// Under TCG, the emulator's own CPU without ERMS and FSRM ("fast
    /// `rep movsb`/`stosb`"): with them, the guest kernel clears and copies
    /// pages, and glibc copies large blocks, with `rep movsb`/`stosb`,
    /// which TCG runs a byte at a time. Without them, a program touching
    /// 256 MiB and copying 256 MiB used 1.0 s of CPU instead of 1.6 s;
    /// compiles and Python's fib(30) took the same (README, "Backends").
    fn cpu_model(&self) -> &'static str {
        match self.info.accel {
            Accel::Kvm => "host",
            Accel::Tcg | Accel::Systrap => "max,-erms,-fsrm",
        }
    }

    fn boot_args(&self) -> Vec<String> {
        let mut args = self.kernel_args.clone();
        args.extend(self.own_args(false));
        args
    }

    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        let run_dir = RunDir::create(spec.run_dir.clone())?;
        let socket = run_dir.path.join("agent.sock");
        let listen = |path: &Path| {
            UnixListener::bind(path).map_err(|source| VmmError::Io {
                what: "listen on",
                path: path.to_path_buf(),
                source,
            })
        };
        let listener = listen(&socket)?;
        let net_socket = run_dir.path.join("net.sock");
        let net_listener = listen(&net_socket)?;
        let qmp_socket = run_dir.path.join("qmp.sock");
        let qmp_listener = listen(&qmp_socket)?;
        let mut child = self
            .command(&spec, &socket, &net_socket, &qmp_socket)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        let console = Console::default();
        console.capture(child.stdout.take());
        console.capture(child.stderr.take());

        let accept = async {
            let agent = listener.accept().await.map_err(|source| VmmError::Io {
                what: "accept on",
                path: socket.clone(),
                source,
            })?;
            let (net, _) = net_listener.accept().await.map_err(|source| VmmError::Io {
                what: "accept on",
                path: net_socket.clone(),
                source,
            })?;
            let (stream, _) = qmp_listener.accept().await.map_err(|source| VmmError::Io {
                what: "accept on",
                path: qmp_socket.clone(),
                source,
            })?;
            let qmp = Qmp::handshake(stream)
                .await
                .map_err(control("connect to"))?;
            Ok::<_, VmmError>((agent, net, qmp))
        };
        let (accepted, net, mut qmp) = tokio::select! {
            accepted = accept => accepted?,
            status = child.wait() => {
                return Err(VmmError::ExitedEarly {
                    status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    console: console.settle_and_tail().await,
                });
            }
            () = tokio::time::sleep(CONNECT_TIMEOUT) => {
                return Err(VmmError::ConnectTimeout {
                    seconds: CONNECT_TIMEOUT.as_secs(),
                    console: console.tail(),
                });
            }
        };
        // Connected: the socket files have served their purpose.
        drop(listener);
        drop(qmp_listener);
        drop(net_listener);
        let _ = fs::remove_file(&socket);
        let _ = fs::remove_file(&net_socket);
        let _ = fs::remove_file(&qmp_socket);
        match &spec.memory {
            Memory::Restore { state, .. } => {
                load(&mut qmp, state, ignore_shared())
                    .await
                    .map_err(control("restore"))?;
            }
            Memory::Resume { state, .. } => {
                load(&mut qmp, state, mapped_ram())
                    .await
                    .map_err(control("resume"))?;
            }
            Memory::Private | Memory::Template { .. } => {}
        }
        let base = match &spec.memory {
            Memory::Restore { path, .. }
            | Memory::Resume {
                base: Some(path), ..
            } => Base::File(path.clone()),
            Memory::Private | Memory::Resume { base: None, .. } => Base::Anonymous,
            Memory::Template { .. } => Base::Template,
        };
        let vcpu_threads = vcpu_threads(&mut qmp).await.unwrap_or_default();
        // Under TCG the guest cannot tell its vCPU waited for a host CPU:
        // the host counts it (see `VcpuClock`).
        let vcpu_clock = match self.info.accel {
            Accel::Kvm => None,
            Accel::Tcg | Accel::Systrap => child
                .id()
                .and_then(|pid| VcpuClock::new(pid, &vcpu_threads)),
        };
        Ok(Box::new(QemuVm {
            child,
            vcpu_threads,
            vcpu_clock,
            channel: AgentChannel::new(accepted.0),
            net: Some(net),
            console,
            qmp,
            base,
            spec,
            backend: self.info.describe(),
            _run_dir: run_dir,
        }))
    }
}

/// The host thread ids of the VM's vCPUs.
async fn vcpu_threads(qmp: &mut Qmp) -> Result<Vec<u64>, QmpError> {
    let cpus = qmp
        .execute("query-cpus-fast", serde_json::Value::Null)
        .await?;
    Ok(cpus
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|cpu| cpu["thread-id"].as_u64())
        .collect())
}

/// Wraps a monitor failure as the VMM failing at `operation`.
fn control(operation: &'static str) -> impl FnOnce(QmpError) -> VmmError {
    move |source| VmmError::Control {
        operation,
        source: Box::new(source),
    }
}

/// Loads a saved VM (a snapshot's device state, or a whole VM saved by
/// [`Vm::save`]) into a VM started with `-incoming defer`, with the
/// migration `capabilities` it was saved with, and lets it run.
async fn load(
    qmp: &mut Qmp,
    state: &Path,
    capabilities: serde_json::Value,
) -> Result<(), QmpError> {
    qmp.execute("migrate-set-capabilities", capabilities)
        .await?;
    qmp.execute(
        "migrate-incoming",
        serde_json::json!({ "uri": format!("file:{}", state.display()) }),
    )
    .await?;
    loop {
        let status = qmp.execute("query-status", serde_json::Value::Null).await?;
        match status["status"].as_str() {
            Some("inmigrate") => tokio::time::sleep(Duration::from_millis(2)).await,
            Some("paused") | Some("postmigrate") | Some("prelaunch") => break,
            Some("running") => return Ok(()),
            other => {
                return Err(QmpError::Failed(format!(
                    "loading {} ended in state {other:?}",
                    state.display()
                )));
            }
        }
    }
    qmp.execute("cont", serde_json::Value::Null).await?;
    Ok(())
}

/// Guest memory stays out of the migration stream: it is in the file.
fn ignore_shared() -> serde_json::Value {
    serde_json::json!({
        "capabilities": [{ "capability": "x-ignore-shared", "state": true }]
    })
}

/// Every page in the file, at a fixed place (see [`super::mapped_ram`]).
/// Capabilities outlive a migration: a VM restored with `x-ignore-shared`
/// still has it, and it would change the layout.
fn mapped_ram() -> serde_json::Value {
    serde_json::json!({
        "capabilities": [
            { "capability": "x-ignore-shared", "state": false },
            { "capability": "mapped-ram", "state": true },
        ]
    })
}

/// The name QEMU gives the RAM block of a memory backend `mem`.
const MEMORY_BLOCK: &str = "mem";

/// What a VM's memory started as.
enum Base {
    /// Anonymous memory: zero.
    Anonymous,
    /// A snapshot's memory file, mapped copy-on-write.
    File(PathBuf),
    /// A template VM's own file, written through.
    Template,
}

struct QemuVm {
    child: Child,
    /// The host threads of its vCPUs.
    vcpu_threads: Vec<u64>,
    vcpu_clock: Option<VcpuClock>,
    channel: AgentChannel,
    /// The network port, until taken.
    net: Option<UnixStream>,
    console: Console,
    qmp: Qmp,
    base: Base,
    /// What it was started from, for [`Vm::save`].
    spec: VmSpec,
    backend: String,
    // Dropped after `child` (fields drop in order): QEMU is killed first.
    _run_dir: RunDir,
}

#[async_trait]
impl Vm for QemuVm {
    fn channel(&mut self) -> &mut AgentChannel {
        &mut self.channel
    }

    fn take_network(&mut self) -> Option<UnixStream> {
        self.net.take()
    }

    fn console_tail(&self) -> String {
        self.console.tail()
    }

    fn vcpu_clock(&self) -> Option<VcpuClock> {
        self.vcpu_clock.clone()
    }

    fn bring_forward(&self, cpus: &CpuList) -> Result<(), VmmError> {
        let Some(pid) = self.child.id() else {
            return Ok(());
        };
        placement::bring_forward(pid, cpus).map_err(|e| VmmError::Control {
            operation: "move the threads of",
            source: Box::new(e),
        })
    }

    // Its priority was set when it started (see `VmSpec::background`) or
    // when it left a pool (`bring_forward`).
    fn pin_vcpus(&self, cpu: usize) -> Result<(), VmmError> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).map_err(|e| VmmError::Control {
            operation: "pin the vCPUs of",
            source: Box::new(e),
        })?;
        for &tid in &self.vcpu_threads {
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid as i32), &set).map_err(
                |e| VmmError::Control {
                    operation: "pin the vCPUs of",
                    source: Box::new(e),
                },
            )?;
        }
        Ok(())
    }

    async fn pause(&mut self, paused: bool) -> Result<(), VmmError> {
        let qmp = &mut self.qmp;
        let (command, operation) = if paused {
            ("stop", "pause")
        } else {
            ("cont", "resume")
        };
        qmp.execute(command, serde_json::Value::Null)
            .await
            .map_err(control(operation))?;
        Ok(())
    }

    fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn snapshot(&mut self, state: &Path) -> Result<(), VmmError> {
        if !matches!(self.base, Base::Template) {
            return Err(VmmError::Unsupported(
                "this VM has no memory file to snapshot",
            ));
        }
        save(&mut self.qmp, state, ignore_shared())
            .await
            .map_err(control("save"))
    }

    async fn save(&mut self, state: &Path) -> Result<Saved, VmmError> {
        let base = match &self.base {
            Base::Template => {
                return Err(VmmError::Unsupported(
                    "a template VM is saved as a snapshot",
                ));
            }
            Base::Anonymous => None,
            Base::File(path) => Some(path.clone()),
        };
        save(&mut self.qmp, state, mapped_ram())
            .await
            .map_err(control("save"))?;
        let path = state.to_path_buf();
        let kept_base = base.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let io = |what: &'static str, path: &Path| {
                let path = path.to_path_buf();
                move |source| VmmError::Io { what, path, source }
            };
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io("open", &path))?;
            if let Some(base) = base {
                let memory = fs::File::open(&base).map_err(io("open", &base))?;
                let reduced =
                    super::mapped_ram::reduce(&file, &memory, MEMORY_BLOCK).map_err(|source| {
                        VmmError::Control {
                            operation: "save",
                            source: Box::new(source),
                        }
                    })?;
                tracing::debug!(
                    pages = reduced.pages,
                    "saved the pages that differ from the snapshot"
                );
            }
            use std::os::unix::fs::MetadataExt;
            let meta = file.metadata().map_err(io("stat", &path))?;
            Ok::<_, VmmError>(meta.blocks() * 512)
        })
        .await
        .expect("saving does not panic")?;
        let memory = Memory::Resume {
            base: kept_base,
            state: state.to_path_buf(),
        };
        Ok(Saved::of(&self.spec, memory, self.backend.clone(), bytes))
    }

    async fn destroy(mut self: Box<Self>) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Stops the VM and saves it to `state` with the migration
/// `capabilities`: its device state only, for a template VM whose memory
/// is in its file already; all of it in the mapped-ram layout otherwise.
async fn save(
    qmp: &mut Qmp,
    state: &Path,
    capabilities: serde_json::Value,
) -> Result<(), QmpError> {
    qmp.execute("stop", serde_json::Value::Null).await?;
    qmp.execute("migrate-set-capabilities", capabilities)
        .await?;
    qmp.execute(
        "migrate",
        serde_json::json!({ "uri": format!("file:{}", state.display()) }),
    )
    .await?;
    loop {
        let info = qmp
            .execute("query-migrate", serde_json::Value::Null)
            .await?;
        match info["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(QmpError::Failed(format!(
                    "saving failed: {}",
                    info["error-desc"].as_str().unwrap_or("no reason given")
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(machine: Machine, accel: Accel, kernel_args: &[&str]) -> QemuBackend {
        let installed = Installed {
            backend: NAME,
            binary: PathBuf::from(QEMU_BINARY),
            version: "QEMU emulator version 10.0.2".into(),
        };
        let config = VmmConfig {
            machine,
            kernel_args: kernel_args.iter().map(|a| a.to_string()).collect(),
            ..VmmConfig::default()
        };
        let choice = AccelChoice {
            accel,
            reason: "test".into(),
        };
        QemuBackend::new(installed, &config, choice)
    }

    #[test]
    fn a_snapshot_keeps_the_arguments_its_boot_was_given() {
        // Configured arguments with their values: a snapshot booted with
        // other ones is another snapshot.
        assert_eq!(
            backend(Machine::Q35, Accel::Kvm, &["a=1"]).boot_args(),
            ["a=1"]
        );
        assert!(
            backend(Machine::Q35, Accel::Kvm, &[])
                .boot_args()
                .is_empty()
        );
        // The TSC rate by name only (it is measured per process), and only
        // where the guest is told it: under TCG, on either machine.
        // The timer arguments of an emulated guest, too, and q35's acpi=off.
        for machine in [Machine::Q35, Machine::Microvm] {
            let mut told = backend(machine, Accel::Tcg, &["a=1"]).boot_args();
            if machine == Machine::Q35 {
                assert_eq!(told.pop().as_deref(), Some("acpi=off"));
            }
            match crate::vmm::tsc::host_khz() {
                Some(_) => assert_eq!(
                    told,
                    ["a=1", "tsc_early_khz", "no_timer_check", "noapictimer"]
                ),
                None => assert_eq!(told, ["a=1", "no_timer_check", "noapictimer"]),
            }
            assert!(backend(machine, Accel::Kvm, &[]).boot_args().is_empty());
        }
    }
}
