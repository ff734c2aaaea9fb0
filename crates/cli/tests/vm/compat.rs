//! Programs see a normal Linux.
//!
//! Ordinary programs from judge and benchmark collections rely on idioms
//! that work on any Debian machine: reading `/dev/stdin`, writing
//! `/dev/stderr`, a server and a client on localhost, ptys, subprocesses,
//! threads, UTF-8, common tools. One program per language under `compat/`
//! runs them, one line per idiom (`idiom: result`), and `compat/<file>.out`
//! is what the same program prints on Debian 13 (checked by running it in a
//! chroot of the same Debian 13 images on a Debian host, with its own
//! pipes). Each program runs from a snapshot (in the prestarted runtime
//! where the language has one), booted cold, and from a warm pool through
//! the API, and must print that in all three.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::server::Server;
use crate::common::{run, run_with_env};

struct Program {
    language: &'static str,
    file: &'static str,
    source: &'static str,
    expected: &'static str,
}

macro_rules! program {
    ($language:literal, $file:literal) => {
        Program {
            language: $language,
            file: $file,
            source: include_str!(concat!("../../../../programs/compat/", $file)),
            expected: include_str!(concat!("../../../../programs/compat/", $file, ".out")),
        }
    };
}

const PROGRAMS: [Program; 5] = [
    program!("bash", "main.sh"),
    program!("python", "main.py"),
    program!("node", "index.js"),
    program!("go", "main.go"),
    program!("rust", "main.rs"),
];

/// Unicode, a space, and an empty argument.
const ARGS: [&str; 4] = ["héllo", "☃", "a b", ""];

/// What every program writes to stderr, through `/dev/stderr`.
const STDERR: &str = "written to /dev/stderr\n";

/// Generous: under emulation Node takes ~7 s to read and add up the input.
const LIMIT_MS: &str = "120000";

/// Several MiB of stdin: the numbers 0 to 499999, one per line (3.2 MiB).
fn input() -> String {
    (0..500_000).map(|i| format!("{i}\n")).collect()
}

/// The idioms whose line differs from the expected one, each with both.
fn mismatches(program: &Program, mode: &str, result: &Value) -> Vec<String> {
    let run = &result["run"];
    let stdout = run["stdout"].as_str().unwrap_or_default();
    let mut wrong = Vec::new();
    if result["status"] != "ok" {
        wrong.push(format!(
            "{} ({mode}): status {} ({}); stderr: {}",
            program.language, result["status"], result["message"], run["stderr"]
        ));
    }
    let expected: Vec<&str> = program.expected.lines().collect();
    let actual: Vec<&str> = stdout.lines().collect();
    for (i, want) in expected.iter().enumerate() {
        let got = actual.get(i).copied().unwrap_or("(no such line)");
        if got != *want {
            let idiom = want.split_once(": ").map_or(*want, |(name, _)| name);
            wrong.push(format!("{idiom} ({mode}): expected {want:?}, got {got:?}"));
        }
    }
    if actual.len() > expected.len() {
        wrong.push(format!(
            "{} ({mode}): extra lines {:?}",
            program.language,
            &actual[expected.len()..]
        ));
    }
    if run["stderr"] != STDERR {
        wrong.push(format!(
            "{} ({mode}): stderr {}",
            program.language, run["stderr"]
        ));
    }
    wrong
}

/// Runs every program with `runner run`, checks how its VM started, and
/// returns the idioms that did not print what Debian prints.
fn run_all(mode: &str, env: &[(&str, &str)], start: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let input = input();
    let mut wrong = Vec::new();
    for program in &PROGRAMS {
        let path = dir.path().join(program.file);
        std::fs::write(&path, program.source).unwrap();
        let mut args = vec![
            "run",
            "--json",
            "--lang",
            program.language,
            "--wall-time-ms",
            LIMIT_MS,
            "--cpu-time-ms",
            LIMIT_MS,
            path.to_str().unwrap(),
            "--",
        ];
        args.extend(ARGS);
        let done = run_with_env(&args, input.as_bytes(), env);
        let result = done.json();
        assert_eq!(result["metrics"]["start"], start, "{}", program.language);
        // A snapshot's prestarted runtime runs the program where there is
        // one; a cold boot starts it afresh.
        assert_eq!(
            result["run"]["prestarted"],
            prestarted(program.language) && start != "cold",
            "{}",
            program.language
        );
        wrong.extend(mismatches(program, mode, &result));
    }
    wrong
}

