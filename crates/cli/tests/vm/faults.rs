//! Faults from outside the program: what breaks under an execution is
//! reported as ours, with the output that came back, and the next
//! execution works; what breaks while an image or a snapshot is made, or
//! damages one afterwards, is never booted or restored.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::server::Server;
use crate::common::{
    assert_clean, run, runner, spawn, state_dir, vm_processes, wait_for_first_line,
};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;

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

/// How a test's own state directory gets each of the shared images.
#[derive(Clone, Copy, PartialEq)]
enum Take {
    /// Linked: used as it is.
    Link,
    /// Copied: this test may damage it.
    Copy,
    /// Left out: built in this state directory.
    Build,
}

/// A state directory of its own for a test that damages or interrupts what
/// it holds, so that no other test sees that: each shared image as `take`
/// says for its id, no snapshots, and the backend probe's result.
fn own_home(take: impl Fn(&str) -> Take) -> TempDir {
    let home = tempfile::tempdir().unwrap();
    let images = home.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for entry in std::fs::read_dir(state_dir().join("images"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().join("manifest.json").exists() {
            continue;
        }
        match take(&name) {
            Take::Link => std::os::unix::fs::symlink(entry.path(), images.join(&name)).unwrap(),
            Take::Copy => {
                std::fs::create_dir(images.join(&name)).unwrap();
                for file in std::fs::read_dir(entry.path()).unwrap().flatten() {
                    if file.file_type().unwrap().is_file() {
                        std::fs::copy(file.path(), images.join(&name).join(file.file_name()))
                            .unwrap();
                    }
                }
            }
            Take::Build => {}
        }
    }
    let accel = state_dir().join("accel.json");
    if accel.exists() {
        std::os::unix::fs::symlink(accel, home.path().join("accel.json")).unwrap();
    }
    home
}

/// `runner` with `args` on the state directory `home`.
fn runner_in(home: &Path, args: &[&str]) -> Output {
    runner_on(home).args(args).output().unwrap()
}

/// A runner on `home`, with the home's own `config.toml` if it has one.
fn runner_on(home: &Path) -> Command {
    let mut command = runner();
    command.env("RUNNER_HOME", home);
    let config = home.join("config.toml");
    if config.exists() {
        command.env("RUNNER_CONFIG", config);
    }
    command
}

/// A Bash `echo hi` on `home`: its JSON result and what was logged.
fn hello_in(home: &Path) -> (Value, String) {
    let output = runner_in(home, &["run", "--json", "--lang", "bash", "-c", "echo hi"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON result ({e}): {stderr}"));
    assert_eq!(json["status"], "ok", "{json:#} {stderr}");
    assert_eq!(json["run"]["stdout"], "hi\n", "{json:#}");
    (json, stderr)
}

fn make_bash_snapshot(home: &Path) {
    let made = runner_in(home, &["snapshot", "create", "--lang", "bash"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// The entries of `dir` whose names start with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Changes one byte of `path` at `offset`.
fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], offset).unwrap();
}

fn shorten(path: &Path, by: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - by).unwrap();
}

/// A snapshot damaged where its fingerprint does not look (here, 4 KiB in
/// the middle of what restores it: a gVisor checkpoint, a VM's device
/// state, with the fingerprints taken again as if it had been saved so)
/// does not restore: a fresh sandbox or VM runs the program instead, and
/// the log says why. On each backend.
#[test]
fn a_snapshot_that_does_not_restore_gives_way_to_a_fresh_start() {
    for backend in ["gvisor", "qemu"] {
        let home = own_home(|_| Take::Link);
        let runner = |args: &[&str]| {
            runner_on(home.path())
                .env("RUNNER_BACKEND", backend)
                .args(args)
                .output()
                .unwrap()
        };
        let made = runner(&["snapshot", "create", "--lang", "bash"]);
        assert!(
            made.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let hello = || {
            let output = runner(&["run", "--json", "--lang", "bash", "-c", "echo hi"]);
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            let json: Value = serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|e| panic!("{backend}: no JSON result ({e}): {stderr}"));
            assert_eq!(json["status"], "ok", "{backend}: {json:#} {stderr}");
            assert_eq!(json["run"]["stdout"], "hi\n", "{backend}: {json:#}");
            (json, stderr)
        };
        assert_eq!(hello().0["metrics"]["start"], "snapshot", "{backend}");
        let snapshot = entries(&home.path().join("snapshots"), "snapshot-bash-")
            .pop()
            .expect("the bash snapshot");
        let state = snapshot.join("state");
        let len = std::fs::metadata(&state).unwrap().len();
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&state)
                .unwrap();
            file.write_all_at(&[0x5a; 4096], len / 2).unwrap();
        }
        let manifest_path = snapshot.join("manifest.json");
        let mut manifest: Value =
            serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
        let prints = runner_host::integrity::take(&snapshot, &["memory", "state"]).unwrap();
        manifest["files"] = serde_json::to_value(prints).unwrap();
        std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

        let (fresh, log) = hello();
        assert_eq!(fresh["metrics"]["start"], "cold", "{backend}: {log}");
        assert!(
            log.contains("the VM restored from the snapshot never became ready"),
            "{backend}: {log}"
        );
    }
}

