//! Running one stage: a command, as the run user, in its own cgroup and
//! session, with its output streamed to the host and its limits enforced.
//!
//! | limit       | enforced by                                             |
//! |-------------|---------------------------------------------------------|
//! | wall time   | the agent's clock; cgroup.kill                          |
//! | CPU time    | the cgroup's cpu.stat, polled; RLIMIT_CPU as a backstop |
//! | memory      | cgroup memory.max (OOM kills the whole group); polled   |
//! |             | in a gVisor sandbox, whose cgroups do not enforce it    |
//! | processes   | cgroup pids.max                                         |
//! | output      | the agent counts bytes; cgroup.kill                     |
//! | file size   | RLIMIT_FSIZE per file; tmpfs size for all files         |
//!
//! The VM's own memory is the outer wall.
//!
//! - this file: a stage started, its stdio connected;
//! - [`cgroup`]: the cgroup that holds a stage's processes and limits;
//! - [`sandbox`]: what the child does between fork and exec (the run user,
//!   its session, its rlimits), and the scratch space it may fill;
//! - [`supervise`]: the stage's output streamed and its limits enforced
//!   until its process tree is gone;
//! - [`prestart`]: a runtime started before the snapshot that takes the
//!   run stage over;
//! - [`terminal`]: the terminal of an interactive stage.

mod cgroup;
mod prestart;
mod sandbox;
mod supervise;
mod terminal;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use runner_protocol::{Limits, SessionSpec, StageReport, StageSpec, WindowSize};

pub use cgroup::CGROUP_V1_CONTROLLERS;
pub use prestart::{Prestarted, prestart};
pub use sandbox::{room_for, session_disk};

use crate::consts::WORK_DIR;
use crate::error::{AgentError, Context};
use crate::inputs::Inputs;
use crate::port::Port;
use crate::steal;
use cgroup::Cgroup;
use sandbox::{Scratch, enter_sandbox};
use supervise::supervise;
use terminal::open_terminal;

const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
) -> Result<StageReport, AgentError> {
    if spec.argv.is_empty() {
        return Err(format!("the {} stage has an empty command", spec.stage).into());
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
            master.try_clone().context(|| "dup the terminal".into())?,
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
) -> Result<(Child, Cgroup, Option<OwnedFd>), AgentError> {
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
            let dup = |fd: &OwnedFd| fd.try_clone().context(|| "dup the terminal".into());
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
    let cgroup_procs = cgroup.procs_fds();
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
            Err(format!("start {}: {e}", argv[0]).into())
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
