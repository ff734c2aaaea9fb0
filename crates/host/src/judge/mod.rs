//! The judge's shape of work: whether a program's output is the expected
//! one, for one execution or for a submission of many tests.
//!
//! Judging is composed after execution: a request may carry the output it
//! expects and how to compare ([`Compare`]), checked into an [`Expected`]
//! beside the execution's plan (a [`JudgedPlan`]); the plan itself runs as
//! any one-shot execution does, and a run that ended well (status `ok`)
//! becomes `accepted` or `wrong_answer`, with the place where the outputs
//! first differ. Any other status (a limit, a crash, a compile error, our
//! failure) stays as it is: it explains the run better than a comparison
//! would.

pub mod batch;
pub mod checker;
pub mod compare;
pub mod submission;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

pub use batch::{Capacity, Slots, SubmissionEvent, SubmissionResult, TestResult};
pub use checker::{CheckerPlan, CheckerRequest};
pub use compare::{Comparison, Difference};
pub use submission::{SubmissionPlan, SubmissionRequest, TestCase};

use crate::exec::acquire::Vms;
use crate::exec::conversation::Input;
use crate::exec::{ExecutionResult, OutputChunk, Plan, PlanError, Planner, Status};

/// How a request asks for outputs to be compared: the API's `compare`
/// object and the CLI's `--compare` and `--checker`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Compare {
    /// Byte for byte.
    Exact,
    /// Line by line, ignoring whitespace at the end of lines and blank
    /// lines at the end.
    #[default]
    Lines,
    /// Whitespace-separated tokens.
    Tokens,
    /// Tokens, with numbers equal within a tolerance.
    Float {
        absolute_tolerance: f64,
        relative_tolerance: f64,
    },
    /// A program of the request's decides, in a VM of its own (see
    /// [`checker`]).
    Checker(CheckerRequest),
}

/// testlib's and most judges' default for floating-point answers.
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

impl Compare {
    /// What decides with this comparison, checked (a checker planned with
    /// `planner`; `trace_id` names its VMs).
    /// Checked for a request of `owner` named `trace_id`.
    pub fn check(self, planner: &Planner, trace_id: &str, owner: &str) -> Result<Check, PlanError> {
        match self {
            Compare::Checker(request) => Ok(Check::Checker(Arc::new(checker::plan(
                planner, request, trace_id, owner,
            )?))),
            other => other
                .comparison()
                .map(Check::Compare)
                .map_err(PlanError::Invalid),
        }
    }

    /// The comparison this asks for, or what is wrong with it; a checker
    /// is not one.
    pub fn comparison(self) -> Result<Comparison, String> {
        Ok(match self {
            Compare::Checker(_) => return Err("a checker is a program, not a comparison".into()),
            Compare::Exact => Comparison::Exact,
            Compare::Lines => Comparison::Lines,
            Compare::Tokens => Comparison::Tokens,
            Compare::Float {
                absolute_tolerance,
                relative_tolerance,
            } => {
                for (name, value) in [
                    ("absolute_tolerance", absolute_tolerance),
                    ("relative_tolerance", relative_tolerance),
                ] {
                    if !value.is_finite() || value < 0.0 {
                        return Err(format!(
                            "compare.{name} = {value} must be a finite number, 0 or more"
                        ));
                    }
                }
                Comparison::Float {
                    absolute: absolute_tolerance,
                    relative: relative_tolerance,
                }
            }
        })
    }
}

/// What decides whether an output is the expected one.
#[derive(Debug, Clone)]
pub enum Check {
    Compare(Comparison),
    Checker(Arc<CheckerPlan>),
}

/// The output a planned execution must print.
#[derive(Debug, Clone)]
pub struct Expected {
    pub output: Vec<u8>,
    pub check: Check,
}

impl Expected {
    /// What a request expecting `output`, compared as `compare` says (lines
    /// when it says nothing), must print; `None` when it expects nothing.
    /// A checker is planned with `planner`, its VMs named after `trace_id`.
    pub fn plan(
        planner: &Planner,
        output: Option<Vec<u8>>,
        compare: Option<Compare>,
        trace_id: &str,
        owner: &str,
    ) -> Result<Option<Self>, PlanError> {
        match (output, compare) {
            (Some(output), compare) => Ok(Some(Expected {
                output,
                check: compare
                    .unwrap_or_default()
                    .check(planner, trace_id, owner)?,
            })),
            (None, Some(_)) => Err(PlanError::Invalid(
                "compare needs expected_output: there is nothing to compare with".into(),
            )),
            (None, None) => Ok(None),
        }
    }

