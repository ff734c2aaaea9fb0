//! The server: say hello on the agent port, take one request, run it; or,
//! in a session's VM, take requests and file operations one after another.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use runner_protocol::{
    AGENT_PORT_NAME, COLLECTED_CHUNK, CollectedChunk, ExecRequest, FileOp, Frame, PrestartSpec,
    SessionSpec, Stage,
};

use crate::boot::Mode;
use crate::consts::WORK_DIR;
use crate::error::{AgentError, Context};
use crate::files::FileError;
use crate::inputs::{Incoming, Inputs, read_frames};
use crate::port::Port;
use crate::stage::{self, Live, StageInput};

pub fn run(mode: Mode) -> Result<(), AgentError> {
    let (mut out, port) = Port::open(mode.devices(), AGENT_PORT_NAME)?;
    if crate::platform::current() == crate::platform::Platform::Gvisor {
        crate::net::take_gvisor_port()?;
    }
    out.hello()?;
    if mode == Mode::Probe {
        return Ok(());
    }

    let inputs = Inputs::default();
    let frames = read_frames(port, inputs.clone());
    let mut served = false;
    // Exec frames so far, numbered as `read_frames` numbers them.
    let mut execs = 0u64;
    let mut prestarted: Option<stage::Prestarted> = None;
    // What was prestarted before the snapshot, to prestart again in a
    // session's VM after each execution (see `Restart`).
    let mut prestart_spec: Option<PrestartSpec> = None;
    let mut restart = Restart::default();
    let mut session: Option<SessionSpec> = None;
    loop {
        let frame = match frames.recv() {
            Ok(Incoming::Frame(frame)) => frame,
            // The host hung up: the VM is about to be destroyed.
            Ok(Incoming::Closed) | Err(_) => return Ok(()),
            Ok(Incoming::Bad(e)) => {
                let error = AgentError::Failed(format!("bad frame from host: {e}"));
                out.fail(format!("bad frame from host: {e}").into())?;
                return Err(error);
            }
        };
        let number = execs;
        if matches!(frame, Frame::Exec(_)) {
            execs += 1;
        }
        match frame {
            Frame::Exec(_) if served && session.is_none() => {
                inputs.close(number);
                out.fail("this VM has served its one execution; start a new VM".into())?
            }
            Frame::Exec(request) => {
                served = true;
                let runtime = prestarted.take().or_else(|| restart.take());
                let executed = execute(&request, runtime, session.as_ref(), &inputs, &mut out);
                inputs.close(number);
                if let Err(message) = executed {
                    out.fail(message)?;
                }
                if session.is_some() {
                    if let Some(spec) = &prestart_spec {
                        restart.begin(spec, &request);
                    }
                }
            }
            Frame::Session(_) if served || session.is_some() => {
                out.fail("a session starts before any execution, once".into())?
            }
            Frame::Session(spec) => match stage::session_disk(&spec) {
                Ok(()) => {
                    session = Some(spec);
                    out.send(&Frame::Done)?;
                }
                Err(message) => out.fail(message)?,
            },
            Frame::Files(_) if session.is_none() => {
                out.fail("files can be handled only in a session's VM".into())?
            }
            Frame::Files(op) => {
                if changes_start_up(&op) {
                    // A file put in place now (a `.pth` or a package in the
                    // user's site directory) must be seen as a fresh
                    // interpreter would see it at start-up.
                    for runtime in [prestarted.take(), restart.take()].into_iter().flatten() {
                        runtime.discard();
                    }
                }
                match crate::files::serve(&op, &mut out) {
                    Ok(()) => {}
                    Err(FileError::Request { problem, message }) => {
                        out.refuse(message, Some(problem))?
                    }
                    Err(FileError::Agent(error @ AgentError::Port(_))) => return Err(error),
                    Err(FileError::Agent(error)) => out.refuse(error.to_string(), None)?,
                }
            }
            // Warming, prestarting and waking happen before the one
            // execution; a session's VM is woken again when it resumes
            // from disk.
            Frame::Warm(_) | Frame::Prestart(_) if served => {
                out.fail("this VM has served its one execution; start a new VM".into())?
            }
            Frame::Wake(_) if served && session.is_none() => {
                out.fail("this VM has served its one execution; start a new VM".into())?
            }
            Frame::Prestart(_) if prestarted.is_some() => {
                out.fail("a runtime is already prestarted in this VM".into())?
            }
            Frame::Prestart(spec) => match stage::prestart(&spec) {
                Ok(runtime) => {
                    prestarted = Some(runtime);
                    prestart_spec = Some(spec);
                    out.send(&Frame::Done)?;
                }
                Err(message) => out.fail(message)?,
            },
            Frame::Warm(request) => {
                let warmed =
                    execute(&request, None, None, &inputs, &mut out).and_then(|()| clear_scratch());
                if let Err(message) = warmed {
                    out.fail(message)?;
                }
            }
            Frame::Wake(wake) => match crate::wake::wake(&wake) {
                Ok(()) => out.hello()?,
                Err(message) => out.fail(message)?,
            },
            other => out.fail(format!("unexpected {:?} frame from host", other.kind()).into())?,
        }
    }
}

