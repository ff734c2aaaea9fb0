//! The one-shot shape of work: a VM for the plan, its stages run, the VM
//! destroyed, whatever path the execution takes. Whether the output is the
//! expected one is the judge's business, decided after this.

mod cached;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use runner_protocol::File;
use tokio::sync::mpsc;

use crate::capacity::Slot;
use crate::exec::acquire::{self, AcquireError, Acquired, Readiness, Vms};
use crate::exec::conversation::{self, Input};
use crate::exec::transcript::{OutputChunk, Transcript};
use crate::exec::{ExecError, ExecutionResult, Plan, StartKind};
use crate::net::Proxy;

/// What stops an execution early, with the reason to report.
pub(crate) type Stop<'a> = Pin<&'a mut (dyn Future<Output = String> + Send)>;

/// Executes `plan` in a VM of its own: its result and the files it
/// collected.
pub(crate) async fn execute(
    vms: &Vms,
    plan: &Plan,
    output: Option<mpsc::UnboundedSender<OutputChunk>>,
    input: Option<Input>,
    stop: impl Future<Output = String> + Send,
) -> (ExecutionResult, Vec<File>) {
    let received = Instant::now();
    let mut transcript = Transcript::new(output);
    let mut ran = None;
    let outcome = run(
        vms,
        plan,
        &mut ran,
        &mut transcript,
        input,
        std::pin::pin!(stop),
    )
    .await;
    let collected = std::mem::take(&mut transcript.collected.files);
    // A plan whose compile came from the cache ran without it.
    let ran = ran.as_ref().unwrap_or(plan);
    (transcript.finish(ran, received, outcome), collected)
}

/// Runs `plan` in a VM of its own, recording what comes back in
/// `transcript`. Its compile is looked up in the compile cache first: a
/// plan that only compiles then needs no VM, and one that runs too runs
/// without its compile (the plan that ran is left in `ran`).
async fn run(
    vms: &Vms,
    plan: &Plan,
    ran: &mut Option<Plan>,
    transcript: &mut Transcript,
    mut input: Option<Input>,
    mut stop: Stop<'_>,
) -> Result<(), ExecError> {
    let images = tokio::select! {
        images = vms.prepare(&plan.language, Arc::new(())) => images.map_err(AcquireError::from)?,
        reason = &mut stop => return Err(ExecError::Stopped(reason)),
    };
    transcript.version = images.rootfs_manifest.version.clone();
    let cached = cached::Compile::look_up(vms, plan, &images.rootfs_manifest.id).await;
    let plan = match cached.plan(plan, transcript) {
        cached::Next::Done => return Ok(()),
        cached::Next::Run(changed) => &*ran.insert(*changed),
        cached::Next::AsPlanned => plan,
    };
    let backend = vms
        .backend(&images.kernel.vmlinux, &images.initramfs)
        .await
        .map_err(AcquireError::from)?;
    transcript.backend = Some((backend.info().name, backend.info().accel));
    // One of the machine's slots, held until the VM is gone: taken after
    // the images (a build is no execution) and given back before a judge's
    // checker runs (which takes one of its own).
    let _slot = match vms.slots() {
        Some(slots) => Some(tokio::select! {
            slot = slots.take() => slot.map_err(|source| AcquireError::Slot {
                path: slots.dir().to_path_buf(),
                source,
            })?,
            reason = &mut stop => return Err(ExecError::Stopped(reason)),
        }),
        None => None,
    };
    let cpu = _slot.as_ref().and_then(Slot::cpu);
    let acquired = tokio::select! {
        acquired = vms.acquire(plan.want(), &images, &*backend) => acquired?,
        reason = &mut stop => return Err(ExecError::Stopped(reason)),
    };
    if let Some(cpu) = cpu {
        acquire::pin(&*acquired.vm, cpu);
    }
    let restored = acquired.start == StartKind::Snapshot;
    match run_on(acquired, plan, transcript, &mut input, stop.as_mut()).await {
        // A snapshot that passed its check and still did not restore (a
        // checkpoint `runsc restore` refuses part-way): never a VM in a
        // state it was not saved in; a fresh one instead, once.
        Err(ExecError::Agent { error, console })
            if restored && transcript.timeline.ready.is_none() =>
        {
            tracing::warn!(
                trace_id = %plan.trace_id,
                error = %crate::error_chain(&error),
                console,
                "the VM restored from the snapshot never became ready; booting one instead"
            );
            let acquired = tokio::select! {
                acquired = vms.boot(plan.want(), &images, &*backend) => acquired?,
                reason = &mut stop => return Err(ExecError::Stopped(reason)),
            };
            if let Some(cpu) = cpu {
                acquire::pin(&*acquired.vm, cpu);
            }
            run_on(acquired, plan, transcript, &mut input, stop).await?;
        }
        outcome => outcome?,
    }
    cached.keep(plan, transcript).await;
    Ok(())
}

