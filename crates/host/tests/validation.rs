//! Property tests of request validation: whatever a client sends, planning
//! either refuses it or yields what the guest can take (strings `execve`
//! takes, file names inside the working directory that no compiler reads
//! as options, limits within the policy, one frame the agent decodes back to
//! the same request), so that nothing that cannot reach the guest boots a
//! VM. And a valid request with any one defect added is refused.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use proptest::prelude::*;
use runner_host::exec::{
    ExecutionRequest, LimitPolicy, PlanError, Planner, RequestLimits, SourceFile, StageLimits,
};
use runner_host::lang::Languages;
use runner_protocol::{Decoder, Frame, MAX_HOST_FRAME};

fn planner() -> Planner {
    Planner::new(Languages::builtin().unwrap(), LimitPolicy::default(), &[])
}

/// Strings made of the characters validation cares about, mostly harmless
/// ones so that many requests are valid.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            6 => Just("a"),
            2 => Just("Z"),
            2 => Just("1"),
            2 => Just("."),
            1 => Just("/"),
            1 => Just("-"),
            1 => Just("@"),
            1 => Just(".."),
            1 => Just("="),
            1 => Just("\0"),
            1 => Just(" "),
            1 => Just("é"),
            1 => Just("*"),
            1 => Just("\n"),
        ],
        0..max,
    )
    .prop_map(|pieces| pieces.concat())
}

fn limit() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        (1u64..100_000_000).prop_map(Some),
        Just(Some(u64::MAX)),
    ]
}

fn stage_limits() -> impl Strategy<Value = StageLimits> {
    (limit(), limit(), limit(), limit(), limit(), limit()).prop_map(
        |(wall, cpu, memory, processes, output, file_size)| StageLimits {
            wall_time_ms: wall,
            cpu_time_ms: cpu,
            memory_mib: memory,
            processes: processes.map(|p| p.min(u64::from(u32::MAX)) as u32),
            output_bytes: output,
            file_size_bytes: file_size,
        },
    )
}

/// A string that is mostly a plain name and sometimes anything.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z][a-z0-9._]{0,8}", 1 => text(6)]
}

prop_compose! {
    fn request()(
        language in prop_oneof![3 => Just("python"), 3 => Just("c"), 3 => Just("bash"), 1 => Just("cobol")],
        files in proptest::collection::vec(
            (proptest::option::of(name()), text(20)), 1..4),
        args in proptest::collection::vec(name(), 0..3),
        env in proptest::collection::btree_map(
            prop_oneof![4 => "[A-Z_]{1,6}", 1 => text(5)], name(), 0..3),
        command in prop_oneof![4 => Just(None), 1 => proptest::option::of(text(10))],
        outputs in prop_oneof![4 => Just(Vec::new()), 1 => proptest::collection::vec(name(), 1..3)],
        compile in prop_oneof![3 => Just(StageLimits::default()), 1 => stage_limits()],
        run in prop_oneof![3 => Just(StageLimits::default()), 1 => stage_limits()],
    ) -> ExecutionRequest {
        ExecutionRequest {
            language: language.into(),
            files: files
                .into_iter()
                .map(|(name, content)| SourceFile { name, content: content.into_bytes() })
                .collect(),
            args,
            env,
            command,
            outputs,
            limits: RequestLimits { compile, run },
            ..ExecutionRequest::default()
        }
    }
}

