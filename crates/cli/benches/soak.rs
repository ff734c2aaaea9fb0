//! The soak, against the `runner` this package builds: a `runner serve` of
//! its own at capacity with hostile programs in the mix, then whether any
//! result was lost and whether its memory, files and threads stayed flat
//! (see `runner_bench::soak`). Not part of the shipped binary.
//!
//! ```sh
//! cargo bench -p runner-cli --bench soak -- --duration 180
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use runner_bench::soak::{SoakOptions, soak};

#[derive(Parser)]
#[command(name = "soak", about = "Soak a runner serve of its own")]
struct Args {
    /// How long to drive the server, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 180)]
    duration: u64,
    /// Clients sending requests at once [default: twice the server's
    /// max_vms, so that it is always at capacity with a queue].
    #[arg(long, value_name = "N")]
    clients: Option<usize>,
    /// The server's configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A setting of the server's (repeatable), as `runner --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` to every bench target.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
    let options = SoakOptions {
        runner: PathBuf::from(env!("CARGO_BIN_EXE_runner")),
        config: args.config,
        sets: args.set,
        duration: Duration::from_secs(args.duration),
        clients: args.clients,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(soak(options)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}
