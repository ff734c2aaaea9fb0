//! The tools, their arguments (whose JSON Schemas the client sees) and the
//! text a model reads of their results.

use std::collections::BTreeMap;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerInfo};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use runner_wire::{
    ExecutionBody, ExecutionResult, FileBody, FileEntry, FileKind, RequestLimits, SessionBody,
    SessionInfo, StageLimits,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::{Backend, Caller, ToolError};

/// Bytes of each output stream a tool's text shows; the rest is cut with
/// a note (the structured content has it all).
pub const TEXT_LIMIT: usize = 16 << 10;
/// Most bytes `session_read_file` returns.
const READ_LIMIT: u64 = 1 << 20;

/// A file of the program.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileArg {
    /// Relative path in the working directory, e.g. `main.py` or
    /// `lib/util.py`.
    pub name: String,
    /// Its text.
    pub content: String,
}

/// Limits of the run; each is the server's default when not given.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsArg {
    /// Wall-clock time of the run, in milliseconds (default 10000, at most 300000).
    pub wall_time_ms: Option<u64>,
    /// CPU time of the run, in milliseconds (default 10000, at most 300000).
    pub cpu_time_ms: Option<u64>,
    /// Memory of the run, in MiB (default the language's, at most 4096).
    pub memory_mib: Option<u64>,
}

/// What to run: `code` (the entry point), `files`, or a shell `command`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// A language name or alias: python, node, go, rust, bash, c, cpp,
    /// java, python-data (see `languages`).
    pub language: String,
    /// The program's source, as its entry point (`main.py`, `main.go`, ...).
    pub code: Option<String>,
    /// Files of the program; with `code`, added beside it.
    pub files: Option<Vec<FileArg>>,
    /// A shell command (`/bin/sh -c`) run instead of the program, e.g.
    /// `pip list`; `args` are `$1`...
    pub command: Option<String>,
    /// The program's standard input.
    pub stdin: Option<String>,
    /// Command-line arguments.
    pub args: Option<Vec<String>>,
    /// Environment variables, on top of the language's.
    pub env: Option<BTreeMap<String, String>>,
    pub limits: Option<LimitsArg>,
    /// What the program must print: the status is then `accepted` or
    /// `wrong_answer` (lines compared, trailing spaces ignored).
    pub expected_output: Option<String>,
}

/// A session to create.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionArgs {
    /// A language name or alias (see `languages`).
    pub language: String,
    /// Memory of the session's programs, in MiB (default the language's).
    pub memory_mib: Option<u64>,
    /// Environment variables of every execution in it.
    pub env: Option<BTreeMap<String, String>>,
    /// Seconds without a request before the session is paused (default 600).
    pub idle_timeout_s: Option<u64>,
}

/// A session and what to run in it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRunArgs {
    /// The id `session_create` returned.
    pub session_id: String,
    /// The program's source, as the language's entry point.
    pub code: Option<String>,
    /// Files to write before it runs (they stay in the session).
    pub files: Option<Vec<FileArg>>,
    /// A shell command run instead, e.g. `ls -l` or `pip list`.
    pub command: Option<String>,
    pub stdin: Option<String>,
    pub args: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub limits: Option<LimitsArg>,
}

/// A file of a session.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    pub session_id: String,
    /// Relative path in the session's working directory.
    pub path: String,
    /// Its text.
    pub content: String,
    /// Make it executable.
    pub executable: Option<bool>,
}

/// A path of a session.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    pub session_id: String,
    /// Relative path in the session's working directory; empty for the
    /// directory itself (when listing).
    #[serde(default)]
    pub path: String,
}

/// A session.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    pub session_id: String,
}

