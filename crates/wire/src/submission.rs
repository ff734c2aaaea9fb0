//! What a judge gets back: each test's verdict, the submission's, and the
//! lines of a streamed submission.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::result::{Difference, StageResult, StartKind, Status};

/// How one test went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    /// The verdict: `accepted` or `wrong_answer` when the run was `ok` and
    /// the test had an expected output, `ok` when it had none, the run's
    /// status otherwise (`time_limit_exceeded`, ...), or `skipped`.
    pub status: Status,
    /// The run stage's own status, as for an execution (`ok`,
    /// `runtime_error`, ...); `null` when the test did not run.
    pub run_status: Option<Status>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub signal_name: Option<String>,
    pub wall_time_ms: f64,
    pub cpu_time_ms: f64,
    pub memory_peak_bytes: u64,
    /// The start of each (64 KiB).
    pub stdout: String,
    pub stderr: String,
    /// The report holds only the start of stdout or stderr.
    pub output_cut: bool,
    /// Where the output first differs, for a `wrong_answer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference: Option<Difference>,
    /// How its VM started (`snapshot`, `pool`, `cold`).
    pub start: Option<StartKind>,
    pub trace_id: String,
}

impl TestResult {
    /// The test passed: accepted, or ok where nothing was expected.
    pub fn passed(&self) -> bool {
        matches!(self.status, Status::Accepted | Status::Ok)
    }
}

/// Counts of tests by verdict, and the most any test used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub tests: usize,
    /// Tests per verdict, e.g. `{"accepted": 18, "wrong_answer": 2}`.
    pub verdicts: BTreeMap<String, usize>,
    pub max_wall_time_ms: f64,
    pub max_cpu_time_ms: f64,
    pub max_memory_peak_bytes: u64,
}

/// How a submission went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmissionResult {
    pub trace_id: String,
    pub language: String,
    pub version: String,
    /// `compile_error` (no test ran), the verdict of the first test (in
    /// their order) that did not pass, or `accepted` (`ok` when no test had
    /// an expected output).
    pub status: Status,
    pub message: Option<String>,
    /// The compile stage, for compiled languages.
    pub compile: Option<StageResult>,
    pub tests: Vec<TestResult>,
    pub summary: Summary,
    /// From taking the submission until its result.
    pub total_time_ms: f64,
}

/// One line of a streamed submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SubmissionEvent {
    /// It was accepted and starts.
    Started {
        trace_id: String,
        language: String,
        tests: usize,
    },
    /// The program is compiled (or failed to).
    Compiled {
        status: Status,
        compile: Option<StageResult>,
    },
    /// A test is over.
    Test { index: usize, test: TestResult },
    /// It is over: the result a plain request gets.
    Result { result: Box<SubmissionResult> },
}
