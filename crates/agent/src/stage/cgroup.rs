//! A cgroup per stage: every process of the stage in it, its memory and
//! process limits on it, its CPU time and peaks read from it, and the whole
//! of it killed at once.
//!
//! In a VM it is one cgroup v2 group, whose limits the kernel enforces
//! (an OOM kills the whole group). In a gVisor sandbox it is a group in
//! each of gVisor's version 1 hierarchies ([`CGROUP_V1_CONTROLLERS`]):
//! gVisor enforces `pids.max` and counts memory per group, but does not
//! enforce a memory limit (the host cgroup around the sandbox bounds the
//! whole of it), so the supervision polls the group's memory and kills the
//! stage when it is over its limit ([`Cgroup::over_memory`]), as it does
//! for CPU time. A stage that allocates faster than the poll may go over
//! by what it allocates in one poll's time before it is killed.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use runner_protocol::Limits;

use crate::error::{AgentError, Context};
use crate::platform::Platform;

/// gVisor's cgroup hierarchies a stage's group is made in, each mounted at
/// `/sys/fs/cgroup/<controller>`.
pub const CGROUP_V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpuacct"];

/// The `cgroup.procs` descriptors a child writes itself into between fork
/// and exec; unused places are -1.
pub(super) type ProcsFds = [i32; 3];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One cgroup v2 group.
    V2,
    /// One group in each of [`CGROUP_V1_CONTROLLERS`]' hierarchies.
    V1,
}

