//! What `runner bench` measures: the seed's cases, or one of the user's.

use std::collections::BTreeMap;

use serde::Serialize;

/// How the VMs of a case start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// Booted from the kernel (`RUNNER_SNAPSHOTS=off`).
    Cold,
    /// Restored from the language's snapshot (what `runner run` does).
    Snapshot,
    /// Taken from a warm pool (what `runner serve` does).
    Pool,
    /// Taken from a warm pool whose VMs skipped their translation warm-up
    /// (`pool.warm_up = false`), to show what it gains.
    PoolUnwarmed,
}

impl Start {
    pub fn as_str(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::Snapshot => "snapshot",
            Start::Pool => "pool",
            Start::PoolUnwarmed => "pool_unwarmed",
        }
    }

    /// How an execution of this case reports its VM's start.
    pub fn started_as(self) -> &'static str {
        match self {
            Start::PoolUnwarmed => Start::Pool.as_str(),
            start => start.as_str(),
        }
    }

    /// Whether the case's VMs come from a warm pool, and if so whether
    /// that pool may warm its VMs up (as configured) or must not.
    pub fn pool_warm_up(self) -> Option<bool> {
        match self {
            Start::Cold | Start::Snapshot => None,
            Start::Pool => Some(true),
            Start::PoolUnwarmed => Some(false),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// The same program started three ways: the seed's "VM Boot Time".
    VmStart,
    /// One program of one language: the seed's per-language table.
    Program,
    /// Executions per second with several at once.
    Throughput,
    /// A judge's work two ways: one submission of many tests (compiled
    /// once), and the same tests as separate executions.
    Judge,
    /// The same program run again in a session's VM, against a fresh
    /// execution.
    Session,
    /// The start cases' program booted cold and restored on another guest
    /// kernel or machine type, or with another value of a setting
    /// (`--kernels`, `--machines`, `--vary`), side by side.
    Kernel,
    /// One C++ program's compile three ways: including `<cstdio>`,
    /// including `<bits/stdc++.h>` (precompiled in the image), and the
    /// latter again, from the compile cache.
    Compile,
}

/// Languages with a compile stage: their program cases compile each time.
const COMPILED: [&str; 5] = ["go", "rust", "c", "cpp", "java"];

/// The compile cases' program, one way and the other: the same a+b of two
/// constants (it needs no input); only the include differs.
const AB_CSTDIO: &str = "#include <cstdio>\n\nint main() {\n    long long a = 1, b = 2;\n    printf(\"%lld\\n\", a + b);\n}\n";
const AB_STDCXX: &str = "#include <bits/stdc++.h>\n\nint main() {\n    long long a = 1, b = 2;\n    printf(\"%lld\\n\", a + b);\n}\n";

/// Tests of a judge case: `fib N` for N from 1 to this.
pub const JUDGE_TESTS: u64 = 20;

/// The judge cases' languages: those whose compile dominates.
const JUDGE_LANGUAGES: [&str; 3] = ["rust", "cpp", "java"];

/// The session cases' languages: an interpreter and a compiler.
const SESSION_LANGUAGES: [&str; 2] = ["python", "go"];

/// How a judge case runs its tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeWay {
    /// One submission: compiled once, each test in a fresh VM.
    Submission,
    /// One execution per test, each compiling the program again.
    Separate,
}

#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// e.g. "python/fib30", "start/cold", "throughput/4".
    pub id: String,
    pub group: Group,
    /// e.g. "Fibonacci(30)".
    pub title: String,
    pub language: String,
    pub start: Start,
    /// Executions at once (throughput cases), else 1.
    pub concurrency: usize,
    /// The program's source, saved under the language's file name.
    #[serde(skip)]
    pub source: String,
    pub args: Vec<String>,
    /// What a correct run prints; a sample that prints anything else is a
    /// failure, not a time.
    pub expected_stdout: Option<String>,
    /// The seed's "Expected Results" for this case (c5.metal, KVM), in ms.
    pub seed_ms: Option<f64>,
    /// For judge cases, which way.
    pub judge: Option<JudgeWay>,
    /// On top of the language's environment. Any variable makes the
    /// request not fit the snapshot's prestarted runtime: the program runs
    /// in a fresh interpreter.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// For kernel cases, the kernel and machine type its VMs run on, as
    /// `{kernel}-{machine}`, and the setting varied, as `key=value` (see
    /// [`crate::Variant`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Each execution's source is made unique (a comment), so that its
    /// compile runs rather than coming from the compile cache.
    pub fresh: bool,
}

