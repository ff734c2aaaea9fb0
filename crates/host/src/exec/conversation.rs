//! The host's half of the agent protocol: what it sends, what it accepts
//! back, and how it ends a conversation with a guest that breaks the rules.
//!
//! Every byte here comes from the guest, which runs untrusted code and may
//! be compromised: a frame is bounded before it is read (see
//! [`AgentChannel`]), output is kept only up to the stage's limit, a stage
//! is accepted only in its turn, and every wait has a deadline. A guest
//! that does otherwise ends its execution with an error; it can neither
//! stall the host nor make it keep more than the limits allow.

use std::time::{Duration, Instant};

use runner_protocol::{
    CollectedChunk, Control, ExecRequest, File, Frame, PrestartSpec, Stage, Wake,
};
use tokio::sync::mpsc;

use super::transcript::Transcript;
use crate::vmm::{AgentChannel, ChannelError, VcpuClock};

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("the agent did not say hello within {seconds} s")]
    NoHello { seconds: u64 },
    #[error("lost the agent")]
    Lost(#[source] ChannelError),
    #[error("the agent broke the protocol: {0}")]
    Protocol(String),
    #[error("the agent sent output files that were not asked for, or past their caps: {0}")]
    Outputs(String),
    #[error("the agent failed: {0}")]
    Agent(String),
    #[error("the agent gave no result within {seconds} s of the time limit; the VM was killed")]
    Unresponsive { seconds: u64 },
    #[error(
        "the guest sent more than the {stage} stage's output limit of {limit} bytes; the VM was stopped"
    )]
    Flood { stage: Stage, limit: u64 },
    #[error("no answer from the agent within {seconds} s of the {what}")]
    Timeout { what: &'static str, seconds: u64 },
    #[error("the guest sent a file it was not asked for, or out of order: {0}")]
    Collected(String),
    #[error("the guest sent more than {limit} bytes of collected files; the VM was stopped")]
    CollectedTooLarge { limit: u64 },
    #[error("the {stage} stage of the {what} did not succeed: {report}")]
    StageFailed {
        what: &'static str,
        stage: Stage,
        report: String,
    },
}

/// How long the agent may take beyond the stages' own wall-time limits
/// (which it enforces) before the host gives up on it.
const GRACE: Duration = Duration::from_secs(15);

/// Waits for the agent's hello. A restored VM's agent said hello long ago,
/// to the snapshot's host: it first gets `wake`, is made unique, and says
/// hello again.
pub async fn await_ready(
    channel: &mut AgentChannel,
    wake: Option<Wake>,
    timeout: Duration,
) -> Result<(), ConversationError> {
    if let Some(wake) = wake {
        channel
            .send(&Frame::Wake(wake))
            .await
            .map_err(ConversationError::Lost)?;
    }
    match tokio::time::timeout(timeout, channel.recv()).await {
        Ok(Ok(Frame::Hello(_))) => Ok(()),
        Ok(Ok(Frame::Error(failure))) => Err(ConversationError::Agent(failure.message)),
        Ok(Ok(other)) => Err(ConversationError::Protocol(format!(
            "expected hello, got {:?}",
            other.kind()
        ))),
        Ok(Err(e)) => Err(ConversationError::Lost(e)),
        Err(_) => Err(ConversationError::NoHello {
            seconds: timeout.as_secs(),
        }),
    }
}

/// How often the vCPU's count is looked at during an execution.
const VCPU_TIME_EVERY: Duration = Duration::from_millis(50);

/// How much more waiting, in microseconds, is worth telling the agent of.
const VCPU_WAIT_TOLD: u64 = 1_000;

/// A client's input for an interactive execution, sent to the agent as it
/// comes; the end of the channel is the end of the input.
pub type Input = mpsc::UnboundedReceiver<Control>;

