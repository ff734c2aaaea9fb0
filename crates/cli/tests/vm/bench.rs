//! `runner bench`, for real: small runs that boot VMs, run the host
//! baseline in its chroot and write the report. The tests check what was
//! measured and written, never how fast.

use std::fs;
use std::path::Path;

use crate::common::{Finished, run};
use serde_json::Value;

fn results(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join("results.json")).unwrap()).unwrap()
}

/// Leftovers of the host baseline: mounts (its namespace must be gone)
/// and its temporary directories.
fn host_baseline_leftovers() -> Vec<String> {
    let mut left: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.contains("runner-bench-host."))
        .map(str::to_string)
        .collect();
    let tmp = std::env::temp_dir();
    left.extend(
        fs::read_dir(tmp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("runner-bench-host.")),
    );
    left
}

/// Runs bash's bench into `out` with one measured run per case, no warm-up
/// run and one request per throughput client, plus `extra`; it must
/// succeed.
fn bash_once(out: &Path, extra: &[&str]) -> Finished {
    let mut args = vec![
        "bench",
        "--lang",
        "bash",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--requests-per-client",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    // What it measures of a VM (its boot, its kernel) is QEMU's, whatever
    // backend the other tests use.
    let finished = crate::common::run_with_env(&args, b"", &[("RUNNER_BACKEND", "qemu")]);
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr());
    finished
}

#[test]
fn the_suite_for_one_language_writes_tables_samples_and_figures() {
    let out = tempfile::tempdir().unwrap();
    let finished = bash_once(out.path(), &["--price-per-hour", "4"]);

    let json = results(out.path());
    assert_eq!(json["settings"]["price_per_hour"], 4.0);
    let cases = json["cases"].as_array().unwrap();
    let ids: Vec<&str> = cases.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "start/cold",
            "start/snapshot",
            "start/pool_unwarmed",
            "start/pool",
            "bash/hello",
            "bash/fib20",
            "throughput/1",
            "throughput/2",
            "throughput/4",
        ]
    );
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let vm = case["vm_samples"].as_array().unwrap();
        let expected = case["concurrency"].as_u64().unwrap() as usize;
        assert_eq!(vm.len(), expected, "{id}: {case:#}");
        for sample in vm {
            assert_eq!(sample["ok"], true, "{id}: {sample:#}");
            assert!(sample["total_ms"].as_f64().unwrap() > 0.0, "{id}");
            assert!(sample["execution_ms"].as_f64().unwrap() > 0.0, "{id}");
        }
        if case["group"] == "vm_start" {
            // Each start case started its VMs the way it says.
            let start = case["start"].as_str().unwrap();
            let start = start.strip_suffix("_unwarmed").unwrap_or(start);
            assert_eq!(vm[0]["start"], start, "{id}");
        }
        // The same program ran on the host, with the same output.
        let host = case["host_samples"].as_array().unwrap();
        assert_eq!(host.len(), expected, "{id}: {case:#}");
        assert!(host.iter().all(|s| s["ok"] == true), "{id}: {case:#}");
        assert!(case["host"]["p50"].as_f64().unwrap() > 0.0, "{id}");
        assert!(case["ratio"].as_f64().unwrap() > 0.0, "{id}");
        // Priced from its own time or rate.
        let cost = &case["cost"];
        let per_hour = cost["executions_per_hour"].as_f64().unwrap();
        let expected = match &case["throughput"] {
            Value::Null => 3_600_000.0 / case["vm"]["p50"].as_f64().unwrap(),
            t => t["vm_per_second"].as_f64().unwrap() * 3600.0,
        };
        assert!((per_hour - expected).abs() < 1e-6, "{id}: {cost:#}");
        let per_execution = cost["per_execution"].as_f64().unwrap();
        assert!(
            (per_execution * per_hour - 4.0).abs() < 1e-9,
            "{id}: {cost:#}"
        );
    }
    let throughput = &cases[8]["throughput"];
    assert_eq!(throughput["requests"], 4);
    assert!(throughput["vm_per_second"].as_f64().unwrap() > 0.0);
    assert!(throughput["host_per_second"].as_f64().unwrap() > 0.0);

    // The four pooled VMs were found and measured: without warm-up, then
    // (under TCG) warmed up.
    let pools = json["pool_memory"].as_array().unwrap();
    let warmed: Vec<bool> = pools.iter().map(|p| p["warm_up"] == true).collect();
    let tcg = json["machine"]["accel"] == "tcg";
    assert_eq!(warmed, if tcg { vec![false, true] } else { vec![false] });
    for memory in pools {
        assert_eq!(memory["vms"], 4, "{memory:#}");
        assert!(memory["rss_mib"]["p50"].as_f64().unwrap() > 0.0);
    }

    let machine = &json["machine"];
    assert!(["kvm", "tcg"].contains(&machine["accel"].as_str().unwrap()));
    assert!(
        machine["languages"]["bash"]
            .as_str()
            .unwrap()
            .starts_with('5')
    );
    // The default kernel is Runner Codes' own, built from Debian's source.
    assert!(
        machine["guest_kernel"]
            .as_str()
            .unwrap()
            .contains("linux-source-6.12"),
        "{machine:#}"
    );

    let report = fs::read_to_string(out.path().join("report.md")).unwrap();
    for expected in [
        "| bash | Hello World |",
        "| bash | Fibonacci(20) |",
        "| cold |",
        "| pool |",
        "## Cost per execution (at 4.00 per hour)",
        "| bash Fibonacci(20) | snapshot |",
        "](timeline.svg)",
    ] {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }
    // The report also goes to stdout.
    assert!(finished.stdout().contains("| bash | Hello World |"));
    for figure in ["timeline.svg", "boot-comparison.svg"] {
        let svg = fs::read_to_string(out.path().join(figure)).unwrap();
        assert!(svg.starts_with("<svg"), "{figure}");
        assert!(svg.contains("<rect"), "{figure} has no bars");
    }
    assert_eq!(host_baseline_leftovers(), Vec::<String>::new());
}

