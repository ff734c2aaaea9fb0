//! What an execution returns: a single status, the compile and run stages,
//! and the timings.

use runner_protocol::{Stage, StageReport};
use serde::{Serialize, Serializer};

use crate::vmm::Accel;

/// The verdict of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    /// This stage's own verdict, decided like the execution's.
    pub status: Status,
    #[serde(serialize_with = "lossy")]
    pub stdout: Vec<u8>,
    #[serde(serialize_with = "lossy")]
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
}

impl StageResult {
    pub fn new(stdout: Vec<u8>, stderr: Vec<u8>, report: StageReport) -> Self {
        let signal_name = report.signal.map(signal_name);
        let file_size_exceeded = report.file_size_exceeded || report.signal == Some(libc::SIGXFSZ);
        let mut stage = Self {
            status: Status::Ok,
            stdout,
            stderr,
            exit_code: report.exit_code,
            signal: report.signal,
            signal_name,
            timed_out: report.timed_out,
            cpu_time_exceeded: report.cpu_time_exceeded,
            memory_exceeded: report.memory_exceeded,
            output_truncated: report.output_truncated,
            file_size_exceeded,
            process_limit_hit: report.process_limit_hit,
            wall_time_ms: report.wall_time_us as f64 / 1e3,
            cpu_time_ms: report.cpu_time_us as f64 / 1e3,
            wall_time: report.wall_time_us as f64 / 1e3,
            cpu_time: report.cpu_time_us as f64 / 1e3,
            memory_peak_bytes: report.memory_peak_bytes,
            prestarted: report.prestarted,
        };
        stage.status = stage.verdict();
        stage
    }

    /// A limit the agent enforced explains the ending before the exit does:
    /// a program killed at its memory limit died of SIGKILL, but the verdict
    /// is the memory limit.
    fn verdict(&self) -> Status {
        if self.memory_exceeded {
            Status::MemoryLimitExceeded
        } else if self.timed_out || self.cpu_time_exceeded {
            Status::TimeLimitExceeded
        } else if self.output_truncated || self.file_size_exceeded {
            Status::OutputLimitExceeded
        } else if self.signal.is_some() {
            Status::Signaled
        } else if self.exit_code == Some(0) {
            Status::Ok
        } else {
            Status::RuntimeError
        }
    }

    /// Says which limit ended the stage, for the result's message.
    pub fn limit_message(&self, stage: Stage) -> Option<String> {
        let what = if self.memory_exceeded {
            "reached its memory limit and was killed"
        } else if self.timed_out {
            "reached its wall-time limit and was killed"
        } else if self.cpu_time_exceeded {
            "reached its CPU-time limit and was killed"
        } else if self.output_truncated {
            "reached its output limit; output was cut and the program killed"
        } else if self.file_size_exceeded {
            "reached its file-size limit (a file, or all its files together)"
        } else if self.process_limit_hit {
            "reached its process limit (a fork or thread creation failed)"
        } else {
            return None;
        };
        Some(format!("{stage} stage {what}"))
    }
}

/// How the VM of an execution was obtained.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
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

/// The seed's `ExecutionMetrics`; durations in milliseconds, under the
/// seed's names and again with the unit in the name.
#[derive(Debug, Clone, Serialize)]
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
    /// The seed's names of the four above.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
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
    pub backend: &'static str,
    pub accel: Option<Accel>,
    /// Where the output first differs from the expected one, for a
    /// `wrong_answer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<Difference>,
    /// The files the request named as `outputs`, in path order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<super::outputs::OutputFile>,
    /// The connections the program made, when it could use the network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::net::proxy::NetworkReport>,
}