/// Sends `exec` to a ready agent and records its output and stage reports
/// in `transcript` until it says it is done; for an interactive `exec`,
/// passes on what comes from `input` meanwhile. With a `clock` (a guest
/// that cannot see steal time), tells the agent the vCPU's running and
/// waiting time at the start and whenever the waiting grew.
pub async fn converse(
    channel: &mut AgentChannel,
    exec: &ExecRequest,
    transcript: &mut Transcript,
    mut input: Option<&mut Input>,
    clock: Option<&VcpuClock>,
) -> Result<(), ConversationError> {
    if exec.interactive.is_none() {
        input = None;
    }
    // The count first, so that the agent has it when its first stage
    // starts: the waiting that counts is what comes after.
    let mut told: Option<u64> = None;
    let first = clock.and_then(VcpuClock::read);
    if let Some(now) = first {
        told = Some(now.waiting_us);
        channel
            .send(&Frame::VcpuTime(now))
            .await
            .map_err(ConversationError::Lost)?;
    }
    channel
        .send(&Frame::Exec(exec.clone()))
        .await
        .map_err(ConversationError::Lost)?;
    let budget: Duration = exec
        .stages
        .iter()
        .map(|s| Duration::from_millis(s.limits.wall_time_ms) + GRACE)
        .sum();
    let deadline = tokio::time::Instant::now() + budget;
    let mut tick = tokio::time::interval(VCPU_TIME_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            received = tokio::time::timeout_at(deadline, channel.recv()) => received,
            control = async {
                match input.as_deref_mut() {
                    Some(controls) => controls.recv().await,
                    None => std::future::pending().await,
                }
            }, if input.is_some() => {
                // The client's input ended with its channel.
                let control = control.unwrap_or_else(|| {
                    input = None;
                    Control::InputEnd
                });
                channel
                    .send(&Frame::Control(control))
                    .await
                    .map_err(ConversationError::Lost)?;
                continue;
            }
            _ = tick.tick(), if clock.is_some() => {
                let now = clock.and_then(VcpuClock::read);
                if let Some(now) = now.filter(|now| {
                    told.is_none_or(|told| now.waiting_us >= told + VCPU_WAIT_TOLD)
                }) {
                    told = Some(now.waiting_us);
                    channel
                        .send(&Frame::VcpuTime(now))
                        .await
                        .map_err(ConversationError::Lost)?;
                }
                continue;
            }
        };
        let frame = match received {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => return Err(ConversationError::Lost(e)),
            Err(_) => {
                return Err(ConversationError::Unresponsive {
                    seconds: GRACE.as_secs(),
                });
            }
        };
        // Output and stage ends belong to the stage the agent is running.
        let current = exec.stages.get(transcript.stages_done());
        let kind = frame.kind();
        let stage = || {
            current.ok_or_else(|| {
                ConversationError::Protocol(format!("{kind:?} frame after the last stage"))
            })
        };
        match frame {
            Frame::Stdout(bytes) => transcript.output(stage()?, false, bytes)?,
            Frame::Stderr(bytes) => transcript.output(stage()?, true, bytes)?,
            Frame::StageEnd(report) => {
                let expected = stage()?.stage;
                if report.stage != expected {
                    return Err(ConversationError::Protocol(format!(
                        "it reported the {} stage where the {expected} stage was running",
                        report.stage
                    )));
                }
                transcript.stage_end(report);
            }
            // Files collected before a later stage are for the host's
            // own use (the compile cache): what does not come whole is
            // not kept, and the execution goes on.
            Frame::Collected(chunk) if collecting(exec, transcript) => match exec.collect_after {
                None => transcript.collected.add(chunk, &exec.collect)?,
                Some(_) => transcript.collected.add_or_give_up(chunk, &exec.collect),
            },
            Frame::OutputFile(piece) if current.is_none() => {
                transcript.outputs.add(piece, exec.outputs.as_ref())?;
            }
            Frame::Done => {
                // The agent collects only after every stage exited 0.
                if exec.collect_after.is_none() && transcript.all_succeeded(exec.stages.len()) {
                    transcript.collected.finish(&exec.collect)?;
                }
                transcript.outputs.finish()?;
                transcript.done(Instant::now());
                if let (Some(first), Some(last)) = (first, clock.and_then(VcpuClock::read)) {
                    tracing::debug!(
                        running_ms = (last.running_us - first.running_us) / 1000,
                        waiting_ms = (last.waiting_us - first.waiting_us) / 1000,
                        "vcpu time of the execution"
                    );
                }
                return Ok(());
            }
            Frame::Error(failure) => return Err(ConversationError::Agent(failure.message)),
            other => {
                return Err(ConversationError::Protocol(format!(
                    "unexpected {:?} frame",
                    other.kind()
                )));
            }
        }
    }
}

/// Whether collected files may come now: after the stage they follow
/// (the last, unless the request names one) and before the next begins.
fn collecting(exec: &ExecRequest, transcript: &Transcript) -> bool {
    let done = transcript.stages_done();
    match exec.collect_after {
        None => done == exec.stages.len(),
        Some(stage) => {
            done > 0 && exec.stages[done - 1].stage == stage && !transcript.stage_has_output()
        }
    }
}

/// The most a request's collected files may hold together: a compiled
/// program, or a few thousand class files.
pub const MAX_COLLECTED_BYTES: u64 = 64 << 20;

/// Files collected from a VM (see `ExecRequest::collect`), checked as they
/// come: each one asked for, its pieces in order, all of them within
/// [`MAX_COLLECTED_BYTES`].
#[derive(Debug, Default)]
pub struct Collected {
    pub files: Vec<File>,
    /// The file whose pieces are coming, if one is.
    partial: Option<File>,
    bytes: u64,
    /// Files that came wrong were dropped (see [`Collected::add_or_give_up`]).
    given_up: bool,
}

