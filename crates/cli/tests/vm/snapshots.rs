//! Snapshots: VMs restored instead of booted, real VMs throughout.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{run, run_with_env, runner, state_dir, succeeds};

use serde_json::Value;

/// Runs `runner` with `args` on the state directory `home`; its stdout,
/// once it succeeded.
fn runner_in(home: &std::path::Path, args: &[&str]) -> String {
    succeeds(runner().env("RUNNER_HOME", home).args(args))
}

/// Makes the snapshots of `languages` (cached across runs, like images).
fn create(languages: &[&str]) {
    let mut command = runner();
    command.args(["snapshot", "create"]);
    for language in languages {
        command.args(["--lang", language]);
    }
    succeeds(&mut command);
}

#[test]
fn restored_vms_run_every_language() {
    let cases = [
        ("python", "print(input()[::-1])"),
        (
            "node",
            "const s = require('fs').readFileSync(0, 'utf8'); console.log(s.trim().split('').reverse().join(''))",
        ),
        ("bash", "read s; rev <<< \"$s\""),
        (
            "go",
            "package main\nimport (\"bufio\";\"fmt\";\"os\")\nfunc main() { s, _ := bufio.NewReader(os.Stdin).ReadString('\\n'); r := []rune(s[:len(s)-1]); for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 { r[i], r[j] = r[j], r[i] }; fmt.Println(string(r)) }",
        ),
        (
            "rust",
            "fn main() { let mut s = String::new(); std::io::stdin().read_line(&mut s).unwrap(); println!(\"{}\", s.trim().chars().rev().collect::<String>()); }",
        ),
    ];
    create(&cases.map(|(language, _)| language));
    for (language, code) in cases {
        let finished = run(
            &[
                "run",
                "--json",
                "--lang",
                language,
                "--timeout",
                "120",
                "-c",
                code,
            ],
            b"stressed\n",
        );
        let json = finished.json();
        assert_eq!(json["metrics"]["start"], "snapshot", "{language}: {json:#}");
        assert_eq!(json["status"], "ok", "{language}: {json:#}");
        assert_eq!(json["run"]["stdout"], "desserts\n", "{language}");
    }
}

/// Runs `code` in `language` twice at once, from the same snapshot.
fn twice_at_once(language: &str, code: &str) -> (Value, Value) {
    let args = ["run", "--json", "--lang", language, "-c", code];
    let a = std::thread::scope(|scope| {
        let first = scope.spawn(|| run(&args, b"").json());
        let second = run(&args, b"").json();
        (first.join().unwrap(), second)
    });
    for result in [&a.0, &a.1] {
        assert_eq!(result["metrics"]["start"], "snapshot", "{result:#}");
        assert_eq!(result["status"], "ok", "{result:#}");
    }
    a
}