/// A snapshot whose device state or memory file changed after it was made
/// is never restored: the VM boots instead, saying why, and the snapshot
/// is made again.
#[test]
fn a_damaged_snapshot_is_never_restored_and_is_made_again() {
    let home = own_home(|_| Take::Link);
    make_bash_snapshot(home.path());
    assert_eq!(hello_in(home.path()).0["metrics"]["start"], "snapshot");
    let snapshot = entries(&home.path().join("snapshots"), "snapshot-bash-")
        .pop()
        .expect("the bash snapshot");

    type Damage = fn(&Path);
    let mut damages: [(&str, Damage); 3] = [
        ("a byte of the device state", |dir| {
            let state = dir.join("state");
            flip_byte(&state, std::fs::metadata(&state).unwrap().len() / 2)
        }),
        ("the memory file a page short", |dir| {
            shorten(&dir.join("memory"), 4096)
        }),
        ("the memory file's first byte", |dir| {
            flip_byte(&dir.join("memory"), 0)
        }),
    ];
    // A gVisor snapshot's memory is in its checkpoint, the state file; its
    // memory file is empty.
    if crate::common::gvisor() {
        damages[1] = ("the checkpoint a page short", |dir| {
            shorten(&dir.join("state"), 4096)
        });
        damages[2] = ("the checkpoint's first byte", |dir| {
            flip_byte(&dir.join("state"), 0)
        });
    }
    let doctor_says = || {
        let doctor = runner_in(home.path(), &["doctor"]);
        let text = String::from_utf8_lossy(&doctor.stdout).into_owned();
        text.lines()
            .find(|l| l.contains("snapshot-bash-"))
            .unwrap_or_else(|| panic!("no bash snapshot in: {text}"))
            .to_string()
    };
    assert!(doctor_says().ends_with(" ready"), "{}", doctor_says());
    for (what, damage) in damages {
        damage(&snapshot);
        let (cold, log) = hello_in(home.path());
        assert_eq!(cold["metrics"]["start"], "cold", "{what}: restored");
        assert!(log.contains("snapshot damaged"), "{what}: {log}");
        assert!(
            doctor_says().contains("missing or damaged"),
            "{what}: {}",
            doctor_says()
        );
        make_bash_snapshot(home.path());
        let (restored, log) = hello_in(home.path());
        assert_eq!(restored["metrics"]["start"], "snapshot", "{what}: {log}");
    }
    assert_eq!(
        entries(&home.path().join("snapshots"), ".build-"),
        Vec::<PathBuf>::new()
    );
    assert_eq!(entries(&home.path().join("run"), ""), Vec::<PathBuf>::new());
}

