//! What an execution returns: a single status, the compile and run stages,
//! the timings, and the lines of a streamed execution.

use runner_protocol::Stage;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The verdict of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The program exited 0 within every limit.
    Ok,
    /// The program exited with a non-zero code.
    RuntimeError,
    /// The program was killed by a signal it caused (SIGSEGV, SIGABRT, ...).
    Signaled,
    /// The compile stage did not succeed; the program did not run.
    CompileError,
    /// Wall time or CPU time ran out.
    TimeLimitExceeded,
    /// The program's processes together used more than their memory limit.
    MemoryLimitExceeded,
    /// Too much output, or a file over the file-size limit.
    OutputLimitExceeded,
    /// Runner Codes failed; `message` says how.
    InternalError,
    /// The program exited 0 within every limit and printed the expected
    /// output (only when the request gave one).
    Accepted,
    /// The program exited 0 within every limit but its output is not the
    /// expected one; `difference` says where.
    WrongAnswer,
    /// A test of a submission that did not run (its program did not
    /// compile, an earlier test failed, or the submission was stopped).
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::RuntimeError => "runtime_error",
            Status::Signaled => "signaled",
            Status::CompileError => "compile_error",
            Status::TimeLimitExceeded => "time_limit_exceeded",
            Status::MemoryLimitExceeded => "memory_limit_exceeded",
            Status::OutputLimitExceeded => "output_limit_exceeded",
            Status::InternalError => "internal_error",
            Status::Accepted => "accepted",
            Status::WrongAnswer => "wrong_answer",
            Status::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one stage went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageResult {
    /// This stage's own verdict, decided like the execution's.
    pub status: Status,
    /// As the program wrote it; text on the wire (bytes that are not
    /// UTF-8 become U+FFFD).
    #[serde(with = "lossy")]
    pub stdout: Vec<u8>,
    #[serde(with = "lossy")]
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Name of `signal`, e.g. "SIGKILL".
    pub signal_name: Option<String>,
    pub timed_out: bool,
    pub cpu_time_exceeded: bool,
    pub memory_exceeded: bool,
    pub output_truncated: bool,
    pub file_size_exceeded: bool,
    pub process_limit_hit: bool,
    /// From spawn to exit, measured in the guest.
    pub wall_time_ms: f64,
    /// CPU time of all the stage's processes.
    pub cpu_time_ms: f64,
    /// `wall_time_ms` under its first name, kept for existing clients.
    pub wall_time: f64,
    /// `cpu_time_ms` under its first name, kept for existing clients.
    pub cpu_time: f64,
    /// Peak memory of all the stage's processes together, in bytes.
    pub memory_peak_bytes: u64,
    /// The stage ran in the language's runtime prestarted in the snapshot:
    /// the interpreter's start-up happened before the request, and the
    /// wall and CPU times count from the hand-over.
    pub prestarted: bool,
    /// The stage did not run: what it made came from the compile cache,
    /// kept from the same compile before. Its wall time is the lookup's;
    /// its CPU time and memory are none.
    #[serde(default)]
    pub cached: bool,
}

/// How the VM of an execution was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// Booted from the kernel.
    Cold,
    /// Restored from the language's snapshot.
    Snapshot,
    /// Taken from the warm pool: restored ahead of the request.
    Pool,
    /// A session's VM, running already.
    Session,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Cold => "cold",
            StartKind::Snapshot => "snapshot",
            StartKind::Pool => "pool",
            StartKind::Session => "session",
        }
    }
}

/// How the sandbox's CPU ran: a VM's in hardware (`kvm`) or emulated
/// (`tcg`); a gVisor sandbox's natively, its system calls trapped by
/// gVisor's `systrap` platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
    Systrap,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Systrap => "systrap",
        })
    }
}

/// Where the time went; durations in milliseconds, under the first names
/// and again with the unit in the name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionMetrics {
    pub trace_id: String,
    pub language: String,
    pub start: StartKind,
    /// Starting the VMM until its devices are up (the agent channel connects).
    pub vm_boot_time_ms: f64,
    /// From then until the agent said hello: kernel boot and init.
    pub ready_time_ms: f64,
    /// From sending the request until the last stage reported.
    pub execution_time_ms: f64,
    /// From taking the request until the result was ready.
    pub total_time_ms: f64,
    /// The first names of the four above.
    pub vm_boot_time: f64,
    pub ready_time: f64,
    pub execution_time: f64,
    pub total_time: f64,
}

impl ExecutionMetrics {
    /// `times` are the milliseconds of VM boot, ready, execution and total.
    pub fn new(trace_id: String, language: String, start: StartKind, times: [f64; 4]) -> Self {
        let [vm_boot, ready, execution, total] = times;
        Self {
            trace_id,
            language,
            start,
            vm_boot_time_ms: vm_boot,
            ready_time_ms: ready,
            execution_time_ms: execution,
            total_time_ms: total,
            vm_boot_time: vm_boot,
            ready_time: ready,
            execution_time: execution,
            total_time: total,
        }
    }
}

/// Where the program's output first differs from the expected one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Line of the program's output, from 1.
    pub line: usize,
    /// Column (byte) in that line, from 1.
    pub column: usize,
    /// A short excerpt of the expected output there; `(end of output)`
    /// when it had ended.
    pub expected: String,
    /// The same of the program's output.
    pub actual: String,
}

/// A file back from a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative to the working directory.
    pub path: String,
    pub size: u64,
    /// From the file name's extension.
    pub media_type: String,
    /// The content's transport encoding: always `base64`.
    pub encoding: String,
    /// Empty when `truncated`.
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    /// Over a cap: listed, not sent.
    pub truncated: bool,
}

/// One connection a program made through the egress proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The host name it asked for (or the address, when it gave one).
    pub host: String,
    pub port: u16,
    /// Whether the proxy connected it.
    pub allowed: bool,
    /// Bytes from the program to the server, and back.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Why it was refused, or cut short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the network did for an execution.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkReport {
    /// In the order they were made.
    pub connections: Vec<Connection>,
    /// Connections made past the first 1000, not listed.
    pub unlisted: u64,
    /// Bytes through the proxy, both ways.
    pub bytes: u64,
}

/// The result of an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub trace_id: String,
    pub language: String,
    /// The language's version in its image, e.g. "Python 3.13.5".
    pub version: String,
    pub status: Status,
    /// Why the status is what it is, when that is not plain from the stages.
    pub message: Option<String>,
    /// Present for compiled languages.
    pub compile: Option<StageResult>,
    /// Absent when compiling failed (or Runner Codes did before the run).
    pub run: Option<StageResult>,
    pub metrics: ExecutionMetrics,
    pub backend: String,
    pub accel: Option<Accel>,
    /// Where the output first differs from the expected one, for a
    /// `wrong_answer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference: Option<Difference>,
    /// The files the request named as `outputs`, in path order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputFile>,
    /// The connections the program made, when it could use the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkReport>,
}

/// Which stream of a stage's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a streamed execution (`/stream`, and the WebSocket's
/// messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecutionEvent {
    /// It was accepted and starts.
    Started { trace_id: String, language: String },
    /// Output, as the program writes it.
    Output {
        stage: Stage,
        stream: Stream,
        data: String,
    },
    /// It is over: the result a plain request gets.
    Result { result: Box<ExecutionResult> },
}

/// Bytes as text: lossy on the way out, the text's bytes on the way in.
mod lossy {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&String::from_utf8_lossy(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(deserializer)?.into_bytes())
    }
}

/// Bytes as base64.
mod base64_bytes {
    use base64::Engine;

    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
