//! `runner bench`: runs `runner-bench` with a progress bar and writes its
//! report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use runner_bench::{Custom, Options};
use runner_host::Runner;

/// The seed's order, then the judges' languages: the first language also
/// runs the start and throughput cases.
const SUITE: [&str; 8] = ["python", "node", "go", "rust", "bash", "c", "cpp", "java"];

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Languages to measure (repeatable or comma-separated) [default: all,
    /// python first]. The first one also runs the VM start and throughput
    /// cases.
    #[arg(short, long, value_delimiter = ',')]
    lang: Vec<String>,
    /// Measure this code instead of the suite (needs one --lang).
    #[arg(short = 'c', long, conflicts_with = "file")]
    code: Option<String>,
    /// Measure this file instead of the suite (needs one --lang).
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Arguments for that code or file.
    #[arg(last = true)]
    args: Vec<String>,
    /// Measured runs per case.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Unmeasured runs before them.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Requests per client in the throughput cases (1, 2 and 4 clients).
    #[arg(long, default_value_t = 4)]
    requests_per_client: usize,
    /// Skip the host baseline (it needs root for its chroot).
    #[arg(long)]
    no_host: bool,
    /// Folder for report.md, results.json, timeline.svg and
    /// boot-comparison.svg.
    #[arg(short, long, default_value = "runner-bench")]
    out: PathBuf,
}

pub async fn bench(runner: Runner, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 {
        usage!("--runs must be at least 1");
    }
    let custom = match (&args.code, &args.file) {
        (None, None) => None,
        (code, file) => {
            let [language] = args.lang.as_slice() else {
                usage!("--code and --file measure one program: name its language with one --lang");
            };
            let source = match (code, file) {
                (Some(code), _) => code.clone(),
                (_, Some(file)) => std::fs::read_to_string(file)
                    .with_context(|| format!("read {}", file.display()))?,
                _ => unreachable!(),
            };
            let language = runner.language(language)?.name.clone();
            Some(Custom {
                language,
                source,
                args: args.args.clone(),
            })
        }
    };
    let languages = if args.lang.is_empty() {
        SUITE.map(String::from).to_vec()
    } else {
        args.lang
            .iter()
            .map(|l| Ok(runner.language(l)?.name.clone()))
            .collect::<anyhow::Result<_>>()?
    };
    let options = Options {
        languages,
        custom,
        runs: args.runs,
        warmup: args.warmup,
        host: !args.no_host,
        requests_per_client: args.requests_per_client.max(1),
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
            .expect("template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    // Without a terminal the bar is hidden: say each case as a line instead,
    // so that a CI log shows where the time went.
    let lines = (!std::io::stderr().is_terminal()).then(|| {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                let message = bar.message();
                if message != last {
                    eprintln!(
                        "runner: bench {message} ({} of {} runs done)",
                        bar.position(),
                        bar.length().unwrap_or(0)
                    );
                    last = message;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let report = runner_bench::run(Arc::new(runner), &options, &bar).await;
    if let Some(lines) = lines {
        lines.abort();
    }
    bar.finish_and_clear();
    let report = report?;
    let written = report.write(&args.out)?;
    outln!("{}", report.markdown());
    for path in written {
        eprintln!("runner: wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