/// The MCP server: the tools, on a [`Backend`].
#[derive(Clone)]
pub struct RunnerMcp {
    engine: Arc<dyn Backend>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl RunnerMcp {
    pub fn new(engine: Arc<dyn Backend>) -> Self {
        Self {
            engine,
            tool_router: Self::tool_router(),
        }
    }

    /// Who calls: what the HTTP transport's request says (`runner
    /// serve`'s API key), else the engine's local caller (stdio).
    fn caller(&self, context: &RequestContext<RoleServer>) -> Caller {
        context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .unwrap_or_else(|| self.engine.local_caller())
    }

    #[tool(
        description = "Run code once in a fresh, isolated microVM and get its status, stdout, stderr and timings. Give `code` (the program), or `files`, or a shell `command`. Compiled languages are compiled first (a compile error is the status `compile_error`). Limits default to 10 s of wall-clock and CPU time and the language's memory; ask for more in `limits` (at most 300 s, 4096 MiB). No network. The program's failure (an exception, a time limit) is a normal result, with its status."
    )]
    async fn run_code(
        &self,
        Parameters(args): Parameters<RunArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let body = ExecutionBody {
            language: args.language,
            files: files(args.code, args.files),
            stdin: args.stdin.unwrap_or_default(),
            args: args.args.unwrap_or_default(),
            env: args.env.unwrap_or_default(),
            limits: limits(args.limits),
            command: args.command,
            expected_output: args.expected_output,
            ..ExecutionBody::default()
        };
        Ok(execution(
            self.engine.run(&self.caller(&context), body).await,
        ))
    }

    #[tool(
        description = "List the languages this server runs, with their aliases, entry-point file names and the limits' defaults and maximums."
    )]
    async fn languages(&self) -> Result<CallToolResult, ErrorData> {
        let listed = match self.engine.languages().await {
            Ok(listed) => listed,
            Err(error) => return Ok(refused(error)),
        };
        let mut text = listed
            .languages
            .iter()
            .map(|l| {
                format!(
                    "{} ({}{}), entry point {}",
                    l.language,
                    if l.compiled {
                        "compiled"
                    } else {
                        "interpreted"
                    },
                    if l.aliases.is_empty() {
                        String::new()
                    } else {
                        format!("; also {}", l.aliases.join(", "))
                    },
                    l.source_file
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        if let Some(limits) = &listed.limits {
            text += &format!(
                "\nRun limits: {} ms wall and CPU time by default, at most {} ms; memory at most {} MiB.",
                limits.run.wall_time_ms, limits.max.wall_time_ms, limits.max.memory_mib
            );
        }
        Ok(with_structure(text, structure(&listed), false))
    }

    #[tool(
        description = "Create a session: one microVM kept for many steps, whose files, installed packages and processes persist between runs. Returns its `session_id`. It is paused after `idle_timeout_s` without requests (600 s by default) and resumes by itself on the next request; delete it when done."
    )]
    async fn session_create(
        &self,
        Parameters(args): Parameters<CreateSessionArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let body = SessionBody {
            language: args.language,
            memory_mib: args.memory_mib,
            env: args.env.unwrap_or_default(),
            idle_timeout_s: args.idle_timeout_s,
            ..SessionBody::default()
        };
        Ok(session_info(
            self.engine
                .create_session(&self.caller(&context), body)
                .await,
        ))
    }

    #[tool(
        description = "Run code, files or a shell command in a session, as run_code does; the files stay in the session's working directory for later steps. Limits are per run (10 s by default)."
    )]
    async fn session_run(
        &self,
        Parameters(args): Parameters<SessionRunArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let body = ExecutionBody {
            files: files(args.code, args.files),
            stdin: args.stdin.unwrap_or_default(),
            args: args.args.unwrap_or_default(),
            env: args.env.unwrap_or_default(),
            limits: limits(args.limits),
            command: args.command,
            ..ExecutionBody::default()
        };
        Ok(execution(
            self.engine
                .run_in_session(&self.caller(&context), &args.session_id, body)
                .await,
        ))
    }

    #[tool(
        description = "Write a text file into a session's working directory (its parent directories are made)."
    )]
    async fn session_write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let size = args.content.len();
        let written = self
            .engine
            .write_file(
                &self.caller(&context),
                &args.session_id,
                &args.path,
                args.content.into_bytes(),
                args.executable.unwrap_or(false),
            )
            .await
            .map(|()| json!({ "path": args.path, "size": size }));
        Ok(outcome(written, |v| {
            format!("wrote {} ({} bytes)", v["path"], v["size"])
        }))
    }

    #[tool(
        description = "Read a file of a session's working directory (at most 1 MiB; text, or base64 when it is not UTF-8)."
    )]
    async fn session_read_file(
        &self,
        Parameters(args): Parameters<PathArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let read = self
            .engine
            .read_file(
                &self.caller(&context),
                &args.session_id,
                &args.path,
                READ_LIMIT,
            )
            .await;
        Ok(match read {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    let structured =
                        json!({ "path": args.path, "encoding": "utf-8", "content": text });
                    with_structure(cut(text.as_bytes()), structured, false)
                }
                Err(e) => {
                    use base64::Engine as _;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(e.as_bytes());
                    let structured =
                        json!({ "path": args.path, "encoding": "base64", "content": encoded });
                    let text = format!(
                        "{} is not text ({} bytes); its content in base64:\n{}",
                        args.path,
                        e.as_bytes().len(),
                        cut(encoded.as_bytes())
                    );
                    with_structure(text, structured, false)
                }
            },
            Err(error) => refused(error),
        })
    }

    #[tool(description = "List a directory of a session's working directory: names, kinds, sizes.")]
    async fn session_list_files(
        &self,
        Parameters(args): Parameters<PathArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let listed = self
            .engine
            .list_files(&self.caller(&context), &args.session_id, &args.path)
            .await;
        let listed = listed.map(|entries| Listing { entries });
        Ok(outcome(listed, |listing| {
            if listing.entries.is_empty() {
                return "(empty)".into();
            }
            listing
                .entries
                .iter()
                .map(|e| {
                    let slash = if e.kind == FileKind::Directory {
                        "/"
                    } else {
                        ""
                    };
                    format!("{:>10}  {}{slash}", e.size, e.name)
                })
                .collect::<Vec<_>>()
                .join("\n")
        }))
    }

    #[tool(
        description = "Pause a session: its VM is saved to disk (files, processes, memory) and its memory freed. Any later request resumes it."
    )]
    async fn session_pause(
        &self,
        Parameters(args): Parameters<SessionArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(session_info(
            self.engine
                .pause(&self.caller(&context), &args.session_id)
                .await,
        ))
    }

    #[tool(description = "Resume a paused session, as it was.")]
    async fn session_resume(
        &self,
        Parameters(args): Parameters<SessionArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(session_info(
            self.engine
                .resume(&self.caller(&context), &args.session_id)
                .await,
        ))
    }

    #[tool(description = "Delete a session: its VM and files are gone.")]
    async fn session_delete(
        &self,
        Parameters(args): Parameters<SessionArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let deleted = self
            .engine
            .delete(&self.caller(&context), &args.session_id)
            .await
            .map(|()| json!({ "session_id": args.session_id, "deleted": true }));
        Ok(outcome(deleted, |v| format!("deleted {}", v["session_id"])))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for RunnerMcp {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Runner Codes runs untrusted code in microVMs. Use run_code for one program; \
             use a session (session_create, then session_write_file / session_run / \
             session_read_file) for work in several steps.",
        )
    }
}

