//! Running a submission: compile once, then every test in a VM of its own
//! (restored from the language's snapshot or taken from a warm pool, never
//! one that ran anything else), with the compiled program handed in, as
//! many at once as the caller's [`Capacity`] allows.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::checker;
use super::submission::{SubmissionPlan, Summary};
use crate::exec::acquire::Vms;
use crate::exec::{ExecutionResult, StageResult, Status};
use crate::oneshot;

/// Room for VMs. A submission asks for one before each VM it starts and
/// holds it until the VM is gone, so that it shares the machine's capacity
/// rule with everything else.
#[async_trait]
pub trait Capacity: Send + Sync {
    /// Waits for room for a VM of `vm_memory_mib`, held until the returned
    /// guard is dropped, or says why there will be none.
    async fn admit(&self, vm_memory_mib: u32) -> Result<Box<dyn Send + Sync>, String>;
}

/// At most `n` VMs at once: for callers without a capacity rule of their
/// own.
pub struct Slots(Arc<tokio::sync::Semaphore>);

impl Slots {
    pub fn new(n: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(n.max(1))))
    }
}

#[async_trait]
impl Capacity for Slots {
    async fn admit(&self, _vm_memory_mib: u32) -> Result<Box<dyn Send + Sync>, String> {
        let permit = self
            .0
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::new(permit))
    }
}

/// Bytes of a test's stdout and of its stderr kept in its report.
pub const REPORTED_OUTPUT_BYTES: usize = 64 << 10;

pub use runner_wire::{SubmissionEvent, SubmissionResult, TestResult};

/// A test's report of how its execution went.
fn test_result(name: String, result: ExecutionResult) -> TestResult {
    let run = result.run.as_ref();
    let cut = |bytes: &[u8]| {
        let end = bytes.len().min(REPORTED_OUTPUT_BYTES);
        (
            String::from_utf8_lossy(&bytes[..end]).into_owned(),
            end < bytes.len(),
        )
    };
    let (stdout, stdout_cut) = cut(run.map_or(&[][..], |r| &r.stdout));
    let (stderr, stderr_cut) = cut(run.map_or(&[][..], |r| &r.stderr));
    TestResult {
        name,
        status: result.status,
        run_status: run.map(|r| r.status),
        message: result.message,
        exit_code: run.and_then(|r| r.exit_code),
        signal_name: run.and_then(|r| r.signal_name.clone()),
        wall_time_ms: run.map_or(0.0, |r| r.wall_time_ms),
        cpu_time_ms: run.map_or(0.0, |r| r.cpu_time_ms),
        memory_peak_bytes: run.map_or(0, |r| r.memory_peak_bytes),
        stdout,
        stderr,
        output_cut: stdout_cut || stderr_cut,
        difference: result.difference,
        start: Some(result.metrics.start),
        trace_id: result.trace_id,
    }
}

/// A test that did not run, and why.
fn skipped_test(name: String, trace_id: String, why: &str) -> TestResult {
    TestResult {
        name,
        status: Status::Skipped,
        run_status: None,
        message: Some(why.into()),
        exit_code: None,
        signal_name: None,
        wall_time_ms: 0.0,
        cpu_time_ms: 0.0,
        memory_peak_bytes: 0,
        stdout: String::new(),
        stderr: String::new(),
        output_cut: false,
        difference: None,
        start: None,
        trace_id,
    }
}

