//! Virtual machine monitors behind one trait.
//!
//! A [`Backend`] starts a [`Vm`] from a [`VmSpec`] and hands back a connected
//! [`AgentChannel`]: how the bytes get there (QEMU's virtio-serial on a Unix
//! socket, Firecracker's vsock behind its `CONNECT` handshake) is the
//! backend's business. A VM is single-use: [`Vm::destroy`] (or dropping it)
//! kills it and removes every host-side file it had.
//!
//! [`select`] picks the backend and its acceleration, as Cloud
//! Hypervisor's `hypervisor::new()` does: no module outside this one names
//! a particular VMM.

pub mod accel;
mod channel;
mod console;
mod gvisor;
mod mapped_ram;
pub mod placement;
mod qemu;
mod qmp;
mod run_dir;
mod tsc;
mod vcpu_time;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use accel::{Accel, AccelChoice};
pub use channel::{AgentChannel, ChannelError};
pub use vcpu_time::VcpuClock;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM's program is not installed.
    #[error("{binary} not found: {remedy}")]
    Missing {
        binary: String,
        remedy: &'static str,
    },
    #[error("{binary} is {version}; this runner needs {needs}: {remedy}")]
    TooOld {
        binary: String,
        version: String,
        needs: String,
        remedy: &'static str,
    },
    #[error("starting {binary}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM exited before its agent connected ({status}); console:\n{console}")]
    ExitedEarly { status: String, console: String },
    #[error("the VMM did not open the agent channel within {seconds} s; console:\n{console}")]
    ConnectTimeout { seconds: u64, console: String },
    /// The VMM failed to do what its monitor was asked: pause, save or
    /// restore a VM.
    #[error("the VMM could not {operation} the VM")]
    Control {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The VM cannot do this (e.g. pause a VM that has no monitor).
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The backend [`select`] picks where nothing else is asked for.
pub const DEFAULT_BACKEND: &str = qemu::NAME;

pub use gvisor::SENTRY_RESERVE_MIB;

/// Which backend runs the sandboxes (`backend` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// QEMU where KVM works; else gVisor where `runsc` is installed (it
    /// runs code at the host's speed, where QEMU would emulate it); else
    /// QEMU under TCG.
    #[default]
    Auto,
    /// A microVM under QEMU: KVM where it works, else TCG.
    Qemu,
    /// A gVisor sandbox under Debian's `runsc`.
    Gvisor,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Qemu => qemu::NAME,
            BackendKind::Gvisor => gvisor::NAME,
        })
    }
}

/// What the backends take from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmmConfig {
    pub backend: BackendKind,
    /// The QEMU binary; `None` for `qemu-system-x86_64` on `PATH`.
    pub qemu: Option<PathBuf>,
    /// gVisor's `runsc`; `None` for the one on `PATH`.
    pub runsc: Option<PathBuf>,
    pub accel: AccelMode,
    pub machine: Machine,
    /// Appended to every guest's kernel command line.
    pub kernel_args: Vec<String>,
    /// Host CPUs of VMs that run executions (empty: any this process may
    /// use); each one's vCPU then gets one of them (the CPU of the machine
    /// slot its execution holds).
    pub vm_cpus: placement::CpuList,
    /// Host CPUs of VMs restored for warm pools until an execution takes
    /// them (empty: as `vm_cpus`).
    pub pool_cpus: placement::CpuList,
    /// Whether guest memory may use the host's huge pages.
    pub huge_pages: placement::HugePages,
    /// Bind each VM's memory to the NUMA node of its CPUs where they lie in
    /// one.
    pub numa_bind: bool,
}

/// The machine QEMU emulates (`machine` in the configuration). Both boot
/// the same kernels; which starts sooner is measured by `runner bench`
/// (see the README's "Machine type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// A PC with PCI Express and ACPI (which the guest reads only under
    /// KVM: under TCG that costs ~200 ms a boot); devices are virtio over
    /// PCI.
    #[default]
    Q35,
    /// QEMU's minimal machine without PCI or ACPI; devices are virtio over
    /// MMIO, named to the kernel on its command line.
    Microvm,
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        })
    }
}

