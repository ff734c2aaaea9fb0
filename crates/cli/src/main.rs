//! `runner`: run untrusted code in microVMs.
//!
//! Thin glue over the engine (`runner-host`), the server (`runner-api`),
//! the MCP server (`runner-mcp`) and the benchmark (`runner-bench`): this
//! file parses the command line and dispatches; each command has a file of
//! its own, and the flags commands share are in [`flags`].

/// `println!` for the commands' own output. A reader that went away
/// (`runner snapshot list | head -1`) ends the command quietly with status
/// 0, as ripgrep does, instead of a panic; the standard library ignores
/// SIGPIPE so that the server and the VM sockets never die of it.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Returns early with a [`exit::Usage`] error: a mistake in what the user
/// asked for.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::exit::Usage(format!($($arg)*)).into())
    };
}

mod bench;
mod doctor;
mod exit;
mod flags;
mod image;
mod judge;
mod key;
mod languages;
mod mcp;
mod progress;
mod run;
mod serve;
mod session;
mod settings;
mod snapshot;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use runner_host::Runner;
use settings::{Settings, Sources};

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
    Run(Box<run::RunArgs>),
    /// Build or list the guest images.
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    /// Make or list the snapshots VMs are restored from.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
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
    Serve(Box<serve::ServeArgs>),
    /// Sessions of a `runner serve`: one VM for many executions
    /// (create, exec, cp, ls, list, show, rm).
    Session(Box<session::SessionArgs>),
    /// Serve the tools of an MCP server (Model Context Protocol) on stdin
    /// and stdout: run code, languages, sessions. Executions run here,
    /// with this configuration, or on the `runner serve` at --server.
    Mcp(mcp::McpArgs),
    /// Make API keys for `runner serve`.
    Key {
        #[command(subcommand)]
        command: key::KeyCommand,
    },
    /// Measure start times, programs and throughput against the host, and
    /// write a report with figures.
    Bench(Box<bench::BenchArgs>),
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
            let usage = e.is::<exit::Usage>()
                || e.is::<runner_host::ConfigError>()
                || e.is::<settings::SettingsError>();
            match e.downcast_ref::<runner_host::PlanError>() {
                Some(plan) => exit::of_code(plan.code()),
                None if usage => ExitCode::from(exit::EXIT_USAGE),
                None => ExitCode::from(exit::EXIT_RUNNER_FAILED),
            }
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
        std::process::exit(i32::from(exit::EXIT_RUNNER_FAILED));
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
        settings::print(&settings)?;
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
        Command::Run(args) => run::run(runner()?, *args).await,
        Command::Judge(args) => judge::judge(runner()?, config, *args).await,
        Command::Image { command } => image::image(runner()?, command).await,
        Command::Snapshot { command } => snapshot::snapshot(runner()?, command).await,
        Command::Languages => languages::languages(runner()?),
        Command::Doctor { debug_kernel } => doctor::doctor(runner()?, config, debug_kernel).await,
        Command::Serve(_) => {
            runner_api::serve(settings.engine, settings.server).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::bench(runner()?, config, *args).await,
        Command::Session(args) => session::session(*args, &settings.server).await,
        Command::Key { command } => key::key(command),
        Command::Mcp(args) => mcp::mcp(args, config, &settings.server).await,
    }
}
