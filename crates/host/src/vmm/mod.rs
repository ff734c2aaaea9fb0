//! Virtual machine monitors behind one trait.
//!
//! A [`Backend`] starts a [`Vm`] from a [`VmSpec`] and hands back a connected
//! [`AgentChannel`]: how the bytes get there (QEMU's virtio-serial on a Unix
//! socket, Firecracker's vsock behind its `CONNECT` handshake) is the
//! backend's business. A VM is single-use: [`Vm::destroy`] (or dropping it)
//! kills it and removes every host-side file it had.

pub mod accel;
mod channel;
pub mod qemu;
pub mod qmp;

use std::path::PathBuf;

use async_trait::async_trait;
use serde::Serialize;

pub use accel::{Accel, AccelChoice};
pub use channel::{AgentChannel, ChannelError};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0} not found: install the Debian package qemu-system-x86 (or set RUNNER_QEMU)")]
    QemuMissing(String),
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
    #[error("snapshot: {0}")]
    Qmp(#[from] qmp::QmpError),
    #[error("migration {0}")]
    Migration(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
}

/// Guest memory, and what it has to do with a snapshot.
#[derive(Debug, Clone, Default)]
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
}

/// What a backend is, for logs, `doctor` and results.
#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    pub name: &'static str,
    pub version: String,
    pub accel: Accel,
    /// Why this acceleration was chosen.
    pub reason: String,
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn info(&self) -> &BackendInfo;

    /// The guest CPU model; a snapshot only restores onto the same one.
    fn cpu_model(&self) -> &'static str;

    /// Starts a VM and returns once the VMM runs and the agent channel is
    /// connected (the agent itself may still be booting).
    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, VmmError>;
}

#[async_trait]
pub trait Vm: Send {
    fn channel(&mut self) -> &mut AgentChannel;

    /// The end of what the guest printed on its console, for error reports.
    fn console_tail(&self) -> String;

    /// Pauses a [`Memory::Template`] VM and saves its device state to
    /// `state`; its memory is already in the template file. The VM is
    /// useless afterwards: destroy it.
    async fn snapshot(&mut self, state: &std::path::Path) -> Result<(), VmmError>;

    /// Stops the guest's CPUs (a VM waiting in a pool uses no CPU), or lets
    /// them run again. Only VMs restored from a snapshot have a monitor to
    /// do it with.
    async fn pause(&mut self, paused: bool) -> Result<(), VmmError>;

    /// Whether the VMM process still runs (a pool VM can be killed from
    /// outside while it waits).
    fn is_alive(&mut self) -> bool;

    /// Kills the VM and removes its host-side files. Dropping a VM does the
    /// same without waiting for the process to be reaped.
    async fn destroy(self: Box<Self>);
}