/// How the acceleration is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    /// KVM if a probe guest boots under it, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The installed VMM, for `runner doctor`.
#[derive(Debug, Clone)]
pub struct Installed {
    pub backend: &'static str,
    pub binary: PathBuf,
    pub version: String,
}

/// The backend the configuration asks for, if it is installed, without
/// choosing its acceleration; for `auto`, QEMU if it is installed, else
/// gVisor.
pub async fn installed(config: &VmmConfig) -> Result<Installed, VmmError> {
    match config.backend {
        BackendKind::Auto => match installed_kind(config, BackendKind::Qemu).await {
            Ok(qemu) => Ok(qemu),
            Err(e) => installed_kind(config, BackendKind::Gvisor)
                .await
                .map_err(|_| e),
        },
        kind => installed_kind(config, kind).await,
    }
}

/// Backend `kind` (QEMU or gVisor), if it is installed.
pub async fn installed_kind(config: &VmmConfig, kind: BackendKind) -> Result<Installed, VmmError> {
    match kind {
        BackendKind::Qemu | BackendKind::Auto => {
            let binary = qemu::QemuBackend::binary(config);
            let version = qemu::QemuBackend::version(&binary).await?;
            Ok(Installed {
                backend: qemu::NAME,
                binary,
                version,
            })
        }
        BackendKind::Gvisor => {
            let binary = gvisor::GvisorBackend::binary(config);
            let version = gvisor::GvisorBackend::version(&binary).await?;
            Ok(Installed {
                backend: gvisor::NAME,
                binary,
                version,
            })
        }
    }
}

/// What [`select`] may need besides the configuration.
pub struct SelectFiles<'a> {
    /// What a probe VM boots (see [`accel`]).
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    /// Where a probe VM keeps its files.
    pub run_dir: &'a Path,
    /// The KVM verdict's cache.
    pub accel_cache: &'a Path,
    /// The gVisor backend's own state (its `runsc` root, mount points).
    pub gvisor_dir: &'a Path,
    /// The guest agent, a gVisor sandbox's first process.
    pub agent: &'a [u8],
}

/// Picks the backend for this machine and its acceleration: for QEMU this
/// may boot a probe VM to see whether KVM works; the verdict is cached.
pub async fn select(
    config: &VmmConfig,
    files: SelectFiles<'_>,
) -> Result<Arc<dyn Backend>, VmmError> {
    let SelectFiles {
        kernel,
        initramfs,
        run_dir,
        accel_cache,
        gvisor_dir,
        agent,
    } = files;
    let gvisor = |installed: Installed, reason: String| -> Result<Arc<dyn Backend>, VmmError> {
        tracing::info!(
            backend = installed.backend,
            version = %installed.version,
            reason = %reason,
            "backend chosen"
        );
        Ok(Arc::new(gvisor::GvisorBackend::new(
            installed, gvisor_dir, agent, reason,
        )?))
    };
    let qemu = |installed: Installed, choice: AccelChoice| -> Arc<dyn Backend> {
        tracing::info!(
            backend = installed.backend,
            version = %installed.version,
            accel = %choice.accel,
            reason = %choice.reason,
            "backend chosen"
        );
        if let Some(why) = config.huge_pages.unavailable() {
            tracing::warn!("huge_pages = \"transparent\", but {why}");
        }
        Arc::new(qemu::QemuBackend::new(installed, config, choice))
    };
    match config.backend {
        BackendKind::Gvisor => {
            let installed = installed_kind(config, BackendKind::Gvisor).await?;
            gvisor(installed, "the backend setting is gvisor".into())
        }
        BackendKind::Qemu => {
            let installed = installed_kind(config, BackendKind::Qemu).await?;
            let choice =
                accel::choose(config, &installed, kernel, initramfs, run_dir, accel_cache).await;
            Ok(qemu(installed, choice))
        }
        BackendKind::Auto => {
            let runsc = installed_kind(config, BackendKind::Gvisor).await;
            let installed = match installed_kind(config, BackendKind::Qemu).await {
                Ok(installed) => installed,
                Err(no_qemu) => {
                    let why = format!("backend = \"auto\" and {no_qemu}; gVisor runs the code");
                    return gvisor(runsc.map_err(|_| no_qemu)?, why);
                }
            };
            let choice =
                accel::choose(config, &installed, kernel, initramfs, run_dir, accel_cache).await;
            match (choice.accel, runsc) {
                (Accel::Kvm, _) => Ok(qemu(installed, choice)),
                (_, Ok(runsc)) => {
                    let why = format!(
                        "backend = \"auto\" and no usable KVM ({}): gVisor runs code at the \
                         host's speed where QEMU would emulate it",
                        choice.reason
                    );
                    gvisor(runsc, why)
                }
                (_, Err(no_runsc)) => {
                    let reason = format!(
                        "{}; backend = \"auto\" would use gVisor, but {no_runsc}",
                        choice.reason
                    );
                    Ok(qemu(installed, AccelChoice { reason, ..choice }))
                }
            }
        }
    }
}

