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
        left_by_dead_processes(&self.runs())
            .into_iter()
            .filter(|path| fs::remove_dir_all(path).is_ok())
            .count()
    }
}

/// The names of the entries of `dir` that hold one of `paths` (a store's
/// images or snapshots that these files lie in).
pub fn entries_holding(dir: &Path, paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|path| {
            let entry = path.strip_prefix(dir).ok()?.components().next()?;
            Some(entry.as_os_str().to_string_lossy().into_owned())
        })
        .collect()
}

/// The entries of `dir` named `<pid>.<anything>` whose process no longer
/// runs: what a runner process killed with SIGKILL left behind.
pub fn left_by_dead_processes(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('.').next())
                .and_then(|p| p.parse::<i32>().ok());
            pid.is_some_and(|pid| {
                pid != std::process::id() as i32
                    && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            })
        })
        .map(|entry| entry.path())
        .collect()
}
