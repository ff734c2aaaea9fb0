//! A runtime started before the snapshot (the language's interpreter,
//! through its start-up), waiting on fd 3 for its run stage: it takes the
//! stage over with the stage's limits, and its start-up is not counted.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin};
use std::thread;
use std::time::{Duration, Instant};

use runner_protocol::{PrestartSpec, SessionSpec, StageReport, StageSpec};

use super::cgroup::Cgroup;
use super::sandbox::{Scratch, backstop_cpu_seconds, gvisor_tasks, prlimit};
use super::supervise::supervise;
use super::{Process, StageInput, Stdio3, spawn_in};
use crate::error::{AgentError, Context};
use crate::port::Port;
use crate::steal;

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
pub(super) const CONTROL_FD: i32 = 3;

/// Starts `spec`'s runtime as the run user in a cgroup of its own, without
/// limits yet: they are the request's, applied at the hand-over.
pub fn prestart(spec: &PrestartSpec) -> Result<Prestarted, AgentError> {
    if spec.argv.is_empty() {
        return Err("prestart with an empty command".into());
    }
    let (control_read, control_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context(|| "control pipe".into())?;
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

/// Polls of an idle process that make it settled, where the kernel does not
/// show the system call it sleeps in (gVisor).
const SETTLED_POLLS: u32 = 10;

/// Waits until the prestarted process blocks reading its control pipe: its
/// start-up is over and the snapshot can be taken. The kernel shows the
/// system call a process sleeps in, with its arguments, in
/// `/proc/<pid>/syscall`. gVisor does not: there the process is taken as
/// waiting once it has slept without using CPU time for
/// [`SETTLED_POLLS`] polls in a row. Taken too early, a restored runtime
/// only finishes its start-up before it reads the pipe.
fn await_waiting(child: &mut Child) -> Result<(), AgentError> {
    let path = format!("/proc/{}/syscall", child.id());
    let stat = format!("/proc/{}/stat", child.id());
    let waiting = format!("{} {:#x} ", libc::SYS_read, CONTROL_FD);
    let mut idle = Idle::default();
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
            )
            .into());
        }
        match fs::read_to_string(&path) {
            Ok(syscall) if syscall.starts_with(&waiting) => return Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && idle.poll(&fs::read_to_string(&stat).unwrap_or_default())
                        >= SETTLED_POLLS =>
            {
                return Ok(());
            }
            _ => {}
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "the prestarted runtime did not wait on fd {CONTROL_FD} within {} s",
        PRESTART_TIMEOUT.as_secs()
    )
    .into())
}

/// Polls in a row that found a process asleep with the CPU time of the
/// poll before.
#[derive(Default)]
struct Idle {
    cpu_ticks: Option<u64>,
    polls: u32,
}

impl Idle {
    /// Takes in the process's `/proc/<pid>/stat`; returns the polls in a
    /// row it has been idle.
    fn poll(&mut self, stat: &str) -> u32 {
        // The fields after the command's closing parenthesis: state, then
        // utime and stime as the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let ticks = fields
            .get(11)
            .zip(fields.get(12))
            .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?));
        let asleep = fields.first() == Some(&"S");
        if asleep && ticks.is_some() && ticks == self.cpu_ticks {
            self.polls += 1;
        } else {
            self.polls = 0;
        }
        self.cpu_ticks = ticks;
        self.polls
    }
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
    ) -> Result<StageReport, AgentError> {
        let Prestarted {
            spec: prestart,
            child,
            cgroup,
            input: stdin_pipe,
            mut control,
        } = self;
        let limits = spec.limits;
        let pid = child.id() as libc::pid_t;
        let fail = |error: AgentError, cgroup: Cgroup| {
            cgroup.kill();
            cgroup.remove();
            Err(error)
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
            prlimit(pid, libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)?;
            match gvisor_tasks(&limits) {
                Some(tasks) => prlimit(pid, libc::RLIMIT_NPROC, tasks, tasks),
                None => Ok(()),
            }
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
        if let Err(error) = control.write_all(&message) {
            let what = "hand the run to the prestarted runtime".to_string();
            return fail(AgentError::Io { what, error }, cgroup);
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

#[cfg(test)]
mod tests {
    use super::Idle;

    #[test]
    fn a_process_is_idle_while_it_sleeps_without_using_cpu_time() {
        let stat = |state: &str, utime: u64| {
            format!("8 (python3 (x)) {state} 4 4 4 0 0 0 0 0 0 0 {utime} 5 0 0 20 0 1 0 25")
        };
        let mut idle = Idle::default();
        assert_eq!(
            idle.poll(&stat("S", 5)),
            0,
            "the first poll has nothing to compare"
        );
        assert_eq!(idle.poll(&stat("S", 5)), 1);
        assert_eq!(idle.poll(&stat("S", 5)), 2);
        assert_eq!(idle.poll(&stat("S", 6)), 0, "it used CPU time");
        assert_eq!(idle.poll(&stat("R", 6)), 0, "it runs");
        assert_eq!(idle.poll(&stat("S", 6)), 1);
        assert_eq!(idle.poll(&stat("S", 6)), 2);
        assert_eq!(idle.poll(""), 0, "gone");
    }
}
