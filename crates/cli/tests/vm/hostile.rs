//! Hostile programs: each one, run for real in a VM, ends in exactly one
//! expected status within its wall limit plus [`GRACE`], what it tried did
//! not get past the wall it aimed at, and the host is clean afterwards
//! (the `run` helper checks that no VM process and no run directory of the
//! runner is left).

use std::time::Duration;

use crate::common::run;
use crate::common::sessions::stdout;
use serde_json::{Value, json};

/// What a run may take beyond its wall limit: starting the VM (a cold
/// boot under TCG on a busy machine), stopping it, and the result.
const GRACE: Duration = Duration::from_secs(30);

/// Runs `code` in `lang` with a wall limit of `wall_s` and `args` as more
/// flags, and checks it ended `status` within the wall limit and
/// [`GRACE`]. Returns the result.
fn hostile(lang: &str, code: &str, wall_s: u64, args: &[&str], status: &str) -> Value {
    let wall = wall_s.to_string();
    let mut all = vec!["run", "--json", "--lang", lang, "--timeout", &wall];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-c", code]);
    let done = run(&all, b"");
    let json = done.json();
    assert_eq!(json["status"], status, "{json:#}\n{}", done.stderr());
    let within = Duration::from_secs(wall_s) + GRACE;
    assert!(
        done.elapsed <= within,
        "took {:?}, more than the wall limit and the grace ({within:?})",
        done.elapsed
    );
    json
}

// Processes.

#[test]
fn fork_bomb() {
    let json = hostile(
        "bash",
        "bomb() { bomb | bomb & }; bomb; sleep 30",
        5,
        &["--processes", "32"],
        "time_limit_exceeded",
    );
    assert_eq!(json["run"]["process_limit_hit"], true);
}

#[test]
fn thread_bomb() {
    let code = r#"
import threading, time
n = 0
try:
    while True:
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        n += 1
except RuntimeError:
    print("capped", n <= 64)
"#;
    let json = hostile("python", code, 20, &["--processes", "64"], "ok");
    assert_eq!(stdout(&json), "capped True\n");
    // gVisor counts no refused thread; the limit's polls see it only if it
    // held long enough (see "The environment").
    if !crate::common::gvisor() {
        assert_eq!(json["run"]["process_limit_hit"], true);
    }
}

#[test]
fn zombie_factory() {
    // Children that exit and are never waited for stay as zombies, and
    // zombies count against the process limit.
    let code = r#"
import os
made = 0
try:
    for _ in range(10_000):
        if os.fork() == 0:
            os._exit(0)
        made += 1
except OSError:
    print("capped", made < 64)
"#;
    let json = hostile("python", code, 20, &["--processes", "64"], "ok");
    assert_eq!(stdout(&json), "capped True\n");
}

#[test]
fn daemon_that_double_forks_and_outlives_the_main_process() {
    // The main process exits at once; its grandchild, in a session of its
    // own, would sleep on. The stage ends with the main process and takes
    // the grandchild with it, without waiting for the wall limit.
    let json = hostile(
        "bash",
        "(setsid sleep 1000 > /dev/null 2>&1 &) ; echo started",
        60,
        &[],
        "ok",
    );
    assert_eq!(stdout(&json), "started\n");
    assert!(json["run"]["wall_time_ms"].as_f64().unwrap() < 30_000.0);
}

#[test]
fn fd_exhaustion() {
    let code = r#"
files = []
try:
    while True:
        files.append(open("/dev/null"))
except OSError as e:
    print("exhausted", e.errno == 24)
"#;
    let json = hostile("python", code, 20, &[], "ok");
    assert_eq!(stdout(&json), "exhausted True\n");
}

// Memory.

#[test]
fn memory_bomb_at_once() {
    // 290 MiB touched at once: the VM has room for it (256 + 64 MiB), the
    // stage's cgroup does not.
    let json = hostile(
        "python",
        "b = b'x' * (290 << 20)\nprint(len(b))",
        30,
        &["--memory-mib", "256"],
        "memory_limit_exceeded",
    );
    assert_eq!(json["run"]["memory_exceeded"], true);
}

