//! The guest kernels: Runner Codes' own by default, Debian's on request,
//! and the debug flavour that shows a boot on the console. Real VMs, on
//! QEMU whatever backend the other tests use (a gVisor sandbox has no
//! kernel of its own).

use crate::common::{qemu_runner as runner, succeeds};

/// Runs a bash program with extra `--set` settings; its stdout, once the
/// run succeeded.
fn bash(settings: &[&str], code: &str) -> String {
    let mut command = runner();
    command.arg("run");
    for setting in settings {
        command.args(["--set", setting]);
    }
    succeeds(command.args(["--lang", "bash", "-c", code]))
}

const WHICH_KERNEL: &str = "uname -r; cat /proc/version; \
    if [ -e /proc/modules ]; then echo modules: $(wc -l < /proc/modules); \
    else echo no modules; fi";

#[test]
fn the_default_kernel_is_our_own_with_no_modules() {
    let out = bash(&[], WHICH_KERNEL);
    assert!(!out.contains("cloud-amd64"), "{out}");
    // Built here (KBUILD_BUILD_USER), not by Debian's buildds.
    assert!(out.contains("(runner@runner)"), "{out}");
    assert!(out.contains("no modules"), "{out}");
}

#[test]
fn debians_kernel_stays_selectable_and_loads_its_modules() {
    // Without snapshots, so that none is made for this kernel.
    let out = bash(&["kernel=debian", "snapshots=false"], WHICH_KERNEL);
    assert!(
        out.lines().next().unwrap().ends_with("cloud-amd64"),
        "{out}"
    );
    // virtio, the console, the disk, overlayfs and vsock at least.
    let modules: usize = out
        .lines()
        .find_map(|line| line.strip_prefix("modules: "))
        .unwrap_or_else(|| panic!("no module list in {out}"))
        .trim()
        .parse()
        .unwrap();
    assert!(modules >= 5, "{out}");
}

#[test]
fn configured_kernel_arguments_reach_every_vm() {
    // A snapshot holds the arguments its boot was given: one made without
    // these is not restored for them (here none is made: the VM boots).
    let out = bash(&["kernel_args=runner.check=1"], "cat /proc/cmdline");
    assert!(out.contains(" runner.check=1"), "{out}");
}

#[test]
fn both_machines_are_told_their_clocks_under_emulation() {
    // Cold boots, so that no snapshot is made for microvm. Under TCG a
    // guest kernel would measure its TSC against the PIT, which failed in
    // most microvm boots of a busy host (leaving 10 ms jiffies) and cost
    // q35 ~80 ms before it fell back on the HPET, and then its APIC timer
    // for 100 ms. Told the host's TSC rate, it keeps time by the TSC; its
    // tick comes from the PIT, and q35 boots without ACPI. Under KVM the
    // clock is kvmclock and the tick the APIC's.
    let kvm = crate::common::kvm();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let constant_tsc = cpuinfo.contains(" constant_tsc") && cpuinfo.contains(" nonstop_tsc");
    for machine in ["microvm", "microvm", "microvm", "q35"] {
        let setting = format!("machine={machine}");
        let out = bash(
            &[&setting, "snapshots=false"],
            "cd /sys/devices/system; cat clocksource/clocksource0/current_clocksource \
             clockevents/clockevent0/current_device /proc/cmdline; \
             ls /sys/bus/virtio/devices | wc -l",
        );
        let mut lines = out.lines();
        let clock = lines.next().unwrap();
        let tick = lines.next().unwrap();
        let cmdline = lines.next().unwrap();
        if kvm {
            assert_eq!(clock, "kvm-clock", "{out}");
            assert!(tick.starts_with("lapic"), "{out}");
        } else {
            assert_eq!(tick, "pit", "{out}");
            assert!(cmdline.contains(" no_timer_check noapictimer"), "{out}");
            if machine == "q35" {
                assert!(cmdline.contains(" acpi=off"), "{out}");
            }
            if constant_tsc {
                assert!(clock == "tsc" || clock == "tsc-early", "{out}");
                assert!(cmdline.contains(" tsc_early_khz="), "{out}");
            } else {
                eprintln!("this host's TSC rate is not constant: nothing to tell the guest");
            }
        }
        // Devices: the console port, the disk, the RNG (virtio-mmio on
        // microvm, PCI on q35).
        let devices: usize = lines.next().unwrap().trim().parse().unwrap();
        assert!(devices >= 3, "{out}");
    }
}

#[test]
fn the_debug_kernel_shows_the_boot_on_the_console() {
    let output = runner()
        .args(["doctor", "--debug-kernel"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let console = stdout
        .split_once("--- console ---")
        .and_then(|(_, rest)| rest.split_once("--- end of console ---"))
        .map(|(console, _)| console)
        .unwrap_or_else(|| panic!("no console in {stdout}"));
    // The kernel's own last message before the agent, timed, which a
    // kernel without printk never prints. (The console is a tail: the
    // first messages may have scrolled out of it.)
    assert!(console.contains("] Run /init as init process"), "{stdout}");
    assert!(stdout.contains("the agent said hello"), "{stdout}");
}
