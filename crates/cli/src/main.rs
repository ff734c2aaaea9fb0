//! `runner`: run untrusted code in microVMs.
//!
//! Thin glue over `runner-host`: parse arguments, print results, map the
//! program's exit to our own.

mod doctor;
mod progress;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use runner_host::exec::{ExecutionRequest, ExecutionResult, OutputChunk, SourceFile};
use runner_host::state::StateDir;
use runner_host::{LimitPolicy, Runner};
use tokio::sync::mpsc;

/// Exit status when the program ran past its time limit (as timeout(1)).
const EXIT_TIMED_OUT: u8 = 124;
/// Exit status when Runner Codes itself failed (as docker run).
const EXIT_RUNNER_FAILED: u8 = 125;
/// Largest stdin passed through to a program.
const MAX_STDIN: u64 = 16 << 20;

#[derive(Parser)]
#[command(name = "runner", version, about = "Run untrusted code in microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run code in a fresh microVM and exit with its exit status.
    Run(RunArgs),
    /// Build or list the guest images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Show the languages and the version each image has.
    Languages,
    /// Say which backend and acceleration would be used, and what is missing.
    Doctor,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Language of the code (see `runner languages`).
    #[arg(short, long)]
    lang: String,
    /// The code to run, instead of a file.
    #[arg(short = 'c', long = "code", conflicts_with = "file")]
    code: Option<String>,
    /// A file with the code to run.
    file: Option<PathBuf>,
    /// Wall-clock limit in seconds.
    #[arg(short, long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// Bytes of output kept (stdout and stderr together); the program is
    /// stopped past it.
    #[arg(long, value_name = "BYTES")]
    output_limit: Option<u64>,
    /// Environment variable for the program, NAME=value (repeatable).
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Print the result as JSON (output, exit status, timings) instead of
    /// streaming the program's output.
    #[arg(long)]
    json: bool,
    /// Arguments passed to the program.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the images a language needs (all languages without --lang).
    Build {
        #[arg(short, long)]
        lang: Vec<String>,
    },
    /// List built images with their size, hash and age.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain, once: "what failed: because: because".
            let mut message = format!("runner: {e}");
            for cause in e.chain().skip(1) {
                message += &format!(": {cause}");
            }
            eprintln!("{message}");
            ExitCode::from(EXIT_RUNNER_FAILED)
        }
    }
}

/// JSON lines on stderr; `RUNNER_LOG` sets the filter (default: warnings).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let runner = || Runner::new(StateDir::from_env(), LimitPolicy::default());
    match cli.command {
        Command::Run(args) => run(runner()?, args).await,
        Command::Image { command } => image(runner()?, command).await,
        Command::Languages => languages(runner()?),
        Command::Doctor => doctor::doctor(runner()?).await,
    }
}

