//! What clients send: the bodies of `POST /v1/executions`,
//! `/v1/sessions`, `/v1/sessions/{id}/executions` and `/v1/submissions`.
//! Unknown fields are refused, so that a misspelt limit is an error rather
//! than a default.

use std::collections::BTreeMap;

use base64::Engine;
use runner_protocol::WindowSize;
use serde::{Deserialize, Serialize};

/// The limits a request asks for, of one stage; every field is optional
/// (the server's default then), and units are in the names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_bytes: Option<u64>,
}

impl StageLimits {
    /// These limits, the `fallback`'s where these say nothing.
    pub fn or(self, fallback: StageLimits) -> StageLimits {
        StageLimits {
            wall_time_ms: self.wall_time_ms.or(fallback.wall_time_ms),
            cpu_time_ms: self.cpu_time_ms.or(fallback.cpu_time_ms),
            memory_mib: self.memory_mib.or(fallback.memory_mib),
            processes: self.processes.or(fallback.processes),
            output_bytes: self.output_bytes.or(fallback.output_bytes),
            file_size_bytes: self.file_size_bytes.or(fallback.file_size_bytes),
        }
    }

    fn is_empty(&self) -> bool {
        *self == StageLimits::default()
    }
}

/// The `limits` object: per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    #[serde(default, skip_serializing_if = "StageLimits::is_empty")]
    pub compile: StageLimits,
    #[serde(default, skip_serializing_if = "StageLimits::is_empty")]
    pub run: StageLimits,
}

impl RequestLimits {
    fn is_empty(&self) -> bool {
        *self == RequestLimits::default()
    }
}

/// What a program may reach of the network: `{"allow": [...]}`, each
/// domain pattern within the server's `network.allow`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    pub allow: Vec<String>,
}

/// A file of a request. The entry point is the file named as the language
/// expects (`main.py`, ...); if there is none, the first file is given
/// that name, as is a first file without one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub content: String,
    #[serde(default, skip_serializing_if = "Encoding::is_utf8")]
    pub encoding: Encoding,
}

/// How a file's `content` is written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

impl Encoding {
    fn is_utf8(&self) -> bool {
        *self == Encoding::Utf8
    }
}

impl FileBody {
    /// `content` under `name` (the entry point when `None`), as text when
    /// it is UTF-8, else in base64.
    pub fn new(name: Option<String>, content: Vec<u8>) -> Self {
        match String::from_utf8(content) {
            Ok(text) => Self {
                name,
                content: text,
                encoding: Encoding::Utf8,
            },
            Err(e) => Self {
                name,
                content: base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                encoding: Encoding::Base64,
            },
        }
    }

    /// The content's bytes, or why it is not valid in its encoding.
    pub fn decode(&self) -> Result<Vec<u8>, String> {
        match self.encoding {
            Encoding::Utf8 => Ok(self.content.clone().into_bytes()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(self.content.as_bytes())
                .map_err(|e| format!("not valid base64: {e}")),
        }
    }
}

/// The `compare` object: `{"mode": "float", "absolute_tolerance": 1e-6}`,
/// `{"mode": "checker", "checker": {"language": ..., "files": [...]}}`.
/// The mode is text, so that an unknown one is refused with the modes
/// named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareBody {
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_tolerance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_tolerance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker: Option<CheckerBody>,
}

/// A checker program: it decides whether an output is right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckerBody {
    pub language: String,
    pub files: Vec<FileBody>,
}

/// The body of `POST /v1/executions` (and of an execution in a session,
/// whose `language` may be left out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionBody {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub language: String,
    /// The program; may be left out beside a `command`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileBody>,
    /// A shell command to run instead of the language's program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdin: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "RequestLimits::is_empty")]
    pub limits: RequestLimits,
    /// What the program must print: the result is then `accepted` or
    /// `wrong_answer` when the run ends well (one-shot executions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareBody>,
    /// Run the program on a terminal of this size: only over the
    /// WebSocket endpoints, whose client types into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<WindowSize>,
    /// Files to send back with the result: paths or patterns under the
    /// working directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRequest>,
}

/// The body of `POST /v1/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionBody {
    pub language: String,
    /// Memory for the session's programs; the language's default when
    /// left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// What the working directory may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// On top of the language's environment, for every execution.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_s: Option<u64>,
    /// What its programs may reach of the network, for its whole life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRequest>,
}

/// The body of `POST /v1/submissions`: a program and its tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmissionBody {
    pub language: String,
    pub files: Vec<FileBody>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The compile stage's limits and every test's run limits.
    #[serde(default, skip_serializing_if = "RequestLimits::is_empty")]
    pub limits: RequestLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareBody>,
    pub tests: Vec<TestBody>,
    /// After the first test that is not accepted, run no more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_on_first_failure: bool,
}

/// One test of a submission.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdin: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// What the program must print; without it the test passes when the
    /// run is `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_output: Option<String>,
    /// The test's run limits, over the submission's.
    #[serde(default, skip_serializing_if = "StageLimits::is_empty")]
    pub limits: StageLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_go_both_ways_and_leave_defaults_out() {
        let body = ExecutionBody {
            language: "python".into(),
            files: vec![FileBody::new(None, b"print(1)".to_vec())],
            limits: RequestLimits {
                run: StageLimits {
                    wall_time_ms: Some(2000),
                    ..StageLimits::default()
                },
                ..RequestLimits::default()
            },
            ..ExecutionBody::default()
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "language": "python",
                "files": [{"content": "print(1)"}],
                "limits": {"run": {"wall_time_ms": 2000}},
            })
        );
        assert_eq!(serde_json::from_value::<ExecutionBody>(json).unwrap(), body);
        let unknown = serde_json::from_str::<ExecutionBody>(r#"{"colour": 1}"#);
        assert!(unknown.unwrap_err().to_string().contains("colour"));
    }

    #[test]
    fn files_are_text_when_they_can_be() {
        let text = FileBody::new(Some("a.txt".into()), b"hi".to_vec());
        assert_eq!(text.encoding, Encoding::Utf8);
        let binary = FileBody::new(None, vec![0xff, 0, 1]);
        assert_eq!(binary.encoding, Encoding::Base64);
        assert_eq!(binary.decode().unwrap(), vec![0xff, 0, 1]);
        let bad = FileBody {
            encoding: Encoding::Base64,
            ..FileBody::new(None, b"!!".to_vec())
        };
        assert!(bad.decode().unwrap_err().contains("base64"));
    }

    #[test]
    fn a_tests_limits_fall_back_to_the_submissions() {
        let test = StageLimits {
            wall_time_ms: Some(500),
            ..StageLimits::default()
        };
        let submission = StageLimits {
            wall_time_ms: Some(2000),
            memory_mib: Some(256),
            ..StageLimits::default()
        };
        let both = test.or(submission);
        assert_eq!(both.wall_time_ms, Some(500));
        assert_eq!(both.memory_mib, Some(256));
    }
}
