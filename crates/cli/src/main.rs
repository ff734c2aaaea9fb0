//! `runner`: run untrusted code in microVMs.
//!
//! Thin glue over `runner-host`: parse arguments, print results, map the
//! program's exit to our own.

/// `println!` for the commands' own output. A reader that went away
/// (`runner snapshot list | head -1`) ends the command quietly with status
/// 0, as ripgrep does, instead of a panic; the standard library ignores
/// SIGPIPE so that the server and the VM sockets never die of it.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Returns early with a [`Usage`] error: a mistake in what the user
/// asked for.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::Usage(format!($($arg)*)).into())
    };
}

mod bench;
mod doctor;
mod judge;
mod mcp;
mod progress;
mod session;
mod settings;
mod soak;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};
use runner_host::Runner;
use runner_host::exec::{
    ExecutionRequest, ExecutionResult, OutputChunk, RequestLimits, SourceFile, Stage, StageLimits,
    Status,
};
use runner_host::judge::{CheckerRequest, Compare, DEFAULT_TOLERANCE};
use settings::{Settings, Sources};
use tokio::sync::mpsc;

/// Exit status when the program ran past its time limit (as timeout(1)).
const EXIT_TIMED_OUT: u8 = 124;
/// Exit status when Runner Codes itself failed (as docker run).
const EXIT_RUNNER_FAILED: u8 = 125;
/// Exit status of a request the user got wrong, refused before anything
/// ran (as clap's own usage errors).
const EXIT_USAGE: u8 = 2;

/// A mistake in what the user asked for, as opposed to a failure of ours:
/// the command exits with [`EXIT_USAGE`].
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Largest stdin passed through to a program.
const MAX_STDIN: u64 = 16 << 20;

#[derive(Parser)]
#[command(name = "runner", version, about = "Run untrusted code in microVMs")]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from, for every command. Each setting
/// comes from the built-in defaults, then the file, then `RUNNER_<KEY>`
/// variables, then flags; the later wins.
#[derive(clap::Args)]
struct ConfigArgs {
    /// TOML configuration file [default: /etc/runner/config.toml if it
    /// exists; env RUNNER_CONFIG].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Any setting by its key, e.g. limits.run.wall_time_ms=5000 (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the configuration these sources give, and exit.
    #[arg(long, global = true)]
    print_config: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run code in a fresh microVM and exit with its exit status.
    Run(Box<RunArgs>),
    /// Build or list the guest images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Make or list the snapshots VMs are restored from.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Show the languages and the version each image has.
    Languages,
    /// Say which backend and acceleration would be used, and what is missing.
    Doctor {
        /// Also boot a VM from the kernel's debug flavour (kernel messages
        /// on) and show its console: for a VM that does not boot.
        #[arg(long)]
        debug_kernel: bool,
    },
    /// Judge a program against a folder of tests (NAME.in, NAME.out),
    /// compiling it once; exit 0 only if every test is accepted.
    Judge(Box<judge::JudgeArgs>),
    /// Serve the HTTP API (see openapi.json) until SIGTERM.
    Serve(Box<ServeArgs>),
    /// Sessions of a `runner serve`: one VM for many executions
    /// (create, exec, cp, ls, list, show, rm).
    Session(Box<session::SessionArgs>),
    /// Serve the tools of an MCP server (Model Context Protocol) on stdin
    /// and stdout: run code, languages, sessions. Executions run here,
    /// with this configuration, or on the `runner serve` at --server.
    Mcp(McpArgs),
    /// Make API keys for `runner serve`.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Measure start times, programs and throughput against the host, and
    /// write a report with figures.
    Bench(Box<bench::BenchArgs>),
    /// Drive a `runner serve` of its own at capacity with a mix of languages
    /// and hostile programs, then report what came back (no result may be
    /// lost) and whether the server's memory, files and threads stayed flat.
    Soak(soak::SoakArgs),
}