/// The program: `code` as its entry point, then `files`.
fn files(code: Option<String>, files: Option<Vec<FileArg>>) -> Vec<FileBody> {
    let mut all: Vec<FileBody> = code
        .map(|code| FileBody::new(None, code.into_bytes()))
        .into_iter()
        .collect();
    all.extend(
        files
            .unwrap_or_default()
            .into_iter()
            .map(|f| FileBody::new(Some(f.name), f.content.into_bytes())),
    );
    all
}

fn limits(asked: Option<LimitsArg>) -> RequestLimits {
    let asked = asked.unwrap_or_default();
    RequestLimits {
        run: StageLimits {
            wall_time_ms: asked.wall_time_ms,
            cpu_time_ms: asked.cpu_time_ms,
            memory_mib: asked.memory_mib,
            ..StageLimits::default()
        },
        ..RequestLimits::default()
    }
}

/// `bytes` as text, cut past [`TEXT_LIMIT`] with a note of how much.
fn cut(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= TEXT_LIMIT {
        return text.into_owned();
    }
    let mut end = TEXT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[... {} more bytes cut]",
        &text[..end],
        text.len() - end
    )
}

/// What a model reads of an execution's result.
fn describe(result: &ExecutionResult) -> String {
    let mut text = format!("status: {}", result.status);
    if let Some(run) = &result.run {
        if let Some(code) = run.exit_code {
            text += &format!(" (exit code {code})");
        }
        if let Some(signal) = &run.signal_name {
            text += &format!(" (killed by {signal})");
        }
    }
    text += &format!(
        " · {} · run {:.0} ms, total {:.0} ms",
        result.version, result.metrics.execution_time_ms, result.metrics.total_time_ms
    );
    if let Some(message) = &result.message {
        text += &format!("\n{message}");
    }
    for (name, stage) in [("compile", &result.compile), ("run", &result.run)] {
        let Some(stage) = stage else {
            continue;
        };
        for (stream, output) in [("stdout", &stage.stdout), ("stderr", &stage.stderr)] {
            if !output.is_empty() || (name == "run" && stream == "stdout") {
                let label = match name {
                    "compile" => format!("compiler {stream}"),
                    _ => stream.to_string(),
                };
                text += &format!("\n--- {label} ---\n{}", cut(output));
            }
        }
    }
    text
}

