//! Everything that came back from one execution, as it comes, and the
//! result it makes: kept even when the execution fails part-way, so that a
//! failure never loses the output that had arrived.

use std::time::{Duration, Instant};

use runner_protocol::{Stage, StageReport, StageSpec};
use tokio::sync::mpsc;

use super::ExecError;
use super::conversation::{Collected, ConversationError};
use super::plan::Plan;
use super::result::{ExecutionMetrics, ExecutionResult, StageResult, StartKind, Status};
use crate::error_chain;
use crate::vmm::Accel;

/// Output as it is produced, for callers that stream it.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stage: Stage,
    pub stderr: bool,
    pub bytes: Vec<u8>,
}

/// When each step of the execution happened, as the host saw it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timeline {
    /// The VMM was asked for the VM.
    pub vm_started: Option<Instant>,
    /// Its devices were up (the agent channel connected).
    pub vm_up: Option<Instant>,
    /// The agent said hello.
    pub ready: Option<Instant>,
    /// The last stage reported.
    pub done: Option<Instant>,
}

pub(crate) struct Transcript {
    output: Option<mpsc::UnboundedSender<OutputChunk>>,
    pub start: StartKind,
    /// The language's version in its image.
    pub version: String,
    pub backend: Option<(&'static str, Accel)>,
    pub timeline: Timeline,
    /// When the stage the agent is running began.
    stage_started: Option<Instant>,
    stages: Vec<(Stage, StageResult)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Files the request asked to collect, once every stage has run.
    pub collected: Collected,
    /// Output files the request named, once the run stage ran.
    pub outputs: super::outputs::Received,
    /// What the program did on the network, if it could.
    pub network: Option<crate::net::proxy::NetworkReport>,
    /// The compile stage's report, as the agent sent it.
    compile_report: Option<StageReport>,
    /// The compile stage, from the compile cache rather than run.
    cached: Option<StageResult>,
}

impl Transcript {
    pub fn new(output: Option<mpsc::UnboundedSender<OutputChunk>>) -> Self {
        Self {
            output,
            start: StartKind::Cold,
            version: String::new(),
            backend: None,
            timeline: Timeline::default(),
            stage_started: None,
            stages: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            collected: Collected::default(),
            outputs: Default::default(),
            network: None,
            compile_report: None,
            cached: None,
        }
    }

    /// The agent is ready: the first stage starts now.
    pub fn ready(&mut self, at: Instant) {
        self.timeline.ready = Some(at);
        self.stage_started = Some(at);
    }

    /// Stages that have reported.
    pub fn stages_done(&self) -> usize {
        self.stages.len()
    }

    /// Keeps and forwards output of the stage `spec`. The agent cuts output
    /// at the stage's limit; a guest that sends more is refused, and what
    /// is kept never passes the limit, so a guest cannot fill the host's
    /// memory.
    pub fn output(
        &mut self,
        spec: &StageSpec,
        stderr: bool,
        mut bytes: Vec<u8>,
    ) -> Result<(), ConversationError> {
        let limit = spec.limits.output_bytes;
        let room = (limit as usize).saturating_sub(self.stdout.len() + self.stderr.len());
        let flooded = bytes.len() > room;
        bytes.truncate(room);
        if stderr {
            self.stderr.extend_from_slice(&bytes);
        } else {
            self.stdout.extend_from_slice(&bytes);
        }
        if let Some(tx) = &self.output {
            if !bytes.is_empty() {
                let _ = tx.send(OutputChunk {
                    stage: spec.stage,
                    stderr,
                    bytes,
                });
            }
        }
        if flooded {
            return Err(ConversationError::Flood {
                stage: spec.stage,
                limit,
            });
        }
        Ok(())
    }

    /// Whether `planned` stages all reported, each exiting 0.
    pub fn all_succeeded(&self, planned: usize) -> bool {
        self.stages.len() == planned && self.stages.iter().all(|(_, s)| s.exit_code == Some(0))
    }

    /// The result of `stage`, if it reported.
    pub fn stage(&self, stage: Stage) -> Option<&StageResult> {
        self.stages
            .iter()
            .find_map(|(s, result)| (*s == stage).then_some(result))
    }

