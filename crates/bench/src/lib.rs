//! `runner bench`: the seed's benchmark tables and figures, reproducible on
//! any machine, with the host as the floor.
//!
//! Every case runs `warmup` times unmeasured and then `runs` times, in real
//! VMs through [`Runner::execute`], and again directly on the host in a
//! chroot of the language's image ([`host`]). The report gives p50, p95, min
//! and max, the seed's phases (boot, ready, execution, total) and the ratio
//! to the host; `results.json` has every sample.

mod cases;
mod figures;
mod host;
mod machine;
mod report;
pub mod soak;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::ProgressBar;
use runner_host::Runner;
use runner_host::exec::{
    ExecutionRequest, ExecutionResult, RequestLimits, SourceFile, StageLimits, Status,
};
use runner_host::judge::{Slots, SubmissionRequest, TestCase};
use runner_host::lang::Language;
use runner_host::pool::PoolConfig;
use runner_host::session::{SessionConfig, SessionRequest, Sessions};
use runner_host::vmm::Accel;
use serde::Serialize;

pub use cases::{Case, Group, JudgeWay, Start};
pub use machine::Machine;
pub use report::backends as backends_markdown;
pub use stats::Summary;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Languages of the suite, by name; the first also runs the start and
    /// throughput cases.
    pub languages: Vec<String>,
    /// One program of the user's instead of the suite.
    pub custom: Option<Custom>,
    /// Measured runs per case.
    pub runs: usize,
    /// Unmeasured runs before them.
    pub warmup: usize,
    /// Run every case on the host too.
    pub host: bool,
    /// Executions per concurrent client in the throughput cases.
    pub requests_per_client: usize,
    /// Other guest kernels, machine types and settings to start the first
    /// language's hello with, side by side with the others.
    pub variants: Vec<Variant>,
    /// What the machine costs per hour, for the cost per execution.
    pub price_per_hour: Option<f64>,
    /// Whether the pool and throughput cases' pool warms its VMs up
    /// (`pool.warm_up`); the case without warm-up never does.
    pub pool_warm_up: bool,
}

/// A runner whose VMs boot another guest kernel or machine type, or with
/// one setting changed.
#[derive(Clone)]
pub struct Variant {
    /// `{kernel}-{machine}`, `key=value` or both (`debian-q35
    /// huge_pages=off`): names its cases.
    pub label: String,
    pub runner: Arc<Runner>,
}

impl std::fmt::Debug for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variant")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Custom {
    pub language: String,
    pub source: String,
    pub args: Vec<String>,
}

/// One execution, in a VM or on the host. Milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unmeasured: not in the summaries.
    pub warmup: bool,
    /// The run finished `ok` with the expected output.
    pub ok: bool,
    /// The result's status, or what went wrong.
    pub status: String,
    /// How the VM started, as its metrics say (absent on the host).
    pub start: Option<String>,
    pub boot_ms: f64,
    pub ready_ms: f64,
    pub execution_ms: f64,
    pub total_ms: f64,
    pub compile_ms: Option<f64>,
    pub run_ms: Option<f64>,
    /// A session case's times (its `total_ms` is the fresh execution's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionTimes>,
}

/// A session case's sample: one fresh execution, then a session and the
/// same program three times in it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SessionTimes {
    /// The fresh execution, from the snapshot: request to result.
    pub fresh_ms: f64,
    /// The session's VM, request to ready.
    pub open_ms: f64,
    /// The first, second and third execution in the session, request to
    /// result. Where the language has a prestarted interpreter, the first
    /// runs in it (past its start-up), so the second is the first to start
    /// the interpreter in this VM and the third the first to find that
    /// start-up translated.
    pub first_ms: f64,
    pub second_ms: f64,
    pub third_ms: f64,
    /// In another session, the second execution when the session idled
    /// [`SESSION_IDLE`] after the first, as it does while an agent's model
    /// decides the next step: time the agent uses to prestart the runtime
    /// again.
    pub idle_second_ms: f64,
    /// A third session, paused to disk after its program ran once and
    /// [`PAUSE_CHANGE_MIB`] of random bytes were written to it, then
    /// resumed and the program run again.
    pub paused: PauseTimes,
}