#[test]
fn memory_bomb_bigger_than_the_vm() {
    // 4 GiB at once: the guest kernel refuses the allocation outright, and
    // the program gets the error (Python's MemoryError), not the VM.
    // gVisor grants it, and the stage is killed as it fills it (see "The
    // environment").
    if crate::common::gvisor() {
        let json = hostile(
            "python",
            "b = b'x' * (4 << 30)\nprint(len(b))",
            30,
            &["--memory-mib", "256"],
            "memory_limit_exceeded",
        );
        assert_eq!(json["run"]["stdout"], "");
        return;
    }
    let json = hostile(
        "python",
        "b = b'x' * (4 << 30)\nprint(len(b))",
        30,
        &["--memory-mib", "256"],
        "runtime_error",
    );
    assert!(
        json["run"]["stderr"]
            .as_str()
            .unwrap()
            .contains("MemoryError")
    );
}

#[test]
fn memory_bomb_gradual() {
    let json = hostile(
        "python",
        "held = []\nwhile True:\n    held.append(b'x' * (1 << 20))",
        30,
        &["--memory-mib", "256"],
        "memory_limit_exceeded",
    );
    assert_eq!(json["run"]["memory_exceeded"], true);
}

#[test]
fn writing_its_own_cgroup_does_not_lift_its_limits() {
    // Its groups: cgroup v2's one (`0::/path`) in a VM, a group per
    // controller (`N:memory:/path`) in gVisor's cgroup v1.
    let code = r#"
import pathlib
root = pathlib.Path("/sys/fs/cgroup")
targets = []
for line in open("/proc/self/cgroup").read().splitlines():
    _, controller, path = line.split(":", 2)
    base = root / controller if controller else root
    for name in ["memory.max", "memory.limit_in_bytes", "pids.max", "cpu.max", "cgroup.procs"]:
        targets += [base / path.lstrip("/") / name, base / name]
for target in targets:
    if target.exists():
        try:
            target.write_text("max\n")
            print("lifted", target)
        except OSError:
            pass
print("denied", any(t.exists() for t in targets), flush=True)
held = b"x" * (290 << 20)
"#;
    let json = hostile(
        "python",
        code,
        30,
        &["--memory-mib", "256"],
        "memory_limit_exceeded",
    );
    assert_eq!(stdout(&json), "denied True\n");
}

// Disk and temporary file systems.

#[test]
fn dev_shm_fill() {
    let json = hostile(
        "bash",
        "head -c 512M /dev/zero > /dev/shm/fill",
        30,
        &["--file-size-limit", "8388608"],
        "output_limit_exceeded",
    );
    assert_eq!(json["run"]["file_size_exceeded"], true);
}

#[test]
fn tmp_fill_with_many_files() {
    let json = hostile(
        "bash",
        "for i in $(seq 100); do head -c 1M /dev/zero > /tmp/f$i || true; done",
        30,
        &["--file-size-limit", "8388608"],
        "output_limit_exceeded",
    );
    assert_eq!(json["run"]["file_size_exceeded"], true);
}

#[test]
fn disk_fill_in_the_working_directory() {
    let json = hostile(
        "bash",
        "dd if=/dev/zero of=big bs=1M count=4096 2>/dev/null",
        30,
        &["--file-size-limit", "8388608"],
        "output_limit_exceeded",
    );
    assert_eq!(json["run"]["file_size_exceeded"], true);
}

#[test]
fn writing_the_read_only_root_or_remounting_it() {
    let code = "touch /usr/bin/x /etc/x /x 2>/dev/null; mount -o remount,rw / 2>/dev/null; \
                ls /usr/bin/x /etc/x /x 2>/dev/null; echo denied";
    let json = hostile("bash", code, 20, &[], "ok");
    assert_eq!(stdout(&json), "denied\n");
}

// Output.

#[test]
fn stdout_flood() {
    let json = hostile(
        "bash",
        "yes flood",
        30,
        &["--output-limit", "65536"],
        "output_limit_exceeded",
    );
    assert_eq!(stdout(&json).len(), 65536);
}

#[test]
fn stderr_flood() {
    let json = hostile(
        "bash",
        "yes flood >&2",
        30,
        &["--output-limit", "65536"],
        "output_limit_exceeded",
    );
    assert_eq!(json["run"]["stderr"].as_str().unwrap().len(), 65536);
}

#[test]
fn one_line_of_100_mib_without_a_newline() {
    let json = hostile(
        "bash",
        "head -c 100M /dev/zero | tr '\\0' x",
        60,
        &[],
        "output_limit_exceeded",
    );
    let line = stdout(&json);
    assert!(line.len() <= 1 << 20 && line.bytes().all(|b| b == b'x'));
}

