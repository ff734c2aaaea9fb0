//! Faults from outside the program: what breaks under an execution is
//! reported as ours, with the output that came back, and the next
//! execution works.

mod common;

use std::time::Duration;

use common::{assert_clean, run, spawn, vm_processes, wait_for_first_line};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// QEMU killed while its VM runs a program: the result is
/// `internal_error`, says the VM was lost, keeps the output so far, and
/// nothing of the VM is left; the next execution runs as ever.
#[test]
fn qemu_killed_mid_execution() {
    let child = spawn(&[
        "run",
        "--json",
        "--lang",
        "python",
        "--timeout",
        "120",
        "-c",
        "import time\nprint('running', flush=True)\ntime.sleep(100)",
    ]);
    let pid = child.id();
    // Its first line comes inside the JSON only at the end; wait for the
    // VM to run instead.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let qemu = loop {
        if let Some(line) = vm_processes(pid).first() {
            break line.split(':').next().unwrap().parse::<i32>().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no VM started");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let the program start before the VM goes.
    std::thread::sleep(Duration::from_secs(5));
    signal::kill(Pid::from_raw(qemu), Signal::SIGKILL).unwrap();
    let output = child.wait_with_output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON result ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(json["status"], "internal_error", "{json:#}");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("lost the agent"), "{message}");
    assert_clean(pid);

    let next = run(&["run", "--lang", "bash", "-c", "echo next"], b"");
    assert_eq!(next.stdout(), "next\n", "{}", next.stderr());
}

/// The same for a program that was streaming its output: what came before
/// the VM died is kept.
#[test]
fn output_before_qemu_died_is_kept() {
    let mut child = spawn(&[
        "run",
        "--lang",
        "bash",
        "--timeout",
        "120",
        "-c",
        "echo before; sleep 100; echo after",
    ]);
    let pid = child.id();
    assert_eq!(wait_for_first_line(&mut child).trim(), "before");
    for line in vm_processes(pid) {
        let qemu: i32 = line.split(':').next().unwrap().parse().unwrap();
        signal::kill(Pid::from_raw(qemu), Signal::SIGKILL).unwrap();
    }
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_clean(pid);
}
