//! The guest kernels: Runner Codes' own by default, Debian's on request,
//! and the debug flavour that shows a boot on the console. Real VMs.

mod common;

use common::runner;

/// Runs a bash program with extra `--set` settings; its stdout, once the
/// run succeeded.
fn bash(settings: &[&str], code: &str) -> String {
    let mut command = runner();
    command.arg("run");
    for setting in settings {
        command.args(["--set", setting]);
    }
    let output = command
        .args(["--lang", "bash", "-c", code])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
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