/// Whether a file operation may change what a runtime reads at start-up:
/// a write or removal under a hidden entry of the home directory (the
/// working directory), such as Python's user site directory under `.local`
/// or a tool's `.config`. Data and sources elsewhere are read by the
/// program, after the hand-over, and keep the waiting runtime.
fn changes_start_up(op: &FileOp) -> bool {
    match op {
        FileOp::Read { .. } | FileOp::List { .. } => false,
        FileOp::Write { path, .. } | FileOp::Remove { path } => under_hidden_entry(path),
    }
}

/// Whether `path`, relative to the home directory, is under (or is) a
/// hidden entry of it, or is the home directory itself.
fn under_hidden_entry(path: &str) -> bool {
    Path::new(path).components().find_map(|c| match c {
        Component::Normal(name) => Some(name.to_string_lossy().starts_with('.')),
        _ => None,
    }) != Some(false)
}

/// In a session's VM, the language's runtime prestarted again after each
/// execution, in the background while the session waits for its next
/// request, so that every execution (not only the first, which found the
/// snapshot's) skips the runtime's start-up. Under TCG that start-up is
/// also what a new process translates afresh: Python's costs ~250 ms.
///
/// It starts only after an execution with the language's own environment
/// (one with its own would not fit it), and never runs beside a stage: the
/// next request waits for it to be ready, for [`RESTART_WAIT`] at most (a
/// program left running can slow it down without end), after which the
/// request runs in a fresh process and the runtime is discarded whenever it
/// gets ready. A file operation that may change what start-up reads
/// ([`changes_start_up`]) discards it too.
#[derive(Default)]
struct Restart(Option<Arc<(Mutex<Handoff>, Condvar)>>);

/// Between the thread that prestarts and the loop that takes the runtime.
#[derive(Default)]
struct Handoff {
    ready: Option<Result<stage::Prestarted, AgentError>>,
    /// The loop stopped waiting: the thread discards what it makes.
    abandoned: bool,
}

/// How long a request waits for a runtime still being prestarted.
const RESTART_WAIT: Duration = Duration::from_secs(3);

impl Restart {
    fn begin(&mut self, spec: &PrestartSpec, after: &ExecRequest) {
        if self.0.is_some() || after.env != spec.env {
            return;
        }
        let handoff = Arc::new((Mutex::new(Handoff::default()), Condvar::new()));
        let theirs = handoff.clone();
        let spec = spec.clone();
        std::thread::spawn(move || {
            let made = stage::prestart(&spec);
            let (lock, ready) = &*theirs;
            let mut handoff = lock.lock().unwrap_or_else(|e| e.into_inner());
            if handoff.abandoned {
                if let Ok(runtime) = made {
                    runtime.discard();
                }
            } else {
                handoff.ready = Some(made);
                ready.notify_one();
            }
        });
        self.0 = Some(handoff);
    }

    /// The runtime, once it waits; `None` if none was started, it failed,
    /// or it was not ready within [`RESTART_WAIT`].
    fn take(&mut self) -> Option<stage::Prestarted> {
        let handoff = self.0.take()?;
        let (lock, ready) = &*handoff;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (mut handoff, _) = ready
            .wait_timeout_while(guard, RESTART_WAIT, |h| h.ready.is_none())
            .unwrap_or_else(|e| e.into_inner());
        match handoff.ready.take() {
            Some(Ok(runtime)) => Some(runtime),
            Some(Err(message)) => {
                eprintln!("runner-agent: prestarting again: {message}");
                None
            }
            None => {
                handoff.abandoned = true;
                eprintln!(
                    "runner-agent: the runtime prestarted again was not ready within {} s; running afresh",
                    RESTART_WAIT.as_secs()
                );
                None
            }
        }
    }
}

/// Runs the request's stages in order. The first one goes to the
/// prestarted runtime if it fits (and needs no terminal: the runtime's
/// stdio are pipes); else the runtime is killed first, so that it takes no
/// memory from the stages. The client's input (see [`Inputs`]) goes to the
/// stage that reads the request's stdin.
fn execute(
    request: &ExecRequest,
    prestarted: Option<stage::Prestarted>,
    session: Option<&SessionSpec>,
    inputs: &Inputs,
    out: &mut Port,
) -> Result<(), AgentError> {
    let on_terminal = request.interactive.is_some_and(|i| i.pty.is_some());
    // A request's file under a hidden entry of home (a `.pth` in the user
    // site directory) is one a fresh runtime would read at start-up: the
    // waiting one started before it existed.
    let changes_start_up = request.files.iter().any(|f| under_hidden_entry(&f.name));
    let mut prestarted = prestarted.and_then(|mut runtime| match request.stages.first() {
        Some(first) if !on_terminal && !changes_start_up && runtime.fits(first, &request.env) => {
            Some(runtime)
        }
        _ => {
            runtime.discard();
            None
        }
    });
    prepare_work_dir(request)?;
    if request.network {
        crate::net::start()?;
    }
    let input = StageInput {
        bytes: &request.stdin,
        live: request.interactive.map(|interactive| Live {
            inputs,
            pty: interactive.pty,
        }),
    };
    let mut failed = false;
    let mut ran = false;
    for spec in &request.stages {
        let report = match prestarted.take() {
            Some(runtime) => runtime.run(spec, input, session, out)?,
            None => stage::run(spec, input, &request.env, session, out)?,
        };
        failed = report.exit_code != Some(0);
        ran |= spec.stage == Stage::Run;
        out.send(&Frame::StageEnd(report))?;
        if failed {
            break;
        }
        if request.collect_after == Some(spec.stage) {
            // For the host's own use: what is there, and the run goes on.
            collect(&request.collect, false, out)?;
        }
    }
    if !failed && request.collect_after.is_none() {
        collect(&request.collect, true, out)?;
    }
    // Output files come back however the program ended: a partial CSV or
    // the plot before a crash tell what went wrong.
    if let (Some(outputs), true) = (&request.outputs, ran) {
        crate::outputs::send(outputs, out)?;
    }
    out.send(&Frame::Done)
}

