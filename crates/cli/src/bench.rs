//! `runner bench`: runs `runner-bench` with a progress bar and writes its
//! report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use runner_bench::{Custom, Options, Variant};
use runner_host::vmm::BackendKind;
use runner_host::{Config, Runner};

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
    /// Also boot the first language's hello cold and from a snapshot on
    /// these guest kernels (runner, debian; comma-separated), side by side
    /// [default: only the configured one].
    #[arg(long, value_delimiter = ',', value_name = "KERNEL")]
    kernels: Vec<String>,
    /// The same on these QEMU machine types (q35, microvm), with each of
    /// --kernels (or the configured kernel).
    #[arg(long, value_delimiter = ',', value_name = "MACHINE")]
    machines: Vec<String>,
    /// The same with each of these values of one setting, e.g.
    /// huge_pages=transparent,off or numa_bind=true,false (on each of
    /// --kernels and --machines when given).
    #[arg(long, value_name = "KEY=VALUES")]
    vary: Option<String>,
    /// Run the whole suite on each of these backends (qemu, gvisor;
    /// comma-separated) in turn, each report in a folder of its own, and
    /// the targets and per-language table side by side in report.md.
    #[arg(long, value_delimiter = ',', value_name = "BACKEND")]
    backends: Vec<String>,
    /// What the machine costs per hour (any currency): adds the cost per
    /// execution of each case to the report, as the design's "Cost per
    /// Execution" computes it.
    #[arg(long, value_name = "PRICE")]
    price_per_hour: Option<f64>,
    /// Folder for report.md, results.json, timeline.svg and
    /// boot-comparison.svg.
    #[arg(short, long, default_value = "runner-bench")]
    out: PathBuf,
}

