//! `runner run` end to end: each test boots a real VM and runs a real
//! interpreter in it, then checks that nothing is left on the host.

use std::time::Duration;

use crate::common::{
    assert_clean, run, run_dirs, runner, spawn, vm_processes, wait_for_first_line,
};

#[test]
fn bash_hello_world() {
    let done = run(&["run", "--lang", "bash", "-c", "echo hello world"], b"");
    assert_eq!(done.stdout(), "hello world\n", "stderr: {}", done.stderr());
    assert_eq!(done.code(), Some(0));
}

#[test]
fn files_the_program_writes_come_back_with_output() {
    let dir = tempfile::tempdir().unwrap();
    let code = "import os\nos.makedirs('out', exist_ok=True)\nopen('out/a.csv', 'w').write('1,2\\n')\nopen('skip.txt', 'w').write('no')";
    let done = run(
        &[
            "run",
            "--lang",
            "python",
            "-c",
            code,
            "--output",
            "out/*.csv",
            "--output-dir",
            dir.path().to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(done.code(), Some(0), "stderr: {}", done.stderr());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/a.csv")).unwrap(),
        "1,2\n"
    );
    assert!(!dir.path().join("skip.txt").exists());
    assert!(done.stderr().contains("wrote"), "{}", done.stderr());
}

#[test]
fn python_hello_world_with_timings() {
    let done = run(
        &["run", "--json", "--lang", "python", "-c", "print(6*7)"],
        b"",
    );
    assert_eq!(done.code(), Some(0), "stderr: {}", done.stderr());
    let json = done.json();
    let stage = done.run_stage();
    assert_eq!(stage["stdout"], "42\n");
    assert_eq!(stage["exit_code"], 0);
    let metrics = &json["metrics"];
    assert_eq!(metrics["language"], "python");
    assert_eq!(metrics["trace_id"], json["trace_id"]);
    assert_eq!(metrics["trace_id"].as_str().unwrap().len(), 32);
    for phase in ["vm_boot_time", "ready_time", "execution_time", "total_time"] {
        let ms = metrics[phase].as_f64().unwrap_or_else(|| panic!("{phase}"));
        assert!(ms > 0.0, "{phase} = {ms}");
        // The same time with its unit in the name; the seed's name is kept.
        assert_eq!(metrics[format!("{phase}_ms")].as_f64(), Some(ms), "{phase}");
    }
    for time in ["wall_time", "cpu_time"] {
        let ms = stage[time].as_f64().unwrap_or_else(|| panic!("{time}"));
        assert_eq!(stage[format!("{time}_ms")].as_f64(), Some(ms), "{time}");
    }
    let total = metrics["total_time"].as_f64().unwrap();
    let parts = ["vm_boot_time", "ready_time", "execution_time"]
        .iter()
        .map(|p| metrics[p].as_f64().unwrap())
        .sum::<f64>();
    assert!(
        parts <= total,
        "phases {parts} ms add up to more than the total {total} ms"
    );

    // The one structured log line of the execution, on stderr.
    let log_line = done
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "execution finished")
        .unwrap_or_else(|| panic!("no execution log line in:\n{}", done.stderr()));
    assert_eq!(log_line["trace_id"], json["trace_id"]);
    assert_eq!(log_line["language"], "python");
    assert!(log_line["total_time"].as_f64().unwrap() > 0.0);
}

#[test]
fn stdin_is_passed_through() {
    let done = run(
        &[
            "run",
            "--lang",
            "python",
            "-c",
            "import sys\nprint(sys.stdin.read().upper(), end='')",
        ],
        b"some input\nline two\n",
    );
    assert_eq!(
        done.stdout(),
        "SOME INPUT\nLINE TWO\n",
        "stderr: {}",
        done.stderr()
    );

    let binary: Vec<u8> = (0..=255u8).collect();
    let done = run(&["run", "--lang", "bash", "-c", "cat"], &binary);
    assert_eq!(done.output.stdout, binary);
}

