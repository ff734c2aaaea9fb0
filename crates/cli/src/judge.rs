//! `runner judge`: a program against a folder of tests, compiled once.
//!
//! The folder holds `NAME.in` (stdin) and `NAME.out` (the expected output)
//! pairs, and `NAME.args` (one argument per line) where a test needs
//! arguments. A test without `.in` gets an empty stdin; one without `.out`
//! passes when it runs `ok`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use runner_host::exec::Status;
use runner_host::judge::{Slots, SubmissionEvent, SubmissionRequest, SubmissionResult, TestCase};
use runner_host::{Config, Runner};
use tokio::sync::mpsc;

use crate::exit::{EXIT_RUNNER_FAILED, Usage};
use crate::flags::{self, CompareArgs, LimitArgs};

#[derive(clap::Args)]
pub struct JudgeArgs {
    /// Language of the program (see `runner languages`).
    #[arg(short, long)]
    lang: String,
    /// Files of the program, as for `runner run`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Folder of tests: NAME.in, NAME.out, NAME.args.
    #[arg(long, value_name = "DIR")]
    tests: PathBuf,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    compare: CompareArgs,
    /// Run no more tests after the first that fails.
    #[arg(long)]
    stop_on_first_failure: bool,
    /// Tests at once [default: the configuration's max_vms, else one per
    /// CPU].
    #[arg(long, value_name = "N")]
    parallel: Option<usize>,
    /// Environment variable for the program, NAME=value (repeatable).
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn judge(runner: Runner, config: &Config, args: JudgeArgs) -> anyhow::Result<ExitCode> {
    let files = flags::read_files(&args.files)?;
    let env = flags::parse_env(&args.env)?;
    let tests = read_tests(&args.tests)?;
    let request = SubmissionRequest {
        language: args.lang.clone(),
        files,
        env,
        limits: args.limits.request_limits()?,
        compare: args.compare.to_compare()?,
        tests,
        stop_on_first_failure: args.stop_on_first_failure,
        trace_id: None,
        // This machine's own user, as a server without keys has it.
        owner: String::new(),
    };
    // Refuse a bad submission before building or booting anything.
    let plan = runner.plan_submission(request)?;
    runner
        .prepare(&plan.language, Arc::new(crate::progress::Spinner::new()))
        .await?;
    let parallel = args.parallel.unwrap_or(match config.max_vms {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    });

    let bar = progress_bar(plan.tests.len(), args.json);
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let shown = {
        let bar = bar.clone();
        tokio::spawn(async move {
            while let Some(event) = event_rx.recv().await {
                match event {
                    SubmissionEvent::Compiled { status, .. } => {
                        bar.set_message(format!("compiled: {status}"))
                    }
                    SubmissionEvent::Test { test, .. } => {
                        bar.inc(1);
                        bar.set_message(format!("{}: {}", test.name, test.status));
                    }
                    SubmissionEvent::Started { .. } | SubmissionEvent::Result { .. } => {}
                }
            }
        })
    };
    let result = runner
        .judge(
            plan,
            Arc::new(Slots::new(parallel)),
            parallel,
            Some(events),
            async {
                let signal = crate::exit::interrupted().await;
                format!("interrupted by {signal}")
            },
        )
        .await;
    let _ = shown.await;
    bar.finish_and_clear();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&result);
    }
    Ok(match result.status {
        Status::Accepted | Status::Ok => ExitCode::SUCCESS,
        Status::InternalError => ExitCode::from(EXIT_RUNNER_FAILED),
        _ => ExitCode::from(1),
    })
}

