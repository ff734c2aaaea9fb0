//! Where a VM's threads run on the host: the CPUs they may use
//! (`vm_cpus`, `pool_cpus`, in the kernel's list format `0-3,6`, as
//! `taskset -c` and `cpuset` take them) and their CPU priority; and where
//! its memory lives: the NUMA node of those CPUs (`numa_bind`) and in what
//! size of host pages (`huge_pages`).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of host CPUs, sorted, without repeats; empty for "every CPU this
/// process may use".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// These CPUs, or `other` when none are given.
    pub fn or<'a>(&'a self, other: &'a CpuList) -> &'a CpuList {
        if self.is_empty() { other } else { self }
    }

    /// The CPUs this process may run on (its affinity).
    pub fn allowed() -> CpuList {
        let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
            return CpuList::default();
        };
        CpuList(
            (0..nix::sched::CpuSet::count())
                .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
                .collect(),
        )
    }

    /// The first CPU of these that this process may not run on.
    pub fn not_allowed(&self) -> Option<usize> {
        let allowed = CpuList::allowed();
        self.0.iter().copied().find(|cpu| !allowed.0.contains(cpu))
    }

    /// As a set for `sched_setaffinity`; `None` when empty.
    pub fn to_set(&self) -> Option<nix::sched::CpuSet> {
        if self.is_empty() {
            return None;
        }
        let mut set = nix::sched::CpuSet::new();
        for &cpu in &self.0 {
            set.set(cpu).ok()?;
        }
        Some(set)
    }
}

impl std::str::FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let number = |n: &str| {
                n.trim().parse::<usize>().map_err(|_| {
                    format!("{part:?} is not a CPU number or range (write them as 0-3,6)")
                })
            };
            let (first, last) = match part.split_once('-') {
                Some((first, last)) => (number(first)?, number(last)?),
                None => (number(part)?, number(part)?),
            };
            if first > last {
                return Err(format!("{part:?} runs backwards"));
            }
            if last >= nix::sched::CpuSet::count() {
                return Err(format!("CPU {last} is beyond what this system counts"));
            }
            cpus.extend(first..=last);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for &cpu in &self.0 {
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == cpu => *last = cpu,
                _ => ranges.push((cpu, cpu)),
            }
        }
        let parts: Vec<String> = ranges
            .into_iter()
            .map(|(first, last)| match first == last {
                true => first.to_string(),
                false => format!("{first}-{last}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for CpuList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("CPU list {text:?}: {e}")))
    }
}

/// The niceness of a VM running an execution: it comes before other work
/// on the host (where this process may raise priorities; elsewhere it stays
/// as it was).
pub const VM_NICE: libc::c_int = -10;

/// The niceness of a VM being restored and warmed up for a pool: it runs
/// on CPU time executions leave over.
pub const POOL_NICE: libc::c_int = 19;

/// Whether this process may raise a thread's priority back from
/// [`POOL_NICE`] (root, or an `RLIMIT_NICE` that allows nice 0): only then
/// do pool VMs start at it, since one taken by an execution must not stay
/// behind other work.
pub fn may_raise_priority() -> bool {
    nix::unistd::geteuid().is_root()
        || nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE)
            .is_ok_and(|(soft, _)| soft >= 20)
}

/// The thread ids of process `pid` (none once it is gone).
pub fn threads(pid: u32) -> Vec<libc::pid_t> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Process `root` and every process under it, parents first. Read from
/// each thread's `children` list, so that it costs what the tree holds
/// (the vCPU clock of a gVisor sandbox reads it every 50 ms); a kernel
/// without those lists has every process's parent read instead.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let pid = tree[i];
        for tid in threads(pid) {
            match thread_children(pid, tid) {
                Ok(children) => {
                    for child in children {
                        if !tree.contains(&child) {
                            tree.push(child);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tid as u32 == pid => {
                    // The process is there (it has threads), its list is not.
                    if std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
                        return descendants_by_parent(root);
                    }
                }
                Err(_) => {}
            }
        }
        i += 1;
    }
    tree
}

/// Process `pid`'s children: those of each of its threads.
pub fn children(pid: u32) -> Vec<u32> {
    threads(pid)
        .into_iter()
        .flat_map(|tid| thread_children(pid, tid).unwrap_or_default())
        .collect()
}

/// The children thread `tid` of process `pid` started, from its
/// `children` list.
fn thread_children(pid: u32, tid: libc::pid_t) -> std::io::Result<Vec<u32>> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))?;
    Ok(list
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect())
}