/// Memory a VM has beyond its programs' limit: the guest kernel, the
/// agent and the page cache of the interpreter.
pub const GUEST_RESERVE_MIB: u64 = 64;

/// The memory of a VM whose largest program may use `program_mib`.
pub fn vm_memory_mib(program_mib: u64) -> u32 {
    (program_mib + GUEST_RESERVE_MIB) as u32
}

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Names the VM (in `ps`) and its run directory.
    pub id: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Root filesystem image, attached read-only; `None` for the probe VM.
    pub rootfs: Option<PathBuf>,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Appended to the backend's own kernel command line.
    pub kernel_args: Vec<String>,
    /// Directory for this VM's sockets; created by the backend and removed
    /// with the VM.
    pub run_dir: PathBuf,
    /// Where guest memory lives, for snapshots.
    pub memory: Memory,
    /// Host CPUs all of the VMM's threads start on; empty for any.
    pub cpus: placement::CpuList,
    /// A VM restored for a pool: its VMM starts at the lowest CPU priority
    /// ([`placement::POOL_NICE`]), so that a refill takes only CPU time
    /// executions leave, until [`Vm::bring_forward`]. Any other starts at
    /// [`placement::VM_NICE`] where this process may raise priorities.
    pub background: bool,
}

/// Guest memory, and what it has to do with a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Memory {
    /// Anonymous memory: a plain VM.
    #[default]
    Private,
    /// A VM that will be snapshotted: its memory is the file at `path`,
    /// written through, so the file is the snapshot's memory.
    Template { path: PathBuf },
    /// A VM restored from a snapshot: the memory file mapped copy-on-write
    /// (never written), and the device state loaded from `state`.
    Restore { path: PathBuf, state: PathBuf },
    /// A VM saved by [`Vm::save`] brought back: the memory it was restored
    /// from (`base`, mapped as for [`Memory::Restore`]; anonymous memory
    /// when `None`), then the pages it changed and its devices from
    /// `state`.
    Resume {
        base: Option<PathBuf>,
        state: PathBuf,
    },
}

/// A VM saved by [`Vm::save`]: what it takes to start it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: Option<PathBuf>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kernel_args: Vec<String>,
    /// [`Memory::Resume`] with the saved state.
    pub memory: Memory,
    /// The backend, its version and acceleration, as
    /// [`BackendInfo::describe`] says: a VM resumes only on the same.
    pub backend: String,
    /// Bytes the saved state takes on disk.
    pub bytes: u64,
}

impl Saved {
    /// The saved state of a VM started from `spec`: `memory` to resume it
    /// from, `bytes` on disk, on `backend` (as [`BackendInfo::describe`]
    /// says).
    pub fn of(spec: &VmSpec, memory: Memory, backend: String, bytes: u64) -> Self {
        Self {
            kernel: spec.kernel.clone(),
            initramfs: spec.initramfs.clone(),
            rootfs: spec.rootfs.clone(),
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            kernel_args: spec.kernel_args.clone(),
            memory,
            backend,
            bytes,
        }
    }

    /// A spec that resumes the VM, named `id`, with its sockets in
    /// `run_dir`.
    pub fn spec(&self, id: &str, run_dir: PathBuf) -> VmSpec {
        VmSpec {
            id: id.to_string(),
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            rootfs: self.rootfs.clone(),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            kernel_args: self.kernel_args.clone(),
            run_dir,
            memory: self.memory.clone(),
            cpus: placement::CpuList::default(),
            background: false,
        }
    }