/// Runs bash's bench once per case with `extra` arguments asking for
/// variants side by side, and checks that their cases are `ids`, each
/// started the way it says, and that the report has each of `in_report`.
fn side_by_side(extra: &[&str], ids: &[&str], in_report: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["--no-host"];
    args.extend_from_slice(extra);
    bash_once(out.path(), &args);
    let json = results(out.path());
    let variants: Vec<&Value> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["group"] == "kernel")
        .collect();
    let found: Vec<&str> = variants.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(found, ids);
    for case in variants {
        let samples = case["vm_samples"].as_array().unwrap();
        assert_eq!(samples.len(), 1, "{case:#}");
        assert_eq!(samples[0]["ok"], true, "{case:#}");
        // Each started the way it says, on its own variant's images.
        assert_eq!(samples[0]["start"], case["start"], "{case:#}");
    }
    let report = fs::read_to_string(out.path().join("report.md")).unwrap();
    for expected in in_report {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }
}

#[test]
fn kernels_side_by_side_boot_and_restore_each() {
    side_by_side(
        &["--kernels", "runner,debian"],
        &[
            "kernel/runner-q35/cold",
            "kernel/runner-q35/snapshot",
            "kernel/debian-q35/cold",
            "kernel/debian-q35/snapshot",
        ],
        &[
            "## Kernels, machine types and settings",
            "| debian-q35 | cold |",
        ],
    );
}

#[test]
fn a_setting_side_by_side_boots_and_restores_with_each_value() {
    side_by_side(
        &["--vary", "huge_pages=transparent,off"],
        &[
            "kernel/huge_pages=transparent/cold",
            "kernel/huge_pages=transparent/snapshot",
            "kernel/huge_pages=off/cold",
            "kernel/huge_pages=off/snapshot",
        ],
        &["| huge_pages=off | snapshot |"],
    );
}

