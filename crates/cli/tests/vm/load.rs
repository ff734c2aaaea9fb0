//! The host's load changes neither a verdict nor the CPU time it reports,
//! and `runner run` processes share the machine's capacity rule.
//!
//! The tests here load the machine on purpose, so each runs alone.

use std::process::{Child, Command, Stdio};

use crate::common::{run, spawn, vm_processes, wait_for_first_line};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// A CPU-bound Python program: the same work every time.
const WORK: &str = "x = 0\nfor i in range(1_000_000):\n    x += i\nprint(x)\n";

/// The run stage's CPU time in ms, asserting the run ended `ok`.
fn cpu_time_ms(cpu_time_ms: Option<u64>) -> u64 {
    let mut args = vec![
        "run".to_string(),
        "--json".into(),
        "--lang".into(),
        "python".into(),
        "--timeout".into(),
        "120".into(),
    ];
    if let Some(limit) = cpu_time_ms {
        args.extend(["--cpu-time-ms".into(), limit.to_string()]);
    }
    args.extend(["-c".into(), WORK.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = run(&args, b"");
    let json = done.json();
    assert_eq!(json["status"], "ok", "{json:#}\n{}", done.stderr());
    json["run"]["cpu_time_ms"]
        .as_u64()
        .unwrap_or_else(|| json["run"]["cpu_time"].as_f64().unwrap() as u64)
}

/// A VM that spins until killed, in one of the machine's slots, once it
/// runs.
fn spinning_vm() -> Child {
    let mut child = spawn(&[
        "run",
        "--lang",
        "python",
        "--timeout",
        "300",
        "--cpu-time",
        "300",
        "-c",
        "print('spinning', flush=True)\nwhile True: pass",
    ]);
    assert_eq!(wait_for_first_line(&mut child).trim(), "spinning");
    child
}

/// A process that spins on the host itself.
fn host_hog() -> Child {
    Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    // SIGINT, as Ctrl-C: `runner run` destroys its VM on the way out.
    let _ = signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
    let _ = child.wait();
}

/// The host's load, switched on and off: spinning VMs in every slot of the
/// machine but the one the measured program takes, and a host CPU hog;
/// stopped with SIGSTOP between measurements.
struct Load {
    vms: Vec<Child>,
    hogs: Vec<Child>,
    /// The processes to stop and continue: the VMs' QEMUs and the hogs.
    pids: Vec<Pid>,
}

impl Load {
    fn start(cpus: usize) -> Self {
        let vms: Vec<Child> = (1..cpus).map(|_| spinning_vm()).collect();
        let hogs = vec![host_hog()];
        let mut pids: Vec<Pid> = hogs.iter().map(|h| Pid::from_raw(h.id() as i32)).collect();
        for vm in &vms {
            let qemus = vm_processes(vm.id());
            assert!(!qemus.is_empty(), "no VM process of runner {}", vm.id());
            pids.extend(
                qemus
                    .iter()
                    .map(|line| Pid::from_raw(line.split(':').next().unwrap().parse().unwrap())),
            );
        }
        Self { vms, hogs, pids }
    }

    fn switch(&self, on: bool) {
        let signal = if on { Signal::SIGCONT } else { Signal::SIGSTOP };
        for pid in &self.pids {
            signal::kill(*pid, signal).unwrap();
        }
    }

    fn end(self) {
        self.switch(true);
        for mut hog in self.hogs {
            let _ = hog.kill();
            let _ = hog.wait();
        }
        for vm in self.vms {
            stop(vm);
        }
    }
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// The design's test of load-independent verdicts: the same CPU-bound
/// program, at 50 % of its CPU limit, at idle and with the host saturated
/// (other VMs at capacity plus a host CPU hog), reports CPU times within
/// 20 % of each other and the same verdict. This machine's own speed drifts
/// by about that much over minutes, so idle and loaded runs alternate and
/// their medians are compared.
#[test]
fn cpu_time_and_verdict_do_not_change_with_the_hosts_load() {
    // Measured against the machine's load: no other test runs meanwhile.
    crate::common::alone();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = Load::start(cpus);
    load.switch(false);
    let limit = cpu_time_ms(None) * 2;
    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        idle.push(cpu_time_ms(Some(limit)));
        load.switch(true);
        loaded.push(cpu_time_ms(Some(limit)));
        load.switch(false);
    }
    load.end();
    let (at_idle, under_load) = (median(idle.clone()), median(loaded.clone()));
    eprintln!("CPU time, limit {limit} ms: at idle {idle:?} ms, under load {loaded:?} ms");
    let ratio = under_load as f64 / at_idle as f64;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "median {under_load} ms of CPU under load against {at_idle} ms at idle ({ratio:.2}x); \
         idle {idle:?}, loaded {loaded:?}"
    );
}

/// Ten `runner run`s on a small machine do not run ten VMs at once: each
/// takes one of the machine's slots and waits, saying so, for a free one;
/// `shared_capacity = false` opts out.
#[test]
fn runner_run_processes_wait_for_a_machine_slot() {
    // One machine slot, which no other test may take meanwhile.
    crate::common::alone();
    let holder = |code: &str| {
        spawn(&[
            "run",
            "--set",
            "max_vms=1",
            "--lang",
            "python",
            "--timeout",
            "60",
            "-c",
            code,
        ])
    };
    // Holds the one slot of a one-VM machine until told to stop.
    let mut first = holder("import time\nprint('holding', flush=True)\ntime.sleep(60)");
    assert_eq!(wait_for_first_line(&mut first).trim(), "holding");
    let second = holder("print('second')");
    let outside = run(
        &[
            "run",
            "--set",
            "max_vms=1",
            "--set",
            "shared_capacity=false",
            "--lang",
            "bash",
            "-c",
            "echo outside",
        ],
        b"",
    );
    assert_eq!(outside.stdout(), "outside\n", "{}", outside.stderr());
    assert!(!outside.stderr().contains("waiting for a VM slot"));
    // The second waited (the first still sleeps), and said so.
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop(first);
    let second = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        "second\n",
        "{stderr}"
    );
    assert!(
        stderr
            .contains("waiting for a VM slot: other runner processes hold all 1 of this machine's"),
        "{stderr}"
    );
}
