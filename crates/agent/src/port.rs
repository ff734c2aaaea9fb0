//! The agent's port to the host: a virtio-serial port found by its name
//! (in a gVisor sandbox, the agent's stdin), and the frames the agent
//! writes to it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_protocol::{AgentFailure, FileProblem, Frame, Hello, encode};

use crate::error::{AgentError, Context};
use crate::platform::Platform;

/// The write side of the agent port.
pub struct Port {
    file: File,
    buf: Vec<u8>,
}

impl Port {
    /// The port named `name` among `devices` (in a gVisor sandbox, stdin),
    /// opened: the write side, and the read side for the thread that reads
    /// the host's frames.
    pub fn open(devices: &str, name: &str) -> Result<(Port, File), AgentError> {
        let port = match crate::platform::current() {
            Platform::Gvisor => take_stdio(0)?,
            Platform::Vm => {
                let path = find_port(devices, name)?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .context(|| format!("open {}", path.display()))?
            }
        };
        let write = port.try_clone().context(|| "dup port".into())?;
        Ok((
            Port {
                file: write,
                buf: Vec::new(),
            },
            port,
        ))
    }
}

impl Port {
    /// Says hello: the agent is ready.
    pub fn hello(&mut self) -> Result<(), AgentError> {
        self.send(&Frame::Hello(Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: uptime_ms(),
        }))
    }

    pub fn send(&mut self, frame: &Frame) -> Result<(), AgentError> {
        self.buf.clear();
        encode(frame, &mut self.buf);
        self.file.write_all(&self.buf).map_err(AgentError::Port)
    }

    /// A file operation refused for what it asked (`problem`), or failed.
    pub fn refuse(
        &mut self,
        message: String,
        problem: Option<FileProblem>,
    ) -> Result<(), AgentError> {
        if problem.is_none() {
            eprintln!("runner-agent: {message}");
        }
        self.send(&Frame::Error(AgentFailure {
            message,
            file: problem,
        }))
    }

    /// A request that failed, with why.
    pub fn fail(&mut self, error: AgentError) -> Result<(), AgentError> {
        eprintln!("runner-agent: {error}");
        self.send(&Frame::Error(AgentFailure::new(error.to_string())))
    }
}

/// Standard descriptor `fd` (0 or 1), which `runsc` made one of the
/// host's ports, taken for the agent alone: a copy that closes on exec is
/// kept, and `fd` itself becomes `/dev/null`, so that no program the agent
/// starts can reach the port.
pub fn take_stdio(fd: i32) -> Result<File, AgentError> {
    // SAFETY: `fd` is one of this process's standard descriptors, open
    // from its start; it is borrowed only for the copy.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let port: OwnedFd = borrowed
        .try_clone_to_owned()
        .context(|| format!("dup descriptor {fd}"))?;
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context(|| "open /dev/null".into())?;
    // SAFETY: dup2 between descriptors this process owns: `null`'s, and
    // `fd`, whose old file the copy above keeps.
    if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
        return Err(format!("dup2 onto {fd}: {}", std::io::Error::last_os_error()).into());
    }
    Ok(File::from(port))
}

/// The device of the port named `wanted` is `vportNpM` in `devices`; its
/// name is in sysfs.
pub fn find_port(devices: &str, wanted: &str) -> Result<PathBuf, AgentError> {
    for _ in 0..2000 {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == wanted {
                    let dev = Path::new(devices).join(entry.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("no virtio-serial port named {wanted}").into())
}

fn uptime_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME);
    ts.map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}