#[test]
fn restored_vms_are_unique() {
    create(&["python", "bash"]);
    // The kernel's generator (os.urandom), Python's `random` (seeded from it
    // when imported), and the clock.
    let code =
        "import os, random, time\nprint(os.urandom(16).hex(), random.getrandbits(64), time.time())";
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let (a, b) = twice_at_once("python", code);
    // Python's interpreter was started before the snapshot: what it seeds
    // after the hand-over must still differ.
    assert_eq!(a["run"]["prestarted"], true, "{a:#}");
    let fields = |r: &Value| -> Vec<String> {
        r["run"]["stdout"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (fields(&a), fields(&b));
    assert_ne!(a[0], b[0], "os.urandom repeated across restored VMs");
    assert_ne!(a[1], b[1], "random repeated across restored VMs");
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for clock in [&a[2], &b[2]] {
        let clock: f64 = clock.parse().unwrap();
        assert!(
            clock > before - 1.0 && clock < after + 1.0,
            "guest clock {clock} outside the run ({before} to {after}): the snapshot's time leaked"
        );
    }

    // bash seeds $RANDOM when it starts, before the snapshot for the
    // prestarted shell: the shell must reseed it.
    let (a, b) = twice_at_once(
        "bash",
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo \" $RANDOM$RANDOM\"",
    );
    assert_eq!(a["run"]["prestarted"], true, "{a:#}");
    let (a, b) = (fields(&a), fields(&b));
    assert_ne!(a[0], b[0], "/dev/urandom repeated across restored VMs");
    assert_ne!(a[1], b[1], "$RANDOM repeated across restored VMs");
}

#[test]
fn prestarted_runtimes_run_programs_as_a_cold_boot_would() {
    create(&["python", "bash"]);
    let cases = [
        // Arguments, stdin, the main module's globals and path, and an
        // uncaught exception's traceback and exit code.
        (
            "python",
            concat!(
                "import sys\n",
                "print(sys.argv, __name__, __file__, sys.path[0], sorted(globals()))\n",
                "print(sys.stdin.read().upper())\n",
                "def f(): raise ValueError('boom')\n",
                "f()\n",
            ),
        ),
        // A syntax error, reported without a traceback.
        ("python", "print('never'\nx = = 1\n"),
        // sys.exit with a message; output flushed at exit; atexit runs.
        (
            "python",
            "import atexit, sys\natexit.register(print, 'at exit')\nprint('out', end='')\nsys.exit('bye')\n",
        ),
        // $0, arguments, stdin, an error message with its line, exit status.
        (
            "bash",
            "echo \"$0 $# $1 [$2] ${BASH_SOURCE[*]} $LINENO\"\nread line; echo \"got $line\"\nnosuchcommand\nexit 3\n",
        ),
        // A syntax error.
        ("bash", "echo before\nif then fi\n"),
    ];
    let run_case = |language: &str, code: &str, env: &[(&str, &str)]| {
        let args = [
            "run",
            "--json",
            "--lang",
            language,
            "--timeout",
            "120",
            "-c",
            code,
            "--",
            "a",
            "b c",
        ];
        run_with_env(&args, b"some input\n", env).json()
    };
    let (prestarted, cold): (Vec<Value>, Vec<Value>) = std::thread::scope(|scope| {
        let cold: Vec<_> = cases
            .iter()
            .map(|(language, code)| {
                scope.spawn(|| run_case(language, code, &[("RUNNER_SNAPSHOTS", "off")]))
            })
            .collect();
        let prestarted = cases
            .iter()
            .map(|(language, code)| run_case(language, code, &[]))
            .collect();
        (
            prestarted,
            cold.into_iter().map(|h| h.join().unwrap()).collect(),
        )
    });
    for ((case, fast), slow) in cases.iter().zip(&prestarted).zip(&cold) {
        assert_eq!(fast["metrics"]["start"], "snapshot", "{fast:#}");
        assert_eq!(fast["run"]["prestarted"], true, "{fast:#}");
        assert_eq!(slow["metrics"]["start"], "cold", "{slow:#}");
        assert_eq!(slow["run"]["prestarted"], false, "{slow:#}");
        for field in ["stdout", "stderr", "exit_code", "status"] {
            assert_eq!(
                fast["run"][field], slow["run"][field],
                "{field} differs for {case:?}:\nprestarted: {fast:#}\ncold: {slow:#}"
            );
        }
    }
    let first = &prestarted[0]["run"];
    assert!(
        first["stdout"]
            .as_str()
            .unwrap()
            .starts_with("['main.py', 'a', 'b c'] __main__ /home/runner/main.py /home/runner"),
        "{first:#}"
    );
    assert!(
        first["stderr"]
            .as_str()
            .unwrap()
            .contains("ValueError: boom")
    );
    assert_eq!(prestarted[2]["run"]["stdout"], "outat exit\n");
    assert_eq!(
        prestarted[3]["run"]["stdout"],
        "main.sh 2 a [b c] main.sh 1\ngot some input\n"
    );
    assert_eq!(prestarted[3]["run"]["exit_code"], 3);

    // A request with an environment of its own gets a fresh interpreter:
    // variables such as PYTHONPATH act at start-up.
    let with_env = run(
        &[
            "run",
            "--json",
            "--lang",
            "python",
            "-e",
            "GREETING=hi",
            "-c",
            "import os; print(os.environ['GREETING'])",
        ],
        b"",
    )
    .json();
    assert_eq!(with_env["metrics"]["start"], "snapshot");
    assert_eq!(with_env["run"]["prestarted"], false);
    assert_eq!(with_env["run"]["stdout"], "hi\n");
}

#[test]
fn a_snapshot_that_does_not_match_is_not_restored_but_made_again() {
    // A state directory of its own (sharing the images), so that other tests
    // never see the snapshot this one tampers with.
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(state_dir().join("images"), home.path().join("images")).unwrap();
    let runner_here = |args: &[&str]| runner_in(home.path(), args);
    let run_json = |code: &str| -> Value {
        serde_json::from_str(&runner_here(&[
            "run", "--json", "--lang", "bash", "-c", code,
        ]))
        .unwrap()
    };
    runner_here(&["snapshot", "create", "--lang", "bash"]);
    let dir = std::fs::read_dir(home.path().join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("manifest.json").exists())
        .expect("the bash snapshot");
    assert_eq!(run_json("echo hi")["metrics"]["start"], "snapshot");

    // Its record now says it was made from another root filesystem.
    let manifest_path = dir.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let real = manifest["key"]["rootfs"].clone();
    manifest["key"]["rootfs"] = "rootfs-bash-0000000000000000".into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let cold = run_json("echo hi");
    assert_eq!(
        cold["metrics"]["start"], "cold",
        "a mismatched snapshot was used"
    );
    assert_eq!(cold["run"]["stdout"], "hi\n");

    runner_here(&["snapshot", "create", "--lang", "bash"]);
    let manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(
        manifest["key"]["rootfs"], real,
        "made again from the real image"
    );
    let restored = run_json("echo hi");
    assert_eq!(restored["metrics"]["start"], "snapshot");
    assert_eq!(restored["run"]["stdout"], "hi\n");
    // Nothing left of the VMs.
    let runs: Vec<_> = std::fs::read_dir(home.path().join("run"))
        .unwrap()
        .flatten()
        .collect();
    assert!(runs.is_empty(), "{runs:?}");
}

#[test]
fn prune_removes_the_snapshots_no_longer_restored() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(state_dir().join("images"), home.path().join("images")).unwrap();
    let runner_here = |args: &[&str]| runner_in(home.path(), args);
    runner_here(&["snapshot", "create", "--lang", "bash"]);
    let snapshots = home.path().join("snapshots");
    let current = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("manifest.json").exists())
        .expect("the bash snapshot");
    // One made from something else, as an older image leaves behind.
    let stale = snapshots.join("snapshot-bash-0000000000000000");
    std::fs::create_dir(&stale).unwrap();
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(current.join("manifest.json")).unwrap()).unwrap();
    manifest["id"] = "snapshot-bash-0000000000000000".into();
    manifest["key"]["rootfs"] = "rootfs-bash-0000000000000000".into();
    std::fs::write(stale.join("manifest.json"), manifest.to_string()).unwrap();
    assert!(runner_here(&["snapshot", "list"]).contains("snapshot-bash-0000000000000000"));

    let pruned = runner_here(&["snapshot", "prune"]);
    assert!(
        pruned.contains("removed snapshot-bash-0000000000000000"),
        "{pruned}"
    );
    assert!(pruned.contains("1 snapshot(s) removed"), "{pruned}");
    assert!(!stale.exists());
    assert!(current.join("memory").exists(), "the current one stays");
    let restored: Value = serde_json::from_str(&runner_here(&[
        "run", "--json", "--lang", "bash", "-c", "echo hi",
    ]))
    .unwrap();
    assert_eq!(restored["metrics"]["start"], "snapshot");
}

#[test]
fn snapshots_can_be_turned_off_and_do_not_fit_bigger_vms() {
    create(&["bash"]);
    let output = runner()
        .env("RUNNER_SNAPSHOTS", "off")
        .args(["run", "--json", "--lang", "bash", "-c", "echo cold"])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["metrics"]["start"], "cold");
    assert_eq!(json["run"]["stdout"], "cold\n");
    // The bash snapshot's VM has 256 + 64 MiB: a 512 MiB limit needs a
    // bigger VM, booted cold.
    let big = run(
        &[
            "run", "--json", "--lang", "bash", "--memory", "512", "-c", "echo big",
        ],
        b"",
    )
    .json();
    assert_eq!(big["metrics"]["start"], "cold");
    assert_eq!(big["run"]["stdout"], "big\n");
}
