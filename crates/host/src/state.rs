//! The state directory: cached images, per-execution run directories.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Root of everything Runner Codes keeps on the host.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Per-execution directories (sockets), `<pid>.<trace id>`.
    pub fn runs(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Records of running sessions, `<pid>.<session id>.json`: what a
    /// server that was killed left, for the next one to report lost.
    pub fn sessions(&self) -> PathBuf {
        self.root.join("sessions")
    }

    pub fn create(&self) -> io::Result<()> {
        fs::create_dir_all(self.images())?;
        fs::create_dir_all(self.runs())
    }

    /// Removes run directories left by runner processes that no longer
    /// exist (killed with SIGKILL, machine crash). Returns how many.
    pub fn sweep_stale_runs(&self) -> usize {
        let Ok(entries) = fs::read_dir(self.runs()) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.split('.').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if !alive && fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}