#[test]
fn binary_output_comes_back_byte_for_byte() {
    // Without --json, stdout is the program's own bytes.
    let done = run(
        &[
            "run",
            "--lang",
            "bash",
            "-c",
            "printf '\\x00\\xff\\xfe\\x80\\r\\n\\x1b[2J\\x07end'",
        ],
        b"",
    );
    assert_eq!(done.code(), Some(0), "{}", done.stderr());
    assert_eq!(done.output.stdout, b"\x00\xff\xfe\x80\r\n\x1b[2J\x07end");
}

// Time and signals.

#[test]
fn sleep_forever() {
    let json = hostile("bash", "sleep infinity", 3, &[], "time_limit_exceeded");
    assert_eq!(json["run"]["timed_out"], true);
}

#[test]
fn sigstop_itself() {
    let json = hostile(
        "bash",
        "echo before; kill -STOP $$; echo after",
        3,
        &[],
        "time_limit_exceeded",
    );
    assert_eq!(stdout(&json), "before\n");
}

#[test]
fn sigstop_its_process_group() {
    let json = hostile(
        "bash",
        "sleep 100 & echo before; kill -STOP 0; echo after",
        3,
        &[],
        "time_limit_exceeded",
    );
    assert_eq!(stdout(&json), "before\n");
}

#[test]
fn ignoring_sigterm_and_sigint() {
    let json = hostile(
        "bash",
        "trap '' TERM INT HUP; while :; do sleep 1; done",
        3,
        &[],
        "time_limit_exceeded",
    );
    assert_eq!(json["run"]["timed_out"], true);
}

#[test]
fn kill_9_of_everything_it_can_reach() {
    // kill -9 -1 reaches every process the run user may signal: its own
    // (the shell itself is spared by the kernel), never the agent's.
    let json = hostile(
        "bash",
        "sleep 100 & kill -9 -1; kill -9 1 2>/dev/null || echo 'agent out of reach'; echo alive",
        20,
        &[],
        "ok",
    );
    assert_eq!(stdout(&json), "agent out of reach\nalive\n");
}

#[test]
fn ptrace_of_the_agent() {
    let code = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
for pid in [1] + [int(p) for p in os.listdir("/proc") if p.isdigit() and os.stat(f"/proc/{p}").st_uid == 0]:
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
        print("attached", pid)
print("denied")
"#;
    let json = hostile("python", code, 20, &[], "ok");
    assert_eq!(stdout(&json), "denied\n");
}

// Arguments and environment.

#[test]
fn huge_argv_and_environment() {
    let code = "big=$(head -c 3M /dev/zero | tr '\\0' a); \
                /bin/true \"$big\" 2>/dev/null || echo 'argv refused'; \
                X=\"$big\" /bin/true 2>/dev/null || echo 'env refused'";
    let json = hostile("bash", code, 30, &[], "ok");
    assert_eq!(stdout(&json), "argv refused\nenv refused\n");
}

// What it can see.

#[test]
fn reading_the_hosts_files() {
    // The guest has its own root file system: nothing of the host is
    // there, and the guest's own secrets are root's.
    let code = "for f in /etc/shadow /proc/1/environ /proc/1/root/etc/hostname /root; do \
                cat \"$f\" > /dev/null 2>&1 && echo \"read $f\"; done; \
                for p in /var/lib/runner /work /home/runner/../../var/lib/runner; do \
                test -e \"$p\" && echo \"host path $p\"; done; \
                tr '\\0' '\\n' < /proc/1/environ 2>/dev/null | cut -d= -f1 | sort | xargs echo; \
                echo done";
    let json = hostile("bash", code, 20, &[], "ok");
    // gVisor lets every user read every process's environment (see "The
    // environment"): the agent's holds nothing but these two.
    let expected = match crate::common::gvisor() {
        true => "read /proc/1/environ\nHOME PATH\ndone\n",
        false => "\ndone\n",
    };
    assert_eq!(stdout(&json), expected);
}

#[test]
fn proc_and_sys_probing_for_host_information() {
    let code = r#"
import os, re
seen = []
# Kernel addresses are hidden from the run user (our kernel has no symbol
# table at all; Debian's hides the addresses).
try:
    if any(not l.startswith("0000000000000000") for l in open("/proc/kallsyms")):
        seen.append("kallsyms addresses")
except FileNotFoundError:
    pass
# Its mounts are the guest's: nothing of the host's file systems.
for line in open("/proc/self/mountinfo"):
    if re.search(r"/var/lib/runner|/work/main|docker", line):
        seen.append("host mount: " + line.strip())
# The firmware's and the machine's identity are root's or absent.
for path in ["/sys/class/dmi/id/product_uuid", "/sys/class/dmi/id/board_serial", "/proc/sys/kernel/random/boot_id_host"]:
    try:
        open(path).read()
        seen.append("read " + path)
    except OSError:
        pass
print(open("/etc/hostname").read().strip(), os.uname().nodename, seen)
"#;
    let json = hostile("python", code, 20, &[], "ok");
    assert_eq!(stdout(&json), "runner runner []\n");
}

