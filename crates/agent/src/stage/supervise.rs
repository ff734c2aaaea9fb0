//! A stage's supervision: its output streamed to the host, its input fed,
//! its limits enforced, until its process tree is gone.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runner_protocol::{Control, Frame, SessionSpec, SignalKind, StageReport, StageSpec};

use super::sandbox::Scratch;
use super::terminal::{EOT, resize_terminal};
use super::{Process, StageInput};
use crate::error::{AgentError, Context};
use crate::event::Event;
use crate::port::Port;

/// How long to wait for the pipes to close once the process tree was killed.
const DRAIN: Duration = Duration::from_secs(2);
/// How often the CPU time of the stage (and, in gVisor, its memory) is
/// checked against its limit.
const CPU_POLL: Duration = Duration::from_millis(20);
const CHUNK: usize = 32 << 10;

/// Streams a stage's output to the host and enforces its limits until its
/// process tree is gone.
///
/// In a session's VM, processes the stage leaves running when its main
/// process exits are left to run (in the stage's cgroup, under its memory
/// and process limits): the stage ends once its output pipes close, or
/// [`DRAIN`] after the exit if something left running still holds them;
/// what it writes there afterwards is read and dropped. Anywhere else, and
/// in a session when a limit ends the stage, the whole cgroup is killed.
pub(super) fn supervise(
    spec: &StageSpec,
    process: Process,
    input: StageInput<'_>,
    scratch: Scratch,
    session: Option<&SessionSpec>,
    out: &mut Port,
) -> Result<StageReport, AgentError> {
    let Process {
        mut child,
        cgroup,
        input: stdin,
        terminal,
        started,
        steal,
        cpu_baseline_us,
        prestarted,
    } = process;
    let limits = spec.limits;
    let pgid = Pid::from_raw(child.id() as i32);
    let live = input.live.filter(|_| spec.stdin);

    let (tx, rx) = mpsc::channel();
    // Input is written by a thread of its own: a program that does not
    // read must not hold up the supervision.
    let mut feed = stdin.map(|mut writer| {
        let (feed, fed) = mpsc::channel::<Vec<u8>>();
        thread::spawn(move || {
            for bytes in fed {
                // A program that does not read its stdin closes the pipe:
                // not an error.
                if writer
                    .write_all(&bytes)
                    .and_then(|()| writer.flush())
                    .is_err()
                {
                    break;
                }
            }
        });
        feed
    });
    if let Some(feed) = &feed {
        if spec.stdin && !input.bytes.is_empty() {
            let _ = feed.send(input.bytes.to_vec());
        }
    }
    if live.is_none() {
        // The request's bytes are all: end of file after them.
        feed = None;
    }
    let mut open_pipes = match &terminal {
        Some(master) => {
            let reader = File::from(master.try_clone().context(|| "dup the terminal".into())?);
            forward(reader, false, tx.clone());
            1
        }
        None => {
            let stdout = child.stdout.take().expect("stdout is piped");
            let stderr = child.stderr.take().expect("stderr is piped");
            forward(stdout, false, tx.clone());
            forward(stderr, true, tx.clone());
            2
        }
    };
    if let Some(live) = live {
        live.inputs.attach(tx.clone());
    }
    thread::spawn(move || {
        if let Some((status, max_rss)) = wait_with_usage(&child) {
            let _ = tx.send(Event::Exited(status, Instant::now(), max_rss));
        }
    });

    let kill = || {
        cgroup.kill();
        let _ = killpg(pgid, Signal::SIGKILL);
    };
    let mut report = StageReport {
        prestarted,
        ..StageReport::new(spec.stage)
    };
    let mut budget = limits.output_bytes;
    let mut exited = false;
    let mut killed = false;
    let mut deadline = started + Duration::from_millis(limits.wall_time_ms);
    while !(exited && open_pipes == 0) {
        let now = Instant::now();
        let wait = if killed {
            deadline.saturating_duration_since(now)
        } else {
            deadline.saturating_duration_since(now).min(CPU_POLL)
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Output { stderr, mut bytes }) => {
                if report.output_truncated {
                    continue;
                }
                if bytes.len() as u64 > budget {
                    bytes.truncate(budget as usize);
                    report.output_truncated = true;
                    killed = true;
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
            Ok(Event::Control(control)) => match control {
                Control::Input { data } => {
                    if let Some(feed) = &feed {
                        let _ = feed.send(data);
                    }
                }
                // A terminal reads end-of-file at Ctrl-D; closing it would
                // hang it up. gVisor's terminal has no Ctrl-D (VEOF): there
                // the program's session is hung up (SIGHUP), as a terminal
                // that goes away does, rather than wait for ever.
                Control::InputEnd if terminal.is_some() => {
                    if crate::platform::current() == crate::platform::Platform::Gvisor {
                        let _ = killpg(pgid, Signal::SIGHUP);
                    } else if let Some(feed) = &feed {
                        let _ = feed.send(vec![EOT]);
                    }
                }
                Control::InputEnd => feed = None,
                Control::Signal {
                    signal: SignalKind::Kill,
                } => kill(),
                Control::Signal { signal } => {
                    let signal = match signal {
                        SignalKind::Interrupt => Signal::SIGINT,
                        _ => Signal::SIGTERM,
                    };
                    // On a terminal, the job in the foreground (a shell's
                    // child); else the stage's process group.
                    let group = terminal
                        .as_ref()
                        .and_then(|master| nix::unistd::tcgetpgrp(master).ok())
                        .unwrap_or(pgid);
                    let _ = killpg(group, signal);
                }
                Control::Resize { size } => {
                    if let Some(master) = &terminal {
                        resize_terminal(master, size);
                    }
                }
            },
            Ok(Event::Exited(status, at, max_rss)) => {
                exited = true;
                cgroup.note_peak(max_rss);
                report.wall_time_us = at.duration_since(started).as_micros() as u64;
                report.exit_code = status.code();
                report.signal = status.signal();
                // The stage is over when its main process is: whatever it
                // left running goes too, which also closes the pipes; in a
                // session it stays, with a drain time for the pipes.
                if !killed {
                    killed = true;
                    if session.is_none() {
                        kill();
                    }
                    deadline = Instant::now() + DRAIN;
                }
            }
            Err(RecvTimeoutError::Timeout) if killed && Instant::now() >= deadline => {
                // Pipes still open after the drain time: a process escaped
                // the kill (the VM is destroyed after this), or a session's
                // program left one running that holds them.
                break;
            }
            Err(RecvTimeoutError::Timeout) if killed => {}
            Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                report.timed_out = true;
                killed = true;
                kill();
                deadline = Instant::now() + DRAIN;
            }
            Err(RecvTimeoutError::Timeout) => {
                let cpu_over = steal.charged(cgroup.cpu_usage_us().saturating_sub(cpu_baseline_us))
                    >= limits.cpu_time_ms * 1000;
                // Where the cgroup and the tmpfs sizes do not enforce the
                // memory and file limits (gVisor).
                let memory_over = cgroup.over_memory();
                let files_over = scratch.over();
                if cpu_over || memory_over || files_over {
                    report.cpu_time_exceeded = cpu_over;
                    killed = true;
                    kill();
                    deadline = Instant::now() + DRAIN;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let usage = cgroup.usage();
    report.cpu_time_us = steal.charged(usage.cpu_us.saturating_sub(cpu_baseline_us));
    report.memory_peak_bytes = usage.memory_peak;
    report.memory_exceeded = usage.oom_kills > 0;
    report.process_limit_hit = usage.pids_max_hits > 0;
    // The per-process backstop fired before our poll saw the total.
    if report.signal == Some(libc::SIGXCPU) {
        report.cpu_time_exceeded = true;
    }
    report.file_size_exceeded = report.signal == Some(libc::SIGXFSZ) || scratch.any_full();
    let limited = report.timed_out
        || report.cpu_time_exceeded
        || report.output_truncated
        || report.memory_exceeded;
    match session {
        Some(session) => {
            if limited {
                cgroup.kill();
                cgroup.remove();
            } else {
                cgroup.release();
            }
            scratch.release(session)?;
        }
        None => cgroup.remove(),
    }
    Ok(report)
}

/// Waits for `child` to end (reaping it): its status and its peak resident
/// memory in bytes, which the kernel keeps until then.
fn wait_with_usage(child: &std::process::Child) -> Option<(std::process::ExitStatus, u64)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes the status and the usage into the locals on
        // this stack frame.
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if waited == pid {
            let max_rss = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
            return Some((std::process::ExitStatus::from_raw(status), max_rss));
        }
        if waited < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// Sends what `pipe` gives to `tx` until it closes. Once the stage is over
/// (`tx`'s receiver gone), a process a session's stage left running may
/// still write there: that is read and dropped, so that it neither blocks
/// nor dies of SIGPIPE.
fn forward(mut pipe: impl Read + Send + 'static, stderr: bool, tx: Sender<Event>) {
    thread::spawn(move || {
        let mut buf = vec![0; CHUNK];
        let mut over = false;
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if over => {}
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    over = tx.send(Event::Output { stderr, bytes }).is_err();
                }
            }
        }
        let _ = tx.send(Event::Closed);
    });
}