#[test]
fn nonzero_exit_code_comes_back() {
    let done = run(&["run", "--lang", "bash", "-c", "exit 3"], b"");
    assert_eq!(done.code(), Some(3), "stderr: {}", done.stderr());

    let done = run(&["run", "--json", "--lang", "bash", "-c", "exit 42"], b"");
    assert_eq!(done.code(), Some(42));
    assert_eq!(done.run_stage()["exit_code"], 42);
}

#[test]
fn stderr_is_kept_apart_from_stdout() {
    let code = "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nprint('out again')";
    let done = run(&["run", "--json", "--lang", "python", "-c", code], b"");
    let stage = done.run_stage();
    assert_eq!(stage["stdout"], "to out\nout again\n");
    assert_eq!(stage["stderr"], "to err\n");

    // Streamed (not --json): the program's stderr goes to our stderr only.
    let done = run(
        &["run", "--lang", "bash", "-c", "echo one; echo two >&2"],
        b"",
    );
    assert_eq!(done.stdout(), "one\n");
    assert!(done.stderr().contains("two\n"), "stderr: {}", done.stderr());
    assert!(!done.stdout().contains("two"));
}

#[test]
fn program_killed_by_a_signal_reports_it() {
    let done = run(
        &["run", "--json", "--lang", "bash", "-c", "kill -SEGV $$"],
        b"",
    );
    let stage = done.run_stage();
    assert_eq!(stage["signal"], 11, "{stage}");
    assert_eq!(stage["exit_code"], serde_json::Value::Null);
    assert_eq!(stage["timed_out"], false);
    // Like a shell: 128 + signal number.
    assert_eq!(done.code(), Some(128 + 11));
}

#[test]
fn endless_loop_is_stopped_at_the_wall_limit() {
    let done = run(
        &[
            "run",
            "--json",
            "--timeout",
            "2",
            "--lang",
            "bash",
            "-c",
            "while :; do :; done",
        ],
        b"",
    );
    let stage = done.run_stage();
    assert_eq!(stage["timed_out"], true, "{stage}");
    assert_eq!(stage["signal"], 9);
    let wall = stage["wall_time"].as_f64().unwrap();
    assert!(
        (2000.0..=3000.0).contains(&wall),
        "stopped after {wall} ms, limit 2000 ms"
    );
    assert_eq!(done.code(), Some(124));
}

#[test]
fn background_processes_do_not_outlive_the_timeout() {
    // A child in its own session, holding stdout open: the cgroup kill must
    // still end the stage at the limit.
    let code = "setsid bash -c 'while :; do sleep 1; done' & sleep 600";
    let done = run(
        &[
            "run",
            "--json",
            "--timeout",
            "1",
            "--lang",
            "bash",
            "-c",
            code,
        ],
        b"",
    );
    let stage = done.run_stage();
    assert_eq!(stage["timed_out"], true, "{stage}");
    assert!(stage["wall_time"].as_f64().unwrap() < 2500.0, "{stage}");
}

#[test]
fn output_flood_is_cut_at_the_cap() {
    let code = "while True:\n    print('x' * 999)";
    let done = run(
        &[
            "run",
            "--json",
            "--output-limit",
            "10000",
            "--lang",
            "python",
            "-c",
            code,
        ],
        b"",
    );
    let stage = done.run_stage();
    assert_eq!(stage["output_truncated"], true, "{stage}");
    assert_eq!(stage["stdout"].as_str().unwrap().len(), 10000);
    assert_eq!(stage["timed_out"], false);
}

#[test]
fn program_runs_unprivileged_without_network() {
    let code = "id -u; id -g; sed 1,2d /proc/net/dev | cut -d: -f1 | tr -d ' '; \
                cat /proc/sys/kernel/hostname";
    let done = run(&["run", "--lang", "bash", "-c", code], b"");
    // Only the loopback interface exists: the VM has no network device.
    assert_eq!(
        done.stdout(),
        "1000\n1000\nlo\nrunner\n",
        "stderr: {}",
        done.stderr()
    );

    let done = run(&["run", "--lang", "bash", "-c", "touch /etc/x"], b"");
    assert_ne!(done.code(), Some(0), "the run user could write to /etc");
}