/// Prestarted in the languages that have a prestarted runtime.
fn prestarted(language: &str) -> bool {
    matches!(language, "python" | "bash")
}

#[test]
fn idioms_work_in_a_vm_restored_from_a_snapshot() {
    let wrong = run_all("snapshot", &[], "snapshot");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn idioms_work_in_a_vm_booted_cold() {
    let wrong = run_all("cold", &[("RUNNER_SNAPSHOTS", "off")], "cold");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn idioms_work_in_a_pooled_vm_through_the_api() {
    let languages: Vec<&str> = PROGRAMS.iter().map(|p| p.language).collect();
    let served = languages.join(",");
    let server = Server::start(&[
        "--languages",
        &served,
        "--queue-timeout-ms",
        "900000",
        "--set",
        "pool.min_size=1",
        "--set",
        "pool.max_size=1",
    ]);
    server.wait_for_pools(&languages, 1);
    let input = input();
    let mut wrong = Vec::new();
    for program in &PROGRAMS {
        let limit: u64 = LIMIT_MS.parse().unwrap();
        let result = server.execute(&json!({
            "language": program.language,
            "files": [{ "name": program.file, "content": program.source }],
            "stdin": input,
            "args": ARGS,
            "limits": { "run": { "wall_time_ms": limit, "cpu_time_ms": limit } },
        }));
        assert_eq!(result["metrics"]["start"], "pool", "{}", program.language);
        assert_eq!(
            result["run"]["prestarted"],
            prestarted(program.language),
            "{}",
            program.language
        );
        wrong.extend(mismatches(program, "pool", &result));
    }
    server.stop(Duration::from_secs(30));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `/dev` is what a container runtime gives a process, and no other device
/// node is anywhere the run user can reach; `lo` is the only interface.
#[test]
fn the_guest_has_a_containers_devices_and_only_loopback() {
    let script = r#"
ls -A /dev
echo ---
for n in null zero full random urandom tty pts/ptmx; do stat -c '%n %F %a %t:%T' /dev/$n; done
for n in ptmx fd stdin stdout stderr; do echo "/dev/$n -> $(readlink /dev/$n)"; done
stat -c '%n %a' /dev/shm /dev/pts
echo ---
find / \( -path /proc -o -path /sys \) -prune -o \( -type c -o -type b \) -print 2>/dev/null | sort
echo ---
sed 1,2d /proc/net/dev | cut -d: -f1 | tr -d ' '
"#;
    let done = run(&["run", "--lang", "bash", "-c", script], b"");
    assert_eq!(done.code(), Some(0), "{}", done.stderr());
    // gVisor's devpts has mode 555 at its root (see "The environment").
    let pts_mode = if crate::common::gvisor() { 555 } else { 755 };
    let expected = format!(
        "\
fd
full
null
ptmx
pts
random
shm
stderr
stdin
stdout
tty
urandom
zero
---
/dev/null character special file 666 1:3
/dev/zero character special file 666 1:5
/dev/full character special file 666 1:7
/dev/random character special file 666 1:8
/dev/urandom character special file 666 1:9
/dev/tty character special file 666 5:0
/dev/pts/ptmx character special file 666 5:2
/dev/ptmx -> pts/ptmx
/dev/fd -> /proc/self/fd
/dev/stdin -> /proc/self/fd/0
/dev/stdout -> /proc/self/fd/1
/dev/stderr -> /proc/self/fd/2
/dev/shm 1777
/dev/pts {pts_mode}
---
/dev/full
/dev/null
/dev/pts/ptmx
/dev/random
/dev/tty
/dev/urandom
/dev/zero
---
lo
"
    );
    assert_eq!(done.stdout(), expected);
}