#[derive(clap::Args)]
struct McpArgs {
    /// Run the tools on this `runner serve` (its HTTP API) instead of here
    /// [env RUNNER_SERVER].
    #[arg(long, value_name = "URL", env = "RUNNER_SERVER")]
    server: Option<String>,
    /// The server's API key, when it has keys [env RUNNER_API_KEY].
    #[arg(
        long,
        value_name = "KEY",
        env = "RUNNER_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a new API key: prints the key (shown only this once) and the
    /// `[[api_keys]]` entry, with the key's hash, for the server's
    /// configuration file.
    New {
        /// Who holds the key: the owner of its sessions, in logs.
        #[arg(long)]
        name: String,
        /// Sessions the key may have running at once [default:
        /// sessions.max_per_owner].
        #[arg(long, value_name = "N")]
        max_sessions: Option<usize>,
    },
}

/// The common settings of `runner serve` as flags of their own; any other
/// goes with `--set`.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address and port to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// State directory (images, snapshots, run directories).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<String>,
    /// Languages to serve, comma-separated [default: all].
    #[arg(long, value_name = "LIST")]
    languages: Option<String>,
    /// Host memory kept out of the VMs' budget, in MiB [default: 2048].
    #[arg(long, value_name = "MIB")]
    reserved_memory_mib: Option<String>,
    /// VMs at once; 0 for one per CPU [default: 0].
    #[arg(long, value_name = "N")]
    max_vms: Option<String>,
    /// Requests that may wait for a VM [default: 64].
    #[arg(long, value_name = "N")]
    queue_size: Option<String>,
    /// How long a request may wait for a VM, in ms [default: 60000].
    #[arg(long, value_name = "MS")]
    queue_timeout_ms: Option<String>,
    /// After SIGTERM, how long executions may go on, in ms [default: 30000].
    #[arg(long, value_name = "MS")]
    shutdown_timeout_ms: Option<String>,
}

impl ServeArgs {
    /// The flags given, as settings.
    fn settings(&self) -> Vec<(String, String)> {
        [
            ("listen", &self.listen),
            ("state_dir", &self.state_dir),
            ("languages", &self.languages),
            ("reserved_memory_mib", &self.reserved_memory_mib),
            ("max_vms", &self.max_vms),
            ("queue_size", &self.queue_size),
            ("queue_timeout_ms", &self.queue_timeout_ms),
            ("shutdown_timeout_ms", &self.shutdown_timeout_ms),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_string(), value.clone()?)))
        .collect()
    }
}

/// `runner run`.
#[derive(clap::Args)]
struct RunArgs {
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
    /// Files the program writes to bring back, by path or pattern under
    /// its working directory (`*.png`, `out/**`; repeatable). They are
    /// written under --output-dir.
    #[arg(short = 'O', long = "output", value_name = "PATTERN")]
    outputs: Vec<String>,
    /// Where the files named by --output go [default: the current
    /// directory].
    #[arg(long, value_name = "DIR", default_value = ".")]
    output_dir: PathBuf,
    /// Let the program reach this domain (`pypi.example`, `*.example`;
    /// repeatable) through the proxy, within the configuration's
    /// network.allow.
    #[arg(long = "allow-net", value_name = "PATTERN")]
    allow_net: Vec<String>,
    /// Arguments passed to the program.
    #[arg(last = true)]
    args: Vec<String>,
}

/// The limit flags: the request's limits of the run stage (and
/// `--compile-wall-time-ms` the compile stage's), named as in the API with
/// the unit in the name. `--timeout`, `--cpu-time` and `--compile-timeout`
/// take seconds instead, as timeout(1) does.
#[derive(clap::Args)]
struct LimitArgs {
    /// Wall-clock limit of the run stage, in milliseconds.
    #[arg(long, value_name = "MS", conflicts_with = "timeout")]
    wall_time_ms: Option<u64>,
    /// Wall-clock limit of the run stage, in seconds.
    #[arg(short, long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// CPU-time limit of the run stage, in milliseconds.
    #[arg(long, value_name = "MS", conflicts_with = "cpu_time")]
    cpu_time_ms: Option<u64>,
    /// CPU-time limit of the run stage, in seconds.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    cpu_time: Option<f64>,
    /// Memory limit of the run stage, in MiB (the VM gets 64 MiB more).
    #[arg(
        short,
        long = "memory-mib",
        visible_alias = "memory",
        value_name = "MIB"
    )]
    memory_mib: Option<u64>,
    /// Processes and threads the run stage may have at once.
    #[arg(long, value_name = "N")]
    processes: Option<u32>,
    /// Bytes of output kept (stdout and stderr together); the program is
    /// stopped past it.
    #[arg(long, visible_alias = "output-limit", value_name = "BYTES")]
    output_bytes: Option<u64>,
    /// Largest file the program may write, in bytes.
    #[arg(long, visible_alias = "file-size-limit", value_name = "BYTES")]
    file_size_bytes: Option<u64>,
    /// Wall-clock limit of the compile stage, in milliseconds.
    #[arg(long, value_name = "MS", conflicts_with = "compile_timeout")]
    compile_wall_time_ms: Option<u64>,
    /// Wall-clock limit of the compile stage, in seconds.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    compile_timeout: Option<f64>,
}

