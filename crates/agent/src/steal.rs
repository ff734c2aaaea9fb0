//! The host's count of this VM's vCPU time ([`VcpuTime`]), for guests that
//! cannot see steal time themselves (TCG).
//!
//! The guest's clock is the host's: while the vCPU thread waits for a host
//! CPU, the guest's clock goes on and the running program is charged for
//! it, so its CPU time would grow with the host's load. The host tells the
//! agent how long its vCPU has run and waited; over a stage, the share of
//! the guest's busy time that was waiting is taken off the stage's CPU
//! time, for its limit and for its report. The share is a ratio of two
//! figures read at the same moment on the host, so a frame that comes a
//! little late still gives it. Without frames (KVM, whose guests count
//! steal time themselves, or an idle host) nothing is taken off.

use std::sync::Mutex;

use runner_protocol::VcpuTime;

static LATEST: Mutex<VcpuTime> = Mutex::new(VcpuTime {
    running_us: 0,
    waiting_us: 0,
});

/// Keeps the host's latest count.
pub fn record(time: VcpuTime) {
    *LATEST.lock().unwrap() = time;
}

/// A new VMM process (a restore or a resume) counts from zero again.
pub fn reset() {
    record(VcpuTime::default());
}

fn latest() -> VcpuTime {
    *LATEST.lock().unwrap()
}

/// A stage's span of time, from its start.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    start: VcpuTime,
}

impl Span {
    pub fn start() -> Self {
        Self { start: latest() }
    }

    /// `cpu_us` (the guest's count for the stage so far) less the share of
    /// it that the vCPU spent waiting for a host CPU.
    pub fn charged(&self, cpu_us: u64) -> u64 {
        charged(self.start, latest(), cpu_us)
    }
}

fn charged(start: VcpuTime, now: VcpuTime, cpu_us: u64) -> u64 {
    let running = now.running_us.saturating_sub(start.running_us);
    let waiting = now.waiting_us.saturating_sub(start.waiting_us);
    let busy = running + waiting;
    if busy == 0 {
        return cpu_us;
    }
    let kept = u128::from(cpu_us) * u128::from(running) / u128::from(busy);
    kept as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(running_us: u64, waiting_us: u64) -> VcpuTime {
        VcpuTime {
            running_us,
            waiting_us,
        }
    }

    #[test]
    fn the_waiting_share_is_taken_off() {
        // Half of the busy time was waiting: half of the CPU time stays.
        assert_eq!(charged(at(1_000, 500), at(2_000, 1_500), 2_000), 1_000);
        // No waiting: all of it.
        assert_eq!(charged(at(0, 700), at(3_000, 700), 2_500), 2_500);
        // No count from the host since the start: all of it.
        assert_eq!(charged(at(5, 5), at(5, 5), 123), 123);
        // A count that went back (another VM's numbers) takes nothing off.
        assert_eq!(charged(at(9, 9), at(1, 1), 77), 77);
    }
}
