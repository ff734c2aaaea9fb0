//! Judge mode: whether a program's output is the expected one, for one
//! execution or for a submission of many tests.
//!
//! A request may carry the output it expects and how to compare ([`Compare`]);
//! the plan checks them into an [`Expected`], and a run that ended well
//! (status `ok`) becomes `accepted` or `wrong_answer`, with the place where
//! the outputs first differ. Any other status (a limit, a crash, a compile
//! error, our failure) stays as it is: it explains the run better than a
//! comparison would.

pub mod batch;
pub mod compare;
pub mod submission;

use serde::{Deserialize, Serialize};

pub use batch::{Capacity, Slots, SubmissionEvent, SubmissionResult, TestResult};
pub use compare::{Comparison, Difference};
pub use submission::{SubmissionPlan, SubmissionRequest, TestCase};

use crate::exec::{ExecutionResult, Status};

/// How a request asks for outputs to be compared: the API's `compare`
/// object (`{"mode": "float", "absolute_tolerance": 1e-6}`) and the CLI's
/// `--compare`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", try_from = "CompareBody")]
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
}

/// The `compare` object as sent, before its fields are checked against
/// its mode.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    mode: Mode,
    absolute_tolerance: Option<f64>,
    relative_tolerance: Option<f64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Exact,
    Lines,
    Tokens,
    Float,
}

impl TryFrom<CompareBody> for Compare {
    type Error = String;

    fn try_from(body: CompareBody) -> Result<Self, String> {
        let tolerance = body.absolute_tolerance.or(body.relative_tolerance);
        if body.mode != Mode::Float && tolerance.is_some() {
            return Err("tolerances are for mode \"float\" only".into());
        }
        Ok(match body.mode {
            Mode::Exact => Compare::Exact,
            Mode::Lines => Compare::Lines,
            Mode::Tokens => Compare::Tokens,
            Mode::Float => Compare::Float {
                absolute_tolerance: body.absolute_tolerance.unwrap_or(DEFAULT_TOLERANCE),
                relative_tolerance: body.relative_tolerance.unwrap_or(DEFAULT_TOLERANCE),
            },
        })
    }
}

/// testlib's and most judges' default for floating-point answers.
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

impl Compare {
    /// The comparison this asks for, or what is wrong with it.
    pub fn check(self) -> Result<Comparison, String> {
        Ok(match self {
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

/// The output a planned execution must print.
#[derive(Debug, Clone)]
pub struct Expected {
    pub output: Vec<u8>,
    pub comparison: Comparison,
}

/// Turns an `ok` result into `accepted` or `wrong_answer`.
pub fn judge(result: &mut ExecutionResult, expected: &Expected) {
    if result.status != Status::Ok {
        return;
    }
    let Some(run) = &result.run else {
        return;
    };
    match compare::compare(expected.comparison, &expected.output, &run.stdout) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_names_comparisons_by_mode() {
        let parse = |json: &str| serde_json::from_str::<Compare>(json).map_err(|e| e.to_string());
        assert_eq!(parse(r#"{"mode": "exact"}"#), Ok(Compare::Exact));
        assert_eq!(
            parse(r#"{"mode": "float", "absolute_tolerance": 0.01}"#),
            Ok(Compare::Float {
                absolute_tolerance: 0.01,
                relative_tolerance: DEFAULT_TOLERANCE
            })
        );
        assert!(parse(r#"{"mode": "fuzzy"}"#).unwrap_err().contains("fuzzy"));
        assert!(parse(r#"{"mode": "lines", "tolerance": 1}"#).is_err());
        assert!(
            parse(r#"{"mode": "tokens", "absolute_tolerance": 1}"#)
                .unwrap_err()
                .contains("float")
        );
        assert_eq!(Compare::default(), Compare::Lines);
    }

    #[test]
    fn tolerances_must_be_finite_and_not_negative() {
        let float = |absolute_tolerance, relative_tolerance| {
            Compare::Float {
                absolute_tolerance,
                relative_tolerance,
            }
            .check()
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