/// [`descendants`] from every process's parent, in `/proc/<pid>/stat`.
fn descendants_by_parent(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&&(pid, ppid)| ppid == parent && pid != root)
                .map(|&(pid, _)| pid),
        );
        i += 1;
    }
    tree
}

/// Brings every thread of process `pid` to an execution's priority
/// ([`VM_NICE`]) and, if `cpus` are given, onto them.
pub fn bring_forward(pid: u32, cpus: &CpuList) -> Result<(), nix::Error> {
    let set = cpus.to_set();
    for tid in threads(pid) {
        // SAFETY: setpriority on a thread id, no pointers.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, VM_NICE) };
        if let Some(set) = &set {
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), set)?;
        }
    }
    Ok(())
}

/// The host's NUMA nodes this process may allocate memory on, each with
/// its CPUs, as the kernel lists them under `/sys/devices/system/node`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nodes(Vec<(usize, CpuList)>);

impl Nodes {
    /// This host's; none where the kernel lists none (then nothing is
    /// bound).
    pub fn of_host() -> Nodes {
        let allowed = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let list = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Mems_allowed_list:"))?;
                list.parse::<CpuList>().ok()
            });
        Nodes::read(Path::new("/sys/devices/system/node"), allowed.as_ref())
    }

    /// The nodes under `dir` (`node<N>/cpulist`), of `allowed` only when
    /// given (a node list has the format of a CPU list).
    fn read(dir: &Path, allowed: Option<&CpuList>) -> Nodes {
        let mut nodes: Vec<(usize, CpuList)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let node: usize = name.to_str()?.strip_prefix("node")?.parse().ok()?;
                let cpus = std::fs::read_to_string(entry.path().join("cpulist")).ok()?;
                Some((node, cpus.trim().parse().ok()?))
            })
            .filter(|(node, _)| allowed.is_none_or(|a| a.cpus().contains(node)))
            .collect();
        nodes.sort_by_key(|(node, _)| *node);
        Nodes(nodes)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The node all of `cpus` (empty: those this process may use) belong
    /// to, if they lie within one.
    pub fn node_of(&self, cpus: &CpuList) -> Option<usize> {
        let allowed;
        let cpus = if cpus.is_empty() {
            allowed = CpuList::allowed();
            &allowed
        } else {
            cpus
        };
        self.0
            .iter()
            .find(|(_, node_cpus)| cpus.cpus().iter().all(|c| node_cpus.cpus().contains(c)))
            .map(|(node, _)| *node)
    }
}

/// `set_mempolicy`'s mode that allocates only on the given nodes.
const MPOL_BIND: libc::c_int = 2;

/// The node mask `set_mempolicy` takes for `node` alone.
pub fn node_mask(node: usize) -> Vec<libc::c_ulong> {
    let bits = libc::c_ulong::BITS as usize;
    let mut mask = vec![0; node / bits + 1];
    mask[node / bits] = 1 << (node % bits);
    mask
}

