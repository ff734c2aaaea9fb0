//! The messages carried by frames.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Frame kind, the fourth header byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    Exec = 2,
    Stdout = 3,
    Stderr = 4,
    StageEnd = 5,
    Done = 6,
    Error = 7,
    Wake = 8,
    Warm = 9,
    Prestart = 10,
    Collected = 11,
    Session = 12,
    Files = 13,
    Listing = 14,
    Control = 15,
    OutputFile = 16,
    VcpuTime = 17,
}

impl FrameKind {
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Hello,
            2 => Self::Exec,
            3 => Self::Stdout,
            4 => Self::Stderr,
            5 => Self::StageEnd,
            6 => Self::Done,
            7 => Self::Error,
            8 => Self::Wake,
            9 => Self::Warm,
            10 => Self::Prestart,
            11 => Self::Collected,
            12 => Self::Session,
            13 => Self::Files,
            14 => Self::Listing,
            15 => Self::Control,
            16 => Self::OutputFile,
            17 => Self::VcpuTime,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Agent → host: the agent is up and waits for its one request.
    Hello(Hello),
    /// Host → agent: what to run.
    Exec(ExecRequest),
    /// Agent → host: bytes the current stage wrote to stdout.
    Stdout(Vec<u8>),
    /// Agent → host: bytes the current stage wrote to stderr.
    Stderr(Vec<u8>),
    /// Agent → host: the current stage finished; output frames that follow
    /// belong to the next stage.
    StageEnd(StageReport),
    /// Agent → host: every stage that was going to run has run.
    Done,
    /// Agent → host: the agent could not do what was asked (our fault, not
    /// the program's).
    Error(AgentFailure),
    /// Host → agent, first thing in a VM restored from a snapshot (or a
    /// session's VM resumed from disk): make this VM unique (fresh
    /// entropy, the host's clock); the agent answers with a new
    /// [`Frame::Hello`].
    Wake(Wake),
    /// Host → agent, in a VM about to be snapshotted: run these stages to
    /// warm the page cache (the interpreter's files), then forget them. Not
    /// the VM's one execution; answered like one, with
    /// [`Frame::StageEnd`]s and [`Frame::Done`].
    Warm(ExecRequest),
    /// Host → agent, in a VM about to be snapshotted, after any warm-up:
    /// start the language's runtime now and keep it waiting, so that the
    /// run stage of a VM restored from the snapshot skips its start-up.
    /// Answered with [`Frame::Done`].
    Prestart(PrestartSpec),
    /// Agent → host, after the last stage and before [`Frame::Done`]: a
    /// piece of a file the request asked to collect
    /// ([`ExecRequest::collect`]).
    Collected(CollectedChunk),
    /// Host → agent, before any execution: this VM is a session's and
    /// serves many executions, one after the other, keeping its files and
    /// processes between them. Answered with [`Frame::Done`].
    Session(SessionSpec),
    /// Host → agent, in a session VM between executions: an operation on
    /// a file of the working directory. Answered with [`Frame::Done`]
    /// (after [`Frame::Collected`] pieces for a read, or a
    /// [`Frame::Listing`] for a list), or [`Frame::Error`].
    Files(FileOp),
    /// Agent → host: what a directory of the working directory holds.
    Listing(Vec<FileEntry>),
    /// Host → agent, during an interactive execution
    /// ([`ExecRequest::interactive`]): input for its run stage, the end of
    /// it, a signal, or the terminal's new size. Not answered; one that
    /// comes before the run stage waits for it, one that comes after is
    /// dropped.
    Control(Control),
    /// Agent → host, after the run stage and before [`Frame::Done`]: a
    /// piece of a file the request named as an output
    /// ([`ExecRequest::outputs`]), or one over a cap, listed without its
    /// content.
    OutputFile(OutputPiece),
    /// Host → agent, while an execution runs in a VM whose guest cannot
    /// see steal time (TCG): how long its vCPU has run and has waited for a
    /// host CPU, as the host counts them. Sent when the waiting grew; not
    /// answered. The agent takes the waiting's share off a stage's CPU time
    /// (see [`VcpuTime`]).
    VcpuTime(VcpuTime),
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Exec(_) => FrameKind::Exec,
            Frame::Stdout(_) => FrameKind::Stdout,
            Frame::Stderr(_) => FrameKind::Stderr,
            Frame::StageEnd(_) => FrameKind::StageEnd,
            Frame::Done => FrameKind::Done,
            Frame::Error(_) => FrameKind::Error,
            Frame::Wake(_) => FrameKind::Wake,
            Frame::Warm(_) => FrameKind::Warm,
            Frame::Prestart(_) => FrameKind::Prestart,
            Frame::Collected(_) => FrameKind::Collected,
            Frame::Session(_) => FrameKind::Session,
            Frame::Files(_) => FrameKind::Files,
            Frame::Listing(_) => FrameKind::Listing,
            Frame::Control(_) => FrameKind::Control,
            Frame::OutputFile(_) => FrameKind::OutputFile,
            Frame::VcpuTime(_) => FrameKind::VcpuTime,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Version of the agent binary (its crate version).
    pub agent_version: String,
    /// Milliseconds since the guest kernel started, when the agent said hello.
    pub uptime_ms: u64,
}