/// The tests in `dir`, in natural order of their names (2 before 10).
fn read_tests(dir: &Path) -> anyhow::Result<Vec<TestCase>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            return Err(Usage(format!("cannot read the tests in {}: {e}", dir.display())).into());
        }
    };
    let mut tests: BTreeMap<String, TestCase> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
            continue;
        };
        let (Some(stem), Some(ext)) = (stem.to_str(), ext.to_str()) else {
            continue;
        };
        if !matches!(ext, "in" | "out" | "args") {
            continue;
        }
        let content = flags::read_input(&path)?;
        let test = tests.entry(stem.to_string()).or_insert_with(|| TestCase {
            name: stem.to_string(),
            ..TestCase::default()
        });
        match ext {
            "in" => test.stdin = content,
            "out" => test.expected_output = Some(content),
            _ => {
                let Ok(text) = String::from_utf8(content) else {
                    return Err(Usage(format!("{} is not UTF-8", path.display())).into());
                };
                test.args = text.lines().map(str::to_string).collect();
            }
        }
    }
    if tests.is_empty() {
        return Err(Usage(format!(
            "no tests in {}: put NAME.in and NAME.out files there",
            dir.display()
        ))
        .into());
    }
    let mut tests: Vec<TestCase> = tests.into_values().collect();
    tests.sort_by_key(|t| natural(&t.name));
    Ok(tests)
}

/// A name as text and numbers, so that "2" sorts before "10".
fn natural(name: &str) -> Vec<(String, u128)> {
    let mut parts = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            parts.push((String::new(), rest[..digits].parse().unwrap_or(u128::MAX)));
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            parts.push((rest[..text].to_string(), 0));
            rest = &rest[text..];
        }
    }
    parts
}

fn progress_bar(tests: usize, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(tests as u64).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
            .expect("template"),
    );
    bar.set_message("compiling");
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn print_table(result: &SubmissionResult) {
    outln!(
        "{:<16} {:<22} {:>9} {:>9} {:>9}  NOTE",
        "TEST",
        "VERDICT",
        "WALL ms",
        "CPU ms",
        "MEM MiB"
    );
    for test in &result.tests {
        let note = match (&test.difference, &test.message) {
            (Some(d), _) => format!(
                "line {}, column {}: expected {:?}, got {:?}",
                d.line, d.column, d.expected, d.actual
            ),
            (None, Some(message)) => message.clone(),
            (None, None) => String::new(),
        };
        outln!(
            "{:<16} {:<22} {:>9.0} {:>9.0} {:>9.1}  {note}",
            test.name,
            test.status.as_str(),
            test.wall_time_ms,
            test.cpu_time_ms,
            test.memory_peak_bytes as f64 / (1 << 20) as f64,
        );
    }
    let counts: Vec<String> = result
        .summary
        .verdicts
        .iter()
        .map(|(verdict, n)| format!("{n} {verdict}"))
        .collect();
    outln!(
        "\n{}: {} ({} tests: {}; in {:.1} s)",
        result.language,
        result.status,
        result.summary.tests,
        counts.join(", "),
        result.total_time_ms / 1e3
    );
    if let (Some(message), false) = (&result.message, result.tests.is_empty()) {
        outln!("{message}");
    }
    if let Some(compile) = result.compile.as_ref().filter(|c| c.status != Status::Ok) {
        eprint!("{}", String::from_utf8_lossy(&compile.stderr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_come_in_natural_order_with_their_parts() {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [
            ("10.in", "ten"),
            ("10.out", "TEN"),
            ("2.in", "two"),
            ("2.out", "TWO"),
            ("2.args", "-x\ny z"),
            ("a.out", "no input"),
            ("notes.txt", "ignored"),
        ] {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let tests = read_tests(dir.path()).unwrap();
        let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["2", "10", "a"]);
        assert_eq!(tests[0].args, ["-x", "y z"]);
        assert_eq!(tests[0].stdin, b"two");
        assert_eq!(tests[0].expected_output.as_deref(), Some(&b"TWO"[..]));
        assert!(tests[2].stdin.is_empty(), "no .in: an empty stdin");
        let empty = tempfile::tempdir().unwrap();
        assert!(
            read_tests(empty.path())
                .unwrap_err()
                .to_string()
                .contains("no tests")
        );
    }
}