    /// The files the saved VM needs to resume.
    pub fn needs(&self) -> Vec<&Path> {
        let mut files = vec![self.kernel.as_path(), self.initramfs.as_path()];
        files.extend(self.rootfs.as_deref());
        if let Memory::Resume { base, state } = &self.memory {
            files.extend(base.as_deref());
            files.push(state);
        }
        files
    }
}

/// What a backend is, for logs, `doctor` and results.
#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    pub name: &'static str,
    pub version: String,
    pub accel: Accel,
    pub machine: Machine,
    /// Why this acceleration was chosen.
    pub reason: String,
}

impl BackendInfo {
    /// Name, version and acceleration in one line.
    pub fn describe(&self) -> String {
        match self.machine {
            Machine::Q35 => format!("{} {} ({})", self.name, self.version, self.accel),
            machine => format!("{} {} ({}, {machine})", self.name, self.version, self.accel),
        }
    }
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn info(&self) -> &BackendInfo;

    /// The guest CPU model; a snapshot only restores onto the same one.
    fn cpu_model(&self) -> &'static str;

    /// Kernel arguments the backend adds to every boot: the configured ones
    /// (`kernel_args`), then the names of its own whose values may differ
    /// from boot to boot. A snapshot's key holds them: a restored VM keeps
    /// what its boot was told.
    fn boot_args(&self) -> Vec<String> {
        Vec::new()
    }

    /// Starts a VM and returns once the VMM runs and the agent channel is
    /// connected (the agent itself may still be booting).
    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, VmmError>;
}

#[async_trait]
pub trait Vm: Send {
    fn channel(&mut self) -> &mut AgentChannel;

    /// The host's end of the network port (the egress proxy serves it),
    /// once: the execution or session that may use the network serves it. A VM
    /// without one (a scripted peer) gives `None`.
    fn take_network(&mut self) -> Option<tokio::net::UnixStream> {
        None
    }

    /// The host's count of the VM's vCPU time, where its guest cannot see
    /// steal time itself (see [`VcpuClock`]); `None` under KVM.
    fn vcpu_clock(&self) -> Option<VcpuClock> {
        None
    }

    /// Brings a pooled VM taken by an execution forward: every thread of
    /// its VMM to an execution's priority (from [`VmSpec::background`]'s)
    /// and,
    /// if `cpus` are given, onto them (off the pools' CPUs). A VM without
    /// threads of its own (a scripted peer) does nothing.
    fn bring_forward(&self, cpus: &placement::CpuList) -> Result<(), VmmError> {
        let _ = cpus;
        Ok(())
    }

    /// Runs the VM's vCPUs on host CPU `cpu` only (the CPU of the machine
    /// slot its execution holds). A VM without threads of its own (a
    /// scripted peer) does nothing.
    fn pin_vcpus(&self, cpu: usize) -> Result<(), VmmError> {
        let _ = cpu;
        Ok(())
    }

    /// The end of what the guest printed on its console, for error reports.
    fn console_tail(&self) -> String;

    /// Pauses a [`Memory::Template`] VM and saves its device state to
    /// `state`; its memory is already in the template file. The VM is
    /// useless afterwards: destroy it.
    async fn snapshot(&mut self, state: &std::path::Path) -> Result<(), VmmError>;

    /// Stops the guest's CPUs (a VM waiting in a pool uses no CPU), or lets
    /// them run again.
    async fn pause(&mut self, paused: bool) -> Result<(), VmmError>;

    /// Stops the VM and saves it whole to `state`, for a VM started from
    /// what it returns to carry on from: of its memory only what differs
    /// from the memory it was restored from (its non-zero pages for a VM
    /// with private memory). On error the VM is stopped but intact:
    /// `pause(false)` lets it go on; on success, destroy it.
    async fn save(&mut self, state: &std::path::Path) -> Result<Saved, VmmError>;

    /// Whether the VMM process still runs (a pool VM can be killed from
    /// outside while it waits).
    fn is_alive(&mut self) -> bool;

    /// Kills the VM and removes its host-side files. Dropping a VM does the
    /// same without waiting for the process to be reaped.
    async fn destroy(self: Box<Self>);
}