pub async fn bench(runner: Runner, config: &Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 {
        usage!("--runs must be at least 1");
    }
    if let Some(price) = args.price_per_hour
        && !(price.is_finite() && price > 0.0)
    {
        usage!("--price-per-hour must be a positive number, not {price}");
    }
    let backends: Vec<BackendKind> = args
        .backends
        .iter()
        .map(|name| parse(name, "backend", "qemu, gvisor"))
        .collect::<anyhow::Result<_>>()?;
    if !backends.is_empty()
        && (!args.kernels.is_empty() || !args.machines.is_empty() || args.vary.is_some())
    {
        usage!(
            "--backends runs the whole suite on each; give --kernels, --machines and --vary without it"
        );
    }
    if backends.contains(&BackendKind::Auto) {
        usage!("--backends names backends (qemu, gvisor), not auto");
    }
    let variants = variants(config, &args.kernels, &args.machines, args.vary.as_deref())?;
    if !variants.is_empty() && (args.code.is_some() || args.file.is_some()) {
        usage!("--kernels, --machines and --vary measure the suite's hello, not --code or --file");
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
        variants,
        price_per_hour: args.price_per_hour,
        pool_warm_up: config.pool.warm_up,
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
    // The configured backend, or each asked for in turn.
    let mut reports = Vec::new();
    let mut outcome = Ok(());
    if backends.is_empty() {
        match runner_bench::run(Arc::new(runner), &options, &bar).await {
            Ok(report) => reports.push((String::new(), report)),
            Err(e) => outcome = Err(e),
        }
    } else {
        drop(runner);
        for backend in &backends {
            let name = config_name(backend);
            let config = Config {
                backend: *backend,
                ..config.clone()
            };
            let run = async {
                let runner = Arc::new(Runner::new(&config)?);
                runner_bench::run(runner, &options, &bar).await
            };
            match run.await {
                Ok(report) => reports.push((name, report)),
                Err(e) => {
                    outcome = Err(e.context(format!("the suite on {name}")));
                    break;
                }
            }
        }
    }
    if let Some(lines) = lines {
        lines.abort();
    }
    bar.finish_and_clear();
    outcome?;
    match reports.as_slice() {
        [(name, report)] if name.is_empty() => {
            written(report.write(&args.out)?);
            outln!("{}", report.markdown());
        }
        _ => {
            for (name, report) in &reports {
                written(report.write(&args.out.join(name))?);
            }
            let markdown = runner_bench::backends_markdown(&reports);
            let path = args.out.join("report.md");
            std::fs::write(&path, &markdown)
                .with_context(|| format!("write {}", path.display()))?;
            outln!("{markdown}");
            written(vec![path]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn written(paths: Vec<PathBuf>) {
    for path in paths {
        eprintln!("runner: wrote {}", path.display());
    }
}

/// A runner for each combination of `kernels` and `machines` (the
/// configured one standing in for an empty list) and of the values `vary`
/// gives one setting (`key=value,value`), each with the rest of `config`.
/// None if none is asked for.
fn variants(
    config: &Config,
    kernels: &[String],
    machines: &[String],
    vary: Option<&str>,
) -> anyhow::Result<Vec<Variant>> {
    let mut configs: Vec<(String, Config)> = Vec::new();
    if kernels.is_empty() && machines.is_empty() {
        if vary.is_none() {
            return Ok(Vec::new());
        }
        configs.push((String::new(), config.clone()));
    } else {
        let kernels = parse_all(kernels, config.kernel, "kernel", "runner, debian")?;
        let machines = parse_all(machines, config.machine, "machine type", "q35, microvm")?;
        for kernel in &kernels {
            for machine in &machines {
                let label = format!("{}-{machine}", config_name(kernel));
                if configs.iter().any(|(l, _)| *l == label) {
                    continue;
                }
                match config.with_guest(*kernel, *machine) {
                    Ok(config) => configs.push((label, config)),
                    Err(e) => eprintln!("runner: bench skips {label}: {e}"),
                }
            }
        }
        if configs.is_empty() {
            usage!("no kernel and machine type asked for can boot");
        }
    }
    if let Some(vary) = vary {
        let Some((key, values)) = vary.split_once('=') else {
            usage!("--vary takes a setting and its values, as huge_pages=transparent,off");
        };
        let mut values: Vec<&str> = values.split(',').map(str::trim).collect();
        values.retain(|v| !v.is_empty());
        values.dedup();
        if values.is_empty() {
            usage!("--vary {key}= names no value");
        }
        let mut varied = Vec::new();
        for (label, config) in configs {
            for value in &values {
                let config = match crate::settings::with_setting(&config, key.trim(), value) {
                    Ok(config) => config,
                    Err(e) => usage!("--vary: {e}"),
                };
                let setting = format!("{}={value}", key.trim());
                let label = match label.is_empty() {
                    true => setting,
                    false => format!("{label} {setting}"),
                };
                varied.push((label, config));
            }
        }
        configs = varied;
    }
    configs
        .into_iter()
        .map(|(label, config)| {
            Ok(Variant {
                label,
                runner: Arc::new(Runner::new(&config)?),
            })
        })
        .collect()
}

/// Each of `names` as the configuration spells a `what`, or `configured`
/// alone if there are none.
fn parse_all<T: serde::de::DeserializeOwned>(
    names: &[String],
    configured: T,
    what: &str,
    choices: &str,
) -> anyhow::Result<Vec<T>> {
    if names.is_empty() {
        return Ok(vec![configured]);
    }
    names
        .iter()
        .map(|name| parse(name, what, choices))
        .collect()
}

/// `name` as the configuration spells a `what`, or a usage error listing
/// `choices`.
fn parse<T: serde::de::DeserializeOwned>(
    name: &str,
    what: &str,
    choices: &str,
) -> anyhow::Result<T> {
    match serde_json::from_value(serde_json::Value::String(name.trim().to_lowercase())) {
        Ok(value) => Ok(value),
        Err(_) => usage!("unknown {what} {name:?}: choose from {choices}"),
    }
}

/// How the configuration spells `value`.
fn config_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
