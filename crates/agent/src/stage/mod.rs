//! Running one stage: a command, as the run user, in its own cgroup and
//! session, with its output streamed to the host and its limits enforced.
//!
//! | limit       | enforced by                                             |
//! |-------------|---------------------------------------------------------|
//! | wall time   | the agent's clock; cgroup.kill                          |
//! | CPU time    | the cgroup's cpu.stat, polled; RLIMIT_CPU as a backstop |
//! | memory      | cgroup memory.max (OOM kills the whole group)           |
//! | processes   | cgroup pids.max                                         |
//! | output      | the agent counts bytes; cgroup.kill                     |
//! | file size   | RLIMIT_FSIZE per file; tmpfs size for all files         |
//!
//! The VM's own memory is the outer wall.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runner_protocol::{
    Control, Frame, Limits, PrestartSpec, SessionSpec, SignalKind, StageReport, StageSpec,
    WindowSize,
};

use crate::inputs::Inputs;
use crate::serve::{Port, RUN_GID, RUN_UID, WORK_DIR};
use crate::steal;

/// How long to wait for the pipes to close once the process tree was killed.
const DRAIN: Duration = Duration::from_secs(2);
/// How often the CPU time of the stage is checked against its limit.
const CPU_POLL: Duration = Duration::from_millis(20);
const CHUNK: usize = 32 << 10;
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a stage's supervisor waits for.
pub enum Event {
    Output {
        stderr: bool,
        bytes: Vec<u8>,
    },
    Closed,
    Exited(ExitStatus, Instant),
    /// From the client of an interactive execution (see [`Inputs`]).
    Control(Control),
}

/// What a stage reads.
#[derive(Clone, Copy)]
pub struct StageInput<'a> {
    /// The request's stdin, for a stage that takes it.
    pub bytes: &'a [u8],
    /// The client's input while the stage runs, after `bytes`.
    pub live: Option<Live<'a>>,
}

/// An interactive stage's input.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    pub inputs: &'a Inputs,
    /// On a terminal of this size, else on pipes.
    pub pty: Option<WindowSize>,
}

/// How a stage's stdin, stdout and stderr are connected.
enum Stdio3 {
    /// stdin from `/dev/null`, stdout and stderr piped.
    Null,
    /// All three piped.
    Pipes,
    /// All three on a new terminal of this size.
    Pty(WindowSize),
}

pub fn run(
    spec: &StageSpec,
    input: StageInput<'_>,
    env: &BTreeMap<String, String>,
    session: Option<&SessionSpec>,
    out: &mut Port,
) -> Result<StageReport, String> {
    if spec.argv.is_empty() {
        return Err(format!("the {} stage has an empty command", spec.stage));
    }
    let limits = spec.limits;
    let scratch = Scratch::cap(limits.file_size_bytes, session)?;
    let cgroup = Cgroup::create(spec.stage.as_str())?;
    if let Err(e) = cgroup.limit(&limits) {
        cgroup.remove();
        return Err(e);
    }
    let stdio = match input.live {
        _ if !spec.stdin => Stdio3::Null,
        Some(Live {
            pty: Some(size), ..
        }) => Stdio3::Pty(size),
        Some(_) => Stdio3::Pipes,
        None if input.bytes.is_empty() => Stdio3::Null,
        None => Stdio3::Pipes,
    };
    let started = Instant::now();
    let (mut child, cgroup, terminal) =
        spawn_in(&spec.argv, env, stdio, cgroup, Some(limits), None)?;
    let stdin = match &terminal {
        Some(master) => Some(Box::new(File::from(
            master
                .try_clone()
                .map_err(|e| format!("dup the terminal: {e}"))?,
        )) as Box<dyn Write + Send>),
        None => child
            .stdin
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Write + Send>),
    };
    let process = Process {
        child,
        cgroup,
        input: stdin,
        terminal,
        started,
        steal: steal::Span::start(),
        cpu_baseline_us: 0,
        prestarted: false,
    };
    supervise(spec, process, input, scratch, session, out)
}