/// `value` as structured content.
fn structure(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("results serialize")
}

fn with_structure(text: String, structured: Value, is_error: bool) -> CallToolResult {
    let mut result = if is_error {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    };
    result.structured_content = Some(structured);
    result
}

fn execution(result: Result<ExecutionResult, ToolError>) -> CallToolResult {
    outcome(result, describe)
}

fn session_info(info: Result<SessionInfo, ToolError>) -> CallToolResult {
    outcome(info, |info| {
        format!(
            "session_id: {} · {} · state {}",
            info.id, info.language, info.state
        )
    })
}

/// A directory's entries, as a tool gives them.
#[derive(Serialize)]
struct Listing {
    entries: Vec<FileEntry>,
}

/// `value` with `text` of it for a model to read, or the error.
fn outcome<T: Serialize>(
    value: Result<T, ToolError>,
    text: impl FnOnce(&T) -> String,
) -> CallToolResult {
    match value {
        Ok(value) => with_structure(text(&value), structure(&value), false),
        Err(error) => refused(error),
    }
}

/// A request that could not run: a tool result marked as an error.
fn refused(error: ToolError) -> CallToolResult {
    let structured = json!({ "code": error.code, "message": error.message });
    with_structure(
        format!("{}: {}", error.code, error.message),
        structured,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_with_how_much_was_cut() {
        assert_eq!(cut(b"short"), "short");
        let long = "é".repeat(TEXT_LIMIT);
        let shown = cut(long.as_bytes());
        assert!(shown.len() < TEXT_LIMIT + 100, "{}", shown.len());
        let note = format!("[... {} more bytes cut]", long.len() - TEXT_LIMIT);
        assert!(shown.ends_with(&note), "{}", &shown[shown.len() - 60..]);
    }

    #[test]
    fn a_refused_request_is_an_error_result_with_its_code() {
        let result = refused(ToolError {
            code: "unknown_language".into(),
            message: "no language cobol".into(),
        });
        assert_eq!(result.is_error, Some(true));
        assert_eq!(
            result.structured_content,
            Some(json!({ "code": "unknown_language", "message": "no language cobol" }))
        );
    }
}