/// An image file changed after it was built is built again before a VM
/// boots from it.
#[test]
fn a_damaged_image_is_built_again_before_a_vm_boots_from_it() {
    // The initramfs: the one image that builds in a moment.
    let home = own_home(|id| {
        if id.starts_with("initramfs-") {
            Take::Copy
        } else {
            Take::Link
        }
    });
    let images = home.path().join("images");
    hello_in(home.path());
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 2] = [
        ("a byte of its header", |file| flip_byte(file, 0)),
        ("a byte short", |file| shorten(file, 1)),
    ];
    for (what, damage) in damages {
        for dir in entries(&images, "initramfs-") {
            damage(&dir.join("initramfs.cpio"));
        }
        let (_, log) = hello_in(home.path());
        assert!(
            log.contains("image damaged; building it again"),
            "{what}: {log}"
        );
        // Only the damaged image was built.
        assert!(!log.contains("building rootfs"), "{what}: {log}");
        let (_, log) = hello_in(home.path());
        assert!(!log.contains("damaged"), "{what}: built once: {log}");
    }
}

/// A runner or a server killed while it builds an image leaves a scratch
/// directory, never a half-built image: the next runner builds the image
/// whole.
#[test]
fn a_runner_killed_while_building_an_image_leaves_nothing_used() {
    // Debian's kernel: an image that takes seconds to build (a download;
    // Runner Codes' own takes minutes to compile).
    let home = own_home(|id| {
        if id.starts_with("kernel-") {
            Take::Build
        } else {
            Take::Link
        }
    });
    std::fs::write(home.path().join("config.toml"), "kernel = \"debian\"\n").unwrap();
    let images = home.path().join("images");
    let state_dir = format!("state_dir={}", home.path().display());
    let builders: [&[&str]; 2] = [
        &["run", "--lang", "bash", "-c", "echo hi"],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--languages",
            "bash",
            "--set",
            &state_dir,
            "--set",
            "prepare_snapshots=false",
        ],
    ];
    for args in builders {
        for built in entries(&images, "kernel-") {
            std::fs::remove_dir_all(built).unwrap();
        }
        let mut child = runner_on(home.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while entries(&images, ".build-kernel-").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: no kernel build started",
                args[0]
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "{} ended first",
                args[0]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            entries(&images, "kernel-").is_empty(),
            "{}: a kernel image appeared though its build was killed",
            args[0]
        );

        let (_, log) = hello_in(home.path());
        assert!(log.contains("building kernel-"), "{log}");
        assert_eq!(entries(&images, ".build-"), Vec::<PathBuf>::new());
        assert_eq!(entries(&images, "kernel-").len(), 1);
    }
}