/// Binds every later memory allocation of this process (and of what it
/// executes, which inherits the policy) to the nodes in `mask`.
///
/// Async-signal-safe: one system call, for a child between fork and exec.
pub fn bind_memory(mask: &[libc::c_ulong]) -> std::io::Result<()> {
    // The kernel reads one bit less than it is told (mm/mempolicy.c).
    let max_node = mask.len() * libc::c_ulong::BITS as usize + 1;
    // SAFETY: the mask outlives the call, and `max_node` covers only its
    // words.
    let result =
        unsafe { libc::syscall(libc::SYS_set_mempolicy, MPOL_BIND, mask.as_ptr(), max_node) };
    match result {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Whether VMs ask the host for huge pages for their memory
/// (`huge_pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HugePages {
    /// Transparent huge pages where the host has them (its mode `always`
    /// or `madvise`): QEMU asks for them on all guest memory, and a
    /// restored VM's mapping of its snapshot's memory file is aligned so
    /// that the file's 2 MiB page-cache pages can be mapped whole.
    #[default]
    Transparent,
    /// Never: QEMU runs with transparent huge pages disabled
    /// (`PR_SET_THP_DISABLE`), every VM's memory in 4 KiB pages.
    Off,
}

impl HugePages {
    /// Why VMs will not get huge pages though asked to, if so.
    pub fn unavailable(self) -> Option<String> {
        match (self, transparent_huge_pages().as_deref()) {
            (HugePages::Off, _) | (_, Some("always" | "madvise")) => None,
            (HugePages::Transparent, Some(mode)) => Some(format!(
                "transparent huge pages are {mode} on this host, so VM memory uses 4 KiB pages \
                 (echo madvise > /sys/kernel/mm/transparent_hugepage/enabled to allow them)"
            )),
            (HugePages::Transparent, None) => Some(
                "this host's kernel has no transparent huge pages, so VM memory uses 4 KiB pages"
                    .into(),
            ),
        }
    }
}

/// The host's transparent huge page mode (`always`, `madvise` or
/// `never`), if it has them.
pub fn transparent_huge_pages() -> Option<String> {
    let modes = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let start = modes.find('[')? + 1;
    let end = start + modes[start..].find(']')?;
    Some(modes[start..end].to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_tree_is_read_by_children_lists_and_by_parents_alike() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let shell = child.id();
        // The shell and its sleep, once it has started it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let tree = loop {
            let tree = super::descendants(shell);
            if tree.len() >= 2 || std::time::Instant::now() > deadline {
                break tree;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(tree.len(), 2, "the shell and its sleep: {tree:?}");
        assert_eq!(tree[0], shell);
        assert_eq!(super::descendants_by_parent(shell), tree);
        assert!(super::descendants(std::process::id()).contains(&tree[1]));
        let _ = child.kill();
        let _ = child.wait();
    }

    use super::*;

    #[test]
    fn lists_read_and_write_as_the_kernel_writes_them() {
        let list: CpuList = "6, 0-2,1,4-4".parse().unwrap();
        assert_eq!(list.cpus(), [0, 1, 2, 4, 6]);
        assert_eq!(list.to_string(), "0-2,4,6");
        assert!("".parse::<CpuList>().unwrap().is_empty());
        for bad in ["a", "3-1", "1-", "99999"] {
            assert!(bad.parse::<CpuList>().is_err(), "{bad}");
        }
        let allowed = CpuList::allowed();
        assert!(!allowed.is_empty());
        assert_eq!(allowed.not_allowed(), None);
        assert_eq!(CpuList(vec![99_999]).not_allowed(), Some(99_999));
        assert_eq!(CpuList::default().or(&allowed), &allowed);
    }

    #[test]
    fn the_hosts_nodes_hold_its_cpus_and_its_huge_pages_have_a_mode() {
        let nodes = Nodes::of_host();
        // This process's own CPUs need not lie in one node, but one of them
        // does, where the kernel lists nodes.
        let first = CpuList(vec![CpuList::allowed().cpus()[0]]);
        assert_eq!(nodes.node_of(&first).is_some(), !nodes.is_empty());
        if let Some(mode) = transparent_huge_pages() {
            assert!(
                ["always", "madvise", "never"].contains(&mode.as_str()),
                "{mode}"
            );
        }
    }

    #[test]
    fn a_cpu_set_has_a_node_only_when_it_lies_within_one() {
        let dir = tempfile::tempdir().unwrap();
        for (node, cpus) in [("node0", "0-3\n"), ("node1", "4-7\n"), ("node3", "8\n")] {
            std::fs::create_dir(dir.path().join(node)).unwrap();
            std::fs::write(dir.path().join(node).join("cpulist"), cpus).unwrap();
        }
        std::fs::create_dir(dir.path().join("power")).unwrap();
        let nodes = Nodes::read(dir.path(), None);
        assert_eq!(nodes.len(), 3);
        let node_of = |cpus: &str| nodes.node_of(&cpus.parse().unwrap());
        assert_eq!(node_of("1-2"), Some(0));
        assert_eq!(node_of("5,7"), Some(1));
        assert_eq!(node_of("8"), Some(3));
        assert_eq!(node_of("3-4"), None, "spans two nodes");
        assert_eq!(node_of("9"), None, "in no node");
        // A node this process may not allocate on is left out.
        let only = Nodes::read(dir.path(), Some(&"1,3".parse().unwrap()));
        assert_eq!(only.len(), 2);
        assert_eq!(only.node_of(&"0".parse().unwrap()), None);

        assert_eq!(node_mask(0), [1]);
        assert_eq!(node_mask(3), [8]);
        assert_eq!(node_mask(65), [0, 2]);
    }

    #[test]
    fn huge_pages_say_why_they_are_unavailable() {
        assert_eq!(HugePages::Off.unavailable(), None);
        let unavailable = HugePages::Transparent.unavailable();
        match transparent_huge_pages().as_deref() {
            Some("always" | "madvise") => assert_eq!(unavailable, None),
            _ => assert!(unavailable.unwrap().contains("4 KiB pages")),
        }
    }
}