    /// The compile stage did not run: `result` came from the compile
    /// cache. Its output goes to a streaming caller as if it ran.
    pub fn cached_compile(&mut self, result: StageResult) {
        if let Some(tx) = &self.output {
            for (stderr, bytes) in [(false, &result.stdout), (true, &result.stderr)] {
                if !bytes.is_empty() {
                    let _ = tx.send(OutputChunk {
                        stage: Stage::Compile,
                        stderr,
                        bytes: bytes.clone(),
                    });
                }
            }
        }
        self.cached = Some(result);
    }

    /// The report of the compile stage, if it ran and reported.
    pub fn compile_report(&self) -> Option<&StageReport> {
        self.compile_report.as_ref()
    }

    /// Whether the stage the agent is running has sent output yet.
    pub fn stage_has_output(&self) -> bool {
        !self.stdout.is_empty() || !self.stderr.is_empty()
    }

    /// The stage the agent was running has ended with `report`.
    pub fn stage_end(&mut self, report: StageReport) {
        if report.stage == Stage::Compile {
            self.compile_report = Some(report.clone());
        }
        let stdout = std::mem::take(&mut self.stdout);
        let stderr = std::mem::take(&mut self.stderr);
        let stage = report.stage;
        self.stages
            .push((stage, super::result::stage_result(stdout, stderr, report)));
        self.stage_started = Some(Instant::now());
    }

    pub fn done(&mut self, at: Instant) {
        self.timeline.done = Some(at);
    }

    /// The result, from what came back and how the execution ended.
    pub fn finish(
        mut self,
        plan: &Plan,
        received: Instant,
        outcome: Result<(), ExecError>,
    ) -> ExecutionResult {
        let now = Instant::now();
        let t = self.timeline;
        let span = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
            (Some(from), Some(to)) => ms(to - from),
            _ => 0.0,
        };
        let metrics = ExecutionMetrics::new(
            plan.trace_id.clone(),
            plan.language.name.clone(),
            self.start,
            [
                span(t.vm_started, t.vm_up),
                span(t.vm_up, t.ready),
                span(t.ready, t.done.or(Some(now))),
                ms(t.done.unwrap_or(now) - received),
            ],
        );
        let flooded = matches!(
            &outcome,
            Err(ExecError::Agent {
                error: ConversationError::Flood { .. },
                ..
            })
        );
        // A stage cut short by a failure keeps the output it had produced.
        if let (Err(_), Some(started), Some(spec)) =
            (&outcome, self.stage_started, plan.stage(self.stages.len()))
        {
            let report = StageReport {
                wall_time_us: (now - started).as_micros() as u64,
                output_truncated: flooded,
                ..StageReport::new(spec.stage)
            };
            let stdout = std::mem::take(&mut self.stdout);
            let stderr = std::mem::take(&mut self.stderr);
            let mut stage = super::result::stage_result(stdout, stderr, report);
            if !flooded {
                stage.status = Status::InternalError;
            }
            self.stages.push((spec.stage, stage));
        }
        let mut take = |wanted: Stage| {
            let index = self.stages.iter().position(|(s, _)| *s == wanted)?;
            Some(self.stages.remove(index).1)
        };
        let compile = take(Stage::Compile).or(self.cached.take());
        let run = take(Stage::Run);
        let (status, message) = match outcome {
            Ok(()) => {
                let planned_run = plan.exec.stages.iter().any(|s| s.stage == Stage::Run);
                super::result::verdict(compile.as_ref(), run.as_ref(), planned_run)
            }
            Err(e) => {
                let message = error_chain(&e);
                if matches!(e, ExecError::Stopped(_)) {
                    tracing::info!(trace_id = %plan.trace_id, reason = %message, "execution stopped");
                } else {
                    tracing::error!(trace_id = %plan.trace_id, error = %message, "execution failed");
                }
                let status = if flooded {
                    Status::OutputLimitExceeded
                } else {
                    Status::InternalError
                };
                (status, Some(message))
            }
        };
        let (backend, accel) = match self.backend {
            Some((name, accel)) => (name, Some(accel)),
            None => (crate::vmm::DEFAULT_BACKEND, None),
        };
        ExecutionResult {
            trace_id: plan.trace_id.clone(),
            language: plan.language.name.clone(),
            version: self.version,
            status,
            message,
            compile,
            run,
            metrics,
            backend: backend.to_string(),
            accel,
            difference: None,
            outputs: self.outputs.files,
            network: self.network,
        }
    }
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}
