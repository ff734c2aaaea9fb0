//! What `runner` exits with: the program's own status where it ran, and
//! otherwise which side a failure was on, by the error table's rule (a
//! request the caller got wrong, or a failure of ours).

use std::process::ExitCode;

use runner_wire::{ErrorCode, ExecutionResult, Status};

/// Exit status when the program ran past its time limit (as timeout(1)).
pub const EXIT_TIMED_OUT: u8 = 124;
/// Exit status when Runner Codes itself failed (as docker run).
pub const EXIT_RUNNER_FAILED: u8 = 125;
/// Exit status of a request the user got wrong, refused before anything
/// ran (as clap's own usage errors).
pub const EXIT_USAGE: u8 = 2;

/// A mistake in what the user asked for, as opposed to a failure of ours:
/// the command exits with [`EXIT_USAGE`].
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit status of an error of this kind: the caller's (4xx in the
/// table) is a usage error, anything else ours.
pub fn of_code(code: ErrorCode) -> ExitCode {
    ExitCode::from(if code.is_callers() {
        EXIT_USAGE
    } else {
        EXIT_RUNNER_FAILED
    })
}

/// The program's exit status, as a shell would report it; 124 for a time
/// limit (as timeout(1)), 1 for a compile error or a wrong answer, 125 for
/// our own failure.
pub fn of_result(result: &ExecutionResult) -> ExitCode {
    match result.status {
        Status::InternalError => return ExitCode::from(EXIT_RUNNER_FAILED),
        Status::TimeLimitExceeded => return ExitCode::from(EXIT_TIMED_OUT),
        Status::CompileError | Status::WrongAnswer => return ExitCode::from(1),
        _ => {}
    }
    let Some(run) = &result.run else {
        return ExitCode::from(EXIT_RUNNER_FAILED);
    };
    match (run.exit_code, run.signal) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128u8.saturating_add(signal as u8)),
        (None, None) => ExitCode::from(EXIT_RUNNER_FAILED),
    }
}

/// Says on stderr why a result is not a success, as `runner run` does.
pub fn explain(result: &ExecutionResult) {
    if matches!(result.status, Status::Ok | Status::Accepted) {
        return;
    }
    match &result.message {
        Some(message) => eprintln!("runner: {}: {message}", result.status),
        None => eprintln!("runner: {}", result.status),
    }
    if let Some(difference) = &result.difference {
        eprintln!("runner:   expected: {:?}", difference.expected);
        eprintln!("runner:   actual:   {:?}", difference.actual);
    }
}

/// Waits for SIGINT, SIGTERM or SIGHUP, and names it.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// The exit status of a command stopped by `signal` (128 + its number).
pub fn of_signal(signal: &str) -> ExitCode {
    let number = match signal {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        _ => 15,
    };
    ExitCode::from(128 + number)
}
