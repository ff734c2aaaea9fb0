//! The API's request bodies ([`runner_wire`]) as the engine's requests:
//! files decoded from their transport encoding, a comparison's mode and
//! fields checked against each other, test data as bytes. Everything else
//! is checked once, by the planner. The HTTP API and the MCP server both
//! read their requests through here, so a body means the same on both.

use runner_wire::{CompareBody, ExecutionBody, FileBody, SubmissionBody};

use crate::exec::{ExecutionRequest, PlanError, SourceFile};
use crate::judge::{CheckerRequest, Compare, DEFAULT_TOLERANCE, SubmissionRequest, TestCase};

/// What a one-shot execution's body asks: the execution, and what its
/// output must be, if it says.
#[derive(Debug, Clone)]
pub struct OneShot {
    pub request: ExecutionRequest,
    pub expected_output: Option<Vec<u8>>,
    pub compare: Option<Compare>,
}

/// A one-shot execution's body, named by `trace_id` (made up when
/// `None`), asked by `owner`. A terminal (`pty`) is the front end's to take out first: only
/// a client that types into it can have one.
pub fn execution(
    body: ExecutionBody,
    trace_id: Option<String>,
    owner: &str,
) -> Result<OneShot, PlanError> {
    if body.pty.is_some() {
        return Err(PlanError::Invalid(
            "pty needs a client that types into the terminal".into(),
        ));
    }
    Ok(OneShot {
        request: ExecutionRequest {
            language: body.language,
            files: files(body.files)?,
            stdin: body.stdin.into_bytes(),
            args: body.args,
            env: body.env,
            limits: body.limits,
            trace_id,
            command: body.command,
            interactive: None,
            outputs: body.outputs,
            network: body.network,
            owner: owner.to_string(),
        },
        expected_output: body.expected_output.map(String::into_bytes),
        compare: compare(body.compare)?,
    })
}

/// An execution's body in a session, where nothing is judged.
pub fn session_execution(
    body: ExecutionBody,
    trace_id: Option<String>,
    owner: &str,
) -> Result<ExecutionRequest, PlanError> {
    let asked = execution(body, trace_id, owner)?;
    if asked.expected_output.is_some() || asked.compare.is_some() {
        return Err(PlanError::Invalid(
            "expected_output and compare judge one-shot executions and submissions; \
             an execution in a session is not judged"
                .into(),
        ));
    }
    Ok(asked.request)
}

/// A submission's body, named by `trace_id`, asked by `owner`.
pub fn submission(
    body: SubmissionBody,
    trace_id: Option<String>,
    owner: &str,
) -> Result<SubmissionRequest, PlanError> {
    Ok(SubmissionRequest {
        language: body.language,
        files: files(body.files)?,
        env: body.env,
        limits: body.limits,
        compare: compare(body.compare)?,
        tests: body
            .tests
            .into_iter()
            .map(|t| TestCase {
                name: t.name,
                stdin: t.stdin.into_bytes(),
                args: t.args,
                expected_output: t.expected_output.map(String::into_bytes),
                limits: t.limits,
            })
            .collect(),
        stop_on_first_failure: body.stop_on_first_failure,
        trace_id,
        owner: owner.to_string(),
    })
}

/// Files decoded from their transport encoding.
fn files(bodies: Vec<FileBody>) -> Result<Vec<SourceFile>, PlanError> {
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, file)| {
            let content = file
                .decode()
                .map_err(|e| PlanError::Invalid(format!("files[{i}] is {e}")))?;
            Ok(SourceFile {
                name: file.name,
                content,
            })
        })
        .collect()
}

/// The comparison a `compare` object asks for; its fields must fit its
/// mode.
fn compare(body: Option<CompareBody>) -> Result<Option<Compare>, PlanError> {
    let Some(body) = body else {
        return Ok(None);
    };
    let invalid = |message: &str| Err(PlanError::Invalid(message.into()));
    let modes = ["exact", "lines", "tokens", "float", "checker"];
    let mode = body.mode.as_str();
    if !modes.contains(&mode) {
        return invalid(&format!(
            "compare.mode {mode:?} is not one of {}",
            modes.join(", ")
        ));
    }
    let tolerance = body.absolute_tolerance.or(body.relative_tolerance);
    if mode != "float" && tolerance.is_some() {
        return invalid("compare: tolerances are for mode \"float\" only");
    }
    if mode != "checker" && body.checker.is_some() {
        return invalid("compare.checker is for mode \"checker\" only");
    }
    Ok(Some(match mode {
        "exact" => Compare::Exact,
        "lines" => Compare::Lines,
        "tokens" => Compare::Tokens,
        "float" => Compare::Float {
            absolute_tolerance: body.absolute_tolerance.unwrap_or(DEFAULT_TOLERANCE),
            relative_tolerance: body.relative_tolerance.unwrap_or(DEFAULT_TOLERANCE),
        },
        _ => {
            let Some(checker) = body.checker else {
                return invalid(
                    "compare.checker is missing: mode \"checker\" needs the checker program",
                );
            };
            Compare::Checker(CheckerRequest {
                language: checker.language,
                files: files(checker.files).map_err(|e| match e {
                    PlanError::Invalid(message) => {
                        PlanError::Invalid(format!("compare.checker.{message}"))
                    }
                    other => other,
                })?,
            })
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_take_the_fields_of_their_mode() {
        let compare = |json: &str| {
            let body: Option<CompareBody> =
                serde_json::from_str(json).map_err(|e| e.to_string())?;
            compare(body).map_err(|e| e.to_string())
        };
        assert_eq!(compare(r#"{"mode": "exact"}"#), Ok(Some(Compare::Exact)));
        assert_eq!(
            compare(r#"{"mode": "float", "absolute_tolerance": 0.01}"#),
            Ok(Some(Compare::Float {
                absolute_tolerance: 0.01,
                relative_tolerance: DEFAULT_TOLERANCE
            }))
        );
        assert!(
            compare(r#"{"mode": "fuzzy"}"#)
                .unwrap_err()
                .contains("fuzzy")
        );
        assert!(compare(r#"{"mode": "lines", "tolerance": 1}"#).is_err());
        assert!(
            compare(r#"{"mode": "tokens", "absolute_tolerance": 1}"#)
                .unwrap_err()
                .contains("float")
        );
        assert!(
            compare(r#"{"mode": "checker"}"#)
                .unwrap_err()
                .contains("checker is missing")
        );
        let checker = compare(
            r#"{"mode": "checker", "checker": {"language": "py", "files": [{"content": "aW1wb3J0IHN5cw==", "encoding": "base64"}]}}"#,
        )
        .unwrap()
        .unwrap();
        let Compare::Checker(checker) = checker else {
            panic!("{checker:?}")
        };
        assert_eq!(checker.language, "py");
        assert_eq!(checker.files[0].content, b"import sys");
        assert_eq!(compare("null"), Ok(None));
    }

    #[test]
    fn files_in_base64_must_decode() {
        let body: ExecutionBody = serde_json::from_str(
            r#"{"language": "python", "files": [{"content": "!!", "encoding": "base64"}]}"#,
        )
        .unwrap();
        let e = execution(body, None, "").unwrap_err().to_string();
        assert!(e.contains("files[0] is not valid base64"), "{e}");
    }

    #[test]
    fn a_session_execution_is_not_judged() {
        let body: ExecutionBody =
            serde_json::from_str(r#"{"files": [{"content": "1"}], "expected_output": "1"}"#)
                .unwrap();
        let e = session_execution(body, None, "").unwrap_err().to_string();
        assert!(e.contains("not judged"), "{e}");
    }
}