async fn run(runner: Runner, args: RunArgs) -> anyhow::Result<ExitCode> {
    let language = runner.languages().get(&args.lang)?.clone();
    let code = match (&args.code, &args.file) {
        (Some(code), _) => code.clone().into_bytes(),
        (None, Some(file)) => {
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
        }
        (None, None) => bail!("give the code with -c CODE or as a file"),
    };
    let mut env = std::collections::BTreeMap::new();
    for pair in &args.env {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--env {pair:?}: expected NAME=value");
        };
        env.insert(name.to_string(), value.to_string());
    }
    let wall_limit = match args.timeout {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            bail!("--timeout must be a positive number of seconds")
        }
        Some(s) => Some(Duration::try_from_secs_f64(s).context("--timeout is too large")?),
        None => None,
    };
    let request = ExecutionRequest {
        language: language.name.clone(),
        files: vec![SourceFile {
            name: language.source_file.clone(),
            content: code,
        }],
        stdin: read_stdin()?,
        args: args.args,
        env,
        wall_limit,
        output_limit: args.output_limit,
        trace_id: None,
    };
    // Refuse a bad request before building or booting anything.
    runner.plan(&request)?;
    runner
        .prepare(&language, Arc::new(progress::Spinner::new()))
        .await?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let printer = (!args.json).then(|| {
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                // A closed stdout (e.g. `| head`) must not fail the run.
                let _ = match chunk {
                    OutputChunk::Stdout(b) => std::io::stdout()
                        .write_all(&b)
                        .and_then(|_| std::io::stdout().flush()),
                    OutputChunk::Stderr(b) => std::io::stderr().write_all(&b),
                };
            }
        })
    });
    let result = tokio::select! {
        result = runner.execute(request, printer.as_ref().map(|_| tx)) => result?,
        signal = interrupted() => {
            // Dropping the execution future killed the VM and removed its files.
            eprintln!("runner: interrupted by {signal}; the VM was stopped");
            return Ok(ExitCode::from(128 + signal_number(signal)));
        }
    };
    if let Some(printer) = printer {
        let _ = printer.await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        warn_about_limits(&result);
    }
    Ok(exit_code(&result))
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut input = Vec::new();
    stdin
        .lock()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut input)
        .context("reading stdin")?;
    if input.len() as u64 > MAX_STDIN {
        bail!("stdin is over {} MiB", MAX_STDIN >> 20);
    }
    Ok(input)
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

fn signal_number(name: &str) -> u8 {
    match name {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        _ => 15,
    }
}

fn warn_about_limits(result: &ExecutionResult) {
    let Some(stage) = result.last_stage() else {
        return;
    };
    if stage.timed_out {
        eprintln!(
            "runner: time limit reached after {:.0} ms; the program was killed",
            stage.wall_time
        );
    }
    if stage.output_truncated {
        eprintln!("runner: output limit reached; output was cut and the program was killed");
    }
}

/// The program's exit status, as a shell would report it.
fn exit_code(result: &ExecutionResult) -> ExitCode {
    let Some(stage) = result.last_stage() else {
        return ExitCode::from(EXIT_RUNNER_FAILED);
    };
    if stage.timed_out {
        return ExitCode::from(EXIT_TIMED_OUT);
    }
    match (stage.exit_code, stage.signal) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128u8.saturating_add(signal as u8)),
        (None, None) => ExitCode::from(EXIT_RUNNER_FAILED),
    }
}

async fn image(runner: Runner, command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Build { lang } => {
            let languages: Vec<_> = if lang.is_empty() {
                runner.languages().all().to_vec()
            } else {
                lang.iter()
                    .map(|l| runner.languages().get(l).cloned())
                    .collect::<Result<_, _>>()?
            };
            for language in languages {
                let images = runner
                    .prepare(&language, Arc::new(progress::Spinner::new()))
                    .await?;
                println!(
                    "{}: {} ({})",
                    language.name, images.rootfs_manifest.version, images.rootfs_manifest.id
                );
            }
        }
        ImageCommand::List => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            println!(
                "{:<36} {:>9} {:>9} {:>8}  VERSION",
                "IMAGE", "SIZE", "BUILD", "AGE"
            );
            for m in runner.images().list()? {
                println!(
                    "{:<36} {:>9} {:>8.1}s {:>8}  {}",
                    m.id,
                    format!("{:.1} MiB", m.size_bytes as f64 / (1 << 20) as f64),
                    m.build_seconds,
                    age(now.saturating_sub(m.built_at)),
                    m.version
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn languages(runner: Runner) -> anyhow::Result<ExitCode> {
    println!(
        "{:<10} {:<24} {:<10} VERSION",
        "LANGUAGE", "ALIASES", "MEMORY"
    );
    for language in runner.languages().all() {
        let version = runner
            .images()
            .rootfs_manifest(language)
            .map(|m| m.version)
            .unwrap_or_else(|| "(image not built: runner image build)".into());
        println!(
            "{:<10} {:<24} {:<10} {}",
            language.name,
            language.aliases.join(","),
            format!("{} MiB", language.memory_mib),
            version
        );
    }
    Ok(ExitCode::SUCCESS)
}
