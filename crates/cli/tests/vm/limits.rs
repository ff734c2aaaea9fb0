//! Each limit, crossed for real, gets its status; the host stays clean
//! (the `run` helper checks that after every execution).

use crate::common::run;

#[test]
fn cpu_spin_hits_the_cpu_time_limit() {
    let done = run(
        &[
            "run",
            "--json",
            "--lang",
            "python",
            "--cpu-time",
            "1",
            "--timeout",
            "30",
            "-c",
            "while True: pass",
        ],
        b"",
    );
    let json = done.json();
    assert_eq!(json["status"], "time_limit_exceeded", "{json:#}");
    let stage = &json["run"];
    assert_eq!(stage["cpu_time_exceeded"], true);
    assert_eq!(stage["timed_out"], false);
    let cpu = stage["cpu_time"].as_f64().unwrap();
    assert!(
        (1000.0..2500.0).contains(&cpu),
        "stopped at {cpu} ms of CPU, limit 1000"
    );
    assert!(json["message"].as_str().unwrap().contains("CPU-time limit"));
    assert_eq!(done.code(), Some(124));
}

#[test]
fn sleeping_past_the_wall_limit_is_a_time_limit() {
    let done = run(
        &[
            "run",
            "--json",
            "--lang",
            "bash",
            "--timeout",
            "2",
            "-c",
            "sleep 60",
        ],
        b"",
    );
    let json = done.json();
    assert_eq!(json["status"], "time_limit_exceeded", "{json:#}");
    let stage = &json["run"];
    assert_eq!(stage["timed_out"], true);
    assert_eq!(stage["cpu_time_exceeded"], false);
    // Asleep, it used almost no CPU.
    assert!(stage["cpu_time"].as_f64().unwrap() < 1000.0, "{stage}");
    let wall = stage["wall_time"].as_f64().unwrap();
    assert!((2000.0..3000.0).contains(&wall), "{wall}");
}

#[test]
fn memory_hog_hits_the_memory_limit() {
    let code = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 << 20))";
    // Page faults are slow under TCG, slower still when other VMs share the
    // cores: give the hog time to reach its limit rather than the wall.
    let done = run(
        &[
            "run",
            "--json",
            "--lang",
            "python",
            "--memory",
            "256",
            "--timeout",
            "60",
            "--cpu-time",
            "60",
            "-c",
            code,
        ],
        b"",
    );
    let json = done.json();
    assert_eq!(json["status"], "memory_limit_exceeded", "{json:#}");
    let stage = &json["run"];
    assert_eq!(stage["memory_exceeded"], true);
    assert_eq!(stage["signal_name"], "SIGKILL");
    let peak = stage["memory_peak_bytes"].as_u64().unwrap();
    // gVisor's limit is the agent's poll, which a program allocating fast
    // overshoots by what it takes in one poll's time (see "The
    // environment"); a VM's kernel stops it at the limit.
    let overshoot = if crate::common::gvisor() { 64 << 20 } else { 0 };
    assert!(
        peak > 200 << 20 && peak <= (256 << 20) + overshoot,
        "peak {peak} bytes, limit 256 MiB"
    );
    assert!(json["message"].as_str().unwrap().contains("memory limit"));
}

#[test]
fn memory_within_the_limit_is_reported() {
    let code = "data = bytearray(64 << 20)\nprint(len(data))";
    let done = run(
        &[
            "run", "--json", "--lang", "python", "--memory", "256", "-c", code,
        ],
        b"",
    );
    let json = done.json();
    assert_eq!(json["status"], "ok", "{json:#}");
    let peak = json["run"]["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak > 64 << 20 && peak < 256 << 20, "peak {peak}");
}

#[test]
fn fork_bomb_is_contained_by_the_process_limit() {
    let bomb = "bomb() { bomb | bomb & }; bomb; sleep 30";
    let done = run(
        &[
            "run",
            "--json",
            "--lang",
            "bash",
            "--processes",
            "32",
            "--timeout",
            "5",
            "-c",
            bomb,
        ],
        b"",
    );
    let json = done.json();
    let stage = &json["run"];
    assert_eq!(stage["process_limit_hit"], true, "{json:#}");
    // The bomb never gets past the limit; it runs until the wall limit.
    assert_eq!(json["status"], "time_limit_exceeded", "{json:#}");
}

#[test]
fn output_flood_hits_the_output_limit() {
    let done = run(
        &[
            "run",
            "--json",
            "--lang",
            "bash",
            "--output-limit",
            "65536",
            "-c",
            "yes flood",
        ],
        b"",
    );
    let json = done.json();
    assert_eq!(json["status"], "output_limit_exceeded", "{json:#}");
    assert_eq!(json["run"]["output_truncated"], true);
    assert_eq!(json["run"]["stdout"].as_str().unwrap().len(), 65536);
}

#[test]
fn file_size_flood_hits_the_file_size_limit() {
    for (lang, code) in [
        // `yes` dies of SIGXFSZ; the shell carries on and exits 0.
        ("bash", "yes flood > big.txt"),
        // Python ignores SIGXFSZ and raises OSError (EFBIG) instead.
        ("python", "open('big', 'wb').write(b'x' * (4 << 20))"),
        // Many files, each under the limit, together over it (ENOSPC).
        (
            "bash",
            "for i in $(seq 40); do head -c 100000 /dev/zero > f$i || true; done",
        ),
        // Elsewhere than the working directory.
        ("bash", "yes flood > /tmp/big.txt"),
    ] {
        let done = run(
            &[
                "run",
                "--json",
                "--lang",
                lang,
                "--file-size-limit",
                "1048576",
                "-c",
                code,
            ],
            b"",
        );
        let json = done.json();
        assert_eq!(json["status"], "output_limit_exceeded", "{code}: {json:#}");
        assert_eq!(json["run"]["file_size_exceeded"], true);
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .contains("file-size limit")
        );
    }
    // Under the limit, nothing is flagged.
    let done = run(
        &[
            "run",
            "--json",
            "--lang",
            "bash",
            "--file-size-limit",
            "1048576",
            "-c",
            "head -c 500000 /dev/zero > f",
        ],
        b"",
    );
    assert_eq!(done.status(), "ok", "{:#}", done.json());
}

#[test]
fn limits_out_of_range_are_refused_before_booting() {
    for (args, says) in [
        (
            &["--memory", "64"][..],
            "run.memory_mib = 64 is below python's minimum of 256 MiB",
        ),
        (
            &["--memory", "100000"],
            "run.memory_mib = 100000 is above the server's maximum",
        ),
        (&["--processes", "0"], "run.processes must be above 0"),
        (&["--cpu-time", "0"], "run.cpu_time_ms must be above 0"),
        (
            &["--file-size-limit", "0"],
            "run.file_size_bytes must be above 0",
        ),
        (&["--compile-timeout", "1000000"], "compile.wall_time_ms"),
    ] {
        let mut argv = vec!["run", "--lang"];
        argv.push(if args[0] == "--compile-timeout" {
            "go"
        } else {
            "python"
        });
        argv.extend(args);
        argv.extend(["-c", "print(1)"]);
        let done = run(&argv, b"");
        assert_eq!(done.code(), Some(2), "{argv:?}: a usage error");
        assert!(done.stderr().contains(says), "{argv:?}: {}", done.stderr());
        assert!(
            done.elapsed < std::time::Duration::from_secs(5),
            "{argv:?} booted a VM"
        );
    }
}
