//! A checker: a program of the request's that decides whether an output is
//! right, as testlib's checkers do. It gets the test's input, the program's
//! output and the expected output as files, and is run as
//! `checker input.txt output.txt expected.txt` (testlib's order: input,
//! participant's output, answer). Its exit code decides: 0 accepted, 1
//! wrong answer (its stdout or stderr says why), anything else a failure
//! of the checker, reported as `internal_error` with its stderr.
//!
//! It runs in VMs of its own, never in the program's: compiled once (for a
//! compiled language), then one VM for each output it judges.

use runner_protocol::File;

use crate::exec::acquire::Vms;
use crate::exec::{ExecutionRequest, Part, Plan, PlanError, Planner, SourceFile, Status};
use crate::oneshot;

/// The files a checker gets, as it is called.
pub const INPUT: &str = "input.txt";
pub const OUTPUT: &str = "output.txt";
pub const EXPECTED: &str = "expected.txt";

/// Most of a checker's message kept in a result.
const NOTE_BYTES: usize = 1024;

/// A checker as a request gives it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckerRequest {
    pub language: String,
    pub files: Vec<SourceFile>,
}

/// A checked checker: its files, its compile, and its run.
#[derive(Debug, Clone)]
pub struct CheckerPlan {
    pub language: String,
    /// Its files, the entry point named.
    pub files: Vec<File>,
    /// For a compiled language.
    pub compile: Option<Plan>,
    /// The run stage with the three files as arguments; the files are added
    /// for each output it judges.
    pub run: Plan,
}

impl CheckerPlan {
    /// The largest VM it needs.
    pub fn vm_memory_mib(&self) -> u32 {
        self.compile
            .iter()
            .map(|c| c.vm_memory_mib)
            .chain([self.run.vm_memory_mib])
            .max()
            .unwrap_or(0)
    }
}

/// Checks `request` with `planner`; `trace_id` names its VMs. Errors name
/// the field (`compare.checker`).
pub fn plan(
    planner: &Planner,
    request: CheckerRequest,
    trace_id: &str,
    owner: &str,
) -> Result<CheckerPlan, PlanError> {
    let field = |e: PlanError| match e {
        PlanError::Invalid(message) => PlanError::Invalid(format!("compare.checker: {message}")),
        PlanError::TooLarge(message) => PlanError::TooLarge(format!("compare.checker: {message}")),
        other => PlanError::Invalid(format!("compare.checker.language: {other}")),
    };
    let language = planner.language(&request.language).map_err(field)?.clone();
    if let Some(taken) = request
        .files
        .iter()
        .filter_map(|f| f.name.as_deref())
        .find(|name| [INPUT, OUTPUT, EXPECTED].contains(name))
    {
        return Err(PlanError::Invalid(format!(
            "compare.checker: the file name {taken} is taken by the files the checker gets"
        )));
    }
    let base = ExecutionRequest {
        language: language.name.clone(),
        files: request.files,
        trace_id: Some(format!("{trace_id}-checker")),
        owner: owner.to_string(),
        ..ExecutionRequest::default()
    };
    let (files, compile) = if language.compile.is_some() {
        let compile = planner.plan_part(base, Part::Compile).map_err(field)?;
        (compile.exec.files.clone(), Some(compile))
    } else {
        (planner.plan(base).map_err(field)?.exec.files, None)
    };
    let run = planner
        .plan_part(
            ExecutionRequest {
                language: language.name.clone(),
                args: [INPUT, OUTPUT, EXPECTED].map(String::from).into(),
                trace_id: Some(format!("{trace_id}-check")),
                ..ExecutionRequest::default()
            },
            Part::Run,
        )
        .map_err(field)?;
    Ok(CheckerPlan {
        language: language.name,
        files,
        compile,
        run,
    })
}

/// A checker ready to judge: compiled, if it needed to be.
#[derive(Debug, Clone)]
pub struct Checker {
    files: Vec<File>,
    run: Plan,
}

/// What a checker decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Accepted,
    /// Wrong answer, with what the checker said.
    WrongAnswer(String),
    /// The checker itself failed.
    Failed(String),
}

