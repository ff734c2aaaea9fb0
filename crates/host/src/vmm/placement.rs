//! Where a VM's threads run on the host: the CPUs they may use
//! (`vm_cpus`, `pool_cpus`, in the kernel's list format `0-3,6`, as
//! `taskset -c` and `cpuset` take them) and their CPU priority.

use std::fmt;

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

/// The host's NUMA nodes, as the kernel lists them (1 where it lists
/// none).
pub fn numa_nodes() -> usize {
    std::fs::read_dir("/sys/devices/system/node")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .is_some_and(|n| n.parse::<usize>().is_ok())
        })
        .count()
        .max(1)
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
    fn the_host_has_a_node_and_maybe_huge_pages() {
        assert!(numa_nodes() >= 1);
        if let Some(mode) = transparent_huge_pages() {
            assert!(
                ["always", "madvise", "never"].contains(&mode.as_str()),
                "{mode}"
            );
        }
    }
}