/// The pause series of a session case's sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PauseTimes {
    /// The session VM's memory.
    pub vm_mib: u32,
    /// Request to paused (saved, VM gone).
    pub pause_ms: f64,
    /// What the saved VM takes on disk.
    pub disk_mib: f64,
    /// Request to resumed (the agent answers).
    pub resume_ms: f64,
    /// The program's first run after resuming, request to result.
    pub after_resume_ms: f64,
}

/// What the pause series writes into its session before pausing it.
pub const PAUSE_CHANGE_MIB: usize = 10;

/// The pause between a session's first and second execution in the
/// session case's second series.
pub const SESSION_IDLE: Duration = Duration::from_secs(1);

/// Medians of the seed's phases.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases {
    pub boot_ms: f64,
    pub ready_ms: f64,
    pub execution_ms: f64,
    pub total_ms: f64,
    /// Within execution: the compile stage (0 without one) and the run
    /// stage, as the agent timed them.
    pub compile_ms: f64,
    pub run_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub requests: usize,
    pub vm_per_second: f64,
    pub host_per_second: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    #[serde(flatten)]
    pub case: Case,
    /// Total time of the measured VM samples.
    pub vm: Option<Summary>,
    /// VMM start plus guest boot until the agent is ready.
    pub vm_boot_to_ready: Option<Summary>,
    pub phases: Phases,
    /// Compile plus run on the host.
    pub host: Option<Summary>,
    /// VM p50 over host p50.
    pub ratio: Option<f64>,
    pub throughput: Option<Throughput>,
    /// With a price per hour: what one execution costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// Why there are no host samples, if there are none.
    pub host_note: Option<String>,
    pub vm_samples: Vec<Sample>,
    pub host_samples: Vec<Sample>,
}

/// The design's "Cost per Execution": the machine's price per hour over
/// the executions it finishes in an hour.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cost {
    /// One at a time, from the case's p50 (as the design computes it); for
    /// a throughput case, at its measured rate with its clients at once.
    pub executions_per_hour: f64,
    pub per_execution: f64,
}

impl Cost {
    /// The cost of `result`'s executions at `price_per_hour`, where it has
    /// a time or a rate to go by (not judge or session cases).
    fn of(result: &CaseResult, price_per_hour: f64) -> Option<Cost> {
        let per_hour = match (&result.throughput, result.case.group) {
            (Some(t), _) => t.vm_per_second * 3600.0,
            (None, Group::Judge | Group::Session) => return None,
            (None, _) => 3_600_000.0 / result.vm?.p50,
        };
        (per_hour.is_finite() && per_hour > 0.0).then(|| Cost {
            executions_per_hour: per_hour,
            per_execution: price_per_hour / per_hour,
        })
    }
}

/// Host memory of the VMs waiting in a warm pool (paused), per VM.
#[derive(Debug, Clone, Serialize)]
pub struct PoolMemory {
    pub language: String,
    /// Whether the pool warmed its VMs up (see `PoolConfig::warm_up`).
    pub warm_up: bool,
    pub vms: usize,
    /// Resident set of each VM's VMM process, MiB.
    pub rss_mib: Summary,
    /// Proportional set: shared pages (the snapshot's memory file, the
    /// VMM's code) divided among the processes that map them, MiB.
    pub pss_mib: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub runs: usize,
    pub warmup: usize,
    pub requests_per_client: usize,
    pub host_baseline: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_per_hour: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub duration_seconds: f64,
    pub machine: Machine,
    pub settings: Settings,
    pub cases: Vec<CaseResult>,
    /// One per pool the cases used: without warm-up, then with it.
    pub pool_memory: Vec<PoolMemory>,
}

impl Report {
    /// Writes `report.md`, `results.json`, `timeline.svg` and
    /// `boot-comparison.svg` into `dir`, which is made if missing.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut written = Vec::new();
        let mut write = |name: &str, bytes: Vec<u8>| -> anyhow::Result<()> {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
            written.push(path);
            Ok(())
        };
        write("report.md", report::markdown(self).into_bytes())?;
        write("results.json", serde_json::to_vec_pretty(self)?)?;
        write("timeline.svg", figures::timeline(self)?.into_bytes())?;
        write(
            "boot-comparison.svg",
            figures::boot_comparison(self)?.into_bytes(),
        )?;
        Ok(written)
    }

    pub fn markdown(&self) -> String {
        report::markdown(self)
    }
}