impl LimitArgs {
    fn request_limits(&self) -> anyhow::Result<RequestLimits> {
        Ok(RequestLimits {
            compile: StageLimits {
                wall_time_ms: either(
                    self.compile_wall_time_ms,
                    "--compile-timeout",
                    self.compile_timeout,
                )?,
                ..Default::default()
            },
            run: StageLimits {
                wall_time_ms: either(self.wall_time_ms, "--timeout", self.timeout)?,
                cpu_time_ms: either(self.cpu_time_ms, "--cpu-time", self.cpu_time)?,
                memory_mib: self.memory_mib,
                processes: self.processes,
                output_bytes: self.output_bytes,
                file_size_bytes: self.file_size_bytes,
            },
        })
    }
}

/// How outputs are compared with the expected ones.
#[derive(clap::Args)]
struct CompareArgs {
    /// How to compare with the expected output [default: lines].
    #[arg(long, value_name = "MODE")]
    compare: Option<CompareMode>,
    /// With --compare float: numbers this close are equal [default: 1e-6].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    absolute_tolerance: Option<f64>,
    /// With --compare float: numbers within this fraction of the expected
    /// one are equal [default: 1e-6].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    relative_tolerance: Option<f64>,
    /// A checker program that decides instead, in a VM of its own, as
    /// testlib's do: run as `checker input.txt output.txt expected.txt`, it
    /// exits 0 to accept, 1 for a wrong answer.
    #[arg(long, value_name = "FILE", conflicts_with = "compare")]
    checker: Option<PathBuf>,
    /// The checker's language.
    #[arg(long, value_name = "LANG", requires = "checker")]
    checker_lang: Option<String>,
}

impl CompareArgs {
    fn to_compare(&self) -> anyhow::Result<Option<Compare>> {
        if let Some(path) = &self.checker {
            let Some(language) = &self.checker_lang else {
                usage!("--checker needs --checker-lang, the checker's language");
            };
            if self.absolute_tolerance.is_some() || self.relative_tolerance.is_some() {
                usage!("tolerances go with --compare float, not with a checker");
            }
            return Ok(Some(Compare::Checker(CheckerRequest {
                language: language.clone(),
                files: read_files(std::slice::from_ref(path))?,
            })));
        }
        let tolerances = (self.absolute_tolerance, self.relative_tolerance);
        Ok(match self.compare {
            Some(CompareMode::Float) => Some(Compare::Float {
                absolute_tolerance: tolerances.0.unwrap_or(DEFAULT_TOLERANCE),
                relative_tolerance: tolerances.1.unwrap_or(DEFAULT_TOLERANCE),
            }),
            _ if tolerances != (None, None) => {
                usage!("--absolute-tolerance and --relative-tolerance go with --compare float")
            }
            Some(CompareMode::Exact) => Some(Compare::Exact),
            Some(CompareMode::Lines) => Some(Compare::Lines),
            Some(CompareMode::Tokens) => Some(Compare::Tokens),
            None => None,
        })
    }
}