/// The groups holding every process of one stage, with its limits.
pub(super) struct Cgroup {
    layout: Layout,
    /// v2: the group; v1: the group in each hierarchy, in
    /// [`CGROUP_V1_CONTROLLERS`]' order.
    dirs: Vec<PathBuf>,
    /// Each group's `cgroup.procs`, opened before the fork so that the
    /// child only writes.
    procs: Vec<File>,
    /// v1: the memory limit the poll enforces, the highest use it saw, and
    /// whether it killed the stage for going over.
    memory_max: AtomicU64,
    memory_seen: AtomicU64,
    memory_over: AtomicBool,
    /// v1: the process limit, and whether a poll found the group at it
    /// (gVisor counts no refused forks).
    pids_max: AtomicU64,
    pids_at_max: AtomicBool,
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
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let layout = match crate::platform::current() {
            Platform::Vm => Layout::V2,
            Platform::Gvisor => Layout::V1,
        };
        if n > 0 {
            Self::sweep(layout);
        }
        let group = format!("stage-{name}-{n}");
        let dirs: Vec<PathBuf> = match layout {
            Layout::V2 => vec![PathBuf::from("/sys/fs/cgroup").join(&group)],
            Layout::V1 => CGROUP_V1_CONTROLLERS
                .iter()
                .map(|c| PathBuf::from("/sys/fs/cgroup").join(c).join(&group))
                .collect(),
        };
        let mut made = Self {
            layout,
            dirs: Vec::new(),
            procs: Vec::new(),
            memory_max: AtomicU64::new(u64::MAX),
            memory_seen: AtomicU64::new(0),
            memory_over: AtomicBool::new(false),
            pids_max: AtomicU64::new(u64::MAX),
            pids_at_max: AtomicBool::new(false),
        };
        for dir in dirs {
            if let Err(e) = fs::create_dir(&dir) {
                made.remove();
                return Err(format!("create cgroup {}: {e}", dir.display()).into());
            }
            made.dirs.push(dir.clone());
            match fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
            {
                Ok(procs) => made.procs.push(procs),
                Err(e) => {
                    made.remove();
                    return Err(format!("open cgroup.procs of {}: {e}", dir.display()).into());
                }
            }
        }
        if layout == Layout::V2 {
            // No swap in the VM, but say so: the limit must be the whole limit.
            let _ = made.set(0, "memory.swap.max", "0");
            // An OOM kill takes the whole stage, not one process of it.
            if let Err(e) = made.set(0, "memory.oom.group", "1") {
                made.remove();
                return Err(e);
            }
        }
        Ok(made)
    }

    /// The descriptors a child writes itself into (see [`ProcsFds`]).
    pub(super) fn procs_fds(&self) -> ProcsFds {
        let mut fds = [-1; 3];
        for (fd, file) in fds.iter_mut().zip(&self.procs) {
            *fd = file.as_raw_fd();
        }
        fds
    }

    pub(super) fn limit(&self, limits: &Limits) -> Result<(), AgentError> {
        let memory = limits.memory_bytes.to_string();
        let processes = limits.processes.to_string();
        match self.layout {
            Layout::V2 => {
                self.set(0, "memory.max", &memory)?;
                self.set(0, "pids.max", &processes)
            }
            Layout::V1 => {
                // Not enforced by gVisor, but what a program that looks
                // for its limit finds; the poll enforces it.
                self.set(0, "memory.limit_in_bytes", &memory)?;
                self.memory_max
                    .store(limits.memory_bytes, Ordering::Relaxed);
                self.pids_max
                    .store(u64::from(limits.processes), Ordering::Relaxed);
                self.set(1, "pids.max", &processes)
            }
        }
    }

    fn set(&self, dir: usize, file: &str, value: &str) -> Result<(), AgentError> {
        let path = self.dirs[dir].join(file);
        fs::write(&path, value).context(|| format!("set {} = {value}", path.display()))
    }

    fn read(&self, dir: usize, file: &str) -> String {
        fs::read_to_string(self.dirs[dir].join(file)).unwrap_or_default()
    }

    /// Kills every process in the group, however it forked or set its session.
    pub(super) fn kill(&self) {
        match self.layout {
            Layout::V2 => {
                let _ = fs::write(self.dirs[0].join("cgroup.kill"), "1");
            }
            // No cgroup.kill: kill what the group holds until it holds
            // nothing (a process forking meanwhile is in it too, and
            // pids.max bounds how many there can be).
            Layout::V1 => {
                for _ in 0..1000 {
                    let pids: Vec<i32> = self
                        .read(1, "cgroup.procs")
                        .lines()
                        .filter_map(|line| line.trim().parse().ok())
                        .collect();
                    if pids.is_empty() {
                        return;
                    }
                    for pid in pids {
                        // SAFETY: kill(2) with a process id and a signal.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    pub(super) fn cpu_usage_us(&self) -> u64 {
        match self.layout {
            Layout::V2 => field(&self.read(0, "cpu.stat"), "usage_usec"),
            Layout::V1 => {
                self.read(2, "cpuacct.usage")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1000
            }
        }
    }

    /// Whether the stage is over its memory limit where nothing else
    /// enforces it (a gVisor sandbox's group), noting the highest use seen
    /// and whether the group is at its process limit; the caller kills the
    /// stage. Always `false` where the kernel enforces the limit.
    pub(super) fn over_memory(&self) -> bool {
        if self.layout == Layout::V2 {
            return false;
        }
        // Its threads, which the process limit counts (gVisor's
        // pids.current counts processes only).
        let tasks = self.read(1, "tasks").lines().count() as u64;
        if tasks >= self.pids_max.load(Ordering::Relaxed) {
            self.pids_at_max.store(true, Ordering::Relaxed);
        }
        let used: u64 = self
            .read(0, "memory.usage_in_bytes")
            .trim()
            .parse()
            .unwrap_or(0);
        self.memory_seen.fetch_max(used, Ordering::Relaxed);
        if used > self.memory_max.load(Ordering::Relaxed) {
            self.memory_over.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Takes in a process's peak resident memory where the group keeps no
    /// peak of its own (gVisor): polls may miss a short one.
    pub(super) fn note_peak(&self, bytes: u64) {
        if self.layout == Layout::V1 {
            self.memory_seen.fetch_max(bytes, Ordering::Relaxed);
        }
    }

    pub(super) fn usage(&self) -> Usage {
        match self.layout {
            Layout::V2 => Usage {
                cpu_us: self.cpu_usage_us(),
                memory_peak: self.read(0, "memory.peak").trim().parse().unwrap_or(0),
                oom_kills: field(&self.read(0, "memory.events"), "oom_kill"),
                pids_max_hits: field(&self.read(0, "pids.events"), "max"),
            },
            Layout::V1 => {
                self.over_memory();
                Usage {
                    cpu_us: self.cpu_usage_us(),
                    memory_peak: self.memory_seen.load(Ordering::Relaxed),
                    oom_kills: self.memory_over.load(Ordering::Relaxed) as u64,
                    // gVisor keeps no count of refused forks: a poll
                    // that found the group full stands for one.
                    pids_max_hits: self.pids_at_max.load(Ordering::Relaxed) as u64,
                }
            }
        }
    }

    /// Removes the group if it is empty: a session's stage may have left
    /// processes running in it on purpose. Groups left so are removed by a
    /// later [`Cgroup::create`] once their processes are gone.
    pub(super) fn release(self) {
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }

    /// Removes every stage group whose processes are all gone.
    fn sweep(layout: Layout) {
        let roots: Vec<PathBuf> = match layout {
            Layout::V2 => vec![PathBuf::from("/sys/fs/cgroup")],
            Layout::V1 => CGROUP_V1_CONTROLLERS
                .iter()
                .map(|c| PathBuf::from("/sys/fs/cgroup").join(c))
                .collect(),
        };
        for root in roots {
            if let Ok(entries) = fs::read_dir(root) {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().starts_with("stage-") {
                        let _ = fs::remove_dir(entry.path());
                    }
                }
            }
        }
    }

    /// Removes the group once its killed processes are gone.
    pub(super) fn remove(self) {
        for dir in &self.dirs {
            for _ in 0..200 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
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