/// Runs `plan` with up to `parallel` tests at once, each admitted by
/// `capacity`; reports to `events` as it goes. When `stop` completes,
/// running VMs are stopped and tests not yet started are skipped.
pub(crate) async fn run(
    vms: Arc<Vms>,
    plan: SubmissionPlan,
    capacity: Arc<dyn Capacity>,
    parallel: usize,
    events: Option<mpsc::UnboundedSender<SubmissionEvent>>,
    stop: impl Future<Output = String> + Send + 'static,
) -> SubmissionResult {
    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(None::<String>);
    let stopper = tokio::spawn(async move {
        let reason = stop.await;
        let _ = stop_tx.send(Some(reason));
    });
    let emit = |event: SubmissionEvent| {
        if let Some(events) = &events {
            let _ = events.send(event);
        }
    };
    let names: Vec<(String, String)> = plan
        .tests
        .iter()
        .map(|t| (t.name.clone(), t.plan.trace_id.clone()))
        .collect();
    let skip_all = |why: &str| {
        names
            .iter()
            .map(|(name, trace)| skipped_test(name.clone(), trace.clone(), why))
            .collect::<Vec<_>>()
    };

    let mut files = plan.files.clone();
    let mut version = String::new();
    let mut compile_stage = None;
    if let Some(compile) = &plan.compile {
        let (result, collected) = match admit(&*capacity, compile.vm_memory_mib, &stop_rx).await {
            Ok(_permit) => {
                let compiled =
                    oneshot::execute(&vms, compile, None, None, stopped(stop_rx.clone())).await;
                crate::exec::log(&compiled.0);
                compiled
            }
            Err(why) => {
                stopper.abort();
                return finish(
                    &plan,
                    started,
                    String::new(),
                    Status::InternalError,
                    Some(why),
                    None,
                    skip_all("not compiled"),
                );
            }
        };
        emit(SubmissionEvent::Compiled {
            status: result.status,
            compile: result.compile.clone(),
        });
        version = result.version.clone();
        compile_stage = result.compile.clone();
        if result.status != Status::Ok {
            stopper.abort();
            let why = "the program did not compile";
            return finish(
                &plan,
                started,
                version,
                result.status,
                result.message,
                compile_stage,
                skip_all(why),
            );
        }
        files.extend(collected);
    }

    // The checker, if the submission has one, is compiled once too, in a
    // VM of its own.
    let checker = match &plan.checker {
        None => None,
        Some(checker_plan) => {
            let prepared = match admit(&*capacity, checker_plan.vm_memory_mib(), &stop_rx).await {
                Ok(_permit) => checker::prepare(&vms, checker_plan).await,
                Err(why) => Err(why),
            };
            match prepared {
                Ok(checker) => Some(Arc::new(checker)),
                Err(why) => {
                    stopper.abort();
                    return finish(
                        &plan,
                        started,
                        version,
                        Status::InternalError,
                        Some(why),
                        compile_stage,
                        skip_all("the checker is not ready"),
                    );
                }
            }
        }
    };

    // Each test's request carries the compiled program: one that no longer
    // fits the one frame the agent takes is refused here, with why, rather
    // than by the agent once its VM has booted.
    let too_large = Arc::new(too_large(&plan, &files));
    let tests = Arc::new(plan.tests.clone());
    let files = Arc::new(files);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Option<TestResult>>>> =
        Arc::new(Mutex::new(vec![None; tests.len()]));
    // The language's version, from the first test that ran (interpreted
    // languages have no compile to tell it).
    let tested_version = Arc::new(std::sync::OnceLock::new());
    let events = events.map(Arc::new);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..parallel.clamp(1, tests.len().max(1)) {
        let (vms, capacity) = (vms.clone(), capacity.clone());
        let (tests, files, next, failed, results) = (
            tests.clone(),
            files.clone(),
            next.clone(),
            failed.clone(),
            results.clone(),
        );
        let (stop_rx, events, tested_version) =
            (stop_rx.clone(), events.clone(), tested_version.clone());
        let too_large = too_large.clone();
        let checker = checker.clone();
        let stop_on_first_failure = plan.stop_on_first_failure;
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(test) = tests.get(index) else {
                    return;
                };
                let skipped =
                    |why: &str| skipped_test(test.name.clone(), test.plan.trace_id.clone(), why);
                let stopped_by = stop_rx.borrow().clone();
                let report = if let Some(why) = too_large.get(&index) {
                    skipped(why)
                } else if stop_on_first_failure && failed.load(Ordering::SeqCst) {
                    skipped("an earlier test failed (stop_on_first_failure)")
                } else if let Some(reason) = stopped_by {
                    skipped(&format!("stopped: {reason}"))
                } else {
                    match admit(&*capacity, test.vm_memory_mib(), &stop_rx).await {
                        Err(why) => skipped(&why),
                        Ok(_permit) => {
                            let mut plan = test.plan.clone();
                            plan.exec.files = (*files).clone();
                            let stop = stopped(stop_rx.clone());
                            let (mut result, _) =
                                oneshot::execute(&vms, &plan, None, None, stop).await;
                            if let Some(expected) = &test.expected {
                                let checker = checker.as_deref();
                                let input = &plan.exec.stdin;
                                super::judge(&vms, &mut result, input, expected, checker).await;
                            }
                            crate::exec::log(&result);
                            if !result.version.is_empty() {
                                let _ = tested_version.set(result.version.clone());
                            }
                            test_result(test.name.clone(), result)
                        }
                    }
                };
                if !report.passed() && report.status != Status::Skipped {
                    failed.store(true, Ordering::SeqCst);
                }
                if let Some(events) = &events {
                    let _ = events.send(SubmissionEvent::Test {
                        index,
                        test: report.clone(),
                    });
                }
                results.lock().unwrap()[index] = Some(report);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    stopper.abort();

    let tests: Vec<TestResult> = std::mem::take(&mut *results.lock().unwrap())
        .into_iter()
        .zip(names)
        .map(|(result, (name, trace))| {
            result.unwrap_or_else(|| skipped_test(name, trace, "not run"))
        })
        .collect();
    if version.is_empty() {
        version = tested_version.get().cloned().unwrap_or_default();
    }
    let (status, message) = match tests
        .iter()
        .find(|t| !t.passed() && t.status != Status::Skipped)
    {
        Some(first) => (
            first.status,
            Some(format!(
                "test {:?}: {}",
                first.name,
                first.message.as_deref().unwrap_or(first.status.as_str())
            )),
        ),
        None if tests.iter().any(|t| t.status == Status::Skipped) => {
            let first = tests.iter().find(|t| t.status == Status::Skipped);
            let why = first.map_or(String::new(), |t| {
                format!(
                    ": test {:?}: {}",
                    t.name,
                    t.message.as_deref().unwrap_or("skipped")
                )
            });
            (
                Status::InternalError,
                Some(format!("some tests did not run{why}")),
            )
        }
        None if tests.iter().all(|t| t.status == Status::Ok) => (Status::Ok, None),
        None => (Status::Accepted, None),
    };
    finish(
        &plan,
        started,
        version,
        status,
        message,
        compile_stage,
        tests,
    )
}

/// The tests whose request, with `files` (the program, compiled), does not
/// fit the one frame the agent takes, by index, with why. The tests share
/// their files and environment, so the one with the most input and
/// arguments is tried first; only if it does not fit is each tried.
fn too_large(plan: &SubmissionPlan, files: &[runner_protocol::File]) -> BTreeMap<usize, String> {
    let weight = |test: &super::submission::TestPlan| {
        test.plan.exec.stdin.len()
            + test
                .plan
                .exec
                .stages
                .iter()
                .map(|s| s.argv.iter().map(String::len).sum::<usize>())
                .sum::<usize>()
    };
    let fits = |test: &super::submission::TestPlan| {
        let mut exec = test.plan.exec.clone();
        exec.files = files.to_vec();
        crate::exec::fits_one_frame(exec).map(drop)
    };
    let Some(heaviest) = plan.tests.iter().max_by_key(|t| weight(t)) else {
        return BTreeMap::new();
    };
    if fits(heaviest).is_ok() {
        return BTreeMap::new();
    }
    plan.tests
        .iter()
        .enumerate()
        .filter_map(|(i, test)| {
            let error = fits(test).err()?;
            Some((
                i,
                format!("with the compiled program, {error}: give the test less input"),
            ))
        })
        .collect()
}

/// Room for one VM, unless the submission is stopped first.
async fn admit(
    capacity: &dyn Capacity,
    vm_memory_mib: u32,
    stop: &watch::Receiver<Option<String>>,
) -> Result<Box<dyn Send + Sync>, String> {
    tokio::select! {
        admitted = capacity.admit(vm_memory_mib) => admitted,
        reason = stopped(stop.clone()) => Err(format!("stopped: {reason}")),
    }
}

/// Completes with the reason once the submission is stopped.
async fn stopped(mut stop: watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = stop.borrow_and_update().clone() {
            return reason;
        }
        if stop.changed().await.is_err() {
            // The stopper is gone without a reason: never stop.
            std::future::pending::<()>().await;
        }
    }
}