/// A source file, written into the working directory before the first stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Relative path inside the working directory, without `..`.
    pub name: String,
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    /// Written with mode 0755 (a compiled program), else 0644.
    #[serde(default)]
    pub executable: bool,
}

/// A stage of an execution. Every layer (CLI, API, plan, protocol, agent,
/// result) names stages with this type, so a stage is never a string that
/// quietly means "run" when it is misspelt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Compiles the sources (compiled languages only); its stdin is empty.
    Compile,
    /// Runs the program with the request's stdin and arguments.
    Run,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Compile => "compile",
            Stage::Run => "run",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits of one stage, enforced by the agent. The names are those of the
/// API's `limits` and the configuration's `limits.*` keys, except memory,
/// which the agent takes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time in milliseconds; the whole process tree is killed at it.
    pub wall_time_ms: u64,
    /// CPU time of all the stage's processes together, in milliseconds.
    pub cpu_time_ms: u64,
    /// Memory of all the stage's processes together (cgroup `memory.max`).
    pub memory_bytes: u64,
    /// Processes and threads alive at once (cgroup `pids.max`).
    pub processes: u32,
    /// Bytes of stdout plus stderr kept; the program is killed past it.
    pub output_bytes: u64,
    /// Bytes of files the stage may write: per file (`RLIMIT_FSIZE`) and in
    /// each writable place together (the size of its tmpfs).
    pub file_size_bytes: u64,
}

/// One stage of an execution: a command run in the working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Which stage this is; reported back in [`StageReport::stage`].
    pub stage: Stage,
    pub argv: Vec<String>,
    /// Whether the request's stdin is fed to this stage (else it reads EOF).
    pub stdin: bool,
    pub limits: Limits,
}

/// Everything the agent needs to run one execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// For the agent's log only: the agent itself knows no languages.
    pub language: String,
    pub files: Vec<File>,
    /// Run in order; a stage that does not exit 0 stops the ones after it.
    pub stages: Vec<StageSpec>,
    #[serde(with = "base64_bytes")]
    pub stdin: Vec<u8>,
    /// Added to the fixed base environment (PATH, HOME, LANG).
    pub env: BTreeMap<String, String>,
    /// Files of the working directory to send back once every stage has
    /// exited 0, as [`Frame::Collected`] pieces: names, or `*.suffix` for
    /// every file of the working directory (not its subdirectories) with
    /// that suffix. Only regular files are sent; each pattern must match at
    /// least one.
    #[serde(default)]
    pub collect: Vec<String>,
    /// Send the files of [`ExecRequest::collect`] as soon as this stage
    /// has exited 0, before the next one starts (what the compile made,
    /// before the program could change it), not once every stage has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect_after: Option<Stage>,
    /// The run stage takes more input while it runs ([`Frame::Control`]),
    /// after [`ExecRequest::stdin`], until the input ends; with a
    /// terminal if asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<Interactive>,
    /// Files of the working directory to send back once the run stage
    /// ran, however it ended, as [`Frame::OutputFile`] pieces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
    /// The program may reach the network through the proxy: the agent
    /// listens on [`crate::net::PROXY_PORT`] (once asked, for the VM's
    /// life) and carries connections over the network port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
}