// The network (none was asked for).

#[test]
fn network_tcp() {
    let json = hostile(
        "bash",
        "exec 3<>/dev/tcp/1.1.1.1/80 2>/dev/null && echo connected || echo refused",
        20,
        &[],
        "ok",
    );
    assert_eq!(stdout(&json), "refused\n");
}

#[test]
fn network_udp() {
    let code = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", ("8.8.8.8", 53))
    print("sent")
except OSError:
    print("refused")
"#;
    let json = hostile("python", code, 20, &[], "ok");
    assert_eq!(stdout(&json), "refused\n");
}

#[test]
fn network_raw_socket() {
    let code = r#"
import socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    print("raw socket")
except PermissionError:
    print("refused")
"#;
    let json = hostile("python", code, 20, &[], "ok");
    assert_eq!(stdout(&json), "refused\n");
}

#[test]
fn network_dns() {
    let json = hostile(
        "bash",
        "getent hosts example.com || echo unresolved",
        20,
        &[],
        "ok",
    );
    assert_eq!(stdout(&json), "unresolved\n");
}

// The compile stage.

/// The operator's example languages, among them `make`, whose compile
/// stage runs the request's own commands.
fn example_languages() -> String {
    format!(
        "languages_dir={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/languages")
    )
}

#[test]
fn a_compile_stage_leaves_nothing_running_into_the_run_stage() {
    // A build that starts a daemon: it keeps a heartbeat in the working
    // directory and writes FORGED into every stdout it can open, the run
    // stage's included, so that it would forge a judge's answer. The run
    // stage then watches the heartbeat for two seconds.
    let makefile = "main:\n\
        \ttouch daemon.log\n\
        \tsetsid sh -c 'while :; do date >> daemon.log; \
          for fd in /proc/[0-9]*/fd/1; do echo FORGED > $$fd; done 2>/dev/null; \
          sleep 0.2; done' </dev/null >/dev/null 2>&1 &\n\
        \tsleep 1\n\
        \tprintf '#!/bin/sh\\nb=$$(wc -c < daemon.log); sleep 2; a=$$(wc -c < daemon.log)\\n\
          if [ \"$$a\" -gt \"$$b\" ]; then echo daemon alive; else echo daemon gone; fi\\n' > main\n\
        \tchmod +x main\n";
    let set = example_languages();
    let built = crate::common::runner()
        .args(["image", "build", "--set", &set, "--lang", "make"])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let json = hostile("make", makefile, 20, &["--set", &set], "ok");
    assert_eq!(json["compile"]["status"], "ok", "{json:#}");
    // The daemon ran while the build did: it forged the build's output.
    let built = json["compile"]["stdout"].as_str().unwrap();
    assert!(built.contains("FORGED"), "the daemon never ran: {json:#}");
    // It was gone when the run stage began, and forged nothing there.
    assert_eq!(stdout(&json), "daemon gone\n", "{json:#}");
}

#[test]
fn file_names_that_compilers_read_as_options() {
    // `@o.c` makes gcc read options from o.c, here a wrapper that runs a
    // shell at compile time (inside a comment, so o.c is also valid C).
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_string()
    };
    let main = file(
        "main.c",
        "#include <stdio.h>\n#include <unistd.h>\nint main(void) { puts(access(\"escaped\", F_OK) ? \"contained\" : \"escaped\"); }\n",
    );
    let options = file(
        "o.c",
        "/* -wrapper /bin/sh,-c,touch${IFS}escaped;exec${IFS}\"$0\"${IFS}\"$@\" */\n",
    );
    let at = file("@o.c", "");
    let dash = file("-B.c", "");
    for injected in [&at, &dash] {
        let done = run(&["run", "--lang", "c", &main, &options, injected], b"");
        assert_eq!(
            done.code(),
            Some(2),
            "refused as a usage error: {}",
            done.stderr()
        );
        assert!(
            done.stderr().contains("starts with '-' or '@'"),
            "{}",
            done.stderr()
        );
    }
    // The same files under plain names compile and run, contained.
    let done = run(&["run", "--json", "--lang", "c", &main, &options], b"");
    assert_eq!(
        done.json()["run"]["stdout"],
        "contained\n",
        "{}",
        done.stderr()
    );
}