#[test]
fn backends_side_by_side_each_run_the_suite() {
    let out = tempfile::tempdir().unwrap();
    bash_once(out.path(), &["--no-host", "--backends", "qemu,gvisor"]);
    for backend in ["qemu", "gvisor"] {
        let json = results(&out.path().join(backend));
        let said = json["machine"]["backend"].as_str().unwrap();
        assert!(said.starts_with(backend), "{backend}: {said}");
        for case in json["cases"].as_array().unwrap() {
            for sample in case["vm_samples"].as_array().unwrap() {
                assert_eq!(sample["ok"], true, "{backend}: {case:#}");
            }
        }
    }
    let report = fs::read_to_string(out.path().join("report.md")).unwrap();
    for expected in [
        "## Targets",
        "| figure | target | qemu | gvisor |",
        "| bash | Hello World |",
    ] {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }
}

#[test]
fn one_program_of_ones_own_with_arguments() {
    let out = tempfile::tempdir().unwrap();
    let finished = run(
        &[
            "bench",
            "--lang",
            "python",
            "--code",
            "import sys\nprint(sum(range(int(sys.argv[1]))))",
            "--runs",
            "2",
            "--no-host",
            "--out",
            out.path().to_str().unwrap(),
            "--",
            "1000",
        ],
        b"",
    );
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr());
    let json = results(out.path());
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1);
    let case = &cases[0];
    assert_eq!(case["id"], "python/custom");
    assert_eq!(case["args"], serde_json::json!(["1000"]));
    let samples = case["vm_samples"].as_array().unwrap();
    // One warm-up (the default) and two measured runs.
    assert_eq!(samples.len(), 3);
    assert!(samples.iter().all(|s| s["ok"] == true), "{case:#}");
    assert_eq!(samples.iter().filter(|s| s["warmup"] == true).count(), 1);
    assert_eq!(case["vm"]["n"], 2);
    assert!(case["host_samples"].as_array().unwrap().is_empty());
    assert!(case["host_note"].as_str().unwrap().contains("--no-host"));
}

#[test]
fn bench_arguments_that_cannot_work_are_refused() {
    let finished = run(&["bench", "--code", "print(1)"], b"");
    assert_eq!(finished.code(), Some(2));
    assert!(
        finished.stderr().contains("one --lang"),
        "{}",
        finished.stderr()
    );
    let finished = run(&["bench", "--lang", "python", "--runs", "0"], b"");
    assert_eq!(finished.code(), Some(2));
    assert!(
        finished.stderr().contains("--runs"),
        "{}",
        finished.stderr()
    );
    let finished = run(&["bench", "--lang", "bash", "--price-per-hour", "0"], b"");
    assert_eq!(finished.code(), Some(2));
    assert!(
        finished.stderr().contains("--price-per-hour"),
        "{}",
        finished.stderr()
    );
    let finished = run(&["bench", "--lang", "bash", "--kernels", "linux"], b"");
    assert_eq!(finished.code(), Some(2));
    assert!(
        finished.stderr().contains("runner, debian"),
        "{}",
        finished.stderr()
    );
    for (vary, says) in [
        ("huge_pages", "huge_pages=transparent,off"),
        ("huge_pages=sometimes", "unknown variant `sometimes`"),
        ("hugepages=off", "no such setting"),
    ] {
        let finished = run(&["bench", "--lang", "bash", "--vary", vary], b"");
        assert_eq!(finished.code(), Some(2), "{vary}");
        assert!(finished.stderr().contains(says), "{}", finished.stderr());
    }
    for (backends, says) in [("kvm", "qemu, gvisor"), ("auto", "not auto")] {
        let finished = run(&["bench", "--lang", "bash", "--backends", backends], b"");
        assert_eq!(finished.code(), Some(2), "{backends}");
        assert!(finished.stderr().contains(says), "{}", finished.stderr());
    }
    let finished = run(&["bench", "--lang", "cobol"], b"");
    assert_eq!(finished.code(), Some(2));
    assert!(finished.stderr().contains("cobol"), "{}", finished.stderr());
}