#[test]
fn args_and_env_reach_the_program() {
    let done = run(
        &[
            "run",
            "--lang",
            "bash",
            "-e",
            "GREETING=hi",
            "-c",
            "echo $GREETING \"$1\" $#",
            "--",
            "a b",
            "c",
        ],
        b"",
    );
    assert_eq!(done.stdout(), "hi a b 2\n", "stderr: {}", done.stderr());
}

#[test]
fn unknown_language_is_a_clear_error() {
    let done = run(&["run", "--lang", "cobol", "-c", "DISPLAY 'HI'."], b"");
    assert_eq!(done.code(), Some(2), "a usage error");
    let stderr = done.stderr();
    assert!(stderr.contains("unknown language \"cobol\""), "{stderr}");
    assert!(
        stderr.contains("python"),
        "names the known languages: {stderr}"
    );
    assert!(done.elapsed < Duration::from_secs(5), "nothing should boot");
}

#[test]
fn bad_limits_are_refused_before_booting() {
    for args in [
        &["run", "--lang", "bash", "--timeout", "0", "-c", "true"][..],
        &["run", "--lang", "bash", "--timeout", "-1", "-c", "true"],
        &["run", "--lang", "bash", "--timeout", "100000", "-c", "true"],
        &["run", "--lang", "bash", "--output-limit", "0", "-c", "true"],
        &["run", "--lang", "bash", "--output-bytes", "0", "-c", "true"],
        &["run", "--lang", "bash", "--wall-time-ms", "0", "-c", "true"],
        &[
            "run",
            "--lang",
            "bash",
            "--cpu-time-ms",
            "400000",
            "-c",
            "true",
        ],
        &[
            "run",
            "--lang",
            "bash",
            "--memory-mib",
            "1000000",
            "-c",
            "true",
        ],
    ] {
        let done = run(args, b"");
        assert_eq!(done.code(), Some(2), "{args:?}: {}", done.stderr());
        assert!(run_dirs(done.pid).is_empty());
        assert!(
            done.stderr().contains("invalid request: run."),
            "{}",
            done.stderr()
        );
        assert!(
            done.elapsed < Duration::from_secs(5),
            "{args:?} booted a VM"
        );
    }
}

/// What cannot reach the VM as given is a usage error (exit 2), before
/// anything boots: the same rule as the API's 422.
#[test]
fn requests_that_cannot_reach_the_vm_intact_are_usage_errors() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let not_utf8 = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.py"));
    std::fs::write(&not_utf8, "print(1)").unwrap();
    let missing = dir.path().join("missing.py");
    let args = |args: &[&str]| -> Vec<OsString> { args.iter().map(OsString::from).collect() };
    let with_file = |file: &std::path::Path| {
        let mut args = args(&["run", "--lang", "python"]);
        args.push(file.into());
        args
    };
    for (args, says) in [
        (with_file(&not_utf8), "is not UTF-8"),
        (with_file(&missing), "cannot read"),
        (
            args(&["run", "--lang", "bash", "-e", "NAME", "-c", "true"]),
            "expected NAME=value",
        ),
        (
            args(&["run", "--lang", "bash", "-e", "=x", "-c", "true"]),
            "environment variable name \"\" is empty",
        ),
    ] {
        let started = std::time::Instant::now();
        let output = runner()
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} booted a VM"
        );
    }
}