/// `--compare`: the modes of the API's `compare`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum CompareMode {
    /// Byte for byte.
    Exact,
    /// Line by line, ignoring whitespace at line ends and blank lines at the end.
    Lines,
    /// Whitespace-separated tokens.
    Tokens,
    /// Tokens, with numbers equal within the tolerances.
    Float,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Boot a VM per language until it is ready, warm it, and save it, so
    /// that executions restore it instead of booting (every enabled
    /// language without --lang). Builds missing images first.
    Create {
        #[arg(short, long)]
        lang: Vec<String>,
    },
    /// List snapshots with their size, id and what they were made from.
    List,
    /// Remove snapshots this runner no longer restores (made from older
    /// images, agents or settings), except those a paused session needs.
    Prune,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the images a language needs (every enabled language without
    /// --lang).
    Build {
        #[arg(short, long)]
        lang: Vec<String>,
    },
    /// List built images with their size, hash and age.
    List,
    /// Remove images the current recipes no longer use.
    Prune,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs a line per execution; the other commands only warn.
    init_logging(if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    });
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
            let usage = e.is::<Usage>()
                || e.is::<runner_host::PlanError>()
                || e.is::<runner_host::ConfigError>()
                || e.is::<settings::SettingsError>();
            ExitCode::from(if usage {
                EXIT_USAGE
            } else {
                EXIT_RUNNER_FAILED
            })
        }
    }
}

/// Writes to stdout; see [`outln!`].
fn write_stdout(args: std::fmt::Arguments) {
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("runner: write to stdout: {e}");
        std::process::exit(i32::from(EXIT_RUNNER_FAILED));
    }
}