/// A runtime started before the snapshot, waiting on fd 3 for its run
/// stage (see [`PrestartSpec`]).
pub struct Prestarted {
    spec: PrestartSpec,
    child: Child,
    cgroup: Cgroup,
    input: ChildStdin,
    control: File,
}

/// The control pipe's number in a prestarted process.
const CONTROL_FD: i32 = 3;

/// Starts `spec`'s runtime as the run user in a cgroup of its own, without
/// limits yet: they are the request's, applied at the hand-over.
pub fn prestart(spec: &PrestartSpec) -> Result<Prestarted, String> {
    if spec.argv.is_empty() {
        return Err("prestart with an empty command".into());
    }
    let (control_read, control_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("control pipe: {e}"))?;
    let cgroup = Cgroup::create("prestart")?;
    let (mut child, cgroup, _) = spawn_in(
        &spec.argv,
        &spec.env,
        Stdio3::Pipes,
        cgroup,
        None,
        Some(control_read.as_raw_fd()),
    )?;
    drop(control_read);
    if let Err(e) = await_waiting(&mut child) {
        cgroup.kill();
        let _ = child.wait();
        cgroup.remove();
        return Err(e);
    }
    let input = child.stdin.take().expect("stdin is piped");
    Ok(Prestarted {
        spec: spec.clone(),
        child,
        cgroup,
        input,
        control: File::from(control_write),
    })
}

/// Longest a runtime may take to get through its start-up.
const PRESTART_TIMEOUT: Duration = Duration::from_secs(110);

/// Waits until the prestarted process blocks reading its control pipe: its
/// start-up is over and the snapshot can be taken. The kernel shows the
/// system call a process sleeps in, with its arguments, in
/// `/proc/<pid>/syscall`.
fn await_waiting(child: &mut Child) -> Result<(), String> {
    let path = format!("/proc/{}/syscall", child.id());
    let waiting = format!("{} {:#x} ", libc::SYS_read, CONTROL_FD);
    let deadline = Instant::now() + PRESTART_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(pipe) = child.stderr.as_mut() {
                let _ = pipe.take(4096).read_to_string(&mut stderr);
            }
            return Err(format!(
                "the prestarted runtime exited ({status}) before it was ready: {}",
                stderr.trim()
            ));
        }
        if fs::read_to_string(&path).is_ok_and(|s| s.starts_with(&waiting)) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "the prestarted runtime did not wait on fd {CONTROL_FD} within {} s",
        PRESTART_TIMEOUT.as_secs()
    ))
}