/// Compiles `plan`'s checker if its language needs it.
pub(crate) async fn prepare(vms: &Vms, plan: &CheckerPlan) -> Result<Checker, String> {
    let mut files = plan.files.clone();
    if let Some(compile) = &plan.compile {
        let (result, collected) =
            oneshot::execute(vms, compile, None, None, std::future::pending()).await;
        crate::exec::log(&result);
        if result.status != Status::Ok {
            let stderr = result
                .compile
                .as_ref()
                .map(|c| note(&c.stderr))
                .unwrap_or_default();
            return Err(format!(
                "the checker did not compile ({}): {}",
                result.status,
                result.message.as_deref().unwrap_or(&stderr)
            ));
        }
        files.extend(collected);
    }
    Ok(Checker {
        files,
        run: plan.run.clone(),
    })
}

impl Checker {
    /// Judges `output` for the test with `input` and `expected`, in a VM
    /// named after `id`.
    pub(crate) async fn check(
        &self,
        vms: &Vms,
        id: &str,
        input: &[u8],
        expected: &[u8],
        output: &[u8],
    ) -> Outcome {
        let mut plan = self.run.clone();
        plan.trace_id = format!("{id}-check");
        plan.exec.files = self.files.clone();
        for (name, content) in [(INPUT, input), (OUTPUT, output), (EXPECTED, expected)] {
            plan.exec.files.push(File {
                name: name.into(),
                content: content.to_vec(),
                executable: false,
            });
        }
        let (result, _) = oneshot::execute(vms, &plan, None, None, std::future::pending()).await;
        crate::exec::log(&result);
        let Some(run) = &result.run else {
            return Outcome::Failed(format!(
                "the checker did not run: {}",
                result.message.unwrap_or_default()
            ));
        };
        match (result.status, run.exit_code) {
            (Status::Ok, Some(0)) => Outcome::Accepted,
            (Status::RuntimeError, Some(1)) => {
                let why = if run.stdout.is_empty() {
                    &run.stderr
                } else {
                    &run.stdout
                };
                Outcome::WrongAnswer(note(why))
            }
            (status, exit) => Outcome::Failed(format!(
                "the checker failed ({status}{}): {}",
                exit.map(|c| format!(", exit code {c}")).unwrap_or_default(),
                note(&run.stderr)
            )),
        }
    }
}

/// The start of a checker's message, as text.
fn note(bytes: &[u8]) -> String {
    let end = bytes.len().min(NOTE_BYTES);
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{LimitPolicy, Stage};
    use crate::lang::Languages;

    fn planner() -> Planner {
        Planner::new(Languages::builtin().unwrap(), LimitPolicy::default(), &[])
    }

    #[test]
    fn a_checker_is_compiled_once_and_run_with_three_files() {
        let request = CheckerRequest {
            language: "cpp".into(),
            files: vec![SourceFile::entry("int main() {}")],
        };
        let plan = plan(&planner(), request, "t", "").unwrap();
        let compile = plan.compile.as_ref().unwrap();
        assert_eq!(compile.exec.stages[0].stage, Stage::Compile);
        assert_eq!(compile.trace_id, "t-checker");
        assert_eq!(plan.files[0].name, "main.cpp");
        assert_eq!(
            plan.run.exec.stages[0].argv,
            ["./main", "input.txt", "output.txt", "expected.txt"]
        );
        let python = CheckerRequest {
            language: "py".into(),
            files: vec![SourceFile::entry("import sys")],
        };
        let plan = super::plan(&planner(), python, "t", "").unwrap();
        assert!(plan.compile.is_none());
        assert_eq!(plan.files[0].name, "main.py");
    }

    #[test]
    fn a_bad_checker_is_refused_naming_the_field() {
        let says = |request: CheckerRequest, text: &str| {
            let message = plan(&planner(), request, "t", "").unwrap_err().to_string();
            assert!(message.contains(text), "{message:?} does not say {text:?}");
        };
        says(
            CheckerRequest {
                language: "cobol".into(),
                files: vec![SourceFile::entry("")],
            },
            "compare.checker.language: unknown language \"cobol\"",
        );
        says(
            CheckerRequest {
                language: "python".into(),
                files: vec![],
            },
            "compare.checker: there are no files",
        );
        says(
            CheckerRequest {
                language: "python".into(),
                files: vec![SourceFile::entry(""), SourceFile::named("output.txt", "")],
            },
            "output.txt is taken",
        );
    }
}