/// JSON lines on stderr; `RUNNER_LOG` sets the filter (default: warnings).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut flags = match &cli.command {
        Command::Serve(args) => args.settings(),
        Command::Doctor { debug_kernel: true } => vec![("kernel_debug".into(), "true".into())],
        _ => Vec::new(),
    };
    for set in &cli.config.set {
        let Some((key, value)) = set.split_once('=') else {
            return Err(settings::SettingsError::Set(set.clone()).into());
        };
        flags.push((key.trim().to_string(), value.to_string()));
    }
    let env = |name: &str| std::env::var(name).ok();
    let settings = Settings::load(Sources {
        file: cli.config.config.clone(),
        env: &env,
        flags,
    })?;
    if cli.config.print_config {
        print_config(&settings)?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = &settings.engine;
    let runner = || {
        let runner = Runner::new(config)?;
        if let Some(slots) = runner.machine_slots() {
            slots.on_wait(Arc::new(|slots| {
                eprintln!(
                    "runner: waiting for a VM slot: other runner processes hold all {} of this \
                     machine's (max_vms); --set shared_capacity=false runs without waiting",
                    slots.count()
                )
            }));
        }
        Ok::<_, runner_host::RunnerError>(runner)
    };
    match cli.command {
        Command::Run(args) => run(runner()?, *args).await,
        Command::Judge(args) => judge::judge(runner()?, config, *args).await,
        Command::Image { command } => image(runner()?, command).await,
        Command::Snapshot { command } => snapshot(runner()?, command).await,
        Command::Languages => languages(runner()?),
        Command::Doctor { debug_kernel } => doctor::doctor(runner()?, config, debug_kernel).await,
        Command::Serve(_) => {
            runner_api::serve(settings.engine, settings.server).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::bench(runner()?, config, *args).await,
        Command::Soak(args) => {
            soak::soak(config, cli.config.config.as_ref(), &cli.config.set, args).await
        }
        Command::Session(args) => session::session(*args, &settings.server).await,
        Command::Key { command } => key(command),
        Command::Mcp(args) => {
            if args.server.is_some() {
                let client = session::Client::new(args.server, args.api_key, &settings.server);
                runner_mcp::serve_stdio(Arc::new(mcp::Remote(client))).await?;
                return Ok(ExitCode::SUCCESS);
            }
            let engine = runner_mcp::Engine::local(config, "")?;
            let served = runner_mcp::serve_stdio(engine.clone()).await;
            engine.close().await;
            served?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn key(command: KeyCommand) -> anyhow::Result<ExitCode> {
    let KeyCommand::New { name, max_sessions } = command;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        eprintln!("runner: --name must be letters, digits and - _ . @, such as alice or ci-bot");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let key = runner_api::auth::new_key();
    let entry = runner_api::ApiKey {
        name,
        sha256: runner_api::auth::hash_key(&key),
        max_sessions,
        max_paused_sessions: None,
    };
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        api_keys: [&'a runner_api::ApiKey; 1],
    }
    let toml = toml::to_string(&Entry { api_keys: [&entry] })?;
    println!("# The key, shown only now (the server keeps its hash); clients send it");
    println!("# as `Authorization: Bearer KEY` (runner session: --api-key or RUNNER_API_KEY):");
    println!("{key}");
    println!();
    println!(
        "# For the server's configuration file ({}); restart it after:",
        runner_host::config::DEFAULT_CONFIG_FILE
    );
    print!("{toml}");
    Ok(ExitCode::SUCCESS)
}

/// The configuration as TOML that loads back as itself, after comments on
/// what some of its values come to on this machine.
fn print_config(settings: &Settings) -> anyhow::Result<()> {
    let config = &settings.engine;
    let capacity = runner_api::Capacity::of_host(config.reserved_memory_mib, config.machine_vms())
        .map_err(anyhow::Error::msg)?;
    let python = runner_host::lang::Languages::builtin()?
        .get("python")?
        .memory_mib;
    let vm = u64::from(runner_host::vmm::vm_memory_mib(python.into()));
    outln!(
        "# capacity: {} VMs at once ({} CPUs, max_vms {}; {} MiB of memory for VMs = {} VMs of {vm} MiB)",
        capacity.vms_of(vm),
        capacity.cpus,
        capacity.max_vms,
        capacity.vm_memory_budget_mib,
        capacity.vm_memory_budget_mib / vm,
    );
    if config.debian_mirror.is_empty() {
        let source = runner_host::image::DebianSource::new("");
        match source.mirror() {
            Ok(mirror) => outln!("# debian_mirror: from this machine's apt sources: {mirror}"),
            Err(e) => outln!("# debian_mirror: {e}"),
        }
    }
    write_stdout(format_args!("{}", settings.to_toml()));
    Ok(())
}

async fn run(runner: Runner, args: RunArgs) -> anyhow::Result<ExitCode> {
    let language = args.lang.clone().context("give the language with --lang")?;
    let files = match &args.code {
        Some(code) => vec![SourceFile::entry(code.clone())],
        None if args.files.is_empty() => usage!("give the code with -c CODE or as files"),
        None => read_files(&args.files)?,
    };
    let env = parse_env(&args.env)?;
    let expected_output = match &args.expected_output {
        Some(path) => Some(read_input(path)?),
        None => None,
    };
    let compare = args.compare.to_compare()?;
    let request = ExecutionRequest {
        language,
        files,
        stdin: read_stdin()?,
        args: args.args,
        env,
        limits: args.limits.request_limits()?,
        trace_id: None,
        command: None,
        interactive: None,
        outputs: args.outputs.clone(),
        network: (!args.allow_net.is_empty()).then(|| runner_host::net::NetworkRequest {
            allow: args.allow_net.clone(),
        }),
    };
    // Refuse a bad request before building or booting anything.
    let execution = runner.plan_execution(request, expected_output, compare)?;
    runner
        .prepare(
            &execution.plan().language,
            Arc::new(progress::Spinner::new()),
        )
        .await?;

    let (tx, mut rx) = mpsc::unbounded_channel::<OutputChunk>();
    let printer = (!args.json).then(|| {
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                // The program's stdout is ours; the compiler's output is
                // diagnostics, so it goes to stderr. A closed stdout (e.g.
                // `| head`) must not fail the run.
                let _ = if chunk.stage == Stage::Run && !chunk.stderr {
                    let mut out = std::io::stdout();
                    out.write_all(&chunk.bytes).and_then(|()| out.flush())
                } else {
                    std::io::stderr().write_all(&chunk.bytes)
                };
            }
        })
    });
    let result = tokio::select! {
        result = runner.execute(execution, printer.as_ref().map(|_| tx)) => result,
        signal = interrupted() => {
            // Dropping the execution future killed the VM and removed its files.
            eprintln!("runner: interrupted by {signal}; the VM was stopped");
            return Ok(ExitCode::from(128 + signal_number(signal)));
        }
    };
    if let Some(printer) = printer {
        let _ = printer.await;
    }
    write_outputs(&result.outputs, &args.output_dir)?;
    if args.json {
        let text = serde_json::to_string_pretty(&result)?;
        // A closed stdout (`| head`) is the reader's choice, not a failure;
        // the VM is gone already.
        if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(e.into());
            }
        }
    } else if !matches!(result.status, Status::Ok | Status::Accepted) {
        match &result.message {
            Some(message) => eprintln!("runner: {}: {message}", result.status),
            None => eprintln!("runner: {}", result.status),
        }
        if let Some(difference) = &result.difference {
            eprintln!("runner:   expected: {:?}", difference.expected);
            eprintln!("runner:   actual:   {:?}", difference.actual);
        }
    }
    Ok(exit_code(&result))
}

