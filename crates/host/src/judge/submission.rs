//! A submission: one program and many tests, checked once into a
//! [`SubmissionPlan`]: the compile (for compiled languages) and one
//! run-only plan per test.

use std::collections::BTreeMap;

use runner_protocol::File;

use std::sync::Arc;

use super::{Check, CheckerPlan, Compare, Expected};
use crate::exec::{
    ExecutionRequest, Part, Plan, PlanError, Planner, RequestLimits, SourceFile, StageLimits,
    new_trace_id,
};
use crate::lang::Language;

/// Most tests in one submission.
pub const MAX_TESTS: usize = 1000;
/// Most test data (stdin, expected output and arguments of every test) in
/// one submission.
pub const MAX_TEST_DATA_BYTES: usize = 64 << 20;
/// Longest test name.
const MAX_NAME_BYTES: usize = 128;

/// One test of a submission.
#[derive(Debug, Clone, Default)]
pub struct TestCase {
    pub name: String,
    pub stdin: Vec<u8>,
    pub args: Vec<String>,
    /// `None`: the test passes when the run is `ok`.
    pub expected_output: Option<Vec<u8>>,
    /// Limits of this test's run, over the submission's.
    pub limits: StageLimits,
}

/// What a judge asks: a program, how to build and run it, and its tests.
#[derive(Debug, Clone, Default)]
pub struct SubmissionRequest {
    pub language: String,
    pub files: Vec<SourceFile>,
    pub env: BTreeMap<String, String>,
    /// The compile stage's limits and every test's run limits.
    pub limits: RequestLimits,
    /// How every test's output is compared (lines when not given).
    pub compare: Option<Compare>,
    pub tests: Vec<TestCase>,
    /// After the first test that is not accepted, run no more (they are
    /// `skipped`).
    pub stop_on_first_failure: bool,
    pub trace_id: Option<String>,
    /// Who asks (see [`ExecutionRequest::owner`]).
    pub owner: String,
}

/// A checked submission.
#[derive(Debug, Clone)]
pub struct SubmissionPlan {
    pub trace_id: String,
    pub language: Language,
    /// The program's files, the entry point named.
    pub files: Vec<File>,
    /// The compile, which sends back what it makes; `None` for languages
    /// without one.
    pub compile: Option<Plan>,
    /// The checker every test's output goes to, if `compare` named one.
    pub checker: Option<Arc<CheckerPlan>>,
    pub tests: Vec<TestPlan>,
    pub stop_on_first_failure: bool,
}

#[derive(Debug, Clone)]
pub struct TestPlan {
    pub name: String,
    /// The run stage alone; the program's files are added when it runs.
    pub plan: Plan,
    /// What it must print; `None`: the test passes when the run is `ok`.
    pub expected: Option<Expected>,
}

impl TestPlan {
    /// The largest VM the test needs: its run's, or its checker's.
    pub fn vm_memory_mib(&self) -> u32 {
        let checker = self.expected.as_ref().map_or(0, Expected::vm_memory_mib);
        self.plan.vm_memory_mib.max(checker)
    }
}

impl SubmissionPlan {
    /// The largest VM any of its steps needs.
    pub fn vm_memory_mib(&self) -> u32 {
        self.tests
            .iter()
            .map(TestPlan::vm_memory_mib)
            .chain(self.compile.iter().map(|c| c.vm_memory_mib))
            .max()
            .unwrap_or(0)
    }
}

/// How much test data a request carries, for the size rule.
pub fn test_data_bytes(tests: &[TestCase]) -> usize {
    tests
        .iter()
        .map(|t| {
            t.stdin.len()
                + t.expected_output.as_ref().map_or(0, Vec::len)
                + t.args.iter().map(String::len).sum::<usize>()
        })
        .sum()
}