// File names.

#[test]
fn output_files_that_are_links_to_root_only_files() {
    // The program names links to files only root may read among the files
    // it returns; the agent that collects them does not follow links, and a
    // hard link to a file it does not own is refused by the kernel.
    let dir = tempfile::tempdir().unwrap();
    let code = "mkdir -p out; ln -s /etc/shadow out/soft.txt; \
                ln /etc/shadow out/hard.txt 2>/dev/null; \
                for i in $(seq 50); do ln -sfn /etc/shadow out/swap.txt; echo data > out/swap.txt.tmp; \
                mv -f out/swap.txt.tmp out/swap.txt; done; ln -sfn /etc/shadow out/swap.txt; echo done";
    let done = run(
        &[
            "run",
            "--json",
            "--lang",
            "bash",
            "--output",
            "out/*",
            "--output-dir",
            dir.path().to_str().unwrap(),
            "-c",
            code,
        ],
        b"",
    );
    let json = done.json();
    assert_eq!(json["status"], "ok", "{json:#}");
    for entry in walk(dir.path()) {
        let content = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&content).contains("root:"),
            "{} holds the guest's /etc/shadow",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_session_program_racing_the_file_names_the_client_uses() {
    // In the background of a session, a program swaps `f` between its own
    // file and a link to /etc/shadow, and `d` between its own directory and
    // a link to /etc, as fast as it can, while the client reads, writes
    // and lists through those names: the agent, which works as root, must
    // never follow the program's links whichever state it catches.
    let server = crate::common::server::Server::start(&[]);
    let id = server.session(&json!({ "language": "python" }));
    let command = |command: &str| server.session_command(&id, command);
    let racer = r#"
import os, time
end = time.time() + 90
while time.time() < end:
    os.symlink('/etc/shadow', 'f.link'); os.rename('f.link', 'f')
    open('f.file', 'w').write('mine'); os.rename('f.file', 'f')
    os.rename('d', 'd.dir'); os.symlink('/etc', 'd'); os.unlink('d'); os.rename('d.dir', 'd')
"#;
    let shadow = "stat -c %s.%Y /etc/shadow";
    let before = command(shadow)["run"]["stdout"].clone();
    let started = server
        .post(
            &format!("/v1/sessions/{id}/executions"),
            json!({ "files": [{ "name": "race.py", "content": racer }],
                    "command": "mkdir d && printf mine > d/f && { nohup python3 race.py >/dev/null 2>&1 & } && echo racing" })
            .to_string(),
        )
        .json::<Value>()
        .unwrap();
    assert_eq!(started["run"]["stdout"], "racing\n", "{started:#}");

    let url = |path: &str| format!("{}/v1/sessions/{id}/files/{path}", server.base);
    let (mut read_mine, mut refused) = (0, 0);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < until {
        for path in ["f", "d/f", "d/shadow"] {
            let response = server.client.get(url(path)).send().unwrap();
            let status = response.status();
            let body = response.text().unwrap();
            assert!(
                !body.contains("root:"),
                "GET {path} read /etc/shadow: {body}"
            );
            if status == 200 {
                assert!(body == "mine" || body == "client", "GET {path}: {body}");
                read_mine += 1;
            } else {
                assert!(status.is_client_error(), "GET {path}: {status} {body}");
                refused += 1;
            }
        }
        for path in ["f", "d/written"] {
            let response = server.client.put(url(path)).body("client").send().unwrap();
            assert!(
                response.status().is_success() || response.status().is_client_error(),
                "PUT {path}: {}",
                response.status()
            );
        }
        let listing = server
            .get(&format!("/v1/sessions/{id}/files?path=d"))
            .text()
            .unwrap();
        assert!(!listing.contains("passwd"), "listed /etc: {listing}");
    }
    eprintln!("race: {read_mine} reads of its own file, {refused} refused");
    // Both states were caught.
    assert!(
        read_mine > 0 && refused > 0,
        "{read_mine} read, {refused} refused"
    );
    let after = command(&format!("{shadow}; ls /etc/written 2>&1 || true"));
    let text = after["run"]["stdout"].as_str().unwrap();
    assert!(
        text.starts_with(before.as_str().unwrap()),
        "/etc/shadow changed: {before} then {text}"
    );
    assert!(
        text.contains("No such file"),
        "a file was written into /etc: {text}"
    );
    server.stop(Duration::from_secs(60));
}