/// Writes the files a run sent back under `dir`, each at its path (the
/// host checked that every path stays relative, without `..`); says which
/// were over a cap.
fn write_outputs(
    outputs: &[runner_host::exec::OutputFile],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    for output in outputs {
        if output.truncated {
            eprintln!(
                "runner: {} ({} bytes) is over the cap of files sent back; not written",
                output.path, output.size
            );
            continue;
        }
        let path = dir.join(&output.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&path, &output.content)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("runner: wrote {} ({} bytes)", path.display(), output.size);
    }
    Ok(())
}

/// `--env NAME=value` flags as a map.
fn parse_env(pairs: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut env = std::collections::BTreeMap::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            usage!("--env {pair:?}: expected NAME=value");
        };
        env.insert(name.to_string(), value.to_string());
    }
    Ok(env)
}

/// A file the user named, or a usage error that says why it cannot be read.
fn read_input(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) => usage!("cannot read {}: {e}", path.display()),
    }
}

/// Reads the program's files, named as on disk (the plan names the entry
/// point and checks the names).
fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<SourceFile>> {
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let content = read_input(path)?;
        let Some(name) = path.file_name() else {
            usage!("{} is not a file", path.display());
        };
        // A name that is not UTF-8 would reach the VM changed.
        let Some(name) = name.to_str() else {
            usage!("the name of {} is not UTF-8", path.display());
        };
        files.push(SourceFile::named(name, content));
    }
    Ok(files)
}

/// A limit from its milliseconds flag, or from its seconds flag (which
/// clap keeps from being given too). Zero and negative seconds are passed
/// on as 0, for the limit policy to refuse with its message.
fn either(
    ms: Option<u64>,
    seconds_flag: &str,
    seconds: Option<f64>,
) -> anyhow::Result<Option<u64>> {
    match (ms, seconds) {
        (Some(ms), _) => Ok(Some(ms)),
        (None, None) => Ok(None),
        (None, Some(s)) if !s.is_finite() || s <= 0.0 => Ok(Some(0)),
        (None, Some(s)) if s > 1e9 => usage!("{seconds_flag} {s} is too large"),
        (None, Some(s)) => Ok(Some((s * 1000.0).round().max(1.0) as u64)),
    }
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
        usage!("stdin is over {} MiB", MAX_STDIN >> 20);
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

/// The program's exit status, as a shell would report it; 124 for a time
/// limit (as timeout(1)), 1 for a compile error, 125 for our own failure.
fn exit_code(result: &ExecutionResult) -> ExitCode {
    match result.status {
        Status::InternalError => return ExitCode::from(EXIT_RUNNER_FAILED),
        Status::TimeLimitExceeded => return ExitCode::from(EXIT_TIMED_OUT),
        Status::CompileError | Status::WrongAnswer => return ExitCode::from(1),
        _ => {}
    }
    let Some(run) = &result.run else {
        return ExitCode::from(EXIT_RUNNER_FAILED);
    };
    match (run.exit_code, run.signal) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128u8.saturating_add(signal as u8)),
        (None, None) => ExitCode::from(EXIT_RUNNER_FAILED),
    }
}