impl Prestarted {
    /// Whether `stage` can be handed to this runtime: its command is the
    /// one the runtime replaces (plus arguments), the environment is the
    /// one it started with, and it is still waiting.
    pub fn fits(&mut self, stage: &StageSpec, env: &BTreeMap<String, String>) -> bool {
        stage.argv.starts_with(&self.spec.replaces)
            // An argument with a NUL byte would arrive split in two on the
            // control pipe. The host refuses such requests; a fresh process
            // would fail to start with it, as execve does.
            && !stage.argv.iter().any(|arg| arg.contains('\0'))
            && *env == self.spec.env
            && matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the waiting runtime, for a request it does not fit.
    pub fn discard(mut self) {
        self.cgroup.kill();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.cgroup.remove();
    }

    /// Runs `spec` in the waiting runtime: the stage's limits on its cgroup
    /// and process, then the arguments on the control pipe.
    /// Not for a stage on a terminal: the runtime's stdio are pipes.
    pub fn run(
        self,
        spec: &StageSpec,
        input: StageInput<'_>,
        session: Option<&SessionSpec>,
        out: &mut Port,
    ) -> Result<StageReport, String> {
        let Prestarted {
            spec: prestart,
            child,
            cgroup,
            input: stdin_pipe,
            mut control,
        } = self;
        let limits = spec.limits;
        let pid = child.id() as libc::pid_t;
        let fail = |message: String, cgroup: Cgroup| {
            cgroup.kill();
            cgroup.remove();
            Err(message)
        };
        let scratch = match Scratch::cap(limits.file_size_bytes, session) {
            Ok(scratch) => scratch,
            Err(e) => return fail(e, cgroup),
        };
        // Its start-up is not the program's: CPU time counts from here, and
        // the per-process backstop allows for what start-up already used.
        let cpu_baseline_us = cgroup.cpu_usage_us();
        let cpu_seconds = cpu_baseline_us.div_ceil(1_000_000) + backstop_cpu_seconds(&limits);
        let limited = cgroup.limit(&limits).and_then(|()| {
            prlimit(pid, libc::RLIMIT_CORE, 0, 0)?;
            prlimit(
                pid,
                libc::RLIMIT_FSIZE,
                limits.file_size_bytes,
                limits.file_size_bytes,
            )?;
            prlimit(pid, libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)
        });
        if let Err(e) = limited {
            return fail(e, cgroup);
        }
        let mut message = Vec::new();
        for arg in &spec.argv[prestart.replaces.len()..] {
            message.extend_from_slice(arg.as_bytes());
            message.push(0);
        }
        let started = Instant::now();
        if let Err(e) = control.write_all(&message) {
            return fail(
                format!("hand the run to the prestarted runtime: {e}"),
                cgroup,
            );
        }
        drop(control);
        let process = Process {
            child,
            cgroup,
            input: Some(Box::new(stdin_pipe)),
            terminal: None,
            started,
            steal: steal::Span::start(),
            cpu_baseline_us,
            prestarted: true,
        };
        supervise(spec, process, input, scratch, session, out)
    }
}

fn prlimit(
    pid: libc::pid_t,
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> Result<(), String> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit reads the struct on this stack frame and writes nothing
    // (the old-limit pointer is null).
    let ret = unsafe { libc::prlimit(pid, resource, &limit, std::ptr::null_mut()) };
    if ret < 0 {
        Err(format!(
            "set resource limit {resource} of process {pid}: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(())
    }
}

/// Starts `argv` (not empty) with the base environment plus `env`, its
/// stdio as `stdio` says, in `cgroup`'s sandbox (see [`enter_sandbox`]).
/// Returns the terminal's master side if it has one. The cgroup is
/// removed if the process cannot start.
fn spawn_in(
    argv: &[String],
    env: &BTreeMap<String, String>,
    stdio: Stdio3,
    cgroup: Cgroup,
    limits: Option<Limits>,
    control: Option<i32>,
) -> Result<(Child, Cgroup, Option<OwnedFd>), String> {
    let mut command = command(argv, env);
    let mut terminal = None;
    match stdio {
        Stdio3::Null => {
            command.stdin(Stdio::null());
        }
        Stdio3::Pipes => {
            command.stdin(Stdio::piped());
        }
        Stdio3::Pty(size) => {
            let (master, slave) = match open_terminal(size) {
                Ok(pair) => pair,
                Err(e) => {
                    cgroup.remove();
                    return Err(e);
                }
            };
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup the terminal: {e}"));
            let (stdin, stdout) = match (dup(&slave), dup(&slave)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    cgroup.remove();
                    return Err(e);
                }
            };
            command
                .stdin(Stdio::from(stdin))
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(slave));
            terminal = Some(master);
        }
    }
    let cgroup_procs = cgroup.procs.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe system calls on values copied into it; the caller
    // keeps the control pipe open until the spawn returns.
    unsafe {
        command.pre_exec(move || enter_sandbox(cgroup_procs, limits.as_ref(), control));
    }
    // The parent's copies of the terminal's slave side close with
    // `command`, so that the master reads end-of-file (EIO) once the
    // stage's processes are gone.
    let spawned = command.spawn();
    drop(command);
    match spawned {
        Ok(child) => Ok((child, cgroup, terminal)),
        Err(e) => {
            cgroup.remove();
            Err(format!("start {}: {e}", argv[0]))
        }
    }
}

/// A stage's command with the base environment, piped stdout and stderr.
fn command(argv: &[String], env: &BTreeMap<String, String>) -> Command {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(WORK_DIR)
        .env_clear()
        .env("PATH", BASE_PATH)
        .env("HOME", WORK_DIR)
        .env("USER", "runner")
        .env("LANG", "C.UTF-8")
        .env("TMPDIR", "/tmp")
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Ctrl-D: end of input on a terminal.
const EOT: u8 = 0x04;

/// Gives the terminal `master` a new size; the kernel tells its foreground
/// job with `SIGWINCH`.
fn resize_terminal(master: &OwnedFd, size: WindowSize) {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from this stack frame.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) };
}

