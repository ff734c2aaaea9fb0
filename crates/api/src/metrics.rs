//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format.
//!
//! The seed's names use hyphens (`infra-operator_vm_boot_seconds`), which
//! Prometheus does not allow; ours are `runner_...` with the seed's buckets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use runner_host::ExecutionResult;
use runner_host::judge::SubmissionResult;

/// The seed's `vmBootDuration` buckets, in seconds.
const BOOT_BUCKETS: [f64; 7] = [0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0];
/// The seed's `codeExecutionDuration` buckets, in seconds.
const EXECUTION_BUCKETS: [f64; 8] = [0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0];
/// A submission compiles once and runs up to hundreds of tests.
const SUBMISSION_BUCKETS: [f64; 9] = [1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LanguageLabel {
    language: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecutionLabels {
    language: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    language: String,
    verdict: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    language: String,
    start: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

type HistogramFamily = Family<LanguageLabel, Histogram, fn() -> Histogram>;

/// One of the latest executions, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recent {
    pub trace_id: String,
    pub language: String,
    pub status: String,
    pub start: String,
    pub total_time_ms: f64,
    pub finished_unix_ms: u64,
}

/// How many of the latest executions are kept.
const RECENT: usize = 50;

pub struct Metrics {
    /// The latest executions, newest last.
    recent: std::sync::Mutex<std::collections::VecDeque<Recent>>,
    registry: Registry,
    vm_boot: Histogram,
    code_execution: HistogramFamily,
    total: HistogramFamily,
    executions: Family<ExecutionLabels, Counter>,
    starts: Family<StartLabels, Counter>,
    rejections: Family<ReasonLabel, Counter>,
    warm_pool: Family<LanguageLabel, Gauge>,
    vms_running: Gauge,
    queue_length: Gauge,
    judge_tests: Family<VerdictLabels, Counter>,
    submission_duration: HistogramFamily,
    sessions: Family<StateLabel, Gauge>,
    pause: Histogram,
    resume: Histogram,
    paused_bytes: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The status label of an execution whose client went away before the end.
pub const CANCELLED: &str = "cancelled";

impl Metrics {
    pub fn new(languages: &[String], max_vms: usize) -> Self {
        let mut registry = Registry::default();
        let vm_boot = Histogram::new(BOOT_BUCKETS);
        registry.register(
            "runner_vm_boot_seconds",
            "Time from starting a VM until its agent is ready to run code",
            vm_boot.clone(),
        );
        let code_execution: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(EXECUTION_BUCKETS));
        registry.register(
            "runner_code_execution_seconds",
            "Code execution time by language (compile and run stages, in the VM)",
            code_execution.clone(),
        );
        let total: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(EXECUTION_BUCKETS));
        registry.register(
            "runner_execution_total_seconds",
            "Time from admitting a request until its result, by language",
            total.clone(),
        );
        let executions = Family::<ExecutionLabels, Counter>::default();
        registry.register(
            "runner_executions",
            "Executions finished, by language and status (cancelled: the client went away)",
            executions.clone(),
        );
        let starts = Family::<StartLabels, Counter>::default();
        registry.register(
            "runner_vm_starts",
            "VMs started, by language and how: cold (booted) or snapshot (restored)",
            starts.clone(),
        );
        let rejections = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "runner_admission_rejections",
            "Requests refused for want of capacity, by reason",
            rejections.clone(),
        );
        let warm_pool = Family::<LanguageLabel, Gauge>::default();
        registry.register(
            "runner_warm_pool_size",
            "Ready VMs waiting in the warm pool, by language",
            warm_pool.clone(),
        );
        let vms_running = Gauge::default();
        registry.register("runner_vms_running", "VMs running now", vms_running.clone());
        let queue_length = Gauge::default();
        registry.register(
            "runner_queue_length",
            "Requests waiting for capacity",
            queue_length.clone(),
        );
        let judge_tests = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "runner_judge_tests",
            "Tests of judge submissions, by language and verdict",
            judge_tests.clone(),
        );
        let submission_duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(SUBMISSION_BUCKETS));
        registry.register(
            "runner_submission_duration_seconds",
            "Time from taking a judge submission until its result, by language",
            submission_duration.clone(),
        );
        let sessions = Family::<StateLabel, Gauge>::default();
        registry.register(
            "runner_sessions",
            "Sessions by state: running, paused, ended, failed (ended ones are kept for a while)",
            sessions.clone(),
        );
        let pause = Histogram::new(BOOT_BUCKETS);
        registry.register(
            "runner_session_pause_seconds",
            "Time to save a session's VM to disk and free it",
            pause.clone(),
        );
        let resume = Histogram::new(BOOT_BUCKETS);
        registry.register(
            "runner_session_resume_seconds",
            "Time to bring a paused session's VM back until its agent answers",
            resume.clone(),
        );
        let paused_bytes = Gauge::default();
        registry.register(
            "runner_session_paused_bytes",
            "Bytes the saved VMs of paused sessions take on disk",
            paused_bytes.clone(),
        );
        let capacity: Gauge = Gauge::default();
        registry.register(
            "runner_capacity_vms",
            "VMs that may run at once (max_vms, or one per CPU)",
            capacity.clone(),
        );
        capacity.set(max_vms as i64);
        for language in languages {
            let _ = warm_pool.get_or_create(&LanguageLabel {
                language: language.clone(),
            });
        }
        for reason in ["queue_full", "queue_timeout"] {
            let _ = rejections.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        Self {
            recent: std::sync::Mutex::default(),
            registry,
            vm_boot,
            code_execution,
            total,
            executions,
            starts,
            rejections,
            warm_pool,
            vms_running,
            queue_length,
            judge_tests,
            submission_duration,
            sessions,
            pause,
            resume,
            paused_bytes,
        }
    }

    /// A session paused in `seconds`.
    pub fn paused(&self, seconds: f64) {
        self.pause.observe(seconds);
    }

    /// A session resumed in `seconds`.
    pub fn resumed(&self, seconds: f64) {
        self.resume.observe(seconds);
    }

    /// Counts a judged submission's tests by verdict, and its duration.
    pub fn record_submission(&self, result: &SubmissionResult) {
        for test in &result.tests {
            self.judge_tests
                .get_or_create(&VerdictLabels {
                    language: result.language.clone(),
                    verdict: test.status.as_str().into(),
                })
                .inc();
        }
        self.submission_duration
            .get_or_create(&LanguageLabel {
                language: result.language.clone(),
            })
            .observe(result.total_time_ms / 1e3);
    }

    /// Counts a finished execution; `cancelled` when its client went away.
    pub fn record(&self, result: &ExecutionResult, cancelled: bool) {
        let m = &result.metrics;
        let language = LanguageLabel {
            language: result.language.clone(),
        };
        let status = if cancelled {
            CANCELLED
        } else {
            result.status.as_str()
        };
        self.executions
            .get_or_create(&ExecutionLabels {
                language: result.language.clone(),
                status: status.into(),
            })
            .inc();
        if m.vm_boot_time_ms > 0.0 {
            self.starts
                .get_or_create(&StartLabels {
                    language: result.language.clone(),
                    start: m.start.as_str().into(),
                })
                .inc();
        }
        if m.ready_time_ms > 0.0 {
            self.vm_boot
                .observe((m.vm_boot_time_ms + m.ready_time_ms) / 1e3);
        }
        if m.execution_time_ms > 0.0 {
            self.code_execution
                .get_or_create(&language)
                .observe(m.execution_time_ms / 1e3);
        }
        self.total
            .get_or_create(&language)
            .observe(m.total_time_ms / 1e3);
        let mut recent = self.recent.lock().unwrap();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(Recent {
            trace_id: result.trace_id.clone(),
            language: result.language.clone(),
            status: status.to_string(),
            start: m.start.as_str().to_string(),
            total_time_ms: m.total_time_ms,
            finished_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        });
    }

    /// The latest executions, newest first.
    pub fn recent(&self) -> Vec<Recent> {
        self.recent.lock().unwrap().iter().rev().cloned().collect()
    }

    /// Counts an execution dropped with its request, before any result.
    pub fn cancelled(&self, language: &str) {
        self.executions
            .get_or_create(&ExecutionLabels {
                language: language.into(),
                status: CANCELLED.into(),
            })
            .inc();
    }

    pub fn reject(&self, reason: &str) {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// The text exposition, with the gauges read now.
    pub fn encode(
        &self,
        vms_running: usize,
        queue_length: usize,
        pools: &[(String, usize)],
        sessions: &[(&str, usize)],
        paused_bytes: u64,
    ) -> String {
        self.vms_running.set(vms_running as i64);
        self.paused_bytes.set(paused_bytes as i64);
        for (state, count) in sessions {
            self.sessions
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(*count as i64);
        }
        for (language, size) in pools {
            self.warm_pool
                .get_or_create(&LanguageLabel {
                    language: language.clone(),
                })
                .set(*size as i64);
        }
        self.queue_length.set(queue_length as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}