/// Generous limits: a benchmark measures, it does not judge.
const LIMIT_MS: u64 = 120_000;
/// Pool VMs kept for the pool and throughput cases.
const POOL_SIZE: usize = 4;

/// Runs the suite (or the custom case) and returns its report.
pub async fn run(
    runner: Arc<Runner>,
    options: &Options,
    bar: &ProgressBar,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cases = match &options.custom {
        Some(custom) => vec![cases::custom(
            &custom.language,
            custom.source.clone(),
            custom.args.clone(),
        )],
        None => {
            let labels: Vec<String> = options.variants.iter().map(|v| v.label.clone()).collect();
            cases::suite(&options.languages, &labels)
        }
    };
    let host_unavailable = if options.host {
        host::unavailable()
    } else {
        Some("the host baseline was turned off (--no-host)".into())
    };

    // Images, snapshots and the backend first, so that no case pays for them.
    let mut languages: BTreeMap<String, (Language, PathBuf)> = BTreeMap::new();
    let mut versions = BTreeMap::new();
    let mut machine_backend = None;
    for case in &cases {
        if languages.contains_key(&case.language) {
            continue;
        }
        let language = runner.language(&case.language)?.clone();
        bar.set_message(format!("preparing {}", language.name));
        let (images, backend) = prepare(&runner, &language).await?;
        versions.insert(
            language.name.clone(),
            images.rootfs_manifest.version.clone(),
        );
        machine_backend.get_or_insert_with(|| {
            let info = backend.info();
            (
                format!("{} {}", info.name, info.version),
                info.accel.to_string(),
                info.reason.clone(),
                machine::guest_kernel(&images.kernel.dir),
            )
        });
        languages.insert(language.name.clone(), (language, images.rootfs.clone()));
    }
    let (backend, accel, accel_reason, guest_kernel) = machine_backend.context("no case to run")?;
    let tcg = accel == Accel::Tcg.to_string();
    // Each kernel and machine type's images and snapshot, for the kernel
    // cases (the suite's only: a custom case has none).
    let variants: BTreeMap<&String, &Arc<Runner>> = if options.custom.is_none() {
        options
            .variants
            .iter()
            .map(|v| (&v.label, &v.runner))
            .collect()
    } else {
        BTreeMap::new()
    };
    if let Some(first) = options.languages.first() {
        for (label, runner) in &variants {
            bar.set_message(format!("preparing {first} on {label}"));
            prepare(runner, runner.language(first)?).await?;
        }
    }
    let machine = Machine {
        cpu_model: machine::cpu_model(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mib: machine::memory_mib(),
        host_kernel: machine::host_kernel(),
        backend,
        accel,
        accel_reason,
        guest_kernel,
        languages: versions,
        runner_version: env!("CARGO_PKG_VERSION").into(),
    };

    let per_case = options.warmup + options.runs;
    let steps: usize = cases
        .iter()
        .map(|case| match case.group {
            Group::Throughput => options.requests_per_client * case.concurrency,
            // Each way of judging is measured once: twenty compiles at a
            // time are what the case is about.
            Group::Judge => 1,
            _ => per_case,
        })
        .sum();
    bar.set_length(steps as u64);
    bar.set_position(0);

    // Cold and snapshot cases before the pools exist, so that no pooled VM
    // serves them; then a pool without warm-up for the case that shows
    // what warm-up gains; then the warmed pools, for the pool and
    // throughput cases.
    let mut results: Vec<Option<CaseResult>> = vec![None; cases.len()];
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| match cases[i].start.pool_warm_up() {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
    let mut pools_warm_up = None;
    let mut pool_memory = Vec::new();
    for index in order {
        let case = &cases[index];
        let (language, rootfs) = &languages[&case.language];
        // Pools warm their VMs up under TCG only.
        let warm_up = case
            .start
            .pool_warm_up()
            .map(|warm| warm && options.pool_warm_up && tcg);
        if warm_up.is_some() && warm_up != pools_warm_up {
            runner.stop_pools().await;
            pools_warm_up = warm_up;
            let vm_mib = u64::from(runner_host::vmm::vm_memory_mib(language.memory_mib.into()));
            runner.start_pools(
                PoolConfig {
                    languages: vec![language.name.clone()],
                    min_size: POOL_SIZE,
                    max_size: POOL_SIZE,
                    refill_interval_ms: 100,
                    warm_up: warm_up == Some(true),
                    ..PoolConfig::default()
                },
                vm_mib * POOL_SIZE as u64,
            );
            wait_for_pool(&runner, &language.name, POOL_SIZE).await;
            pool_memory.extend(measure_pool_memory(
                &runner,
                &language.name,
                warm_up == Some(true),
            ));
        }
        bar.set_message(case.id.clone());
        let mut result = match case.group {
            Group::Throughput => throughput_case(&runner, case, language, options, bar).await,
            Group::Judge => judge_case(&runner, case, language, bar).await,
            Group::Session => session_case(&runner, case, language, options, bar).await,
            Group::Kernel => {
                let runner = case.vm.as_ref().map_or(&runner, |label| variants[label]);
                vm_case(runner, case, language, options, bar).await
            }
            _ => vm_case(&runner, case, language, options, bar).await,
        };
        match &host_unavailable {
            Some(note) => result.host_note = Some(note.clone()),
            None if case.group == Group::Judge => {
                result.host_note = Some("a judge case compares two ways in VMs".into());
            }
            None if case.group == Group::Session => {
                result.host_note = Some("a session case compares two ways in VMs".into());
            }
            None if case.group == Group::Kernel => {
                result.host_note = Some("a kernel case compares configurations in VMs".into());
            }
            None => {
                if let Err(e) = host_case(&mut result, language, rootfs, options).await {
                    result.host_note = Some(format!("{e:#}"));
                }
            }
        }
        results[index] = Some(result);
    }
    runner.stop_pools().await;
    Ok(Report {
        started_at,
        duration_seconds: started.elapsed().as_secs_f64(),
        machine,
        settings: Settings {
            runs: options.runs,
            warmup: options.warmup,
            requests_per_client: options.requests_per_client,
            host_baseline: host_unavailable.is_none(),
            price_per_hour: options.price_per_hour,
        },
        cases: results
            .into_iter()
            .flatten()
            .map(|mut result| {
                result.cost = options
                    .price_per_hour
                    .and_then(|price| Cost::of(&result, price));
                result
            })
            .collect(),
        pool_memory,
    })
}

/// Builds what `language` is missing on `runner`, chooses its backend and
/// makes its snapshot, so that no case pays for them.
async fn prepare(
    runner: &Runner,
    language: &Language,
) -> anyhow::Result<(
    runner_host::image::GuestImages,
    Arc<dyn runner_host::vmm::Backend>,
)> {
    let images = runner.prepare(language, Arc::new(())).await?;
    let backend = runner
        .backend(&images.kernel.vmlinux, &images.initramfs)
        .await?;
    runner.snapshot(language).await?;
    Ok((images, backend))
}

/// A fresh execution of the program, then a session whose VM runs it
/// three times: what a session saves on the second run (under TCG, the
/// interpreter's or compiler's code translated once per VM).
async fn session_case(
    runner: &Arc<Runner>,
    case: &Case,
    language: &Language,
    options: &Options,
    bar: &ProgressBar,
) -> CaseResult {
    let sessions = runner.sessions(SessionConfig::default());
    let mut samples = Vec::new();
    for i in 0..options.warmup + options.runs {
        let mut sample = execute(runner, case, language).await;
        sample.warmup = i < options.warmup;
        if sample.ok {
            let series = match in_session(&sessions, case, language, 3, Duration::ZERO).await {
                Ok(back_to_back) => {
                    match in_session(&sessions, case, language, 2, SESSION_IDLE).await {
                        Ok(idle) => paused_session(&sessions, case, language)
                            .await
                            .map(|paused| (back_to_back, idle, paused)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match series {
                Ok(((open_ms, back_to_back), (_, idle), paused)) => {
                    sample.session = Some(SessionTimes {
                        fresh_ms: sample.total_ms,
                        open_ms,
                        first_ms: back_to_back[0],
                        second_ms: back_to_back[1],
                        third_ms: back_to_back[2],
                        idle_second_ms: idle[1],
                        paused,
                    })
                }
                Err(e) => {
                    sample.ok = false;
                    sample.status = format!("session: {e}");
                }
            }
        }
        samples.push(sample);
        bar.inc(1);
    }
    summarize(case, samples, None)
}

/// Opens a session and runs `case`'s program in it `runs` times, `idle`
/// apart: the session's open time and each run's, request to result.
async fn in_session(
    sessions: &Sessions,
    case: &Case,
    language: &Language,
    runs: usize,
    idle: Duration,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let plan = sessions.plan(SessionRequest {
        language: language.name.clone(),
        ..SessionRequest::default()
    })?;
    let info = sessions.open("", usize::MAX, plan, Box::new(())).await?;
    let mut times = vec![0.0; runs];
    let mut failed = None;
    for (i, time) in times.iter_mut().enumerate() {
        if i > 0 {
            tokio::time::sleep(idle).await;
        }
        match run_in_session(sessions, &info.id, case).await {
            Ok(ms) => *time = ms,
            Err(e) => failed = Some(e),
        }
    }
    let _ = sessions.delete("", &info.id).await;
    if let Some(failed) = failed {
        anyhow::bail!("{failed}");
    }
    Ok((info.open_time_ms, times))
}

/// Runs `case`'s program in session `id`: request to result, if it ran
/// as it should.
async fn run_in_session(sessions: &Sessions, id: &str, case: &Case) -> anyhow::Result<f64> {
    let request = ExecutionRequest {
        files: vec![SourceFile::entry(case.source.clone())],
        args: case.args.clone(),
        ..ExecutionRequest::default()
    };
    let started = Instant::now();
    let plan = sessions.plan_execution("", id, request)?;
    let result = sessions.turn("", id)?.execute(plan, None).await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !vm_sample(case, &result).ok {
        anyhow::bail!("{}: {:?}", result.status, result.message);
    }
    Ok(ms)
}

/// Opens a session, runs `case`'s program once, writes
/// [`PAUSE_CHANGE_MIB`] of random bytes into it, pauses it, resumes it
/// and runs the program again.
async fn paused_session(
    sessions: &Sessions,
    case: &Case,
    language: &Language,
) -> anyhow::Result<PauseTimes> {
    let plan = sessions.plan(SessionRequest {
        language: language.name.clone(),
        ..SessionRequest::default()
    })?;
    let info = sessions.open("", usize::MAX, plan, Box::new(())).await?;
    let id = info.id.clone();
    let series = async {
        run_in_session(sessions, &id, case).await?;
        let mut random = vec![0u8; PAUSE_CHANGE_MIB << 20];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
        sessions
            .turn("", &id)?
            .write("changed.bin".into(), random, false)
            .await?;
        let started = Instant::now();
        let paused = sessions.pause("", &id).await?;
        let pause_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        sessions.resume("", &id, Box::new(())).await?;
        let resume_ms = started.elapsed().as_secs_f64() * 1e3;
        let after_resume_ms = run_in_session(sessions, &id, case).await?;
        Ok(PauseTimes {
            vm_mib: paused.vm_memory_mib,
            pause_ms,
            disk_mib: paused
                .paused
                .map_or(0.0, |p| p.disk_bytes as f64 / (1 << 20) as f64),
            resume_ms,
            after_resume_ms,
        })
    }
    .await;
    let _ = sessions.delete("", &id).await;
    series
}

async fn vm_case(
    runner: &Arc<Runner>,
    case: &Case,
    language: &Language,
    options: &Options,
    bar: &ProgressBar,
) -> CaseResult {
    runner.set_snapshots(case.start != Start::Cold);
    let mut samples = Vec::new();
    for i in 0..options.warmup + options.runs {
        if case.start.pool_warm_up().is_some() {
            wait_for_pool(runner, &language.name, 1).await;
        }
        let mut sample = execute(runner, case, language).await;
        sample.warmup = i < options.warmup;
        samples.push(sample);
        bar.inc(1);
    }
    runner.set_snapshots(true);
    summarize(case, samples, None)
}

async fn throughput_case(
    runner: &Arc<Runner>,
    case: &Case,
    language: &Language,
    options: &Options,
    bar: &ProgressBar,
) -> CaseResult {
    let requests = options.requests_per_client * case.concurrency;
    wait_for_pool(runner, &language.name, case.concurrency.min(POOL_SIZE)).await;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..case.concurrency {
        let (runner, case, language, next, bar) = (
            runner.clone(),
            case.clone(),
            language.clone(),
            next.clone(),
            bar.clone(),
        );
        clients.spawn(async move {
            let mut samples = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                samples.push(execute(&runner, &case, &language).await);
                bar.inc(1);
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = clients.join_next().await {
        samples.extend(done.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = samples.iter().filter(|s| s.ok).count();
    summarize(
        case,
        samples,
        Some(Throughput {
            requests,
            vm_per_second: ok as f64 / elapsed,
            host_per_second: None,
        }),
    )
}

/// A judge's twenty tests as one submission (compiled once, each test in a
/// fresh VM) or as twenty executions (each compiling again), with as many
/// at once either way: one sample, the time until every test has its
/// verdict.
async fn judge_case(
    runner: &Arc<Runner>,
    case: &Case,
    language: &Language,
    bar: &ProgressBar,
) -> CaseResult {
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limits = StageLimits {
        wall_time_ms: Some(LIMIT_MS),
        cpu_time_ms: Some(LIMIT_MS),
        ..StageLimits::default()
    };
    let limits = RequestLimits {
        compile: limits,
        run: limits,
    };
    let tests = cases::judge_tests();
    let started = Instant::now();
    let mut sample = Sample {
        warmup: false,
        ok: false,
        status: String::new(),
        start: Some("snapshot".into()),
        boot_ms: 0.0,
        ready_ms: 0.0,
        execution_ms: 0.0,
        total_ms: 0.0,
        compile_ms: None,
        run_ms: None,
        session: None,
    };
    match case.judge {
        Some(JudgeWay::Submission) => {
            let request = SubmissionRequest {
                language: language.name.clone(),
                files: vec![SourceFile::entry(fresh(&case.source))],
                limits,
                tests: tests
                    .iter()
                    .map(|(n, fib)| TestCase {
                        name: n.clone(),
                        args: vec![n.clone()],
                        expected_output: Some(format!("{fib}\n").into_bytes()),
                        ..TestCase::default()
                    })
                    .collect(),
                ..SubmissionRequest::default()
            };
            match runner.plan_submission(request) {
                Ok(plan) => {
                    let capacity = Arc::new(Slots::new(parallel));
                    let pending = std::future::pending::<String>();
                    let result = runner.judge(plan, capacity, parallel, None, pending).await;
                    sample.ok = result.status == Status::Accepted;
                    sample.status = result.status.to_string();
                    sample.compile_ms = result.compile.as_ref().map(|c| c.wall_time_ms);
                }
                Err(e) => sample.status = format!("error: {e}"),
            }
        }
        _ => {
            let next = Arc::new(AtomicUsize::new(0));
            let tests = Arc::new(tests);
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..parallel {
                let (runner, next, tests) = (runner.clone(), next.clone(), tests.clone());
                let (language, source) = (language.name.clone(), case.source.clone());
                workers.spawn(async move {
                    let mut statuses = Vec::new();
                    while let Some((n, fib)) = tests.get(next.fetch_add(1, Ordering::SeqCst)) {
                        // Each compiles again, as a judge without a
                        // compile cache would have them.
                        let request = ExecutionRequest {
                            language: language.clone(),
                            files: vec![SourceFile::entry(fresh(&source))],
                            args: vec![n.clone()],
                            limits,
                            ..ExecutionRequest::default()
                        };
                        let expected = Some(format!("{fib}\n").into_bytes());
                        statuses.push(match runner.plan_execution(request, expected, None) {
                            Ok(execution) => runner.execute(execution, None).await.status,
                            Err(_) => Status::InternalError,
                        });
                    }
                    statuses
                });
            }
            let mut statuses = Vec::new();
            while let Some(done) = workers.join_next().await {
                statuses.extend(done.unwrap_or_default());
            }
            sample.ok =
                statuses.len() == tests.len() && statuses.iter().all(|s| *s == Status::Accepted);
            sample.status = match statuses.iter().find(|s| **s != Status::Accepted) {
                Some(failed) => failed.to_string(),
                None => Status::Accepted.to_string(),
            };
        }
    }
    sample.total_ms = started.elapsed().as_secs_f64() * 1e3;
    sample.execution_ms = sample.total_ms;
    bar.inc(1);
    summarize(case, vec![sample], None)
}

/// The memory of the VMM processes of this process's VMs, which are all
/// pooled when this is called: the pool is full and nothing runs.
fn measure_pool_memory(runner: &Runner, language: &str, warm_up: bool) -> Option<PoolMemory> {
    let needle = format!(
        "{}/{}.",
        runner.state().runs().display(),
        std::process::id()
    );
    let (rss, pss): (Vec<f64>, Vec<f64>) = machine::processes_with(&needle)
        .into_iter()
        .filter_map(machine::process_memory_mib)
        .unzip();
    Some(PoolMemory {
        language: language.into(),
        warm_up,
        vms: rss.len(),
        rss_mib: stats::summarize(&rss)?,
        pss_mib: stats::summarize(&pss)?,
    })
}

/// Waits (up to a minute) until `language`'s pool holds `n` VMs.
async fn wait_for_pool(runner: &Runner, language: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while runner.pool_size(language) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn execute(runner: &Runner, case: &Case, language: &Language) -> Sample {
    let limits = StageLimits {
        wall_time_ms: Some(LIMIT_MS),
        cpu_time_ms: Some(LIMIT_MS),
        ..StageLimits::default()
    };
    let source = if case.fresh {
        fresh(&case.source)
    } else {
        case.source.clone()
    };
    let request = ExecutionRequest {
        language: language.name.clone(),
        files: vec![SourceFile::entry(source)],
        args: case.args.clone(),
        env: case.env.clone(),
        limits: RequestLimits {
            compile: limits,
            run: limits,
        },
        ..ExecutionRequest::default()
    };
    match runner.plan(request) {
        Ok(plan) => vm_sample(case, &runner.execute(plan, None).await),
        Err(e) => Sample {
            warmup: false,
            ok: false,
            status: format!("error: {e}"),
            start: None,
            boot_ms: 0.0,
            ready_ms: 0.0,
            execution_ms: 0.0,
            total_ms: 0.0,
            compile_ms: None,
            run_ms: None,
            session: None,
        },
    }
}

/// `source` with a comment no other execution's has: its compile runs,
/// rather than coming from the compile cache. (Every compiled language of
/// the suite takes `//` comments.)
fn fresh(source: &str) -> String {
    format!("{source}// {}\n", runner_host::exec::new_trace_id())
}

fn vm_sample(case: &Case, result: &ExecutionResult) -> Sample {
    let stdout = result.run.as_ref().map(|run| run.stdout.as_slice());
    let expected = case
        .expected_stdout
        .as_ref()
        .is_none_or(|want| stdout == Some(want.as_bytes()));
    let ok = result.status == Status::Ok && expected;
    let status = if result.status == Status::Ok && !expected {
        "wrong_output".to_string()
    } else {
        result.status.to_string()
    };
    let m = &result.metrics;
    Sample {
        warmup: false,
        ok,
        status,
        start: Some(m.start.as_str().into()),
        boot_ms: m.vm_boot_time_ms,
        ready_ms: m.ready_time_ms,
        execution_ms: m.execution_time_ms,
        total_ms: m.total_time_ms,
        compile_ms: result.compile.as_ref().map(|s| s.wall_time_ms),
        run_ms: result.run.as_ref().map(|s| s.wall_time_ms),
        session: None,
    }
}

/// Runs the case on the host and adds its samples, summary and ratio.
async fn host_case(
    result: &mut CaseResult,
    language: &Language,
    rootfs: &Path,
    options: &Options,
) -> anyhow::Result<()> {
    let case = result.case.clone();
    let (clients, iterations) = match case.group {
        Group::Throughput => (case.concurrency, options.requests_per_client),
        _ => (1, options.warmup + options.runs),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (rootfs, language, case) = (rootfs.to_path_buf(), language.clone(), case.clone());
        tasks.spawn_blocking(move || {
            host::run(&rootfs, &language, &case.source, &case.args, iterations)
        });
    }
    let mut busiest_ms: f64 = 0.0;
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let runs = done.context("host baseline task")??;
        let mut busy_ms = 0.0;
        for (i, run) in runs.into_iter().enumerate() {
            let total = run.compile_ms.unwrap_or(0.0) + run.run_ms;
            busy_ms += total;
            let expected = case
                .expected_stdout
                .as_ref()
                .is_none_or(|want| run.stdout == want.as_bytes());
            let ok = run.exit_code == 0 && expected;
            samples.push(Sample {
                warmup: case.group != Group::Throughput && i < options.warmup,
                ok,
                status: match (run.exit_code, expected) {
                    (0, true) => "ok".into(),
                    (0, false) => "wrong_output".into(),
                    (code, _) => format!("exit {code}"),
                },
                start: None,
                boot_ms: 0.0,
                ready_ms: 0.0,
                execution_ms: total,
                total_ms: total,
                compile_ms: run.compile_ms,
                run_ms: Some(run.run_ms),
                session: None,
            });
        }
        busiest_ms = busiest_ms.max(busy_ms);
    }
    let measured: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok && !s.warmup)
        .map(|s| s.total_ms)
        .collect();
    result.host = stats::summarize(&measured);
    result.ratio = match (result.vm, result.host) {
        (Some(vm), Some(host)) if host.p50 > 0.0 => Some(vm.p50 / host.p50),
        _ => None,
    };
    if let Some(throughput) = &mut result.throughput {
        let ok = samples.iter().filter(|s| s.ok).count();
        if busiest_ms > 0.0 {
            throughput.host_per_second = Some(ok as f64 / (busiest_ms / 1000.0));
        }
    }
    result.host_samples = samples;
    Ok(())
}

fn summarize(case: &Case, samples: Vec<Sample>, throughput: Option<Throughput>) -> CaseResult {
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.ok && !s.warmup).collect();
    let field = |f: fn(&Sample) -> f64| {
        let values: Vec<f64> = measured.iter().map(|s| f(s)).collect();
        stats::summarize(&values)
    };
    let p50 = |f: fn(&Sample) -> f64| field(f).map_or(0.0, |s| s.p50);
    CaseResult {
        case: case.clone(),
        vm: field(|s| s.total_ms),
        vm_boot_to_ready: field(|s| s.boot_ms + s.ready_ms),
        phases: Phases {
            boot_ms: p50(|s| s.boot_ms),
            ready_ms: p50(|s| s.ready_ms),
            execution_ms: p50(|s| s.execution_ms),
            total_ms: p50(|s| s.total_ms),
            compile_ms: p50(|s| s.compile_ms.unwrap_or(0.0)),
            run_ms: p50(|s| s.run_ms.unwrap_or(0.0)),
        },
        host: None,
        ratio: None,
        throughput,
        cost: None,
        host_note: None,
        vm_samples: samples,
        host_samples: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(total_ms: f64) -> Sample {
        Sample {
            warmup: false,
            ok: true,
            status: "ok".into(),
            start: None,
            boot_ms: 0.0,
            ready_ms: 0.0,
            execution_ms: total_ms,
            total_ms,
            compile_ms: None,
            run_ms: None,
            session: None,
        }
    }

    #[test]
    fn cost_per_execution_as_the_design_computes_it() {
        let cases = cases::suite(&["python".to_string()], &[]);
        let case = |id: &str| cases.iter().find(|c| c.id == id).unwrap();
        // The design's cold boot: 3 s at $4 an hour.
        let cold = summarize(case("start/cold"), vec![sample(3000.0)], None);
        let cost = Cost::of(&cold, 4.0).unwrap();
        assert_eq!(cost.executions_per_hour, 1200.0);
        assert!((cost.per_execution - 0.003_333).abs() < 1e-6, "{cost:?}");
        // A throughput case goes by its measured rate, not its latency.
        let rate = Throughput {
            requests: 8,
            vm_per_second: 2.0,
            host_per_second: None,
        };
        let busy = summarize(case("throughput/4"), vec![sample(1500.0)], Some(rate));
        assert_eq!(Cost::of(&busy, 4.0).unwrap().executions_per_hour, 7200.0);
        // A session case has no one execution to price, nor a failed case.
        let session = summarize(case("session/python"), vec![sample(500.0)], None);
        assert!(Cost::of(&session, 4.0).is_none());
        let mut failed = sample(500.0);
        failed.ok = false;
        assert!(Cost::of(&summarize(case("python/hello"), vec![failed], None), 4.0).is_none());
    }
}