/// A new terminal of `size`: its master side (close-on-exec, for the
/// agent) and its slave side (for the stage).
fn open_terminal(size: WindowSize) -> Result<(OwnedFd, OwnedFd), String> {
    let winsize = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pair =
        nix::pty::openpty(Some(&winsize), None).map_err(|e| format!("open a terminal: {e}"))?;
    nix::fcntl::fcntl(
        &pair.master,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("set close-on-exec on the terminal: {e}"))?;
    Ok((pair.master, pair.slave))
}

/// A stage's main process, running, with its cgroup.
struct Process {
    child: Child,
    cgroup: Cgroup,
    /// Where its stdin is written, if it is a pipe or a terminal.
    input: Option<Box<dyn Write + Send>>,
    /// The master side of its terminal, if it runs on one.
    terminal: Option<OwnedFd>,
    started: Instant,
    /// The host's count of vCPU time at `started` (see [`steal`]).
    steal: steal::Span,
    /// The cgroup's CPU time before the stage began (a prestarted runtime's
    /// start-up).
    cpu_baseline_us: u64,
    prestarted: bool,
}

/// Streams a stage's output to the host and enforces its limits until its
/// process tree is gone.
///
/// In a session's VM, processes the stage leaves running when its main
/// process exits are left to run (in the stage's cgroup, under its memory
/// and process limits): the stage ends once its output pipes close, or
/// [`DRAIN`] after the exit if something left running still holds them;
/// what it writes there afterwards is read and dropped. Anywhere else, and
/// in a session when a limit ends the stage, the whole cgroup is killed.
fn supervise(
    spec: &StageSpec,
    process: Process,
    input: StageInput<'_>,
    scratch: Scratch,
    session: Option<&SessionSpec>,
    out: &mut Port,
) -> Result<StageReport, String> {
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
            let reader = File::from(
                master
                    .try_clone()
                    .map_err(|e| format!("dup the terminal: {e}"))?,
            );
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
        if let Ok(status) = child.wait() {
            let _ = tx.send(Event::Exited(status, Instant::now()));
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
                // hang it up.
                Control::InputEnd if terminal.is_some() => {
                    if let Some(feed) = &feed {
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
            Ok(Event::Exited(status, at)) => {
                exited = true;
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
                if steal.charged(cgroup.cpu_usage_us().saturating_sub(cpu_baseline_us))
                    >= limits.cpu_time_ms * 1000
                {
                    report.cpu_time_exceeded = true;
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

/// RLIMIT_CPU for one process, a backstop behind the cgroup poll. The
/// guest's own count, which the rlimit goes by, includes time its vCPU
/// waited for a host CPU under TCG (see [`steal`]); the poll takes that off
/// and the backstop allows for it: twice the limit, and a second more.
fn backstop_cpu_seconds(limits: &Limits) -> u64 {
    (limits.cpu_time_ms * 2).div_ceil(1000) + 1
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

/// Runs in the child between fork and exec: join the stage's cgroup, start a
/// new session (so the process group can be killed as one), set the rlimits
/// (a prestarted runtime gets them at the hand-over), put the control pipe
/// on fd 3 if there is one, give the stdio pipes to the run user, and drop
/// to the run user for good.
fn enter_sandbox(
    cgroup_procs: i32,
    limits: Option<&Limits>,
    control: Option<i32>,
) -> std::io::Result<()> {
    fn check(ret: libc::c_int) -> std::io::Result<()> {
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    fn rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct on this stack frame.
        check(unsafe { libc::setrlimit(resource, &limit) })
    }
    // SAFETY: a write from a static buffer to a file descriptor this process
    // owns; async-signal-safe.
    check(unsafe { libc::write(cgroup_procs, b"0".as_ptr().cast(), 1) } as libc::c_int)?;
    // SAFETY: setsid takes no arguments and is async-signal-safe.
    check(unsafe { libc::setsid() })?;
    // On a terminal, it becomes the new session's controlling terminal, so
    // that Ctrl-C, job control and /dev/tty work.
    // SAFETY: isatty on a descriptor this process owns.
    if unsafe { libc::isatty(0) } == 1 {
        // SAFETY: TIOCSCTTY takes an integer argument and writes nothing.
        check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
    }
    rlimit(libc::RLIMIT_CORE, 0, 0)?;
    if let Some(limits) = limits {
        rlimit(
            libc::RLIMIT_FSIZE,
            limits.file_size_bytes,
            limits.file_size_bytes,
        )?;
        // A backstop for a single process; the cgroup poll covers the tree.
        // The soft limit sends SIGXCPU, the hard one SIGKILL a second later.
        let cpu_seconds = backstop_cpu_seconds(limits);
        rlimit(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)?;
    }
    if let Some(fd) = control {
        if fd == CONTROL_FD {
            // dup2 onto itself would keep close-on-exec.
            // SAFETY: fcntl on a file descriptor this process owns.
            check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
        } else {
            // SAFETY: dup2 between file descriptors this process owns; the
            // copy does not have close-on-exec.
            check(unsafe { libc::dup2(fd, CONTROL_FD) })?;
        }
    }
    // The stage's stdin, stdout and stderr pipes (or terminal) were made
    // by root, mode 0600: hand them to the run user, so that it can open
    // them again by name (/dev/stdout is /proc/self/fd/1, /dev/tty) as it
    // could its own. /dev/null and other files keep their owner.
    for fd in 0..=2 {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a stat into the buffer on this stack frame;
        // it is read only when fstat succeeded; isatty reads nothing.
        let is_own = unsafe {
            libc::fstat(fd, stat.as_mut_ptr()) == 0
                && (stat.assume_init().st_mode & libc::S_IFMT == libc::S_IFIFO
                    || libc::isatty(fd) == 1)
        };
        if is_own {
            // SAFETY: fchown on a descriptor this process owns.
            check(unsafe { libc::fchown(fd, RUN_UID, RUN_GID) })?;
        }
    }
    // SAFETY: plain system calls on integers; all are async-signal-safe.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(RUN_GID, RUN_GID, RUN_GID))?;
        check(libc::setresuid(RUN_UID, RUN_UID, RUN_UID))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

/// The places a program can write, each a tmpfs mounted at boot. Before a
/// stage each is resized to what it holds plus the stage's file limit, so
/// that the stage writes at most that much there; one left full at the end
/// means the stage hit the limit (a program that gets ENOSPC or EFBIG may
/// carry on, so the exit status alone does not tell). In a session's VM
/// the working directory never grows past the session's disk, and goes
/// back to that size after the stage, for the files the host writes.
struct Scratch;

const SCRATCH_DIRS: &[&str] = &[WORK_DIR, "/tmp", "/dev/shm"];
const PAGE: u64 = 4096;

impl Scratch {
    fn cap(limit: u64, session: Option<&SessionSpec>) -> Result<Self, String> {
        for dir in SCRATCH_DIRS {
            let used = used_bytes(dir)?;
            let mut size = used + limit;
            if let (Some(session), true) = (session, *dir == WORK_DIR) {
                size = size.min(session.disk_bytes.max(used));
            }
            resize(dir, size)?;
        }
        Ok(Scratch)
    }

    /// A session's working directory back at the session's disk size.
    fn release(self, session: &SessionSpec) -> Result<(), String> {
        session_disk(session)
    }

    fn any_full(&self) -> bool {
        SCRATCH_DIRS.iter().any(|dir| {
            nix::sys::statvfs::statvfs(*dir)
                .map(|s| s.blocks_available() * s.fragment_size() < PAGE)
                .unwrap_or(false)
        })
    }
}

/// Sets the working directory of a session's VM to the session's disk
/// size (or what it holds, if that is more).
pub fn session_disk(session: &SessionSpec) -> Result<(), String> {
    resize(WORK_DIR, session.disk_bytes.max(used_bytes(WORK_DIR)?))
}

fn used_bytes(dir: &str) -> Result<u64, String> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statvfs {dir}: {e}"))?;
    Ok((stat.blocks() - stat.blocks_free()) * stat.fragment_size())
}

/// Remounts the tmpfs at `dir` with `size` bytes, in whole pages.
fn resize(dir: &str, size: u64) -> Result<(), String> {
    let size = size.div_ceil(PAGE) * PAGE;
    nix::mount::mount(
        None::<&str>,
        dir,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT
            | nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV,
        Some(format!("size={size}").as_str()),
    )
    .map_err(|e| format!("resize {dir} to {size} bytes: {e}"))
}

/// A cgroup v2 group holding every process of one stage, with its limits.
struct Cgroup {
    path: PathBuf,
    /// `cgroup.procs`, opened before the fork so that the child only writes.
    procs: File,
}

#[derive(Default)]
struct Usage {
    cpu_us: u64,
    memory_peak: u64,
    oom_kills: u64,
    pids_max_hits: u64,
}

impl Cgroup {
    /// A new, empty group, without limits until [`Cgroup::limit`]. Each
    /// has a name of its own: a session's stage may leave processes in its
    /// group after it ends.
    fn create(name: &str) -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            Self::sweep();
        }
        let path = PathBuf::from(format!("/sys/fs/cgroup/stage-{name}-{n}"));
        fs::create_dir(&path).map_err(|e| format!("create cgroup {}: {e}", path.display()))?;
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .map_err(|e| format!("open cgroup.procs of {}: {e}", path.display()))?;
        let group = Self { path, procs };
        // No swap in the VM, but say so: the limit must be the whole limit.
        let _ = group.set("memory.swap.max", "0");
        // An OOM kill takes the whole stage, not one process of it.
        group.set("memory.oom.group", "1")?;
        Ok(group)
    }

    fn limit(&self, limits: &Limits) -> Result<(), String> {
        self.set("memory.max", &limits.memory_bytes.to_string())?;
        self.set("pids.max", &limits.processes.to_string())
    }

    fn set(&self, file: &str, value: &str) -> Result<(), String> {
        fs::write(self.path.join(file), value)
            .map_err(|e| format!("set {file} = {value} in {}: {e}", self.path.display()))
    }

    /// Kills every process in the group, however it forked or set its session.
    fn kill(&self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
    }

    fn cpu_usage_us(&self) -> u64 {
        let stat = fs::read_to_string(self.path.join("cpu.stat")).unwrap_or_default();
        field(&stat, "usage_usec")
    }

    fn usage(&self) -> Usage {
        let read = |file: &str| fs::read_to_string(self.path.join(file)).unwrap_or_default();
        Usage {
            cpu_us: self.cpu_usage_us(),
            memory_peak: read("memory.peak").trim().parse().unwrap_or(0),
            oom_kills: field(&read("memory.events"), "oom_kill"),
            pids_max_hits: field(&read("pids.events"), "max"),
        }
    }

    /// Removes the group if it is empty: a session's stage may have left
    /// processes running in it on purpose. Groups left so are removed by a
    /// later [`Cgroup::create`] once their processes are gone.
    fn release(self) {
        let _ = fs::remove_dir(&self.path);
    }

    /// Removes every stage group whose processes are all gone.
    fn sweep() {
        if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("stage-") {
                    let _ = fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// Removes the group once its killed processes are gone.
    fn remove(self) {
        for _ in 0..200 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The value of `key` in a cgroup "key value" file.
fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn cgroup_fields_are_read_by_key() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(field(events, "oom_kill"), 1);
        assert_eq!(field(events, "max"), 3);
        assert_eq!(field(events, "missing"), 0);
        assert_eq!(
            field("usage_usec 1234\nuser_usec 1000\n", "usage_usec"),
            1234
        );
    }
}