impl Case {
    /// "python Fibonacci(30)", or the title where it names its language.
    pub fn title_with_language(&self) -> String {
        if self.title.starts_with(&self.language) {
            self.title.clone()
        } else {
            format!("{} {}", self.language, self.title)
        }
    }
}

/// The language with the data stack, and the script its cases run.
const DATA_LANGUAGE: &str = "python-data";
const DATA_PLOT: &str = include_str!("../../../programs/python-data/plot.py");

/// The seed's programs, from `programs/`.
struct Programs {
    language: &'static str,
    hello: &'static str,
    fib: &'static str,
    /// The seed's times for hello, fib(20) and fib(30).
    seed_ms: [Option<f64>; 3],
}

const PROGRAMS: &[Programs] = &[
    Programs {
        language: "python",
        hello: include_str!("../../../programs/python/hello.py"),
        fib: include_str!("../../../programs/python/fib.py"),
        seed_ms: [Some(50.0), Some(10.0), Some(300.0)],
    },
    Programs {
        language: "node",
        hello: include_str!("../../../programs/node/hello.js"),
        fib: include_str!("../../../programs/node/fib.js"),
        seed_ms: [Some(100.0), Some(5.0), Some(100.0)],
    },
    Programs {
        language: "go",
        hello: include_str!("../../../programs/go/hello.go"),
        fib: include_str!("../../../programs/go/fib.go"),
        seed_ms: [Some(500.0), Some(510.0), Some(515.0)],
    },
    Programs {
        language: "rust",
        hello: include_str!("../../../programs/rust/hello.rs"),
        fib: include_str!("../../../programs/rust/fib.rs"),
        seed_ms: [Some(2000.0), Some(2005.0), Some(2005.0)],
    },
    Programs {
        language: "bash",
        hello: include_str!("../../../programs/bash/hello.sh"),
        fib: include_str!("../../../programs/bash/fib.sh"),
        seed_ms: [Some(10.0), None, None],
    },
    // The judges' languages; the seed has no figures for them.
    Programs {
        language: "c",
        hello: include_str!("../../../programs/c/hello.c"),
        fib: include_str!("../../../programs/c/fib.c"),
        seed_ms: [None, None, None],
    },
    Programs {
        language: "cpp",
        hello: include_str!("../../../programs/cpp/hello.cpp"),
        fib: include_str!("../../../programs/cpp/fib.cpp"),
        seed_ms: [None, None, None],
    },
    Programs {
        language: "java",
        hello: include_str!("../../../programs/java/hello.java"),
        fib: include_str!("../../../programs/java/fib.java"),
        seed_ms: [None, None, None],
    },
];

const HELLO_OUTPUT: &str = "Hello, World!\n";
/// Concurrency levels of the throughput cases.
pub const CONCURRENCY: [usize; 3] = [1, 2, 4];