/// Waits for an acquired VM to be ready, runs `plan` on it (serving its
/// network port if the plan may use the network), and destroys it.
pub(crate) async fn run_on(
    acquired: Acquired,
    plan: &Plan,
    transcript: &mut Transcript,
    input: &mut Option<Input>,
    mut stop: Stop<'_>,
) -> Result<(), ExecError> {
    let Acquired {
        mut vm,
        start,
        readiness,
        boot_timeout,
        timeline,
        _running,
    } = acquired;
    transcript.start = start;
    transcript.timeline = timeline;
    if let Some(ready) = timeline.ready {
        transcript.ready(ready);
    }
    let proxy = plan
        .network
        .clone()
        .and_then(|egress| Some(Proxy::serve(vm.take_network()?, egress)));
    let clock = vm.vcpu_clock();
    let ended = tokio::select! {
        outcome = async {
            if let Readiness::AwaitHello { wake } = readiness {
                conversation::await_ready(vm.channel(), wake, boot_timeout).await?;
                transcript.ready(Instant::now());
            }
            conversation::converse(
                vm.channel(),
                &plan.exec,
                transcript,
                input.as_mut(),
                clock.as_ref(),
            )
            .await
        } => Ok(outcome),
        reason = &mut stop => Err(reason),
    };
    transcript.network = proxy.as_ref().map(Proxy::report);
    drop(proxy);
    let outcome = match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(ExecError::Agent {
            error,
            console: vm.console_tail(),
        }),
        Err(reason) => Err(ExecError::Stopped(reason)),
    };
    vm.destroy().await;
    outcome
}

