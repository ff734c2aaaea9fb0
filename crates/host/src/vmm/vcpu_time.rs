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

use std::path::PathBuf;

use runner_protocol::VcpuTime;

/// Where to read a VM's vCPU threads' counts.
#[derive(Debug, Clone)]
pub struct VcpuClock {
    schedstats: Vec<PathBuf>,
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
        })
    }

    /// The threads' counts now, summed; `None` once they are gone.
    pub fn read(&self) -> Option<VcpuTime> {
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
