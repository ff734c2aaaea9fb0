//! `runner session`: a client of `runner serve`'s sessions.
//!
//! Each subcommand is one or two HTTP requests; the server does the work and
//! keeps the session. `exec` streams the output as `runner run` does and
//! exits with the program's exit status.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::{EXIT_RUNNER_FAILED, EXIT_USAGE};

#[derive(clap::Args)]
pub struct SessionArgs {
    /// The server's address [default: http://ADDR of this machine's
    /// `listen` setting, env RUNNER_SERVER].
    #[arg(long, global = true, value_name = "URL", env = "RUNNER_SERVER")]
    server: Option<String>,
    /// The API key, when the server has keys [env RUNNER_API_KEY].
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "RUNNER_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    #[command(subcommand)]
    command: SessionCommand,
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Start a session and print its id.
    Create {
        #[arg(short, long)]
        lang: String,
        /// Memory for its programs, in MiB [default: the language's].
        #[arg(long)]
        memory_mib: Option<u64>,
        /// What its working directory may hold, in MiB.
        #[arg(long)]
        disk_mib: Option<u64>,
        /// NAME=value for every execution (repeatable).
        #[arg(short, long = "env", value_name = "NAME=value")]
        env: Vec<String>,
        #[arg(long)]
        idle_timeout_s: Option<u64>,
        #[arg(long)]
        max_lifetime_s: Option<u64>,
        /// Print the whole session as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run code (-c, or files) or a command in a session.
    Exec {
        id: String,
        /// The program's code.
        #[arg(short, long, conflicts_with_all = ["files", "command"])]
        code: Option<String>,
        /// A shell command instead of a program.
        #[arg(long)]
        command: Option<String>,
        /// The program's files (the first is the entry point).
        files: Vec<PathBuf>,
        #[arg(short, long = "env", value_name = "NAME=value")]
        env: Vec<String>,
        /// Print the result as JSON instead of streaming the output.
        #[arg(long)]
        json: bool,
        /// Arguments for the program.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Copy a file into a session (LOCAL ID:PATH) or out of one (ID:PATH
    /// LOCAL).
    Cp { from: String, to: String },
    /// List a directory of a session.
    Ls {
        id: String,
        #[arg(default_value = "")]
        path: String,
    },
    /// List the sessions.
    List,
    /// Show a session as JSON.
    Show { id: String },
    /// End a session: its VM and files are gone.
    Rm { id: String },
    /// Save a session's VM to disk and free it; it resumes when asked, or
    /// with its next request.
    Pause { id: String },
    /// Bring a paused session back.
    Resume { id: String },
}

/// A client of one server.
pub struct Client {
    base: String,
    http: reqwest::Client,
    api_key: Option<String>,
}

/// The server answered with an error.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiFailure {
    status: StatusCode,
    pub code: String,
    pub message: String,
}

impl Client {
    pub fn new(
        server: Option<String>,
        api_key: Option<String>,
        config: &runner_api::ServerConfig,
    ) -> Self {
        let base = server.unwrap_or_else(|| {
            let mut addr = config.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        });
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            api_key,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        match body {
            Some(Body::Json(value)) => request = request.json(&value),
            Some(Body::Bytes(bytes)) => request = request.body(bytes),
            None => {}
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the server at {}: is `runner serve` running there?",
                self.base
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        let mut message = body["message"]
            .as_str()
            .map_or_else(|| format!("the server answered {status}"), String::from);
        if status == StatusCode::UNAUTHORIZED {
            message.push_str("; give the key with --api-key or RUNNER_API_KEY");
        }
        Err(ApiFailure {
            status,
            code: body["code"].as_str().unwrap_or("error").to_string(),
            message,
        }
        .into())
    }

    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> anyhow::Result<Value> {
        Ok(self.send(method, path, body).await?.json().await?)
    }
}

pub enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

pub async fn session(
    args: SessionArgs,
    config: &runner_api::ServerConfig,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(args.server, args.api_key, config);
    match run(&client, args.command).await {
        Err(e) => match e.downcast_ref::<ApiFailure>() {
            Some(failure) => {
                eprintln!("runner: {failure}");
                // A refused request is the caller's to change; the server's
                // own failure is ours.
                Ok(ExitCode::from(if failure.status.is_client_error() {
                    EXIT_USAGE
                } else {
                    EXIT_RUNNER_FAILED
                }))
            }
            None => Err(e),
        },
        ok => ok,
    }
}

async fn run(client: &Client, command: SessionCommand) -> anyhow::Result<ExitCode> {
    match command {
        SessionCommand::Create {
            lang,
            memory_mib,
            disk_mib,
            env,
            idle_timeout_s,
            max_lifetime_s,
            json,
        } => {
            let body = json!({
                "language": lang,
                "memory_mib": memory_mib,
                "disk_mib": disk_mib,
                "env": crate::parse_env(&env)?,
                "idle_timeout_s": idle_timeout_s,
                "max_lifetime_s": max_lifetime_s,
            });
            let body = without_nulls(body);
            let session = client
                .json(Method::POST, "/v1/sessions", Some(Body::Json(body)))
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&session)?);
            } else {
                outln!("{}", session["id"].as_str().unwrap_or_default());
            }
        }
        SessionCommand::Exec {
            id,
            code,
            command,
            files,
            env,
            json,
            args,
        } => return exec(client, &id, code, command, files, env, json, args).await,
        SessionCommand::Cp { from, to } => match (remote(&from), remote(&to)) {
            (None, Some((id, path))) => {
                let content = crate::read_input(std::path::Path::new(&from))?;
                client
                    .send(
                        Method::PUT,
                        &format!("/v1/sessions/{id}/files/{}", encode_path(path)),
                        Some(Body::Bytes(content)),
                    )
                    .await?;
            }
            (Some((id, path)), None) => {
                let response = client
                    .send(
                        Method::GET,
                        &format!("/v1/sessions/{id}/files/{}", encode_path(path)),
                        None,
                    )
                    .await?;
                let content = response.bytes().await?;
                if to == "-" {
                    std::io::stdout().write_all(&content)?;
                } else {
                    std::fs::write(&to, &content).with_context(|| format!("writing {to}"))?;
                }
            }
            _ => usage!("cp takes one local path and one ID:PATH, e.g. `cp data.csv ID:data.csv`"),
        },
        SessionCommand::Ls { id, path } => {
            let listing = client
                .json(
                    Method::GET,
                    &format!("/v1/sessions/{id}/files?path={}", encode_path(&path)),
                    None,
                )
                .await?;
            for entry in listing["entries"].as_array().into_iter().flatten() {
                let kind = match entry["kind"].as_str() {
                    Some("directory") => 'd',
                    Some("symlink") => 'l',
                    Some("file") => '-',
                    _ => '?',
                };
                outln!(
                    "{kind}{:o} {:>10} {}",
                    entry["mode"].as_u64().unwrap_or(0),
                    entry["size"].as_u64().unwrap_or(0),
                    entry["name"].as_str().unwrap_or_default()
                );
            }
        }
        SessionCommand::List => {
            let list = client.json(Method::GET, "/v1/sessions", None).await?;
            for session in list["sessions"].as_array().into_iter().flatten() {
                outln!(
                    "{} {} {} executions={}",
                    session["id"].as_str().unwrap_or_default(),
                    session["language"].as_str().unwrap_or_default(),
                    session["state"].as_str().unwrap_or_default(),
                    session["executions"],
                );
            }
        }
        SessionCommand::Show { id } => {
            let session = client
                .json(Method::GET, &format!("/v1/sessions/{id}"), None)
                .await?;
            outln!("{}", serde_json::to_string_pretty(&session)?);
        }
        SessionCommand::Rm { id } => {
            client
                .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
                .await?;
        }
        SessionCommand::Pause { id } => {
            let session = client
                .json(Method::POST, &format!("/v1/sessions/{id}/pause"), None)
                .await?;
            let paused = &session["paused"];
            outln!(
                "{id} paused: {:.1} MiB on disk (a {} MiB VM), saved in {:.0} ms",
                paused["disk_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
                session["vm_memory_mib"],
                paused["pause_time_ms"].as_f64().unwrap_or(0.0),
            );
        }
        SessionCommand::Resume { id } => {
            let session = client
                .json(Method::POST, &format!("/v1/sessions/{id}/resume"), None)
                .await?;
            outln!("{id} {}", session["state"].as_str().unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
async fn exec(
    client: &Client,
    id: &str,
    code: Option<String>,
    command: Option<String>,
    files: Vec<PathBuf>,
    env: Vec<String>,
    json: bool,
    args: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let files: Vec<Value> = match code {
        Some(code) => vec![json!({ "content": code })],
        None => crate::read_files(&files)?
            .into_iter()
            .map(|file| {
                use base64::Engine;
                json!({
                    "name": file.name,
                    "content": base64::engine::general_purpose::STANDARD.encode(&file.content),
                    "encoding": "base64",
                })
            })
            .collect(),
    };
    if files.is_empty() && command.is_none() {
        usage!("give the code with -c CODE, as files, or a --command");
    }
    let stdin = read_stdin_text()?;
    let body = without_nulls(json!({
        "files": files,
        "command": command,
        "env": crate::parse_env(&env)?,
        "args": args,
        "stdin": stdin,
    }));
    let path = format!("/v1/sessions/{id}/executions");
    if json {
        let result = client
            .json(Method::POST, &path, Some(Body::Json(body)))
            .await?;
        outln!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(exit_code(&result));
    }
    let response = client
        .send(
            Method::POST,
            &format!("{path}/stream"),
            Some(Body::Json(body)),
        )
        .await?;
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut result = Value::Null;
    while let Some(piece) = stream.next().await {
        buffer.extend_from_slice(&piece?);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line)?;
            match event["type"].as_str() {
                Some("output") => {
                    let data = event["data"].as_str().unwrap_or_default().as_bytes();
                    // As `runner run`: the program's stdout is ours, the
                    // rest (stderr, a compiler's output) goes to stderr.
                    let _ = if event["stage"] == "run" && event["stream"] == "stdout" {
                        let mut out = std::io::stdout();
                        out.write_all(data).and_then(|()| out.flush())
                    } else {
                        std::io::stderr().write_all(data)
                    };
                }
                Some("result") => result = event["result"].clone(),
                _ => {}
            }
        }
    }
    let status = result["status"].as_str().unwrap_or("internal_error");
    if !matches!(status, "ok" | "accepted") {
        match result["message"].as_str() {
            Some(message) => eprintln!("runner: {status}: {message}"),
            None => eprintln!("runner: {status}"),
        }
    }
    Ok(exit_code(&result))
}

/// The exit status of a result as JSON, as `runner run` exits.
fn exit_code(result: &Value) -> ExitCode {
    let run = &result["run"];
    match result["status"].as_str() {
        Some("internal_error") | None => return ExitCode::from(EXIT_RUNNER_FAILED),
        Some("time_limit_exceeded") => return ExitCode::from(crate::EXIT_TIMED_OUT),
        Some("compile_error" | "wrong_answer") => return ExitCode::from(1),
        _ => {}
    }
    match (run["exit_code"].as_i64(), run["signal"].as_i64()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128u8.saturating_add(signal as u8)),
        (None, None) => ExitCode::from(EXIT_RUNNER_FAILED),
    }
}

/// `ID:PATH` as its two parts; `None` for a local path.
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (id, path) = arg.split_once(':')?;
    id.starts_with("ses_").then_some((id, path))
}

/// A path for a URL: each segment percent-encoded, `/` kept.
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            segment
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn without_nulls(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        map.retain(|_, v| !v.is_null());
    }
    value
}

/// Stdin as text for the request (the API takes stdin as a string).
fn read_stdin_text() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return Ok(String::new());
    }
    let bytes = crate::read_stdin()?;
    String::from_utf8(bytes).map_err(|_| {
        anyhow::Error::new(crate::Usage(
            "stdin is not UTF-8; the API takes stdin as text".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_and_their_urls() {
        assert_eq!(remote("ses_ab:data/x.csv"), Some(("ses_ab", "data/x.csv")));
        assert_eq!(remote("./local.txt"), None);
        assert_eq!(remote("C:file"), None);
        assert_eq!(encode_path("a b/ü?.txt"), "a%20b/%C3%BC%3F.txt");
        assert_eq!(encode_path(""), "");
    }
}