#[test]
fn interrupt_kills_the_vm_and_removes_its_files() {
    let mut child = spawn(&["run", "--lang", "bash", "-c", "echo running; sleep 600"]);
    let pid = child.id();
    assert_eq!(wait_for_first_line(&mut child), "running\n");
    assert!(!vm_processes(pid).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    assert_clean(pid);
}

#[test]
fn a_killed_runner_takes_its_vm_with_it() {
    let mut child = spawn(&["run", "--lang", "bash", "-c", "echo running; sleep 600"]);
    let pid = child.id();
    assert_eq!(wait_for_first_line(&mut child), "running\n");
    child.kill().unwrap();
    child.wait().unwrap();
    // QEMU dies with its parent (PDEATHSIG) ...
    crate::common::wait_for_no_vms(pid, Duration::from_secs(10));
    // ... and the next runner sweeps the run directory the killed one left.
    assert!(
        !run_dirs(pid).is_empty(),
        "SIGKILL leaves the directory to sweep"
    );
    let status = crate::common::runner().arg("languages").output().unwrap();
    assert!(status.status.success());
    assert_clean(pid);
}

#[test]
fn missing_or_old_runsc_says_what_to_install() {
    // A runsc that is not there, and one too old (a script that says an
    // old version): refused before anything starts, with what to do,
    // naming the other backend.
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("runsc");
    std::fs::write(&old, "#!/bin/sh\necho 'runsc version 0.0~20220101.0'\n").unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (runsc, says) in [
        ("/nonexistent/runsc", "/nonexistent/runsc not found"),
        (
            old.to_str().unwrap(),
            "is 0.0~20220101.0; this runner needs release 20240729",
        ),
    ] {
        let output = crate::common::runner()
            .env("RUNNER_BACKEND", "gvisor")
            .env("RUNNER_RUNSC", runsc)
            .args(["run", "--lang", "bash", "-c", "true"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(125));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(says) && stderr.contains("backend = \"qemu\""),
            "{stderr}"
        );
    }
}

#[test]
fn the_default_backend_is_kvm_then_gvisor_and_doctor_says_why() {
    // Nothing set: `auto`. QEMU where KVM works; else gVisor, where runsc
    // is installed (as setup installs it); else QEMU under TCG.
    let printed = crate::common::runner()
        .env_remove("RUNNER_BACKEND")
        .args(["run", "--print-config"])
        .output()
        .unwrap();
    let config = String::from_utf8_lossy(&printed.stdout);
    assert!(config.contains("backend = \"auto\""), "{config}");
    let doctor = crate::common::runner()
        .env_remove("RUNNER_BACKEND")
        .arg("doctor")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    let line = |key: &str| crate::common::doctor_line(&stdout, key);
    let runsc = std::process::Command::new("runsc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let (backend, accel, why) = match (crate::common::kvm(), runsc) {
        (true, _) => ("qemu", "kvm", ""),
        (false, true) => (
            "gvisor",
            "systrap: backend = \"auto\" and no usable KVM",
            "gVisor runs code at the host's speed",
        ),
        (false, false) => ("qemu", "tcg", "backend = \"auto\" would use gVisor"),
    };
    assert_eq!(line("backend"), backend, "{stdout}");
    assert!(line("acceleration").starts_with(accel), "{stdout}");
    // The reason may quote a failed KVM probe's console, lines of its own.
    assert!(stdout.contains(why), "{stdout}");
}

#[test]
fn missing_qemu_says_what_to_install() {
    // An empty PATH: the images are there, QEMU is not. Or a path to a
    // QEMU that is not there, by variable or by setting.
    let empty = tempfile::tempdir().unwrap();
    let empty = empty.path().to_str().unwrap();
    for (variable, setting, says) in [
        (
            Some(("PATH", empty)),
            None,
            "qemu-system-x86_64 not found: install the Debian package qemu-system-x86",
        ),
        (
            Some(("RUNNER_QEMU", "/nonexistent/qemu")),
            None,
            "/nonexistent/qemu not found",
        ),
        (
            None,
            Some("qemu=/nonexistent/qemu"),
            "/nonexistent/qemu not found",
        ),
    ] {
        let mut command = crate::common::runner();
        // QEMU's message, whichever backend the other tests run on.
        command.envs(variable).env("RUNNER_BACKEND", "qemu");
        if let Some(setting) = setting {
            command.args(["--set", setting]);
        }
        let output = command
            .args(["run", "--lang", "bash", "-c", "true"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(125));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(says) && stderr.contains("RUNNER_QEMU"),
            "{stderr}"
        );
    }
}

/// One configuration for every command: what `/etc/runner/config.toml` (or
/// `--config`) says applies to `runner run` as it does to `runner serve`.
#[test]
fn the_configuration_file_applies_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[limits.run]\nwall_time_ms = 1500\n[limits.compile]\nwall_time_ms = 3000\n\
         [limits.max]\nwall_time_ms = 3000\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let output = runner()
        .args(["run", "--print-config", "--config", file])
        .env("RUNNER_LIMITS_RUN_CPU_TIME_MS", "2500")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let config: toml::Table = text.parse().unwrap();
    let limits = &config["limits"]["run"];
    assert_eq!(
        limits["wall_time_ms"].as_integer(),
        Some(1500),
        "from the file"
    );
    assert_eq!(
        limits["cpu_time_ms"].as_integer(),
        Some(2500),
        "from the variable"
    );
    assert_eq!(config["snapshots"].as_bool(), Some(true));

    // The file's default limit ends a program the built-in one (10 s) lets
    // finish.
    let done = run(
        &[
            "--config",
            file,
            "run",
            "--json",
            "--lang",
            "bash",
            "-c",
            "echo started; sleep 5; echo finished",
        ],
        b"",
    );
    assert_eq!(done.status(), "time_limit_exceeded", "{}", done.stderr());
    let stage = done.run_stage();
    assert_eq!(stage["stdout"], "started\n");
    assert_eq!(stage["timed_out"], true);

    // Its maximum refuses a request for more, before anything boots.
    let done = run(
        &[
            "--config",
            file,
            "run",
            "--lang",
            "bash",
            "--timeout",
            "5",
            "-c",
            "true",
        ],
        b"",
    );
    assert_eq!(done.code(), Some(2), "a usage error");
    assert!(
        done.stderr()
            .contains("run.wall_time_ms = 5000 is above the server's maximum of 3000 ms"),
        "{}",
        done.stderr()
    );
    assert!(done.elapsed < Duration::from_secs(5), "nothing should boot");

    // Languages that are not enabled are refused too.
    let done = crate::common::run_with_env(
        &["run", "--lang", "sh", "-c", "true"],
        b"",
        &[("RUNNER_LANGUAGES", "python")],
    );
    assert_eq!(done.code(), Some(2), "a usage error");
    assert!(
        done.stderr()
            .contains("bash is not enabled here; this runner runs python"),
        "{}",
        done.stderr()
    );
}