/// What the guest can take, checked on an accepted plan's request.
fn assert_reaches_the_guest(exec: &runner_protocol::ExecRequest) {
    let max = LimitPolicy::default().max;
    for stage in &exec.stages {
        for arg in &stage.argv {
            assert!(!arg.contains('\0'), "{arg:?}");
            assert!(arg.len() < 32 << 12, "an argument execve refuses");
        }
        let limits = &stage.limits;
        assert!(limits.wall_time_ms > 0 && limits.wall_time_ms <= max.wall_time_ms);
        assert!(limits.cpu_time_ms > 0 && limits.cpu_time_ms <= max.cpu_time_ms);
        assert!(limits.processes > 0 && limits.processes <= max.processes);
        assert!(limits.output_bytes > 0 && limits.output_bytes <= max.output_bytes);
        assert!(limits.memory_bytes > 0 && limits.memory_bytes <= max.memory_mib << 20);
        assert!(limits.file_size_bytes > 0 && limits.file_size_bytes <= max.file_size_bytes);
    }
    for (key, value) in &exec.env {
        assert!(!key.is_empty() && !key.contains(['=', '\0']), "{key:?}");
        assert!(!value.contains('\0'), "{value:?}");
    }
    for (i, file) in exec.files.iter().enumerate() {
        let name = &file.name;
        assert!(!name.is_empty() && name.len() <= 255 && !name.contains('\0'));
        assert!(
            Path::new(name).components().all(|c| match c {
                Component::Normal(part) => !part.to_string_lossy().starts_with(['-', '@']),
                _ => false,
            }),
            "{name:?}"
        );
        assert!(
            exec.files[..i].iter().all(|f| &f.name != name),
            "{name:?} twice"
        );
    }
    let frame = Frame::Exec(exec.clone());
    let mut encoded = Vec::new();
    runner_protocol::encode(&frame, &mut encoded);
    let (decoded, used) = Decoder::new(MAX_HOST_FRAME)
        .decode(&encoded)
        .expect("the agent's decoder takes it")
        .expect("a whole frame");
    assert_eq!(used, encoded.len());
    assert_eq!(decoded, frame);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn a_plan_is_refused_or_reaches_the_guest(request in request()) {
        match planner().plan(request) {
            Ok(plan) => assert_reaches_the_guest(&plan.exec),
            Err(PlanError::Invalid(_) | PlanError::Language(_) | PlanError::TooLarge(_)) => {}
            Err(other) => panic!("unexpected refusal: {other}"),
        }
    }

    #[test]
    fn a_valid_request_with_one_defect_is_refused(
        name in "[a-z]{1,8}\\.txt",
        arg in "[a-z ]{0,8}",
        key in "[A-Z]{1,6}",
        defect in 0usize..13,
    ) {
        let mut request = ExecutionRequest {
            language: "python".into(),
            files: vec![
                SourceFile::entry("print(1)"),
                SourceFile::named(name.clone(), "data"),
            ],
            args: vec![arg.clone()],
            env: BTreeMap::from([(key.clone(), "value".into())]),
            ..ExecutionRequest::default()
        };
        prop_assert!(planner().plan(request.clone()).is_ok());
        let rename = |request: &mut ExecutionRequest, to: String| {
            request.files[1].name = Some(to);
        };
        match defect {
            0 => request.args.push(format!("{arg}\0")),
            1 => { request.env.insert(format!("{key}=X"), "v".into()); }
            2 => { request.env.insert(String::new(), "v".into()); }
            3 => { request.env.insert(key, "a\0b".into()); }
            4 => rename(&mut request, format!("../{name}")),
            5 => rename(&mut request, format!("/{name}")),
            6 => rename(&mut request, format!("-{name}")),
            7 => rename(&mut request, format!("dir/@{name}")),
            8 => rename(&mut request, "x".repeat(256)),
            9 => rename(&mut request, "main.py".into()),
            10 => request.limits.run.wall_time_ms = Some(0),
            11 => request.limits.run.memory_mib = Some(1 << 40),
            _ => request.outputs.push(format!("../{name}")),
        }
        let refused = planner().plan(request);
        prop_assert!(
            matches!(refused, Err(PlanError::Invalid(_))),
            "defect {} accepted: {:?}",
            defect,
            refused.map(|p| p.exec)
        );
    }
}

#[test]
fn files_bigger_than_one_frame_are_refused_before_a_vm_boots() {
    let with = |mib: usize| {
        planner().plan(ExecutionRequest {
            language: "python".into(),
            files: vec![
                SourceFile::entry("print(1)"),
                SourceFile::named("data.bin", vec![7u8; mib << 20]),
            ],
            ..ExecutionRequest::default()
        })
    };
    assert!(with(11).is_ok());
    match with(13) {
        Err(PlanError::TooLarge(message)) => {
            assert!(message.contains("at most 16 MiB"), "{message}")
        }
        other => panic!("{:?}", other.map(|p| p.exec.files.len())),
    }
}

#[test]
fn many_generated_requests_are_accepted() {
    // The first property's generator on its own: a property over
    // refusals alone would say nothing of what reaches the guest, so a
    // fifth of the requests or more must be valid.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let accepted = (0..1000)
        .filter(|_| {
            let request = request().new_tree(&mut runner).unwrap().current();
            planner().plan(request).is_ok()
        })
        .count();
    assert!(accepted >= 200, "{accepted} of 1000 accepted");
    eprintln!("{accepted} of 1000 generated requests accepted");
}