async fn snapshot(runner: Runner, command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotCommand::Create { lang } => {
            for language in selected(&runner, &lang)? {
                let spinner = progress::Spinner::new();
                runner_host::image::Progress::step(
                    &spinner,
                    &format!("snapshot of {}", language.name),
                );
                let snapshot = runner.snapshot(&language).await?;
                drop(spinner);
                outln!(
                    "{}: {} ({:.1} s to make)",
                    language.name,
                    snapshot.manifest.id,
                    snapshot.manifest.create_seconds
                );
            }
        }
        SnapshotCommand::Prune => {
            let keep = runner.current_snapshot_ids().await?;
            let paused = runner_host::session::files_of_paused(&runner.state().sessions());
            let removed = runner.snapshots().prune(&keep, &paused)?;
            for id in &removed {
                outln!("removed {id}");
            }
            outln!("{} snapshot(s) removed", removed.len());
        }
        SnapshotCommand::List => {
            outln!(
                "{:<36} {:<8} {:>8} {:>8} {:>7}  MADE FROM",
                "ID",
                "MEMORY",
                "ON DISK",
                "STATE",
                "MADE IN"
            );
            for m in runner.snapshots().list() {
                outln!(
                    "{:<36} {:<8} {:>8} {:>8} {:>6.1}s  {} {} {}",
                    m.id,
                    format!("{} MiB", m.key.memory_mib),
                    format!("{} MiB", m.memory_allocated_bytes >> 20),
                    format!("{} KiB", m.state_bytes >> 10),
                    m.create_seconds,
                    m.key.rootfs,
                    m.key.initramfs,
                    m.key.accel,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The languages named (every enabled one when none are).
fn selected(runner: &Runner, names: &[String]) -> anyhow::Result<Vec<runner_host::lang::Language>> {
    if names.is_empty() {
        return Ok(runner.enabled_languages().into_iter().cloned().collect());
    }
    Ok(names
        .iter()
        .map(|l| runner.language(l).cloned())
        .collect::<Result<_, _>>()?)
}

async fn image(runner: Runner, command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Build { lang } => {
            let mut kernel_shown = false;
            for language in selected(&runner, &lang)? {
                let images = runner
                    .prepare(&language, Arc::new(progress::Spinner::new()))
                    .await?;
                if !kernel_shown {
                    let kernel = &images.kernel;
                    outln!(
                        "kernel: {} ({}, built in {:.0} s, {:.1} MiB)",
                        kernel.version,
                        kernel.id,
                        kernel.build_seconds,
                        kernel.size_bytes as f64 / f64::from(1 << 20)
                    );
                    kernel_shown = true;
                }
                outln!(
                    "{}: {} ({})",
                    language.name,
                    images.rootfs_manifest.version,
                    images.rootfs_manifest.id
                );
            }
        }
        ImageCommand::Prune => {
            let languages = runner.languages().all().to_vec();
            let removed = runner.images().prune(
                &languages,
                runner_host::exec::agent(),
                &runner_host::session::files_of_paused(&runner.state().sessions()),
            )?;
            for id in &removed {
                outln!("removed {id}");
            }
            outln!("{} image(s) removed", removed.len());
        }
        ImageCommand::List => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            outln!(
                "{:<36} {:>9} {:>9} {:>8}  VERSION",
                "IMAGE",
                "SIZE",
                "BUILD",
                "AGE"
            );
            for m in runner.images().list()? {
                outln!(
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
    outln!(
        "{:<10} {:<24} {:<10} VERSION",
        "LANGUAGE",
        "ALIASES",
        "MEMORY"
    );
    for language in runner.enabled_languages() {
        let version = runner
            .images()
            .rootfs_manifest(language)
            .map(|m| m.version)
            .unwrap_or_else(|| "(image not built: runner image build)".into());
        outln!(
            "{:<10} {:<24} {:<10} {}",
            language.name,
            language.aliases.join(","),
            format!("{} MiB", language.memory_mib),
            version
        );
    }
    Ok(ExitCode::SUCCESS)
}