    /// The largest VM judging takes: a checker runs in VMs of its own.
    pub fn vm_memory_mib(&self) -> u32 {
        match &self.check {
            Check::Checker(checker) => checker.vm_memory_mib(),
            Check::Compare(_) => 0,
        }
    }
}

/// An execution whose output is judged: its plan, run as any other, and
/// what it must print.
#[derive(Debug, Clone)]
pub struct JudgedPlan {
    pub plan: Plan,
    pub expected: Expected,
}

impl JudgedPlan {
    /// The largest VM it needs: the program's, or its checker's (they run
    /// one after the other).
    pub fn vm_memory_mib(&self) -> u32 {
        self.plan.vm_memory_mib.max(self.expected.vm_memory_mib())
    }
}

/// Runs `judged` as a one-shot execution, then judges its result.
pub(crate) async fn execute(
    vms: &Vms,
    judged: &JudgedPlan,
    output: Option<mpsc::UnboundedSender<OutputChunk>>,
    input: Option<Input>,
    stop: impl Future<Output = String> + Send,
) -> ExecutionResult {
    let plan = &judged.plan;
    let (mut result, _) = crate::oneshot::execute(vms, plan, output, input, stop).await;
    judge(vms, &mut result, &plan.exec.stdin, &judged.expected, None).await;
    result
}

/// Judges an `ok` result against `expected`: `accepted` or `wrong_answer`,
/// by comparison or by the checker (which runs `input`; a failing checker
/// makes it `internal_error`). Any other status stays. `prepared` is the
/// checker already compiled (a submission compiles it once); without it, a
/// checker is compiled here. `id` names the checker's VM.
pub(crate) async fn judge(
    vms: &Vms,
    result: &mut ExecutionResult,
    input: &[u8],
    expected: &Expected,
    prepared: Option<&checker::Checker>,
) {
    if result.status != Status::Ok {
        return;
    }
    let Some(run) = &result.run else {
        return;
    };
    match &expected.check {
        Check::Compare(comparison) => {
            match compare::compare(*comparison, &expected.output, &run.stdout) {
                Ok(()) => result.status = Status::Accepted,
                Err(difference) => {
                    result.status = Status::WrongAnswer;
                    result.message = Some(format!(
                        "the output differs from the expected one at line {}, column {}",
                        difference.line, difference.column
                    ));
                    result.difference = Some(difference);
                }
            }
        }
        Check::Checker(plan) => {
            let compiled;
            let checker = match prepared {
                Some(checker) => checker,
                None => match checker::prepare(vms, plan).await {
                    Ok(checker) => {
                        compiled = checker;
                        &compiled
                    }
                    Err(why) => {
                        result.status = Status::InternalError;
                        result.message = Some(why);
                        return;
                    }
                },
            };
            let id = result.trace_id.clone();
            let output = run.stdout.clone();
            match checker
                .check(vms, &id, input, &expected.output, &output)
                .await
            {
                checker::Outcome::Accepted => result.status = Status::Accepted,
                checker::Outcome::WrongAnswer(note) => {
                    result.status = Status::WrongAnswer;
                    result.message = Some(format!("the checker rejected the output: {note}"));
                }
                checker::Outcome::Failed(why) => {
                    result.status = Status::InternalError;
                    result.message = Some(why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_must_be_finite_and_not_negative() {
        let float = |absolute_tolerance, relative_tolerance| {
            Compare::Float {
                absolute_tolerance,
                relative_tolerance,
            }
            .comparison()
        };
        assert!(float(0.0, 1e-9).is_ok());
        for (abs, rel, says) in [
            (f64::NAN, 0.0, "absolute_tolerance"),
            (0.0, f64::INFINITY, "relative_tolerance"),
            (-1.0, 0.0, "absolute_tolerance"),
        ] {
            let message = float(abs, rel).unwrap_err();
            assert!(message.contains(says), "{message}");
        }
    }
}
