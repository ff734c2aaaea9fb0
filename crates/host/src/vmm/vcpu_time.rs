//! The host's count of a VM's vCPU time, for guests that cannot see steal
//! time themselves.
//!
//! Under TCG the guest's clock is the host's: while a vCPU thread waits for
//! a host CPU (other VMs, anything else on the host), the guest's clock goes
//! on and the program it was running is charged for the wait. The kernel
//! keeps, per thread, how long it ran and how long it was runnable and
//! waited (`/proc/<pid>/task/<tid>/schedstat`); sent to the agent as
//! [`VcpuTime`], that lets it take the waiting off a stage's CPU time. Under
//! KVM the guest has steal time of its own (`kvm-steal-time`), so no clock
//! is made.
//!
//! gVisor's systrap platform counts a program's CPU time the same way, by
//! its own clock while the program's code runs in a stub process, so a
//! sandbox's clock is kept too: over every thread of the sandbox's process
//! tree, whose processes come and go with the program's ([`VcpuClock::tree`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use runner_protocol::VcpuTime;

/// The last counts (running, waiting) of each thread (process, thread)
/// of a process tree.
type Seen = Arc<Mutex<HashMap<(u32, u32), (u64, u64)>>>;

/// Where to read a VM's vCPU threads' counts.
#[derive(Debug, Clone)]
pub struct VcpuClock {
    schedstats: Vec<PathBuf>,
    /// A process tree's root instead, with the last counts of each thread
    /// seen, kept once it ends so that the sums never go back.
    tree: Option<(u32, Seen)>,
}

impl VcpuClock {
    /// For the vCPU threads `threads` of process `pid`.
    pub fn new(pid: u32, threads: &[u64]) -> Option<Self> {
        if threads.is_empty() {
            return None;
        }
        Some(Self {
            schedstats: threads
                .iter()
                .map(|tid| PathBuf::from(format!("/proc/{pid}/task/{tid}/schedstat")))
                .collect(),
            tree: None,
        })
    }

    /// For every thread of process `root` and its descendants, as they are
    /// at each read.
    pub fn tree(root: u32) -> Self {
        Self {
            schedstats: Vec::new(),
            tree: Some((root, Arc::default())),
        }
    }

    /// The threads' counts now, summed; `None` once they are gone.
    pub fn read(&self) -> Option<VcpuTime> {
        if let Some((root, seen)) = &self.tree {
            let mut seen = seen.lock().unwrap();
            for pid in super::placement::descendants(*root) {
                for tid in super::placement::threads(pid) {
                    let path = format!("/proc/{pid}/task/{tid}/schedstat");
                    if let Some(counts) = std::fs::read_to_string(path).ok().and_then(|s| parse(&s))
                    {
                        seen.insert((pid, tid as u32), counts);
                    }
                }
            }
            if seen.is_empty() {
                return None;
            }
            let (running, waiting) = seen
                .values()
                .fold((0, 0), |(r, w), (run, wait)| (r + run, w + wait));
            return Some(VcpuTime {
                running_us: running / 1_000,
                waiting_us: waiting / 1_000,
            });
        }
        let mut total = VcpuTime::default();
        for path in &self.schedstats {
            let (running_ns, waiting_ns) = parse(&std::fs::read_to_string(path).ok()?)?;
            total.running_us += running_ns / 1_000;
            total.waiting_us += waiting_ns / 1_000;
        }
        Some(total)
    }
}

/// `schedstat`: nanoseconds on a CPU, nanoseconds waiting on a run queue,
/// time slices.
fn parse(schedstat: &str) -> Option<(u64, u64)> {
    let mut fields = schedstat.split_ascii_whitespace();
    let running = fields.next()?.parse().ok()?;
    let waiting = fields.next()?.parse().ok()?;
    Some((running, waiting))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_threads_own_counts() {
        assert_eq!(parse("1500000 250000 7\n"), Some((1_500_000, 250_000)));
        assert_eq!(parse("12"), None);
        let tid = nix::unistd::gettid().as_raw() as u64;
        let clock = VcpuClock::new(std::process::id(), &[tid]).unwrap();
        let before = clock.read().expect("this thread's schedstat");
        // Spin until the count shows 10 ms on a CPU; on a busy host that
        // takes more wall time than 10 ms, but never 10 s.
        let spin = std::time::Instant::now();
        while clock.read().unwrap().running_us < before.running_us + 10_000 {
            assert!(
                spin.elapsed() < std::time::Duration::from_secs(10),
                "10 s of spinning never showed 10 ms of this thread on a CPU"
            );
        }
        assert!(VcpuClock::new(1, &[]).is_none());
    }
}