fn finish(
    plan: &SubmissionPlan,
    started: Instant,
    version: String,
    status: Status,
    message: Option<String>,
    compile: Option<StageResult>,
    tests: Vec<TestResult>,
) -> SubmissionResult {
    let mut summary = Summary {
        tests: tests.len(),
        ..Summary::default()
    };
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for test in &tests {
        *verdicts
            .entry(test.status.as_str().to_string())
            .or_default() += 1;
        summary.max_wall_time_ms = summary.max_wall_time_ms.max(test.wall_time_ms);
        summary.max_cpu_time_ms = summary.max_cpu_time_ms.max(test.cpu_time_ms);
        summary.max_memory_peak_bytes = summary.max_memory_peak_bytes.max(test.memory_peak_bytes);
    }
    summary.verdicts = verdicts;
    let result = SubmissionResult {
        trace_id: plan.trace_id.clone(),
        language: plan.language.name.clone(),
        version,
        status,
        message,
        compile,
        tests,
        summary,
        total_time_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
    };
    tracing::info!(
        target: "runner::submission",
        trace_id = %result.trace_id,
        language = %result.language,
        status = %result.status,
        tests = result.summary.tests,
        total_time = result.total_time_ms,
        "submission finished"
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{LimitPolicy, Planner, SourceFile};
    use crate::judge::{SubmissionRequest, TestCase};
    use crate::lang::Languages;

    fn submission(stdins: &[usize]) -> SubmissionPlan {
        let planner = Planner::new(Languages::builtin().unwrap(), LimitPolicy::default(), &[]);
        let tests = stdins
            .iter()
            .enumerate()
            .map(|(i, &bytes)| TestCase {
                name: format!("t{i}"),
                stdin: vec![b'1'; bytes],
                ..TestCase::default()
            })
            .collect();
        let request = SubmissionRequest {
            language: "c".into(),
            files: vec![SourceFile::entry("int main() {}")],
            tests,
            ..SubmissionRequest::default()
        };
        crate::judge::submission::plan(&planner, request).unwrap()
    }

    fn program(bytes: usize) -> Vec<runner_protocol::File> {
        vec![runner_protocol::File {
            name: "main".into(),
            content: vec![0x7f; bytes],
            executable: true,
        }]
    }

    #[test]
    fn a_test_that_no_longer_fits_with_the_compiled_program_is_named() {
        // Each test's input fits the frame alone (it was planned), but not
        // beside a 4 MiB program.
        let plan = submission(&[1 << 10, 10 << 20, 2 << 10]);
        assert!(too_large(&plan, &program(1 << 10)).is_empty());
        let refused = too_large(&plan, &program(4 << 20));
        assert_eq!(refused.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(refused[&1].contains("compiled program"), "{}", refused[&1]);
        assert!(refused[&1].contains("less input"), "{}", refused[&1]);
    }
}