/// The files a request wants back, and how much of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// Paths or patterns (see [`crate::glob`]) relative to the working
    /// directory. A pattern that matches nothing is no error.
    pub patterns: Vec<String>,
    /// A file bigger than this is listed, not sent.
    pub file_bytes: u64,
    /// Past this much content in all, further files are listed, not sent.
    pub total_bytes: u64,
    /// At most this many files, in path order; the rest are left out.
    pub max_files: u32,
}

/// A piece of an output file. A file comes as pieces in order, each
/// starting where the one before ended; the last one says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputPiece {
    /// Relative to the working directory.
    pub path: String,
    /// The whole file's size.
    pub size: u64,
    pub offset: u64,
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    pub last: bool,
    /// Over a cap: this one piece, empty, lists the file.
    pub truncated: bool,
}

/// How an execution is interactive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interactive {
    /// Run the program on a terminal of this size (stdin, stdout and
    /// stderr all on it: output comes as [`Frame::Stdout`]), else on pipes.
    pub pty: Option<WindowSize>,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// What a client does to an interactive execution while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Bytes for the program's stdin.
    Input {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// The end of its input: it reads end-of-file (on a terminal, once
    /// what it has read is consumed).
    InputEnd,
    /// A signal for the program.
    Signal { signal: SignalKind },
    /// The terminal's new size (the program gets `SIGWINCH`).
    Resize { size: WindowSize },
}

/// Signals a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// `SIGINT`, as Ctrl-C (on a terminal, Ctrl-C itself).
    Interrupt,
    /// `SIGTERM`.
    Terminate,
    /// Every process of the stage killed at once.
    Kill,
}

/// Largest piece of a collected file in one frame: its base64 in JSON stays
/// well under [`crate::MAX_AGENT_FRAME`].
pub const COLLECTED_CHUNK: usize = 128 << 10;

/// A piece of a collected file. A file comes as pieces in order, each
/// starting where the one before ended; the last one says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectedChunk {
    pub name: String,
    /// Offset of this piece in the file.
    pub offset: u64,
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    /// The file is executable.
    pub executable: bool,
    /// This is the file's last piece.
    pub last: bool,
}

/// A runtime started ahead of its run stage.
///
/// The agent starts `argv` as the run user in the run stage's cgroup, with
/// stdin, stdout and stderr pipes, and a pipe on fd 3. The process gets ready
/// (e.g. an interpreter past its start-up) and reads fd 3 to its end. When a
/// request's run stage is `replaces` followed by arguments, and the
/// request's environment is `env`, the agent applies the stage's limits to
/// the waiting process and writes the arguments to fd 3, each ended by a NUL
/// byte; the process then runs the program as `replaces` would have. Any
/// other request gets the process killed and runs as usual.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrestartSpec {
    pub argv: Vec<String>,
    pub replaces: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// How one stage ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageReport {
    pub stage: Stage,
    /// Exit code, when the process exited on its own.
    pub exit_code: Option<i32>,
    /// Signal number, when the process was killed by a signal (including
    /// the agent's own kill at a limit).
    pub signal: Option<i32>,
    /// The wall-time limit was reached and the process tree killed.
    pub timed_out: bool,
    /// The CPU-time limit was reached and the process tree killed.
    pub cpu_time_exceeded: bool,
    /// The kernel's OOM killer ended the stage at its memory limit.
    pub memory_exceeded: bool,
    /// The output limit was reached: output was cut there and the process
    /// tree killed.
    pub output_truncated: bool,
    /// A fork or thread creation failed at the process limit.
    pub process_limit_hit: bool,
    /// A file reached the file-size limit, or the stage's files together
    /// filled the space the limit gave them.
    pub file_size_exceeded: bool,
    /// From spawn to exit, in microseconds.
    pub wall_time_us: u64,
    /// CPU time of all the stage's processes, in microseconds.
    pub cpu_time_us: u64,
    /// Peak memory of all the stage's processes together, in bytes.
    pub memory_peak_bytes: u64,
    /// The stage ran in a runtime started before the VM's snapshot (see
    /// [`PrestartSpec`]); its wall and CPU times count from the hand-over.
    #[serde(default)]
    pub prestarted: bool,
}

