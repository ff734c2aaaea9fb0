//! A cgroup v2 group per stage: every process of the stage in it, its
//! memory and process limits on it, its CPU time and peaks read from it,
//! and the whole of it killed at once.

use std::fs::{self, File};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use runner_protocol::Limits;

use crate::error::{AgentError, Context};

/// A cgroup v2 group holding every process of one stage, with its limits.
pub(super) struct Cgroup {
    pub(super) path: PathBuf,
    /// `cgroup.procs`, opened before the fork so that the child only writes.
    pub(super) procs: File,
}

#[derive(Default)]
pub(super) struct Usage {
    pub(super) cpu_us: u64,
    pub(super) memory_peak: u64,
    pub(super) oom_kills: u64,
    pub(super) pids_max_hits: u64,
}

impl Cgroup {
    /// A new, empty group, without limits until [`Cgroup::limit`]. Each
    /// has a name of its own: a session's stage may leave processes in its
    /// group after it ends.
    pub(super) fn create(name: &str) -> Result<Self, AgentError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            Self::sweep();
        }
        let path = PathBuf::from(format!("/sys/fs/cgroup/stage-{name}-{n}"));
        fs::create_dir(&path).context(|| format!("create cgroup {}", path.display()))?;
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .context(|| format!("open cgroup.procs of {}", path.display()))?;
        let group = Self { path, procs };
        // No swap in the VM, but say so: the limit must be the whole limit.
        let _ = group.set("memory.swap.max", "0");
        // An OOM kill takes the whole stage, not one process of it.
        group.set("memory.oom.group", "1")?;
        Ok(group)
    }

    pub(super) fn limit(&self, limits: &Limits) -> Result<(), AgentError> {
        self.set("memory.max", &limits.memory_bytes.to_string())?;
        self.set("pids.max", &limits.processes.to_string())
    }

    fn set(&self, file: &str, value: &str) -> Result<(), AgentError> {
        fs::write(self.path.join(file), value)
            .context(|| format!("set {file} = {value} in {}", self.path.display()))
    }

    /// Kills every process in the group, however it forked or set its session.
    pub(super) fn kill(&self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
    }

    pub(super) fn cpu_usage_us(&self) -> u64 {
        let stat = fs::read_to_string(self.path.join("cpu.stat")).unwrap_or_default();
        field(&stat, "usage_usec")
    }

    pub(super) fn usage(&self) -> Usage {
        let read = |file: &str| fs::read_to_string(self.path.join(file)).unwrap_or_default();
        Usage {
            cpu_us: self.cpu_usage_us(),
            memory_peak: read("memory.peak").trim().parse().unwrap_or(0),
            oom_kills: field(&read("memory.events"), "oom_kill"),
            pids_max_hits: field(&read("pids.events"), "max"),
        }
    }

    /// Removes the group if it is empty: a session's stage may have left
    /// processes running in it on purpose. Groups left so are removed by a
    /// later [`Cgroup::create`] once their processes are gone.
    pub(super) fn release(self) {
        let _ = fs::remove_dir(&self.path);
    }

    /// Removes every stage group whose processes are all gone.
    fn sweep() {
        if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("stage-") {
                    let _ = fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// Removes the group once its killed processes are gone.
    pub(super) fn remove(self) {
        for _ in 0..200 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The value of `key` in a cgroup "key value" file.
fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn cgroup_fields_are_read_by_key() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(field(events, "oom_kill"), 1);
        assert_eq!(field(events, "max"), 3);
        assert_eq!(field(events, "missing"), 0);
        assert_eq!(
            field("usage_usec 1234\nuser_usec 1000\n", "usage_usec"),
            1234
        );
    }
}