impl ExecutionResult {
    /// The verdict from the stages: a failed compile is a compile error,
    /// whatever ended it; otherwise the run stage decides.
    /// `planned_run` says whether the plan had a run stage at all.
    pub fn verdict(
        compile: Option<&StageResult>,
        run: Option<&StageResult>,
        planned_run: bool,
    ) -> (Status, Option<String>) {
        if let Some(compile) = compile.filter(|c| c.status != Status::Ok) {
            let why = compile.limit_message(Stage::Compile).unwrap_or_else(|| {
                match (compile.exit_code, &compile.signal_name) {
                    (Some(code), _) => format!("compilation failed with exit code {code}"),
                    (None, Some(signal)) => format!("the compiler was killed by {signal}"),
                    (None, None) => "compilation failed".into(),
                }
            });
            return (Status::CompileError, Some(why));
        }
        match (run, compile) {
            (Some(run), _) => (run.status, run.limit_message(Stage::Run)),
            // A compile-only plan (a judge's first step) ends with its compile.
            (None, Some(compile)) if !planned_run => (compile.status, None),
            (None, _) => (
                Status::InternalError,
                Some("the run stage did not report".into()),
            ),
        }
    }
}

impl ExecutionResult {
    /// The one structured log line of a finished execution.
    pub(crate) fn log(&self) {
        let m = &self.metrics;
        tracing::info!(
            target: "runner::execution",
            trace_id = %m.trace_id,
            language = %m.language,
            status = %self.status,
            start = m.start.as_str(),
            vm_boot_time = m.vm_boot_time_ms,
            ready_time = m.ready_time_ms,
            execution_time = m.execution_time_ms,
            total_time = m.total_time_ms,
            exit_code = self.run.as_ref().and_then(|s| s.exit_code),
            signal = self.run.as_ref().and_then(|s| s.signal),
            accel = self.accel.map(|a| a.to_string()),
            "execution finished"
        );
    }
}

fn lossy<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(report: StageReport) -> StageResult {
        StageResult::new(Vec::new(), Vec::new(), report)
    }

    fn report() -> StageReport {
        StageReport::new(Stage::Run)
    }

    #[test]
    fn limits_explain_the_ending_before_the_exit() {
        let killed = StageReport {
            signal: Some(9),
            ..report()
        };
        assert_eq!(stage(killed.clone()).status, Status::Signaled);
        let cases = [
            (
                StageReport {
                    memory_exceeded: true,
                    ..killed.clone()
                },
                Status::MemoryLimitExceeded,
            ),
            (
                StageReport {
                    timed_out: true,
                    ..killed.clone()
                },
                Status::TimeLimitExceeded,
            ),
            (
                StageReport {
                    cpu_time_exceeded: true,
                    ..killed.clone()
                },
                Status::TimeLimitExceeded,
            ),
            (
                StageReport {
                    output_truncated: true,
                    ..killed.clone()
                },
                Status::OutputLimitExceeded,
            ),
            (
                StageReport {
                    signal: Some(libc::SIGXFSZ),
                    ..report()
                },
                Status::OutputLimitExceeded,
            ),
            (
                StageReport {
                    exit_code: Some(0),
                    ..report()
                },
                Status::Ok,
            ),
            (
                StageReport {
                    exit_code: Some(1),
                    ..report()
                },
                Status::RuntimeError,
            ),
        ];
        for (report, expected) in cases {
            assert_eq!(stage(report.clone()).status, expected, "{report:?}");
        }
        assert_eq!(stage(killed).signal_name.as_deref(), Some("SIGKILL"));
    }

    #[test]
    fn a_failed_compile_is_a_compile_error_whatever_ended_it() {
        let failed = stage(StageReport {
            exit_code: Some(1),
            ..report()
        });
        let (status, message) = ExecutionResult::verdict(Some(&failed), None, true);
        assert_eq!(status, Status::CompileError);
        assert_eq!(message.unwrap(), "compilation failed with exit code 1");

        let slow = stage(StageReport {
            timed_out: true,
            signal: Some(9),
            ..report()
        });
        let (status, message) = ExecutionResult::verdict(Some(&slow), None, true);
        assert_eq!(status, Status::CompileError);
        assert!(message.unwrap().contains("wall-time limit"));

        let ok = stage(StageReport {
            exit_code: Some(0),
            ..report()
        });
        let run = stage(StageReport {
            exit_code: Some(3),
            ..report()
        });
        assert_eq!(
            ExecutionResult::verdict(Some(&ok), Some(&run), true).0,
            Status::RuntimeError
        );
    }
}