/// Sends the files `patterns` name (see `ExecRequest::collect`) from the
/// working directory, in pieces. The run user could have put anything
/// there, so only regular files are sent, never what a link points to.
/// A pattern that matches nothing is an error if `every` pattern must
/// match.
fn collect(patterns: &[String], every: bool, out: &mut Port) -> Result<(), AgentError> {
    let work = Path::new(WORK_DIR);
    for pattern in patterns {
        let mut names: Vec<String> = match pattern.strip_prefix('*') {
            Some(suffix) => fs::read_dir(work)
                .context(|| format!("read {WORK_DIR}"))?
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.ends_with(suffix))
                .collect(),
            None => vec![safe_relative(pattern)?.display().to_string()],
        };
        names.sort();
        let mut sent = 0;
        for name in names {
            let path = work.join(&name);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.file_type().is_file() {
                continue;
            }
            let content = fs::read(&path).context(|| format!("read {name}"))?;
            let executable =
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
            let mut offset = 0;
            let mut pieces = content.chunks(COLLECTED_CHUNK).peekable();
            if pieces.peek().is_none() {
                out.send(&Frame::Collected(CollectedChunk {
                    name: name.clone(),
                    offset: 0,
                    content: Vec::new(),
                    executable,
                    last: true,
                }))?;
            }
            while let Some(piece) = pieces.next() {
                out.send(&Frame::Collected(CollectedChunk {
                    name: name.clone(),
                    offset,
                    content: piece.to_vec(),
                    executable,
                    last: pieces.peek().is_none(),
                }))?;
                offset += piece.len() as u64;
            }
            sent += 1;
        }
        if sent == 0 && every {
            return Err(
                format!("nothing in the working directory matches {pattern:?} to collect").into(),
            );
        }
    }
    Ok(())
}

/// The request's files in the working directory, owned by the run user.
/// In a session's VM the run user may have put links there: they are
/// written as the host's file operations are, never through a link.
fn prepare_work_dir(request: &ExecRequest) -> Result<(), AgentError> {
    for file in &request.files {
        crate::files::write(&file.name, 0, &file.content, file.executable).map_err(|failure| {
            match failure {
                FileError::Request { message, .. } => AgentError::Failed(message),
                FileError::Agent(error) => error,
            }
        })?;
    }
    Ok(())
}

/// After a warm-up: nothing of it stays where the execution will look.
fn clear_scratch() -> Result<(), AgentError> {
    for dir in [WORK_DIR, "/tmp", "/dev/shm"] {
        let entries = fs::read_dir(dir).context(|| format!("read {dir}"))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = if path.is_dir() && !path.is_symlink() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// The host checks names too; the agent does not trust it blindly.
fn safe_relative(name: &str) -> Result<PathBuf, AgentError> {
    let path = Path::new(name);
    let ok = !name.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(
            format!("file name {name:?} is not a relative path inside the working directory")
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{changes_start_up, safe_relative};
    use runner_protocol::FileOp;

    #[test]
    fn only_hidden_entries_of_home_can_change_a_start_up() {
        let write = |path: &str| FileOp::Write {
            path: path.into(),
            offset: 0,
            content: Vec::new(),
            executable: false,
        };
        for path in [
            ".local/lib/python3.13/site-packages/x.pth",
            "./.config/a",
            ".bashrc",
            "",
        ] {
            assert!(changes_start_up(&write(path)), "{path:?}");
            assert!(
                changes_start_up(&FileOp::Remove { path: path.into() }),
                "{path:?}"
            );
        }
        for path in ["data.csv", "src/.hidden", "./main.py"] {
            assert!(!changes_start_up(&write(path)), "{path:?}");
        }
        assert!(!changes_start_up(&FileOp::Read {
            path: ".local".into()
        }));
        assert!(!changes_start_up(&FileOp::List {
            path: ".local".into()
        }));
    }

    #[test]
    fn file_names_stay_inside_the_work_dir() {
        assert!(safe_relative("main.py").is_ok());
        assert!(safe_relative("src/lib.rs").is_ok());
        assert!(safe_relative("./a").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/.."] {
            assert!(safe_relative(bad).is_err(), "{bad:?}");
        }
    }
}
