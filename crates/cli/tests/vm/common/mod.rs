//! Shared fixtures for the black-box tests: they run the real `runner`
//! binary, which boots real VMs. [`server`] starts a `runner serve`,
//! [`sessions`] drives its sessions.
//!
//! Tests run two at a time. A test that needs the machine to itself (it
//! measures, or changes what the others use) takes [`alone`] first; every
//! other test shares it from its first `runner` on.

pub mod server;
pub mod sessions;

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn runner() -> Command {
    share_the_machine();
    let mut command = Command::new(env!("CARGO_BIN_EXE_runner"));
    command.env("RUNNER_LOG", "info");
    // Every test sees its compiles run (the state directory outlives test
    // runs); the compile cache's tests turn it on (`--set`).
    command.env("RUNNER_COMPILE_CACHE_ENABLED", "false");
    // The suites run on QEMU unless the caller names a backend
    // (scripts/gvisor-tests.sh names gvisor), whatever `auto` would pick.
    if std::env::var_os("RUNNER_BACKEND").is_none() {
        command.env("RUNNER_BACKEND", "qemu");
    }
    command
}

/// `runner` on the QEMU backend, whichever the other tests run on: for a
/// test of what only a VM has (its kernel, its memory placement).
pub fn qemu_runner() -> Command {
    let mut command = runner();
    command.env("RUNNER_BACKEND", "qemu");
    command
}

/// Tests that run `runner` share the machine; one that must have it alone
/// waits until they are done, and they wait for it.
static MACHINE: RwLock<()> = RwLock::new(());

/// This test thread's hold on the machine.
enum Hold {
    Shared {
        _guard: RwLockReadGuard<'static, ()>,
    },
    Alone {
        _guard: RwLockWriteGuard<'static, ()>,
    },
}

thread_local! {
    /// Dropped with the test's thread: libtest runs each test on a thread
    /// of its own, named after the test.
    static HOLD: RefCell<Option<Hold>> = const { RefCell::new(None) };
}

/// Shares the machine for the rest of the test, if this is a test's
/// thread. A thread a test started itself (unnamed) holds nothing: its
/// test does, and it must not wait behind a test waiting to be alone.
fn share_the_machine() {
    if std::thread::current().name().is_none() {
        return;
    }
    HOLD.with(|hold| {
        let mut hold = hold.borrow_mut();
        if hold.is_none() {
            let guard = MACHINE.read().unwrap_or_else(|e| e.into_inner());
            *hold = Some(Hold::Shared { _guard: guard });
        }
    });
}

/// Has the rest of this test run with no other test running `runner`:
/// for a test that measures the machine's load, or changes what every
/// test uses (the state directory's shared images). Call it first.
pub fn alone() {
    HOLD.with(|hold| {
        let mut hold = hold.borrow_mut();
        if matches!(*hold, Some(Hold::Alone { .. })) {
            return;
        }
        // A thread that shared the machine lets go before it waits.
        *hold = None;
        let guard = MACHINE.write().unwrap_or_else(|e| e.into_inner());
        *hold = Some(Hold::Alone { _guard: guard });
    });
}

/// The state directory the runner under test uses.
pub fn state_dir() -> PathBuf {
    match std::env::var_os("RUNNER_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ if nix::unistd::geteuid().is_root() => PathBuf::from("/var/lib/runner"),
        _ => PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/runner"),
    }
}

pub struct Finished {
    pub pid: u32,
    pub output: Output,
    pub elapsed: Duration,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The result printed by `--json`.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.output.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            )
        })
    }

    /// The run stage of a `--json` result.
    pub fn run_stage(&self) -> Value {
        let json = self.json();
        assert!(json["run"].is_object(), "no run stage in {json:#}");
        json["run"].clone()
    }

    /// The status of a `--json` result.
    pub fn status(&self) -> String {
        self.json()["status"].as_str().expect("status").to_string()
    }
}

/// Whether the tests run on the gVisor backend: `RUNNER_BACKEND=gvisor`,
/// which every `runner` they start reads too (the README's "Backends").
/// Where a program sees the backends differ, a test says so and expects
/// what the README's "The environment" documents.
pub fn gvisor() -> bool {
    std::env::var("RUNNER_BACKEND").is_ok_and(|b| b == "gvisor")
}

/// What `runner doctor`'s output (`stdout`) says on the line of `key`
/// (`"backend"`, `"huge pages"`), after the key.
pub fn doctor_line(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).filter(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {key:?} in {stdout}"))
        .trim()
        .to_string()
}

/// The path of a program under `programs/`.
pub fn program(path: &str) -> String {
    format!("{}/../../programs/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Whether VMs run under KVM here (else TCG), as `runner doctor` says.
pub fn kvm() -> bool {
    let output = runner().arg("doctor").output().unwrap();
    String::from_utf8_lossy(&output.stdout).contains("acceleration   kvm")
}

/// Runs `command` to its end, which must be a success: its stdout.
pub fn succeeds(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs `runner` with `args`, feeding `stdin`, and checks afterwards that the
/// execution left nothing behind.
pub fn run(args: &[&str], stdin: &[u8]) -> Finished {
    run_with_env(args, stdin, &[])
}

/// As [`run`], with variables set in the runner's environment.
pub fn run_with_env(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Finished {
    let started = Instant::now();
    let mut child = start(args, env);
    let pid = child.id();
    {
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let finished = Finished {
        pid,
        output,
        elapsed: started.elapsed(),
    };
    assert_clean(pid);
    finished
}

/// Starts `runner` with stdin open for the caller to write (and close).
fn start(args: &[&str], env: &[(&str, &str)]) -> Child {
    runner()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts `runner` with an empty stdin, for tests that stop it themselves.
pub fn spawn(args: &[&str]) -> Child {
    let mut child = start(args, &[]);
    drop(child.stdin.take());
    child
}

/// The run directory prefix of executions of the runner process `pid`.
fn run_prefix(pid: u32) -> String {
    format!("{pid}.")
}

/// Processes whose command line mentions a run directory of `pid` (QEMU has
/// its socket path there, gVisor's sandbox its bundle). Of gVisor's three
/// (`runsc` that started it, the sandbox, the gofer that serves its
/// files), the sandbox alone is counted: one process per VM or sandbox.
pub fn vm_processes(pid: u32) -> Vec<String> {
    let needle = format!("/run/{}", run_prefix(pid));
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let runsc_helper = cmdline.starts_with("runsc-gofer")
            || cmdline
                .split(' ')
                .next()
                .is_some_and(|arg0| arg0.ends_with("runsc"));
        if cmdline.contains(&needle) && !runsc_helper {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

pub fn run_dirs(pid: u32) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir().join("run")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&run_prefix(pid))
        })
        .map(|e| e.path())
        .collect()
}

/// Waits until no VM process of runner process `pid` is left (they die
/// with it, by PDEATHSIG), failing after `within`.
pub fn wait_for_no_vms(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while !vm_processes(pid).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", vm_processes(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No VM process and no run directory of runner process `pid` remain.
pub fn assert_clean(pid: u32) {
    // A killed QEMU may take a moment to be reaped once its parent is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !vm_processes(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        vm_processes(pid),
        Vec::<String>::new(),
        "VM processes left behind"
    );
    assert_eq!(
        run_dirs(pid),
        Vec::<PathBuf>::new(),
        "run directories left behind"
    );
}

/// Waits until the program in `child`'s VM printed its first line, so that
/// the VM is booted and the program running.
pub fn wait_for_first_line(child: &mut Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    // Keep reading in the background so the runner never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    line
}
