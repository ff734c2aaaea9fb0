//! `runner run`: code in a fresh microVM, its output streamed, and the
//! program's exit status as ours.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use runner_host::Runner;
use runner_host::exec::{ExecutionRequest, OutputChunk, SourceFile, Stage};
use runner_host::net::NetworkRequest;
use tokio::sync::mpsc;

use crate::exit;
use crate::flags::{self, CompareArgs, LimitArgs, OutputArgs};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Language of the code (see `runner languages`).
    #[arg(short, long, required_unless_present = "print_config")]
    lang: Option<String>,
    /// The code to run, instead of files.
    #[arg(short = 'c', long = "code", conflicts_with = "files")]
    code: Option<String>,
    /// Files of the program. The entry point is the one named as the
    /// language expects (main.py, index.js, main.go, main.rs, main.sh,
    /// main.c, main.cpp, Main.java), else the first file, which is then
    /// given that name.
    files: Vec<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Environment variable for the program, NAME=value (repeatable).
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The output the program must print, from FILE: the result is then
    /// accepted, or wrong_answer (exit status 1) with where the outputs
    /// first differ.
    #[arg(long, value_name = "FILE")]
    expected_output: Option<PathBuf>,
    #[command(flatten)]
    compare: CompareArgs,
    /// Print the result as JSON (status, stages, timings) instead of
    /// streaming the program's output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    outputs: OutputArgs,
    /// Let the program reach this domain (`pypi.example`, `*.example`;
    /// repeatable) through the proxy, within the configuration's
    /// network.allow.
    #[arg(long = "allow-net", value_name = "PATTERN")]
    allow_net: Vec<String>,
    /// Arguments passed to the program.
    #[arg(last = true)]
    args: Vec<String>,
}

pub async fn run(runner: Runner, args: RunArgs) -> anyhow::Result<ExitCode> {
    let language = args.lang.clone().context("give the language with --lang")?;
    let files = match &args.code {
        Some(code) => vec![SourceFile::entry(code.clone())],
        None if args.files.is_empty() => usage!("give the code with -c CODE or as files"),
        None => flags::read_files(&args.files)?,
    };
    let expected_output = match &args.expected_output {
        Some(path) => Some(flags::read_input(path)?),
        None => None,
    };
    let compare = args.compare.to_compare()?;
    let request = ExecutionRequest {
        language,
        files,
        stdin: flags::read_stdin()?,
        args: args.args,
        env: flags::parse_env(&args.env)?,
        limits: args.limits.request_limits()?,
        trace_id: None,
        command: None,
        interactive: None,
        outputs: args.outputs.outputs.clone(),
        network: (!args.allow_net.is_empty()).then(|| NetworkRequest {
            allow: args.allow_net.clone(),
        }),
        // This machine's own user, as a server without keys has it.
        owner: String::new(),
    };
    // Refuse a bad request before building or booting anything.
    let execution = runner.plan_execution(request, expected_output, compare)?;
    runner
        .prepare(
            &execution.plan().language,
            Arc::new(crate::progress::Spinner::new()),
        )
        .await?;

    let (tx, mut rx) = mpsc::unbounded_channel::<OutputChunk>();
    let printer = (!args.json).then(|| {
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                show(chunk.stage, chunk.stderr, &chunk.bytes);
            }
        })
    });
    let result = tokio::select! {
        result = runner.execute(execution, printer.as_ref().map(|_| tx)) => result,
        signal = exit::interrupted() => {
            // Dropping the execution future killed the VM and removed its files.
            eprintln!("runner: interrupted by {signal}; the VM was stopped");
            return Ok(exit::of_signal(signal));
        }
    };
    if let Some(printer) = printer {
        let _ = printer.await;
    }
    args.outputs.write(&result.outputs)?;
    if args.json {
        print_json(&result)?;
    } else {
        exit::explain(&result);
    }
    Ok(exit::of_result(&result))
}

/// A program's output as it comes: its stdout is ours; everything else
/// (its stderr, a compiler's output, which is diagnostics) goes to stderr.
/// A closed stdout (e.g. `| head`) does not fail the run.
pub fn show(stage: Stage, stderr: bool, bytes: &[u8]) {
    let _ = if stage == Stage::Run && !stderr {
        let mut out = std::io::stdout();
        out.write_all(bytes).and_then(|()| out.flush())
    } else {
        std::io::stderr().write_all(bytes)
    };
}

/// `value` as pretty JSON on stdout. A closed stdout (`| head`) is the
/// reader's choice, not a failure; the VM is gone already.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    Ok(())
}
