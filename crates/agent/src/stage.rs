//! Running one stage: a command, as the run user, in its own cgroup and
//! process group, with its output streamed to the host and its limits
//! enforced.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runner_protocol::{Frame, StageReport, StageSpec};

use crate::serve::{Port, RUN_GID, RUN_UID, WORK_DIR};

/// How long to wait for the pipes to close once the process tree was killed.
const DRAIN: Duration = Duration::from_secs(2);
const CHUNK: usize = 32 << 10;
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

enum Event {
    Output { stderr: bool, bytes: Vec<u8> },
    Closed,
    Exited(ExitStatus, Instant),
}

pub fn run(
    spec: &StageSpec,
    stdin: &[u8],
    env: &BTreeMap<String, String>,
    out: &mut Port,
) -> Result<StageReport, String> {
    let Some(program) = spec.argv.first() else {
        return Err(format!("stage {} has an empty command", spec.name));
    };
    let cgroup = Cgroup::create(&spec.name);
    let mut command = Command::new(program);
    command
        .args(&spec.argv[1..])
        .current_dir(WORK_DIR)
        .env_clear()
        .env("PATH", BASE_PATH)
        .env("HOME", WORK_DIR)
        .env("USER", "runner")
        .env("LANG", "C.UTF-8")
        .env("TMPDIR", "/tmp")
        .envs(env)
        .stdin(if spec.stdin && !stdin.is_empty() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cgroup_procs = cgroup.as_ref().map(|c| c.procs.as_raw_fd());
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe system calls on memory owned by this stack frame.
    unsafe {
        command.pre_exec(move || enter_sandbox(cgroup_procs));
    }

    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("start {program}: {e}"))?;
    let pgid = Pid::from_raw(child.id() as i32);

    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = child.stdin.take() {
        let input = stdin.to_vec();
        // A program that does not read its stdin closes the pipe: not an error.
        thread::spawn(move || drop(pipe.write_all(&input)));
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    forward(stdout, false, tx.clone());
    forward(stderr, true, tx.clone());
    thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = tx.send(Event::Exited(status, Instant::now()));
        }
    });

    let kill = || {
        if let Some(cgroup) = &cgroup {
            cgroup.kill();
        }
        let _ = killpg(pgid, Signal::SIGKILL);
    };
    let mut report = StageReport {
        name: spec.name.clone(),
        ..Default::default()
    };
    let mut budget = spec.limits.output_bytes;
    let mut open_pipes = 2;
    let mut exited = false;
    let mut deadline = started + Duration::from_millis(spec.limits.wall_ms);
    while !(exited && open_pipes == 0) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Event::Output { stderr, mut bytes }) => {
                if report.output_truncated {
                    continue;
                }
                if bytes.len() as u64 > budget {
                    bytes.truncate(budget as usize);
                    report.output_truncated = true;
                    kill();
                }
                budget -= bytes.len() as u64;
                if !bytes.is_empty() {
                    out.send(&if stderr {
                        Frame::Stderr(bytes)
                    } else {
                        Frame::Stdout(bytes)
                    })?;
                }
            }
            Ok(Event::Closed) => open_pipes -= 1,
            Ok(Event::Exited(status, at)) => {
                exited = true;
                report.wall_time_us = at.duration_since(started).as_micros() as u64;
                report.exit_code = status.code();
                report.signal = status.signal();
                // The stage is over when its main process is: whatever it
                // left running goes too, which also closes the pipes.
                kill();
                deadline = Instant::now() + DRAIN;
            }
            Err(RecvTimeoutError::Timeout) if !exited => {
                report.timed_out = true;
                kill();
                deadline = Instant::now() + DRAIN;
            }
            // Pipes still open after the drain time: a process escaped the
            // kill. Stop waiting; the VM is destroyed after this execution.
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Some(cgroup) = cgroup {
        cgroup.remove();
    }
    Ok(report)
}

fn forward(mut pipe: impl Read + Send + 'static, stderr: bool, tx: Sender<Event>) {
    thread::spawn(move || {
        let mut buf = vec![0; CHUNK];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    if tx.send(Event::Output { stderr, bytes }).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

/// Runs in the child between fork and exec: join the stage's cgroup, start a
/// new session (so the process group can be killed as one), and drop to the
/// run user for good.
fn enter_sandbox(cgroup_procs: Option<i32>) -> std::io::Result<()> {
    fn check(ret: libc::c_int) -> std::io::Result<()> {
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    // SAFETY: plain system calls on integers and a static buffer; all are
    // async-signal-safe.
    unsafe {
        if let Some(fd) = cgroup_procs {
            check(libc::write(fd, b"0".as_ptr().cast(), 1) as libc::c_int)?;
        }
        check(libc::setsid())?;
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(RUN_GID, RUN_GID, RUN_GID))?;
        check(libc::setresuid(RUN_UID, RUN_UID, RUN_UID))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

/// A cgroup v2 group holding every process of one stage.
struct Cgroup {
    path: PathBuf,
    /// `cgroup.procs`, opened before the fork so that the child only writes.
    procs: File,
}

impl Cgroup {
    fn create(stage: &str) -> Option<Self> {
        let path = PathBuf::from(format!("/sys/fs/cgroup/stage-{stage}"));
        let _ = fs::create_dir(&path);
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .map_err(|e| eprintln!("runner-agent: no cgroup for stage {stage}: {e}"))
            .ok()?;
        Some(Self { path, procs })
    }

    /// Kills every process in the group, however it forked or set its session.
    fn kill(&self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
    }

    fn remove(self) {
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}