/// The whole suite for `languages` (in the order given). The start and
/// throughput cases use the first language, and so do the kernel cases,
/// one cold and one snapshot case for each of `vms` (kernel and machine
/// type labels).
pub fn suite(languages: &[String], vms: &[String]) -> Vec<Case> {
    let mut cases = Vec::new();
    let Some(first) = languages.first() else {
        return cases;
    };
    let first_hello = hello_of(first);
    // The first language's hello, started one way.
    let hello = |id, group, title, start, seed_ms, vm: Option<&String>| Case {
        id,
        group,
        title,
        language: first.clone(),
        start,
        concurrency: 1,
        source: first_hello.clone(),
        args: Vec::new(),
        expected_stdout: Some(HELLO_OUTPUT.into()),
        seed_ms,
        judge: None,
        env: BTreeMap::new(),
        vm: vm.cloned(),
        fresh: false,
    };
    for (start, seed_ms) in [
        (Start::Cold, Some(3100.0)),
        (Start::Snapshot, Some(100.0)),
        (Start::PoolUnwarmed, None),
        (Start::Pool, None),
    ] {
        let how = start.as_str();
        let title = match start {
            Start::PoolUnwarmed => format!("{first} Hello World, pool start without warm-up"),
            _ => format!("{first} Hello World, {how} start"),
        };
        cases.push(hello(
            format!("start/{how}"),
            Group::VmStart,
            title,
            start,
            // The seed's boot times are to ready, not to a result.
            seed_ms,
            None,
        ));
    }
    for vm in vms {
        for start in [Start::Cold, Start::Snapshot] {
            let how = start.as_str();
            cases.push(hello(
                format!("kernel/{vm}/{how}"),
                Group::Kernel,
                format!("{first} Hello World, {how} start on {vm}"),
                start,
                None,
                Some(vm),
            ));
        }
    }
    for language in languages {
        let Some(programs) = PROGRAMS.iter().find(|p| p.language == language) else {
            continue;
        };
        let fibs: &[(u32, &str)] = if language == "bash" {
            // Naive recursion in bash takes minutes for fib(30) under
            // emulation, and the seed has no bash Fibonacci at all.
            &[(20, "6765")]
        } else {
            &[(20, "6765"), (30, "832040")]
        };
        cases.push(Case {
            id: format!("{language}/hello"),
            group: Group::Program,
            title: "Hello World".into(),
            language: language.clone(),
            start: Start::Snapshot,
            concurrency: 1,
            source: programs.hello.into(),
            args: Vec::new(),
            expected_stdout: Some(HELLO_OUTPUT.into()),
            seed_ms: programs.seed_ms[0],
            judge: None,
            env: BTreeMap::new(),
            vm: None,
            fresh: COMPILED.contains(&language.as_str()),
        });
        for (i, (n, result)) in fibs.iter().enumerate() {
            cases.push(Case {
                id: format!("{language}/fib{n}"),
                group: Group::Program,
                title: format!("Fibonacci({n})"),
                language: language.clone(),
                start: Start::Snapshot,
                concurrency: 1,
                source: programs.fib.into(),
                args: vec![n.to_string()],
                expected_stdout: Some(format!("{result}\n")),
                seed_ms: programs.seed_ms[i + 1],
                judge: None,
                env: BTreeMap::new(),
                vm: None,
                fresh: COMPILED.contains(&language.as_str()),
            });
        }
        if SESSION_LANGUAGES.contains(&language.as_str()) {
            cases.push(Case {
                id: format!("session/{language}"),
                group: Group::Session,
                title: "Hello World, again in a session".into(),
                language: language.clone(),
                start: Start::Snapshot,
                concurrency: 1,
                source: programs.hello.into(),
                args: Vec::new(),
                expected_stdout: Some(HELLO_OUTPUT.into()),
                seed_ms: None,
                judge: None,
                env: BTreeMap::new(),
                vm: None,
                fresh: false,
            });
        }
        if JUDGE_LANGUAGES.contains(&language.as_str()) {
            for way in [JudgeWay::Submission, JudgeWay::Separate] {
                let (id, title) = match way {
                    JudgeWay::Submission => ("submission", "one submission"),
                    JudgeWay::Separate => ("separate", "separate executions"),
                };
                cases.push(Case {
                    id: format!("judge/{language}/{id}"),
                    group: Group::Judge,
                    title: format!("{JUDGE_TESTS} tests of fib, {title}"),
                    language: language.clone(),
                    start: Start::Snapshot,
                    concurrency: 1,
                    source: programs.fib.into(),
                    args: Vec::new(),
                    expected_stdout: None,
                    seed_ms: None,
                    judge: Some(way),
                    env: BTreeMap::new(),
                    vm: None,
                    fresh: false,
                });
            }
        }
    }
    if languages.iter().any(|l| l == DATA_LANGUAGE) {
        // The data stack's import is what the prestarted interpreter saves.
        for (id, title, env) in [
            (
                "plot",
                "pandas + matplotlib plot, prestarted",
                BTreeMap::new(),
            ),
            (
                "plot-fresh",
                "the same plot, fresh interpreter",
                BTreeMap::from([("RUNNER_BENCH_FRESH".to_string(), "1".to_string())]),
            ),
        ] {
            cases.push(Case {
                id: format!("{DATA_LANGUAGE}/{id}"),
                group: Group::Program,
                title: title.into(),
                language: DATA_LANGUAGE.into(),
                start: Start::Snapshot,
                concurrency: 1,
                source: DATA_PLOT.into(),
                args: Vec::new(),
                expected_stdout: Some("385\n".into()),
                seed_ms: None,
                judge: None,
                env,
                vm: None,
                fresh: false,
            });
        }
    }
    if languages.iter().any(|l| l == "cpp") {
        for (id, title, source, fresh) in [
            ("compile/cstdio", "a+b with <cstdio>", AB_CSTDIO, true),
            (
                "compile/stdc++",
                "a+b with <bits/stdc++.h>",
                AB_STDCXX,
                true,
            ),
            (
                "compile/cached",
                "a+b with <bits/stdc++.h> again, from the compile cache",
                AB_STDCXX,
                false,
            ),
        ] {
            cases.push(Case {
                id: id.into(),
                group: Group::Compile,
                title: title.into(),
                language: "cpp".into(),
                start: Start::Snapshot,
                concurrency: 1,
                source: source.into(),
                args: Vec::new(),
                expected_stdout: Some("3\n".into()),
                seed_ms: None,
                judge: None,
                env: BTreeMap::new(),
                vm: None,
                fresh,
            });
        }
    }
    for concurrency in CONCURRENCY {
        cases.push(Case {
            id: format!("throughput/{concurrency}"),
            group: Group::Throughput,
            title: format!("{first} Hello World, {concurrency} at once"),
            language: first.clone(),
            start: Start::Pool,
            concurrency,
            source: first_hello.clone(),
            args: Vec::new(),
            expected_stdout: Some(HELLO_OUTPUT.into()),
            seed_ms: None,
            judge: None,
            env: BTreeMap::new(),
            vm: None,
            fresh: false,
        });
    }
    cases
}

