//! What an execution returns (a single status, the compile and run
//! stages, the timings; the types are the API's, [`runner_wire`]), and how
//! it is decided from what the agent reported.

use runner_protocol::{Stage, StageReport};

pub use runner_wire::{
    Difference, ExecutionMetrics, ExecutionResult, StageResult, StartKind, Status,
};

/// A stage's result from the agent's report and the output it kept.
pub fn stage_result(stdout: Vec<u8>, stderr: Vec<u8>, report: StageReport) -> StageResult {
    let signal_name = report.signal.map(signal_name);
    let file_size_exceeded = report.file_size_exceeded || report.signal == Some(libc::SIGXFSZ);
    let mut stage = StageResult {
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
        cached: false,
    };
    stage.status = stage_verdict(&stage);
    stage
}

/// A limit the agent enforced explains the ending before the exit does:
/// a program killed at its memory limit died of SIGKILL, but the verdict
/// is the memory limit.
fn stage_verdict(stage: &StageResult) -> Status {
    if stage.memory_exceeded {
        Status::MemoryLimitExceeded
    } else if stage.timed_out || stage.cpu_time_exceeded {
        Status::TimeLimitExceeded
    } else if stage.output_truncated || stage.file_size_exceeded {
        Status::OutputLimitExceeded
    } else if stage.signal.is_some() {
        Status::Signaled
    } else if stage.exit_code == Some(0) {
        Status::Ok
    } else {
        Status::RuntimeError
    }
}

/// Says which limit ended `stage`, for the result's message.
pub fn limit_message(result: &StageResult, stage: Stage) -> Option<String> {
    let what = if result.memory_exceeded {
        "reached its memory limit and was killed"
    } else if result.timed_out {
        "reached its wall-time limit and was killed"
    } else if result.cpu_time_exceeded {
        "reached its CPU-time limit and was killed"
    } else if result.output_truncated {
        "reached its output limit; output was cut and the program killed"
    } else if result.file_size_exceeded {
        "reached its file-size limit (a file, or all its files together)"
    } else if result.process_limit_hit {
        "reached its process limit (a fork or thread creation failed)"
    } else {
        return None;
    };
    Some(format!("{stage} stage {what}"))
}

/// The verdict from the stages: a failed compile is a compile error,
/// whatever ended it; otherwise the run stage decides. `planned_run` says
/// whether the plan had a run stage at all.
pub fn verdict(
    compile: Option<&StageResult>,
    run: Option<&StageResult>,
    planned_run: bool,
) -> (Status, Option<String>) {
    if let Some(compile) = compile.filter(|c| c.status != Status::Ok) {
        let why = limit_message(compile, Stage::Compile).unwrap_or_else(|| {
            match (compile.exit_code, &compile.signal_name) {
                (Some(code), _) => format!("compilation failed with exit code {code}"),
                (None, Some(signal)) => format!("the compiler was killed by {signal}"),
                (None, None) => "compilation failed".into(),
            }
        });
        return (Status::CompileError, Some(why));
    }
    match (run, compile) {
        (Some(run), _) => (run.status, limit_message(run, Stage::Run)),
        // A compile-only plan (a judge's first step) ends with its compile.
        (None, Some(compile)) if !planned_run => (compile.status, None),
        (None, _) => (
            Status::InternalError,
            Some("the run stage did not report".into()),
        ),
    }
}

/// The one structured log line of a finished execution.
pub(crate) fn log(result: &ExecutionResult) {
    let m = &result.metrics;
    tracing::info!(
        target: "runner::execution",
        trace_id = %m.trace_id,
        language = %m.language,
        status = %result.status,
        start = m.start.as_str(),
        vm_boot_time = m.vm_boot_time_ms,
        ready_time = m.ready_time_ms,
        execution_time = m.execution_time_ms,
        total_time = m.total_time_ms,
        exit_code = result.run.as_ref().and_then(|s| s.exit_code),
        signal = result.run.as_ref().and_then(|s| s.signal),
        accel = result.accel.map(|a| a.to_string()),
        "execution finished"
    );
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
        stage_result(Vec::new(), Vec::new(), report)
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
        let (status, message) = verdict(Some(&failed), None, true);
        assert_eq!(status, Status::CompileError);
        assert_eq!(message.unwrap(), "compilation failed with exit code 1");

        let slow = stage(StageReport {
            timed_out: true,
            signal: Some(9),
            ..report()
        });
        let (status, message) = verdict(Some(&slow), None, true);
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
        assert_eq!(verdict(Some(&ok), Some(&run), true).0, Status::RuntimeError);
    }
}