/// A server killed while it makes a snapshot and runs an execution: the
/// client gets an error at once, not a hang; the VMs die with the server;
/// the half-made snapshot is never restored; the next server and the next
/// snapshot start clean.
#[test]
fn a_server_killed_while_making_a_snapshot_leaves_nothing_used() {
    let home = own_home(|_| Take::Link);
    let snapshots = home.path().join("snapshots");
    let state_dir = format!("state_dir={}", home.path().display());
    let server = Server::start(&["--set", &state_dir, "--languages", "bash"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while entries(&snapshots, ".build-snapshot-bash-").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot being made"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (client, base) = (server.client.clone(), server.base.clone());
    let execution = std::thread::spawn(move || {
        let response = client
            .post(format!("{base}/v1/executions"))
            .header("content-type", "application/json")
            .body(
                json!({"language": "bash",
                       "files": [{"content": "echo started; sleep 100"}],
                       "limits": {"run": {"wall_time_ms": 120_000}}})
                .to_string(),
            )
            .send();
        let ended = std::time::Instant::now();
        (response.and_then(|r| r.text()), ended)
    });
    // Both VMs up: the template and the execution's.
    let pid = server.pid();
    while vm_processes(pid).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            vm_processes(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut server = server;
    server.child.kill().unwrap();
    let killed = std::time::Instant::now();
    server.child.wait().unwrap();
    let (answer, ended) = execution.join().unwrap();
    assert!(
        answer.is_err(),
        "an answer from a killed server: {answer:?}"
    );
    assert!(
        ended.duration_since(killed) < Duration::from_secs(10),
        "the client waited {:?} after the kill",
        ended.duration_since(killed)
    );
    crate::common::wait_for_no_vms(pid, Duration::from_secs(10));
    drop(server);
    assert!(
        entries(&snapshots, "snapshot-").is_empty(),
        "a snapshot appeared though its making was killed"
    );

    // The next server sweeps what the killed one left and boots, restoring
    // nothing half-made.
    let next = Server::start(&[
        "--set",
        &state_dir,
        "--languages",
        "bash",
        "--set",
        "prepare_snapshots=false",
    ]);
    let result = next.execute(&json!({"language": "bash", "files": [{"content": "echo hi"}]}));
    assert_eq!(result["run"]["stdout"], "hi\n", "{result:#}");
    assert_eq!(result["metrics"]["start"], "cold", "{result:#}");
    assert_eq!(
        entries(&home.path().join("run"), &format!("{pid}.")),
        Vec::<PathBuf>::new()
    );
    next.stop(Duration::from_secs(60));
    make_bash_snapshot(home.path());
    assert_eq!(entries(&snapshots, ".build-"), Vec::<PathBuf>::new());
    assert_eq!(hello_in(home.path()).0["metrics"]["start"], "snapshot");
}

/// A tmpfs of `size` mounted on `dir` (made if missing) until dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mounting a tmpfs needs root, as the tests do"
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The disk fills while a running session is saved to it: the pause fails
/// saying so, the session runs on as it was, and nothing half-saved stays.
#[test]
fn a_session_paused_onto_a_full_disk_runs_on() {
    let home = own_home(|_| Take::Link);
    // Sessions' records and saved VMs on 4 MiB: room for the records, not
    // for a saved VM (a gVisor checkpoint of a shell is under 4 MiB).
    let size = if crate::common::gvisor() {
        "256k"
    } else {
        "4m"
    };
    let _full = Tmpfs::mount(&home.path().join("sessions"), size);
    let state_dir = format!("state_dir={}", home.path().display());
    let server = Server::start(&["--set", &state_dir, "--set", "prepare_snapshots=false"]);
    let id = server.session(&json!({ "language": "bash" }));
    let command = |command: &str| server.session_command(&id, command);
    assert_eq!(command("echo kept > f; echo ok")["run"]["stdout"], "ok\n");

    let response = server.post(&format!("/v1/sessions/{id}/pause"), "");
    let status = response.status().as_u16();
    let error: Value = response.json().unwrap();
    assert_eq!(
        (status, error["code"].as_str()),
        (500, Some("pause_failed")),
        "{error:#}"
    );
    let message = error["message"].as_str().unwrap();
    assert!(
        message.to_lowercase().contains("no space left on device"),
        "{message}"
    );

    let info: Value = server.get(&format!("/v1/sessions/{id}")).json().unwrap();
    assert_eq!(info["state"], "running", "{info:#}");
    assert_eq!(command("cat f")["run"]["stdout"], "kept\n");
    let saved: Vec<PathBuf> = entries(&home.path().join("sessions").join("paused"), "")
        .into_iter()
        .chain(entries(&home.path().join("sessions").join("saving"), ""))
        .collect();
    assert_eq!(saved, Vec::<PathBuf>::new(), "half-saved files left");
    server.stop(Duration::from_secs(60));
}

/// A state directory too full for a snapshot: refused before its VM boots,
/// saying so, nothing left behind; executions go on, booting.
#[test]
fn a_full_disk_refuses_a_snapshot_and_executions_go_on() {
    let home = own_home(|_| Take::Link);
    let snapshots = home.path().join("snapshots");
    let _full = Tmpfs::mount(&snapshots, "64m");

    let made = runner_in(home.path(), &["snapshot", "create", "--lang", "bash"]);
    let stderr = String::from_utf8_lossy(&made.stderr);
    assert!(!made.status.success(), "{stderr}");
    assert!(stderr.contains("not enough disk space in"), "{stderr}");
    assert!(stderr.contains("RUNNER_HOME"), "says what to do: {stderr}");
    // Nothing but the lock file, which stays by design.
    let left: Vec<PathBuf> = entries(&snapshots, "")
        .into_iter()
        .filter(|path| path.extension().is_none_or(|e| e != "lock"))
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new());
    assert_eq!(hello_in(home.path()).0["metrics"]["start"], "cold");
    assert_eq!(entries(&home.path().join("run"), ""), Vec::<PathBuf>::new());
}