/// Checks `request` with `planner` and plans each of its steps.
pub fn plan(planner: &Planner, request: SubmissionRequest) -> Result<SubmissionPlan, PlanError> {
    let language = planner.language(&request.language)?.clone();
    let invalid = |message: String| Err(PlanError::Invalid(message));
    if request.tests.is_empty() {
        return invalid("there are no tests: send at least one".into());
    }
    if request.tests.len() > MAX_TESTS {
        return Err(PlanError::TooLarge(format!(
            "{} tests; a submission can have at most {MAX_TESTS}",
            request.tests.len()
        )));
    }
    let data = test_data_bytes(&request.tests);
    if data > MAX_TEST_DATA_BYTES {
        return Err(PlanError::TooLarge(format!(
            "the tests hold {data} bytes of data; a submission can hold at most {MAX_TEST_DATA_BYTES}"
        )));
    }
    for (i, test) in request.tests.iter().enumerate() {
        let name = &test.name;
        if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
            return invalid(format!(
                "tests[{i}].name {name:?} must be 1 to {MAX_NAME_BYTES} bytes without control characters"
            ));
        }
        if request.tests[..i].iter().any(|t| t.name == *name) {
            return invalid(format!("tests[{i}].name {name:?} is used twice"));
        }
    }
    let trace_id = request.trace_id.unwrap_or_else(new_trace_id);
    // Checked once; a checker is planned once for every test.
    let check = request
        .compare
        .unwrap_or_default()
        .check(planner, &trace_id, &request.owner)?;
    let base = ExecutionRequest {
        language: language.name.clone(),
        files: request.files,
        env: request.env,
        limits: request.limits,
        owner: request.owner,
        ..ExecutionRequest::default()
    };
    // The files are named and checked once, by the compile or by a whole
    // plan of the program, whose stages are then dropped.
    let (files, compile) = if language.compile.is_some() {
        let compile = planner.plan_part(
            ExecutionRequest {
                trace_id: Some(format!("{trace_id}-compile")),
                ..base.clone()
            },
            Part::Compile,
        )?;
        (compile.exec.files.clone(), Some(compile))
    } else {
        let whole = planner.plan(base.clone())?;
        (whole.exec.files, None)
    };
    let mut tests = Vec::with_capacity(request.tests.len());
    for (i, test) in request.tests.into_iter().enumerate() {
        let limits = RequestLimits {
            compile: base.limits.compile,
            // The test's own, the submission's where it says nothing.
            run: test.limits.or(base.limits.run),
        };
        let plan = planner
            .plan_part(
                ExecutionRequest {
                    language: language.name.clone(),
                    files: Vec::new(),
                    stdin: test.stdin,
                    args: test.args,
                    env: base.env.clone(),
                    limits,
                    trace_id: Some(format!("{trace_id}-{i}")),
                    ..ExecutionRequest::default()
                },
                Part::Run,
            )
            .map_err(|e| match e {
                PlanError::Invalid(message) => {
                    PlanError::Invalid(format!("tests[{i}] ({}): {message}", test.name))
                }
                other => other,
            })?;
        // A test without an expected output passes when it runs ok.
        let expected = test.expected_output.map(|output| Expected {
            output,
            check: check.clone(),
        });
        tests.push(TestPlan {
            name: test.name,
            plan,
            expected,
        });
    }
    Ok(SubmissionPlan {
        trace_id,
        language,
        files,
        compile,
        checker: match check {
            Check::Checker(checker) => Some(checker),
            Check::Compare(_) => None,
        },
        tests,
        stop_on_first_failure: request.stop_on_first_failure,
    })
}