impl StageReport {
    /// A report of `stage` with nothing happened yet: no exit, no limit,
    /// no time.
    pub fn new(stage: Stage) -> Self {
        Self {
            stage,
            exit_code: None,
            signal: None,
            timed_out: false,
            cpu_time_exceeded: false,
            memory_exceeded: false,
            output_truncated: false,
            process_limit_hit: false,
            file_size_exceeded: false,
            wall_time_us: 0,
            cpu_time_us: 0,
            memory_peak_bytes: 0,
            prestarted: false,
        }
    }
}

/// What a session VM is set up with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// What the working directory may hold, in bytes, between and during
    /// executions (its tmpfs size).
    pub disk_bytes: u64,
}

/// Largest piece of a file written in one [`FileOp::Write`].
pub const FILE_CHUNK: usize = 1 << 20;

/// An operation on a path of the working directory. Paths are relative,
/// without `..`, and are never followed through a symbolic link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FileOp {
    /// Writes `content` at `offset`: the first piece (offset 0) creates or
    /// truncates the file and its missing parent directories, owned by the
    /// run user.
    Write {
        path: String,
        offset: u64,
        #[serde(with = "base64_bytes")]
        content: Vec<u8>,
        executable: bool,
    },
    /// Sends a regular file back as [`Frame::Collected`] pieces.
    Read { path: String },
    /// Lists a directory (`""` for the working directory itself).
    List { path: String },
    /// Removes a file, or a directory with what it holds.
    Remove { path: String },
}

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// One entry of a [`Frame::Listing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits, e.g. 0o644.
    pub mode: u32,
    /// Last modification, seconds since the Unix epoch.
    pub modified_s: i64,
}

/// What makes a restored VM unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wake {
    /// Fresh random bytes from the host, mixed into the guest kernel's pool
    /// and credited, which reseeds its generator.
    #[serde(with = "base64_bytes")]
    pub entropy: Vec<u8>,
    /// The host's wall clock, nanoseconds since the Unix epoch.
    pub unix_time_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFailure {
    pub message: String,
    /// Set when a file operation was refused for what it asked (a missing
    /// file, a bad path, a full disk): the request's fault, not the VM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileProblem>,
}

impl AgentFailure {
    /// The agent's own failure.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            file: None,
        }
    }
}

/// Why a file operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileProblem {
    /// The path, or a directory on it, does not exist.
    NotFound,
    /// The path cannot be used: outside the working directory, through a
    /// link, a directory where a file was meant, or the like.
    Invalid,
    /// The session's disk is full.
    Full,
}

/// Bytes as base64 in JSON, so that binary stdin or files cost 4/3, not 4x.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// The host's count of a VM's vCPU time, totals since the VM started
/// (`/proc/<pid>/task/<tid>/schedstat` of its vCPU threads).
///
/// Under TCG the guest's clock is the host's, so a vCPU thread that waits
/// for a host CPU looks busy to the guest: a program's CPU time would grow
/// with the host's load. Of the time the guest was busy between two of
/// these, `waiting / (running + waiting)` was such waiting; the agent
/// takes that share off the CPU time of a stage over the same span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuTime {
    /// Microseconds the vCPU threads ran on a host CPU.
    pub running_us: u64,
    /// Microseconds they were ready to run and waited for one.
    pub waiting_us: u64,
}
