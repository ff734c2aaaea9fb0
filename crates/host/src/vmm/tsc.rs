//! The host's time stamp counter rate, told to guests that would otherwise
//! measure it badly.
//!
//! Under TCG a guest's TSC is the host's (QEMU's `rdtsc` reads the host
//! counter), so the guest's TSC runs at the host's rate. A guest kernel
//! measures that rate at boot against a timer: on `microvm`, which has no
//! HPET, against the PIT, and under emulation that measurement fails in
//! about one boot in five, leaving the VM (and every VM restored from a
//! snapshot of it) on 10 ms jiffies. `tsc_early_khz=` on the kernel command
//! line skips it.

use std::sync::OnceLock;
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// How long the host's counter is watched against its clock.
const SPAN: Duration = Duration::from_millis(20);

/// The host's TSC rate in kHz, measured once per process; `None` where the
/// counter's rate is not constant (no `constant_tsc` and `nonstop_tsc`), or
/// on a host that is not x86-64.
pub fn host_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(measure)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = cpuinfo.lines().find_map(|l| l.strip_prefix("flags"))?;
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    if !(has("constant_tsc") && has("nonstop_tsc")) {
        return None;
    }
    // CLOCK_MONOTONIC_RAW is not slewed by NTP: it counts the host
    // kernel's own idea of seconds. The counter is read right after each
    // clock reading; the pair that took least time bounds the error.
    let sample = || -> Option<(Duration, u64)> {
        let mut best: Option<(u64, Duration, u64)> = None;
        for _ in 0..5 {
            // SAFETY: rdtsc has no preconditions on x86-64.
            let before = unsafe { core::arch::x86_64::_rdtsc() };
            let now = clock_gettime(ClockId::CLOCK_MONOTONIC_RAW).ok()?;
            let now = Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32);
            // SAFETY: as above.
            let after = unsafe { core::arch::x86_64::_rdtsc() };
            let spread = after.saturating_sub(before);
            if best.is_none_or(|(s, _, _)| spread < s) {
                best = Some((spread, now, before + spread / 2));
            }
        }
        best.map(|(_, now, tsc)| (now, tsc))
    };
    let (t0, c0) = sample()?;
    std::thread::sleep(SPAN);
    let (t1, c1) = sample()?;
    let nanos = (t1 - t0).as_nanos() as u64;
    let khz = (c1.checked_sub(c0)? as u128 * 1_000_000 / nanos.max(1) as u128) as u64;
    // Anything outside 100 MHz to 10 GHz is a broken measurement.
    (100_000..10_000_000).contains(&khz).then_some(khz)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_counter_rate_is_measured_the_same_twice() {
        let Some(first) = measure() else {
            eprintln!("skipped: this host's TSC rate is not constant");
            return;
        };
        let second = measure().unwrap();
        // Within 0.1% of each other (a 20 ms span, read to microseconds).
        let diff = first.abs_diff(second);
        assert!(diff * 1000 <= first, "{first} kHz, then {second} kHz");
        assert_eq!(host_khz(), host_khz());
    }
}