/// Counts of tests by verdict, and the most any test used.
pub use runner_wire::Summary;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{LimitPolicy, Stage};
    use crate::lang::Languages;

    fn planner() -> Planner {
        Planner::new(Languages::builtin().unwrap(), LimitPolicy::default(), &[])
    }

    fn submission(language: &str, tests: Vec<TestCase>) -> SubmissionRequest {
        SubmissionRequest {
            language: language.into(),
            files: vec![SourceFile::entry("the program")],
            tests,
            ..SubmissionRequest::default()
        }
    }

    fn test(name: &str) -> TestCase {
        TestCase {
            name: name.into(),
            stdin: b"1 2\n".to_vec(),
            expected_output: Some(b"3\n".to_vec()),
            ..TestCase::default()
        }
    }

    #[test]
    fn a_compiled_language_compiles_once_and_runs_each_test() {
        let mut request = submission("cpp", vec![test("a"), test("b")]);
        request.limits.run.wall_time_ms = Some(2_000);
        request.tests[1].limits.wall_time_ms = Some(500);
        request.tests[1].args = vec!["-v".into()];
        request.trace_id = Some("t".into());
        let plan = plan(&planner(), request).unwrap();
        let compile = plan.compile.as_ref().unwrap();
        assert_eq!(compile.exec.stages.len(), 1);
        assert_eq!(compile.exec.stages[0].stage, Stage::Compile);
        assert_eq!(compile.exec.collect, ["main"]);
        assert_eq!(plan.files[0].name, "main.cpp");
        assert_eq!(plan.tests.len(), 2);
        let (a, b) = (&plan.tests[0].plan, &plan.tests[1].plan);
        assert_eq!(a.trace_id, "t-0");
        assert_eq!(a.exec.stages.len(), 1);
        assert_eq!(a.exec.stages[0].limits.wall_time_ms, 2_000);
        assert_eq!(b.exec.stages[0].limits.wall_time_ms, 500, "the test's own");
        assert_eq!(b.exec.stages[0].argv, ["./main", "-v"]);
        assert_eq!(a.exec.stdin, b"1 2\n");
        assert!(plan.tests[0].expected.is_some());
        assert!(a.exec.files.is_empty(), "added when the test runs");
    }

    #[test]
    fn an_interpreted_language_has_no_compile() {
        let plan = plan(&planner(), submission("python", vec![test("a")])).unwrap();
        assert!(plan.compile.is_none());
        assert_eq!(plan.files[0].name, "main.py");
        let mut no_expected = test("b");
        no_expected.expected_output = None;
        let plan = super::plan(&planner(), submission("python", vec![no_expected])).unwrap();
        assert!(plan.tests[0].expected.is_none());
    }

    #[test]
    fn bad_submissions_are_refused_with_the_field_named() {
        let refused = |request: SubmissionRequest| plan(&planner(), request).unwrap_err();
        let says = |request: SubmissionRequest, text: &str| {
            let message = refused(request).to_string();
            assert!(message.contains(text), "{message:?} does not say {text:?}");
        };
        says(submission("python", vec![]), "no tests");
        says(
            submission("python", vec![test("a"), test("a")]),
            "tests[1].name \"a\" is used twice",
        );
        says(submission("python", vec![test("")]), "tests[0].name");
        says(
            submission("python", vec![test("a\nb")]),
            "control characters",
        );
        let mut bad_limit = test("slow");
        bad_limit.limits.wall_time_ms = Some(0);
        says(
            submission("python", vec![bad_limit]),
            "tests[0] (slow): run.wall_time_ms must be above 0",
        );
        let mut nul = test("nul");
        nul.args = vec!["a\0b".into()];
        says(
            submission("python", vec![nul]),
            "tests[0] (nul): args[0] contains a NUL byte",
        );
        let mut tolerance = submission("python", vec![test("a")]);
        tolerance.compare = Some(Compare::Float {
            absolute_tolerance: f64::NAN,
            relative_tolerance: 0.0,
        });
        says(tolerance, "absolute_tolerance");
        says(submission("cobol", vec![test("a")]), "cobol");
        let many = (0..=MAX_TESTS).map(|i| test(&i.to_string())).collect();
        assert!(matches!(
            refused(submission("bash", many)),
            PlanError::TooLarge(_)
        ));
        let mut big = test("big");
        big.stdin = vec![b'x'; MAX_TEST_DATA_BYTES];
        assert!(matches!(
            refused(submission("bash", vec![big])),
            PlanError::TooLarge(_)
        ));
    }
}
