//! A one-shot's compile and the compile cache (see [`crate::compile_cache`]):
//! looked up before a VM is taken, kept once it succeeded.
//!
//! A hit leaves a plan that only compiles (a judge's, a checker's) with
//! nothing to run: its result and files are the entry's. A plan that runs
//! the program too runs without its compile, the entry's files added to
//! its own. On a miss, a plan that runs the program has what its compile
//! made collected right after the compile (before the program can change
//! it), for the cache alone: the caller still gets no files it did not
//! ask for.

use std::sync::Arc;
use std::time::Instant;

use runner_protocol::{Stage, StageReport};

use crate::compile_cache::{CompileCache, Entry, Key};
use crate::exec::acquire::Vms;
use crate::exec::result::stage_result;
use crate::exec::transcript::Transcript;
use crate::exec::{Plan, fits_one_frame};

/// What the cache said of a plan's compile.
pub(super) enum Compile {
    /// Nothing to look up: no compile stage, a command, or no cache.
    Uncached,
    Hit {
        entry: Entry,
        /// When the lookup began: the cached stage's wall time.
        started: Instant,
    },
    Miss {
        cache: Arc<CompileCache>,
        key: Key,
    },
}

/// What runs after the lookup.
pub(super) enum Next {
    /// Nothing: the plan only compiled, and that came from the cache.
    Done,
    /// This plan rather than the one asked for.
    Run(Box<Plan>),
    /// The plan as asked.
    AsPlanned,
}

impl Compile {
    /// Looks `plan`'s compile up, in its language's image `image`.
    pub(super) async fn look_up(vms: &Vms, plan: &Plan, image: &str) -> Self {
        let Some(cache) = vms.compile_cache() else {
            return Self::Uncached;
        };
        let Some(compile) = plan
            .exec
            .stages
            .first()
            .filter(|s| s.stage == Stage::Compile)
        else {
            return Self::Uncached;
        };
        let started = Instant::now();
        let key = cache.key(
            &plan.owner,
            &plan.language.name,
            image,
            &compile.argv,
            &plan.exec.env,
            &plan.exec.files,
            &plan.language.artifacts,
        );
        let limits = compile.limits;
        let found = {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::task::spawn_blocking(move || cache.get(&key, &limits))
                .await
                .ok()
                .flatten()
        };
        match found {
            Some(entry) => {
                tracing::debug!(trace_id = %plan.trace_id, key = key.as_str(), "compile cache hit");
                Self::Hit { entry, started }
            }
            None => Self::Miss { cache, key },
        }
    }

    /// What runs of `plan`; a hit's compile goes into `transcript`.
    pub(super) fn plan(&self, plan: &Plan, transcript: &mut Transcript) -> Next {
        match self {
            Self::Uncached => Next::AsPlanned,
            Self::Miss { .. } if plan.exec.stages.len() == 1 => Next::AsPlanned,
            Self::Miss { .. } => {
                let mut collecting = plan.clone();
                collecting.exec.collect = plan.language.artifacts.clone();
                collecting.exec.collect_after = Some(Stage::Compile);
                Next::Run(Box::new(collecting))
            }
            Self::Hit { entry, started } => {
                let mut run = plan.clone();
                run.exec.stages.retain(|s| s.stage != Stage::Compile);
                if run.exec.stages.is_empty() {
                    transcript.cached_compile(cached_stage(entry, *started));
                    transcript.collected.files = entry.files.clone();
                    return Next::Done;
                }
                for file in &entry.files {
                    run.exec.files.retain(|f| f.name != file.name);
                    run.exec.files.push(file.clone());
                }
                match fits_one_frame(run.exec) {
                    Ok(exec) => {
                        run.exec = exec;
                        transcript.cached_compile(cached_stage(entry, *started));
                        Next::Run(Box::new(run))
                    }
                    // Too large to send with the program: compiled again.
                    Err(_) => Next::AsPlanned,
                }
            }
        }
    }

    /// After `ran` ran: a miss's compile is kept if it succeeded and what
    /// it made came whole. A failure to keep it is logged; the result
    /// stands.
    pub(super) async fn keep(&self, ran: &Plan, transcript: &mut Transcript) {
        let Self::Miss { cache, key } = self else {
            return;
        };
        let artifacts = &ran.language.artifacts;
        let ours = ran.exec.collect_after == Some(Stage::Compile);
        let entry = match (
            transcript.compile_report(),
            transcript.stage(Stage::Compile),
        ) {
            (Some(report), Some(stage))
                if report.exit_code == Some(0) && transcript.collected.is_whole(artifacts) =>
            {
                Some(Entry {
                    report: report.clone(),
                    stdout: stage.stdout.clone(),
                    stderr: stage.stderr.clone(),
                    files: transcript.collected.files.clone(),
                })
            }
            _ => None,
        };
        if ours {
            // Collected for the cache, not asked for by the caller.
            transcript.collected.files.clear();
        }
        let Some(entry) = entry else { return };
        let (cache, key) = (cache.clone(), key.clone());
        let kept = tokio::task::spawn_blocking(move || cache.put(&key, &entry)).await;
        if let Ok(Err(error)) = kept {
            tracing::warn!(
                trace_id = %ran.trace_id,
                error = %crate::error_chain(&error),
                "could not keep a compile in the compile cache"
            );
        }
    }
}

/// The compile stage of a hit: the entry's output and exit, the lookup's
/// time, no CPU time or memory.
fn cached_stage(entry: &Entry, started: Instant) -> runner_wire::StageResult {
    let report = StageReport {
        wall_time_us: started.elapsed().as_micros() as u64,
        cpu_time_us: 0,
        memory_peak_bytes: 0,
        ..entry.report.clone()
    };
    let mut stage = stage_result(entry.stdout.clone(), entry.stderr.clone(), report);
    stage.cached = true;
    stage
}