#[test]
fn no_disk_space_says_so_before_building() {
    // A state directory on a 16 MiB tmpfs: too small to build any image.
    let dir = tempfile::tempdir().unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(
        mount.success(),
        "mounting a tmpfs needs root, as the tests do"
    );
    let output = crate::common::runner()
        .env("RUNNER_HOME", dir.path())
        .args(["image", "build", "--lang", "bash"])
        .output()
        .unwrap();
    let _ = std::process::Command::new("umount")
        .arg(dir.path())
        .status();
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not enough disk space in"), "{stderr}");
    assert!(stderr.contains("MiB free, building needs"), "{stderr}");
    assert!(stderr.contains("RUNNER_HOME"), "says what to do: {stderr}");
}

#[test]
fn a_reader_that_stops_early_is_not_a_failure() {
    use std::io::Read;
    // `runner run --json ... | head -c 10`: the result is bigger than a pipe.
    let mut child = runner()
        .args(["run", "--json", "--lang", "bash", "-c", "seq 1 30000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut head = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // The pipe is closed here, before the rest is read.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_clean(pid);
}

#[test]
fn listing_commands_end_quietly_when_the_reader_goes_away() {
    // As `runner languages | head -0`: the reader is gone before the
    // command writes.
    for args in [
        &["languages"][..],
        &["snapshot", "list"],
        &["image", "list"],
        &["serve", "--print-config"],
    ] {
        let mut child = runner()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
