//! `runner session`: a client of `runner serve`'s sessions, through the
//! typed client ([`runner_wire::Client`]).
//!
//! Each subcommand is one or two HTTP requests; the server does the work and
//! keeps the session. `exec` takes `runner run`'s flags for the same things
//! (limits, environment, files back), streams the output as it does and
//! exits with the program's exit status.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use runner_wire::{
    Client, ClientError, ExecutionBody, ExecutionEvent, ExecutionResult, FileBody, FileKind,
    SessionBody, Stream,
};

use crate::exit::{self, EXIT_RUNNER_FAILED};
use crate::flags::{self, LimitArgs, OutputArgs};

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
    Exec(Box<ExecArgs>),
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

/// `runner session exec`.
#[derive(clap::Args)]
struct ExecArgs {
    id: String,
    /// The program's code.
    #[arg(short, long, conflicts_with_all = ["files", "command"])]
    code: Option<String>,
    /// A shell command instead of a program.
    #[arg(long)]
    command: Option<String>,
    /// The program's files (the first is the entry point).
    files: Vec<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Environment variable for the program, NAME=value (repeatable).
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    #[command(flatten)]
    outputs: OutputArgs,
    /// Print the result as JSON instead of streaming the output.
    #[arg(long)]
    json: bool,
    /// Arguments for the program.
    #[arg(last = true)]
    args: Vec<String>,
}

/// A client of the server `server` names, else this machine's `listen`
/// address, with `api_key`.
pub fn client(
    server: Option<String>,
    api_key: Option<String>,
    config: &runner_api::ServerConfig,
) -> Client {
    let base = server.unwrap_or_else(|| {
        let mut addr = config.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    });
    let client = Client::new(base);
    match api_key {
        Some(key) => client.with_api_key(key),
        None => client,
    }
}

pub async fn session(
    args: SessionArgs,
    config: &runner_api::ServerConfig,
) -> anyhow::Result<ExitCode> {
    let client = client(args.server, args.api_key, config);
    match run(&client, args.command).await {
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Api { status, .. }) => {
                let mut message = format!("runner: {e}");
                if *status == 401 {
                    message.push_str("; give the key with --api-key or RUNNER_API_KEY");
                }
                eprintln!("{message}");
                // A refused request is the caller's to change; the server's
                // own failure is ours.
                Ok(ExitCode::from(if (400..500).contains(status) {
                    exit::EXIT_USAGE
                } else {
                    EXIT_RUNNER_FAILED
                }))
            }
            _ => Err(e),
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
            let body = SessionBody {
                language: lang,
                memory_mib,
                disk_mib,
                env: flags::parse_env(&env)?,
                idle_timeout_s,
                max_lifetime_s,
                network: None,
            };
            let session = client.create_session(&body).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&session)?);
            } else {
                outln!("{}", session.id);
            }
        }
        SessionCommand::Exec(args) => return exec(client, *args).await,
        SessionCommand::Cp { from, to } => match (remote(&from), remote(&to)) {
            (None, Some((id, path))) => {
                let content = flags::read_input(std::path::Path::new(&from))?;
                client.write_file(id, path, content, false).await?;
            }
            (Some((id, path)), None) => {
                let content = client.read_file(id, path).await?;
                if to == "-" {
                    std::io::stdout().write_all(&content)?;
                } else {
                    std::fs::write(&to, &content).with_context(|| format!("writing {to}"))?;
                }
            }
            _ => usage!("cp takes one local path and one ID:PATH, e.g. `cp data.csv ID:data.csv`"),
        },
        SessionCommand::Ls { id, path } => {
            for entry in client.list_files(&id, &path).await? {
                let kind = match entry.kind {
                    FileKind::Directory => 'd',
                    FileKind::Symlink => 'l',
                    FileKind::File => '-',
                    FileKind::Other => '?',
                };
                outln!("{kind}{:o} {:>10} {}", entry.mode, entry.size, entry.name);
            }
        }
        SessionCommand::List => {
            for session in client.sessions().await? {
                outln!(
                    "{} {} {} executions={}",
                    session.id,
                    session.language,
                    session.state,
                    session.executions,
                );
            }
        }
        SessionCommand::Show { id } => {
            let session = client.session(&id).await?;
            outln!("{}", serde_json::to_string_pretty(&session)?);
        }
        SessionCommand::Rm { id } => client.delete_session(&id).await?,
        SessionCommand::Pause { id } => {
            let session = client.pause_session(&id).await?;
            let (disk_bytes, pause_time_ms) = session
                .paused
                .as_ref()
                .map_or((0, 0.0), |p| (p.disk_bytes, p.pause_time_ms));
            outln!(
                "{id} paused: {:.1} MiB on disk (a {} MiB VM), saved in {pause_time_ms:.0} ms",
                disk_bytes as f64 / (1 << 20) as f64,
                session.vm_memory_mib,
            );
        }
        SessionCommand::Resume { id } => {
            let session = client.resume_session(&id).await?;
            outln!("{id} {}", session.state);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(client: &Client, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let files: Vec<FileBody> = match args.code {
        Some(code) => vec![FileBody::new(None, code.into_bytes())],
        None => flags::read_files(&args.files)?
            .into_iter()
            .map(|file| FileBody::new(file.name, file.content))
            .collect(),
    };
    if files.is_empty() && args.command.is_none() {
        usage!("give the code with -c CODE, as files, or a --command");
    }
    let body = ExecutionBody {
        files,
        command: args.command,
        env: flags::parse_env(&args.env)?,
        args: args.args,
        stdin: read_stdin_text()?,
        limits: args.limits.request_limits()?,
        outputs: args.outputs.outputs.clone(),
        ..ExecutionBody::default()
    };
    let result = if args.json {
        let result = client.execute_in_session(&args.id, &body).await?;
        crate::run::print_json(&result)?;
        result
    } else {
        let result = streamed(client, &args.id, &body).await?;
        exit::explain(&result);
        result
    };
    args.outputs.write(&result.outputs)?;
    Ok(exit::of_result(&result))
}

/// Runs `body` in session `id`, its output shown as it comes, as `runner
/// run` shows it.
async fn streamed(
    client: &Client,
    id: &str,
    body: &ExecutionBody,
) -> anyhow::Result<ExecutionResult> {
    let mut lines = client.execute_in_session_stream(id, body).await?;
    while let Some(event) = lines.next().await {
        match event? {
            ExecutionEvent::Output {
                stage,
                stream,
                data,
            } => crate::run::show(stage, stream == Stream::Stderr, data.as_bytes()),
            ExecutionEvent::Result { result } => return Ok(*result),
            ExecutionEvent::Started { .. } => {}
        }
    }
    anyhow::bail!("the server's stream ended without a result")
}

/// `ID:PATH` as its two parts; `None` for a local path.
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (id, path) = arg.split_once(':')?;
    id.starts_with("ses_").then_some((id, path))
}

/// Stdin as text for the request (the API takes stdin as a string).
fn read_stdin_text() -> anyhow::Result<String> {
    let bytes = flags::read_stdin()?;
    String::from_utf8(bytes).map_err(|_| {
        anyhow::Error::new(exit::Usage(
            "stdin is not UTF-8; the API takes stdin as text".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_told_from_local_ones() {
        assert_eq!(remote("ses_ab:data/x.csv"), Some(("ses_ab", "data/x.csv")));
        assert_eq!(remote("./local.txt"), None);
        assert_eq!(remote("C:file"), None);
    }
}