impl Collected {
    fn add(&mut self, chunk: CollectedChunk, patterns: &[String]) -> Result<(), ConversationError> {
        let bad = |why: String| Err(ConversationError::Collected(why));
        let wanted = !chunk.name.contains('/')
            && !chunk.name.is_empty()
            && patterns.iter().any(|p| match p.strip_prefix('*') {
                Some(suffix) => chunk.name.ends_with(suffix),
                None => *p == chunk.name,
            });
        if !wanted {
            return bad(format!("{:?}", chunk.name));
        }
        self.bytes += chunk.content.len() as u64;
        if self.bytes > MAX_COLLECTED_BYTES {
            return Err(ConversationError::CollectedTooLarge {
                limit: MAX_COLLECTED_BYTES,
            });
        }
        let file = match self.partial.take() {
            Some(file) if file.name == chunk.name => file,
            Some(file) => {
                return bad(format!(
                    "{:?} before the end of {:?}",
                    chunk.name, file.name
                ));
            }
            None if self.files.iter().any(|f| f.name == chunk.name) => {
                return bad(format!("{:?} twice", chunk.name));
            }
            None => File {
                name: chunk.name.clone(),
                content: Vec::new(),
                executable: chunk.executable,
            },
        };
        if chunk.offset != file.content.len() as u64 {
            return bad(format!("{:?} at offset {}", chunk.name, chunk.offset));
        }
        let mut file = file;
        file.content.extend_from_slice(&chunk.content);
        if chunk.last {
            self.files.push(file);
        } else {
            self.partial = Some(file);
        }
        Ok(())
    }

    /// [`Collected::add`], but a piece that is refused drops every file
    /// and the ones after it, rather than ending the execution.
    fn add_or_give_up(&mut self, chunk: CollectedChunk, patterns: &[String]) {
        if !self.given_up && self.add(chunk, patterns).is_err() {
            *self = Collected {
                given_up: true,
                ..Collected::default()
            };
        }
    }

    /// Whether every file `patterns` name came whole.
    pub fn is_whole(&self, patterns: &[String]) -> bool {
        !self.given_up && self.finish(patterns).is_ok()
    }

    /// At the end: no file left unfinished, and every pattern matched.
    fn finish(&self, patterns: &[String]) -> Result<(), ConversationError> {
        if let Some(file) = &self.partial {
            return Err(ConversationError::Collected(format!(
                "{:?} without its last piece",
                file.name
            )));
        }
        let unmatched = patterns.iter().find(|p| {
            !self.files.iter().any(|f| match p.strip_prefix('*') {
                Some(suffix) => f.name.ends_with(suffix),
                None => f.name == **p,
            })
        });
        match unmatched {
            Some(pattern) => Err(ConversationError::Collected(format!(
                "nothing for {pattern:?}"
            ))),
            None => Ok(()),
        }
    }
}

/// Runs a warm-up on a VM about to be snapshotted: every stage must exit 0;
/// what it prints is dropped.
pub async fn warm(channel: &mut AgentChannel, exec: ExecRequest) -> Result<(), ConversationError> {
    const WHAT: &str = "warm-up";
    const LIMIT: Duration = Duration::from_secs(300);
    channel
        .send(&Frame::Warm(exec))
        .await
        .map_err(ConversationError::Lost)?;
    loop {
        let frame = tokio::time::timeout(LIMIT, channel.recv())
            .await
            .map_err(|_| ConversationError::Timeout {
                what: WHAT,
                seconds: LIMIT.as_secs(),
            })?
            .map_err(ConversationError::Lost)?;
        match frame {
            Frame::StageEnd(report) if report.exit_code != Some(0) => {
                return Err(ConversationError::StageFailed {
                    what: WHAT,
                    stage: report.stage,
                    report: format!("{report:?}"),
                });
            }
            Frame::Done => return Ok(()),
            Frame::Error(e) => return Err(ConversationError::Agent(e.message)),
            _ => {}
        }
    }
}

/// Starts the language's runtime on a VM about to be snapshotted and waits
/// until the agent says it is waiting for its program.
pub async fn prestart(
    channel: &mut AgentChannel,
    spec: PrestartSpec,
) -> Result<(), ConversationError> {
    const LIMIT: Duration = Duration::from_secs(120);
    channel
        .send(&Frame::Prestart(spec))
        .await
        .map_err(ConversationError::Lost)?;
    let frame = tokio::time::timeout(LIMIT, channel.recv())
        .await
        .map_err(|_| ConversationError::Timeout {
            what: "prestarted runtime",
            seconds: LIMIT.as_secs(),
        })?
        .map_err(ConversationError::Lost)?;
    match frame {
        Frame::Done => Ok(()),
        Frame::Error(e) => Err(ConversationError::Agent(format!("prestart: {}", e.message))),
        other => Err(ConversationError::Protocol(format!(
            "prestart answered with {:?}",
            other.kind()
        ))),
    }
}