/// The tests of a judge case: `fib N` with N as the argument, and fib(N).
pub fn judge_tests() -> Vec<(String, u64)> {
    let mut fib = (0u64, 1u64);
    (1..=JUDGE_TESTS)
        .map(|n| {
            fib = (fib.1, fib.0 + fib.1);
            (n.to_string(), fib.0)
        })
        .collect()
}

/// One case of the user's own code.
pub fn custom(language: &str, source: String, args: Vec<String>) -> Case {
    Case {
        id: format!("{language}/custom"),
        group: Group::Program,
        title: "your program".into(),
        language: language.into(),
        start: Start::Snapshot,
        concurrency: 1,
        source,
        args,
        expected_stdout: None,
        seed_ms: None,
        judge: None,
        env: BTreeMap::new(),
        vm: None,
        fresh: false,
    }
}

fn hello_of(language: &str) -> String {
    PROGRAMS
        .iter()
        .find(|p| p.language == language)
        .map_or_else(String::new, |p| p.hello.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_has_the_seeds_cases() {
        let languages: Vec<String> = ["python", "bash"].map(String::from).into();
        assert_eq!(judge_tests()[0], ("1".into(), 1));
        assert_eq!(judge_tests()[19], ("20".into(), 6765));
        let rust: Vec<String> = ["rust"].map(String::from).into();
        let ids: Vec<String> = suite(&rust, &[]).into_iter().map(|c| c.id).collect();
        assert!(
            ids.contains(&"judge/rust/submission".to_string()),
            "{ids:?}"
        );
        assert!(ids.contains(&"judge/rust/separate".to_string()), "{ids:?}");
        let ids: Vec<String> = suite(&languages, &[]).into_iter().map(|c| c.id).collect();
        assert_eq!(
            ids,
            [
                "start/cold",
                "start/snapshot",
                "start/pool_unwarmed",
                "start/pool",
                "python/hello",
                "python/fib20",
                "python/fib30",
                "session/python",
                "bash/hello",
                "bash/fib20",
                "throughput/1",
                "throughput/2",
                "throughput/4",
            ]
        );
        // Kernels and machine types side by side, after the start cases.
        let vms: Vec<String> = ["runner-q35", "debian-q35"].map(String::from).into();
        let ids: Vec<String> = suite(&languages, &vms).into_iter().map(|c| c.id).collect();
        assert_eq!(
            ids[4..8],
            [
                "kernel/runner-q35/cold",
                "kernel/runner-q35/snapshot",
                "kernel/debian-q35/cold",
                "kernel/debian-q35/snapshot",
            ]
        );
        assert_eq!(ids.len(), 17);
        // The data stack: the plot prestarted, and in a fresh interpreter.
        let data: Vec<String> = ["python", "python-data"].map(String::from).into();
        let cases = suite(&data, &[]);
        let plots: Vec<&Case> = cases
            .iter()
            .filter(|c| c.language == "python-data")
            .collect();
        assert_eq!(plots.len(), 2);
        assert!(plots[0].env.is_empty() && !plots[1].env.is_empty());
        assert!(plots.iter().all(|c| c.source.contains("savefig")));
    }
}