/// The host's state machine against a scripted agent peer (see
/// [`crate::exec::scripted`]): each test plays one way a guest can break the
/// protocol and checks that the execution ends with the right status,
/// keeps the output it got, and leaves nothing behind: the VM destroyed,
/// no VM counted as running, the guest's connection closed.
#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use runner_protocol::{AgentFailure, Control, Frame, MAGIC, MAX_AGENT_FRAME, PROTOCOL_VERSION};
    use runner_protocol::{FrameKind, Stage, StageReport};

    use super::*;
    use crate::exec::acquire::Running;
    use crate::exec::scripted::{self, Peer};
    use crate::exec::transcript::{OutputChunk, Timeline};
    use crate::exec::{ExecutionRequest, ExecutionResult, Planner, SourceFile, StartKind, Status};
    use crate::exec::{LimitPolicy, RequestLimits, StageLimits};
    use crate::lang::Languages;

    fn plan(language: &str, output_bytes: Option<u64>) -> Plan {
        let planner = Planner::new(Languages::builtin().unwrap(), LimitPolicy::default(), &[]);
        let run = StageLimits {
            wall_time_ms: Some(1_000),
            output_bytes,
            ..StageLimits::default()
        };
        planner
            .plan(ExecutionRequest {
                language: language.into(),
                files: vec![SourceFile::entry("the program")],
                stdin: b"input".to_vec(),
                limits: RequestLimits {
                    run,
                    ..RequestLimits::default()
                },
                ..ExecutionRequest::default()
            })
            .unwrap()
    }

    /// A cold boot: the agent says hello when it is up.
    fn booting() -> Readiness {
        Readiness::AwaitHello { wake: None }
    }

    struct Outcome {
        result: ExecutionResult,
        chunks: Vec<OutputChunk>,
        collected: Vec<runner_protocol::File>,
    }

    /// Runs `plan` on a scripted VM whose agent does what `script` says,
    /// and checks that nothing is left behind.
    async fn scripted<S, F>(plan: &Plan, readiness: Readiness, script: S) -> Outcome
    where
        S: FnOnce(Peer) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        scripted_until(plan, readiness, script, None, std::future::pending()).await
    }

    async fn scripted_until<S, F>(
        plan: &Plan,
        readiness: Readiness,
        script: S,
        input: Option<Input>,
        stop: impl Future<Output = String> + Send,
    ) -> Outcome
    where
        S: FnOnce(Peer) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let (vm, peer, destroyed) = scripted::pair();
        let running = Arc::new(AtomicUsize::new(0));
        let now = Instant::now();
        let acquired = Acquired {
            vm: Box::new(vm),
            start: StartKind::Cold,
            readiness,
            boot_timeout: Duration::from_secs(90),
            timeline: Timeline {
                vm_started: Some(now),
                vm_up: Some(now),
                ..Timeline::default()
            },
            _running: Running::new(&running),
        };
        let guest = tokio::spawn(script(peer));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut transcript = Transcript::new(Some(tx));
        let mut input = input;
        let outcome = run_on(
            acquired,
            plan,
            &mut transcript,
            &mut input,
            std::pin::pin!(stop),
        )
        .await;
        let collected = std::mem::take(&mut transcript.collected.files);
        let result = transcript.finish(plan, now, outcome);
        assert!(destroyed.load(Ordering::SeqCst), "the VM was destroyed");
        assert_eq!(running.load(Ordering::SeqCst), 0, "no VM counts as running");
        // The guest's script ends when it is done or sees the host hang up.
        tokio::time::timeout(Duration::from_secs(5), guest)
            .await
            .expect("the host closed the guest's connection")
            .unwrap();
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            chunks.push(chunk);
        }
        Outcome {
            result,
            chunks,
            collected,
        }
    }

    /// Hello, then the request, as a well-behaved agent starts.
    async fn take_request(peer: &mut Peer) -> runner_protocol::ExecRequest {
        peer.hello().await;
        match peer.recv().await {
            Some(Frame::Exec(request)) => request,
            other => panic!("expected the request, got {other:?}"),
        }
    }

    fn ended(stage: Stage, exit_code: i32) -> Frame {
        Frame::StageEnd(StageReport {
            exit_code: Some(exit_code),
            wall_time_us: 1_500,
            ..StageReport::new(stage)
        })
    }

    fn message(result: &ExecutionResult) -> &str {
        result.message.as_deref().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_clients_input_reaches_the_agent_while_the_program_runs() {
        let mut plan = plan("python", None);
        plan.exec.interactive = Some(runner_protocol::Interactive { pty: None });
        let (input, input_rx) = tokio::sync::mpsc::unbounded_channel();
        input
            .send(Control::Input {
                data: b"typed\n".to_vec(),
            })
            .unwrap();
        let script = move |mut peer: Peer| async move {
            let request = take_request(&mut peer).await;
            assert!(request.interactive.is_some());
            peer.send(&Frame::Stdout(b"prompt: ".to_vec())).await;
            // What the client typed, echoed; then its input ends, as the
            // client's channel closes.
            let Some(Frame::Control(Control::Input { data })) = peer.recv().await else {
                panic!("no input")
            };
            peer.send(&Frame::Stdout(data)).await;
            assert_eq!(peer.recv().await, Some(Frame::Control(Control::InputEnd)));
            peer.send(&ended(Stage::Run, 0)).await;
            peer.send(&Frame::Done).await;
            peer.until_closed().await;
        };
        let ends = async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(input);
            std::future::pending::<String>().await
        };
        let out = scripted_until(&plan, booting(), script, Some(input_rx), ends).await;
        assert_eq!(out.result.status, Status::Ok, "{:?}", out.result.message);
        assert_eq!(out.result.run.unwrap().stdout, b"prompt: typed\n");
    }

    #[tokio::test]
    async fn a_well_behaved_agent_gets_the_plan_and_gives_a_result() {
        let plan = plan("python", None);
        let expected = plan.exec.clone();
        let out = scripted(&plan, booting(), move |mut peer| async move {
            let request = take_request(&mut peer).await;
            assert_eq!(request, expected, "the agent gets the plan as it is");
            peer.send(&Frame::Stdout(b"hello\n".to_vec())).await;
            peer.send(&ended(Stage::Run, 0)).await;
            peer.send(&Frame::Done).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::Ok, "{:?}", out.result.message);
        let run = out.result.run.unwrap();
        assert_eq!(run.stdout, b"hello\n");
        assert_eq!(run.wall_time_ms, 1.5);
        assert_eq!(out.chunks.len(), 1);
        assert_eq!(out.chunks[0].stage, Stage::Run);
    }

    /// A compile whose program comes back: `main`, in pieces.
    fn compile_collecting() -> Plan {
        let mut plan = plan("rust", None);
        plan.exec.stages.truncate(1);
        plan.exec.collect = vec!["main".into()];
        plan
    }

    fn piece(name: &str, offset: u64, content: &[u8], last: bool) -> Frame {
        Frame::Collected(runner_protocol::CollectedChunk {
            name: name.into(),
            offset,
            content: content.to_vec(),
            executable: true,
            last,
        })
    }

    #[tokio::test]
    async fn collected_files_come_back_whole() {
        let plan = compile_collecting();
        let out = scripted(&plan, booting(), |mut peer| async move {
            let request = take_request(&mut peer).await;
            assert_eq!(request.collect, ["main"]);
            peer.send(&ended(Stage::Compile, 0)).await;
            peer.send(&piece("main", 0, b"\x7fELF", false)).await;
            peer.send(&piece("main", 4, b" and the rest", true)).await;
            peer.send(&Frame::Done).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::Ok, "{:?}", out.result.message);
        assert_eq!(out.collected.len(), 1);
        assert_eq!(out.collected[0].name, "main");
        assert_eq!(out.collected[0].content, b"\x7fELF and the rest");
        assert!(out.collected[0].executable);
    }

    /// A whole program whose compile's files come back before its run,
    /// for the compile cache.
    fn whole_collecting_after_compile() -> Plan {
        let mut plan = plan("rust", None);
        plan.exec.collect = vec!["main".into()];
        plan.exec.collect_after = Some(Stage::Compile);
        plan
    }

    #[tokio::test]
    async fn files_collected_after_the_compile_come_back_before_the_run() {
        let plan = whole_collecting_after_compile();
        let out = scripted(&plan, booting(), |mut peer| async move {
            let request = take_request(&mut peer).await;
            assert_eq!(request.collect_after, Some(Stage::Compile));
            peer.send(&ended(Stage::Compile, 0)).await;
            peer.send(&piece("main", 0, b"\x7fELF", true)).await;
            peer.send(&Frame::Stdout(b"ran\n".to_vec())).await;
            peer.send(&ended(Stage::Run, 0)).await;
            peer.send(&Frame::Done).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::Ok, "{:?}", out.result.message);
        assert_eq!(out.result.run.unwrap().stdout, b"ran\n");
        assert_eq!(out.collected.len(), 1);
        assert_eq!(out.collected[0].content, b"\x7fELF");
    }

    #[tokio::test]
    async fn files_collected_for_the_cache_that_come_wrong_do_not_end_the_run() {
        // Pieces out of order, a file never asked for, or none at all:
        // nothing is kept, and the program's result stands.
        let cases: Vec<Vec<Frame>> = vec![
            vec![piece("main", 0, b"ab", false), piece("main", 5, b"c", true)],
            vec![piece("other", 0, b"x", true)],
            vec![],
        ];
        for pieces in cases {
            let plan = whole_collecting_after_compile();
            let out = scripted(&plan, booting(), |mut peer| async move {
                take_request(&mut peer).await;
                peer.send(&ended(Stage::Compile, 0)).await;
                for piece in &pieces {
                    peer.send(piece).await;
                }
                peer.send(&Frame::Stdout(b"ran\n".to_vec())).await;
                peer.send(&ended(Stage::Run, 0)).await;
                peer.send(&Frame::Done).await;
                peer.until_closed().await;
            })
            .await;
            assert_eq!(out.result.status, Status::Ok, "{:?}", out.result.message);
            assert!(out.collected.is_empty(), "{:?}", out.collected);
        }
        // Pieces once the run has begun are the protocol broken.
        let plan = whole_collecting_after_compile();
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&ended(Stage::Compile, 0)).await;
            peer.send(&Frame::Stdout(b"ran\n".to_vec())).await;
            peer.send(&piece("main", 0, b"x", true)).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(
            message(&out.result).contains("Collected"),
            "{:?}",
            out.result.message
        );
    }

    #[tokio::test]
    async fn a_failed_compile_collects_nothing_and_is_a_compile_error() {
        let plan = compile_collecting();
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&Frame::Stderr(b"error[E0308]".to_vec())).await;
            peer.send(&ended(Stage::Compile, 1)).await;
            peer.send(&Frame::Done).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(
            out.result.status,
            Status::CompileError,
            "{:?}",
            out.result.message
        );
        assert!(out.collected.is_empty());
    }

    #[tokio::test]
    async fn collected_files_must_be_asked_for_whole_and_in_order() {
        let cases: Vec<(Vec<Frame>, &str)> = vec![
            (vec![piece("../etc/passwd", 0, b"x", true)], "not asked for"),
            (vec![piece("other", 0, b"x", true)], "\"other\""),
            (
                vec![piece("main", 0, b"ab", false), piece("main", 5, b"c", true)],
                "at offset 5",
            ),
            (
                vec![piece("main", 0, b"ab", true), piece("main", 0, b"ab", true)],
                "twice",
            ),
            (
                vec![piece("main", 0, b"ab", false)],
                "without its last piece",
            ),
            (vec![], "nothing for \"main\""),
        ];
        for (pieces, says) in cases {
            let plan = compile_collecting();
            let out = scripted(&plan, booting(), |mut peer| async move {
                take_request(&mut peer).await;
                peer.send(&ended(Stage::Compile, 0)).await;
                for piece in &pieces {
                    peer.send(piece).await;
                }
                peer.send(&Frame::Done).await;
                peer.until_closed().await;
            })
            .await;
            assert_eq!(out.result.status, Status::InternalError, "{says}");
            assert!(
                message(&out.result).contains(says),
                "{:?} vs {says}",
                out.result.message
            );
        }
    }

    #[tokio::test]
    async fn collected_files_are_refused_before_the_last_stage_and_past_the_cap() {
        let plan = plan("rust", None);
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&piece("main", 0, b"early", true)).await;
            peer.until_closed().await;
        })
        .await;
        assert!(message(&out.result).contains("unexpected Collected frame"));

        let plan = compile_collecting();
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&ended(Stage::Compile, 0)).await;
            let block = vec![0u8; runner_protocol::COLLECTED_CHUNK];
            let mut offset = 0;
            // Past the cap, as a guest that never stops would (not much
            // further: encoding each piece is slow in a debug build on a
            // busy machine, and the guest must end within the test's 5 s).
            let past = crate::exec::conversation::MAX_COLLECTED_BYTES as usize / block.len() + 8;
            for _ in 0..past {
                peer.send(&piece("main", offset, &block, false)).await;
                offset += block.len() as u64;
            }
            peer.until_closed().await;
        })
        .await;
        assert!(
            message(&out.result).contains("more than 67108864 bytes of collected files"),
            "{:?}",
            out.result.message
        );
    }

    #[tokio::test]
    async fn a_restored_vm_is_woken_before_its_hello() {
        let plan = plan("bash", None);
        let wake = crate::exec::acquire::wake();
        let out = scripted(
            &plan,
            Readiness::AwaitHello { wake: Some(wake) },
            |mut peer| async move {
                match peer.recv().await {
                    Some(Frame::Wake(wake)) => assert_eq!(wake.entropy.len(), 64),
                    other => panic!("expected a wake, got {other:?}"),
                }
                take_request(&mut peer).await;
                peer.send(&ended(Stage::Run, 3)).await;
                peer.send(&Frame::Done).await;
                peer.until_closed().await;
            },
        )
        .await;
        assert_eq!(out.result.status, Status::RuntimeError);
        assert_eq!(out.result.run.unwrap().exit_code, Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_guest_that_never_says_hello_is_given_up_on() {
        let plan = plan("python", None);
        let out = scripted(&plan, booting(), |peer| peer.until_closed()).await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(
            message(&out.result).starts_with("the agent did not say hello within 90 s"),
            "{:?}",
            out.result.message
        );
        assert!(
            message(&out.result).contains("(scripted guest)"),
            "with the console"
        );
        assert!(out.result.run.is_none(), "no stage started");
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_it_is_read() {
        let plan = plan("python", None);
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&Frame::Stdout(b"kept".to_vec())).await;
            let mut header = Vec::from(MAGIC);
            header.extend([PROTOCOL_VERSION, FrameKind::Stdout as u8]);
            header.extend((MAX_AGENT_FRAME + 1).to_le_bytes());
            peer.send_raw(&header).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(
            message(&out.result).contains("over the limit of 262144"),
            "{:?}",
            out.result.message
        );
        let run = out.result.run.unwrap();
        assert_eq!(run.status, Status::InternalError);
        assert_eq!(run.stdout, b"kept", "output before the bad frame is kept");
    }

    #[tokio::test]
    async fn a_malformed_frame_ends_the_execution_keeping_the_output() {
        let plan = plan("python", None);
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&Frame::Stderr(b"partial".to_vec())).await;
            let mut frame = Vec::from(MAGIC);
            frame.extend([PROTOCOL_VERSION, FrameKind::StageEnd as u8]);
            frame.extend(9u32.to_le_bytes());
            frame.extend(b"{not json");
            peer.send_raw(&frame).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(
            message(&out.result).contains("malformed StageEnd frame"),
            "{:?}",
            out.result.message
        );
        assert_eq!(out.result.run.unwrap().stderr, b"partial");
    }

    #[tokio::test]
    async fn a_stage_reported_twice_is_a_broken_protocol() {
        let plan = plan("rust", None);
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&Frame::Stderr(b"compiled".to_vec())).await;
            peer.send(&ended(Stage::Compile, 0)).await;
            peer.send(&ended(Stage::Compile, 0)).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(
            message(&out.result)
                .contains("reported the compile stage where the run stage was running"),
            "{:?}",
            out.result.message
        );
        let compile = out.result.compile.unwrap();
        assert_eq!(
            compile.status,
            Status::Ok,
            "the compile that did end is kept"
        );
        assert_eq!(compile.stderr, b"compiled");
        assert_eq!(out.result.run.unwrap().status, Status::InternalError);
    }

    #[tokio::test]
    async fn a_report_after_the_last_stage_is_a_broken_protocol() {
        let plan = plan("bash", None);
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&ended(Stage::Run, 0)).await;
            peer.send(&ended(Stage::Run, 0)).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(
            message(&out.result).contains("StageEnd frame after the last stage"),
            "{:?}",
            out.result.message
        );
        assert_eq!(out.result.run.unwrap().status, Status::Ok);
    }

    #[tokio::test]
    async fn a_guest_that_stops_mid_output_keeps_what_it_sent() {
        let plan = plan("python", None);
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&Frame::Stdout(b"first line\n".to_vec())).await;
            peer.send(&Frame::Stderr(b"a warning\n".to_vec())).await;
            // The peer hangs up here, as a guest that died would.
        })
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(
            message(&out.result).starts_with("lost the agent: the agent closed the connection"),
            "{:?}",
            out.result.message
        );
        let run = out.result.run.unwrap();
        assert_eq!(run.status, Status::InternalError);
        assert_eq!(run.stdout, b"first line\n");
        assert_eq!(run.stderr, b"a warning\n");
    }

    #[tokio::test]
    async fn a_flood_past_the_output_limit_is_cut_and_stopped() {
        let plan = plan("python", Some(1_000));
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            // Far past the limit, as an agent that stopped counting would.
            for _ in 0..64 {
                peer.send(&Frame::Stdout(vec![b'x'; 600])).await;
            }
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::OutputLimitExceeded);
        assert!(
            message(&out.result).contains("more than the run stage's output limit of 1000 bytes"),
            "{:?}",
            out.result.message
        );
        let run = out.result.run.unwrap();
        assert_eq!(run.status, Status::OutputLimitExceeded);
        assert!(run.output_truncated);
        assert_eq!(run.stdout.len(), 1_000, "kept up to the limit, no more");
        let streamed: usize = out.chunks.iter().map(|c| c.bytes.len()).sum();
        assert_eq!(streamed, 1_000, "streamed up to the limit, no more");
    }

    #[tokio::test]
    async fn a_guest_that_disconnects_during_compile_keeps_the_compilers_output() {
        let plan = plan("rust", None);
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&Frame::Stderr(b"   Compiling main\n".to_vec()))
                .await;
        })
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(message(&out.result).starts_with("lost the agent"));
        let compile = out.result.compile.unwrap();
        assert_eq!(compile.status, Status::InternalError);
        assert_eq!(compile.stderr, b"   Compiling main\n");
        assert!(out.result.run.is_none(), "the run stage never started");
        assert_eq!(out.chunks[0].stage, Stage::Compile);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_agent_is_given_up_on_after_the_time_limit_and_a_grace() {
        let plan = plan("python", None);
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&Frame::Stdout(b"started\n".to_vec())).await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(
            message(&out.result).contains("no result within 15 s of the time limit"),
            "{:?}",
            out.result.message
        );
        assert_eq!(out.result.run.unwrap().stdout, b"started\n");
    }

    #[tokio::test]
    async fn an_agent_failure_is_reported_as_ours() {
        let plan = plan("python", None);
        let out = scripted(&plan, booting(), |mut peer| async move {
            take_request(&mut peer).await;
            peer.send(&Frame::Error(AgentFailure::new(
                "write main.py: no space left",
            )))
            .await;
            peer.until_closed().await;
        })
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert!(message(&out.result).starts_with("the agent failed: write main.py"));
    }

    #[tokio::test]
    async fn a_stopped_execution_keeps_its_output_and_destroys_its_vm() {
        let plan = plan("python", None);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let out = scripted_until(
            &plan,
            booting(),
            |mut peer| async move {
                take_request(&mut peer).await;
                peer.send(&Frame::Stdout(b"working\n".to_vec())).await;
                let _ = stop_tx.send(());
                peer.until_closed().await;
            },
            None,
            async move {
                let _ = stop_rx.await;
                // Let the output already sent arrive first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                "the client disconnected".to_string()
            },
        )
        .await;
        assert_eq!(out.result.status, Status::InternalError);
        assert_eq!(message(&out.result), "stopped: the client disconnected");
        assert_eq!(out.result.run.unwrap().stdout, b"working\n");
    }
}
