//! The Markdown report: the seed's "Expected Results", measured.

use std::fmt::Write as _;

use crate::{CaseResult, Group, Report, Summary};

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(out, "# Runner Codes benchmark\n");
    let _ = writeln!(
        out,
        "Measured {} with `runner bench` (Runner Codes {}) in {:.0} s: each case ran {} time(s) \
         unmeasured, then {} time(s) measured. Times are milliseconds from the execution's \
         metrics: **boot** is the VMM starting until the agent's channel is up, **ready** the \
         guest kernel and agent until the agent says hello, **execution** sending the request \
         until the last stage reported, **total** taking the request until the result. \
         **Host** is the same program with the same binaries in a chroot of the language's \
         image on this machine, outside any VM; **ratio** is VM p50 over host p50.\n",
        utc(report.started_at),
        m.runner_version,
        report.duration_seconds,
        report.settings.warmup,
        report.settings.runs,
    );

    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| CPU | {} ({} CPUs) |", cell(&m.cpu_model), m.cpus);
    let _ = writeln!(out, "| Memory | {} MiB |", ms(m.memory_mib as f64));
    let _ = writeln!(out, "| Host kernel | {} |", cell(&m.host_kernel));
    let _ = writeln!(out, "| Backend | {} |", cell(&m.backend));
    let _ = writeln!(
        out,
        "| Acceleration | {} ({}) |",
        m.accel,
        cell(&m.accel_reason)
    );
    let _ = writeln!(out, "| Guest kernel | {} |", cell(&m.guest_kernel));
    for (language, version) in &m.languages {
        let _ = writeln!(out, "| {language} | {} |", cell(version));
    }
    out.push('\n');

    let starts: Vec<&CaseResult> = group(report, Group::VmStart);
    if let Some(first) = starts.first() {
        let _ = writeln!(
            out,
            "## VM start ({} Hello World)\n\n\
             The seed's \"VM Boot Time\": the same program in a VM booted cold, restored \
             from the language's snapshot, and taken from a warm pool: one whose VMs skipped \
             their translation warm-up (`pool_unwarmed`), and one as configured \
             (`pool.warm_up`; under KVM there is no warm-up). The seed's figures \
             (c5.metal, KVM) are to ready.\n",
            first.case.language
        );
        let _ = writeln!(
            out,
            "| start | boot to ready p50 | p95 | min | max | total p50 | p95 | host p50 | ratio | seed (to ready) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
        for r in &starts {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.case.start.as_str(),
                start_columns(r),
                p(r.host, |s| s.p50),
                ratio(r.ratio),
                r.case.seed_ms.map_or_else(|| "–".into(), ms),
            );
        }
        out.push('\n');
    }

    let kernels = group(report, Group::Kernel);
    if let Some(first) = kernels.first() {
        let _ = writeln!(
            out,
            "## Kernels, machine types and settings ({} Hello World)\n\n\
             The start cases' program on each guest kernel and QEMU machine type, and with \
             each value of a setting, asked for (`--kernels`, `--machines`, `--vary`), booted \
             cold and restored from a snapshot made on that kernel and machine. The VM start \
             table above is the configured one ({}).\n",
            first.case.language,
            cell(&m.guest_kernel),
        );
        let _ = writeln!(
            out,
            "| variant | start | boot to ready p50 | p95 | min | max | total p50 | p95 | failed |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for r in &kernels {
            let failed = r.vm_samples.iter().filter(|s| !s.warmup && !s.ok).count();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.case.vm.as_deref().unwrap_or("–"),
                r.case.start.as_str(),
                start_columns(r),
                failed,
            );
        }
        out.push('\n');
    }

    let programs = group(report, Group::Program);
    if !programs.is_empty() {
        let _ = writeln!(
            out,
            "## Programs\n\n\
             The seed's per-language table. Every VM is restored from its language's \
             snapshot, as `runner run` does; compiled languages include their compile stage. \
             **Compile** and **run** are the stages' own wall times inside the execution, as \
             the agent measured them.\n"
        );
        let _ = writeln!(
            out,
            "| language | program | total p50 | p95 | min | max | boot | ready | execution | compile | run | host p50 | ratio | seed |"
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &programs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.case.language,
                r.case.title,
                p(r.vm, |s| s.p50),
                p(r.vm, |s| s.p95),
                p(r.vm, |s| s.min),
                p(r.vm, |s| s.max),
                ms(r.phases.boot_ms),
                ms(r.phases.ready_ms),
                ms(r.phases.execution_ms),
                if r.phases.compile_ms > 0.0 {
                    ms(r.phases.compile_ms)
                } else {
                    "–".into()
                },
                ms(r.phases.run_ms),
                p(r.host, |s| s.p50),
                ratio(r.ratio),
                r.case.seed_ms.map_or_else(|| "–".into(), ms),
            );
        }
        out.push('\n');
    }

    let compiles = group(report, Group::Compile);
    if !compiles.is_empty() {
        let _ = writeln!(
            out,
            "## Compile ({} a+b)\n\n\
             The same C++ program's compile stage, as the agent timed it: including `<cstdio>`, \
             including `<bits/stdc++.h>` (precompiled in the image for the compile's flags), \
             each made unique every time so that it compiles, and the latter again from the \
             compile cache (its compile stage is the lookup). **× cstdio** is the compile \
             p50 over `<cstdio>`'s.\n",
            compiles[0].case.language
        );
        let _ = writeln!(
            out,
            "| program | compile p50 | p95 | min | max | × cstdio | total p50 | host compile p50 |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        let base = compiles
            .iter()
            .find(|r| r.case.id == "compile/cstdio")
            .and_then(|r| compile_summary(r));
        for r in &compiles {
            let compile = compile_summary(r);
            let host: Vec<f64> = r
                .host_samples
                .iter()
                .filter(|s| s.ok && !s.warmup)
                .filter_map(|s| s.compile_ms)
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.case.title,
                p(compile, |s| s.p50),
                p(compile, |s| s.p95),
                p(compile, |s| s.min),
                p(compile, |s| s.max),
                ratio(compile.zip(base).map(|(c, b)| c.p50 / b.p50)),
                p(r.vm, |s| s.p50),
                p(crate::stats::summarize(&host), |s| s.p50),
            );
        }
        out.push('\n');
    }

    let throughput = group(report, Group::Throughput);
    if let Some(first) = throughput.first() {
        let _ = writeln!(
            out,
            "## Throughput ({} Hello World)\n\n\
             Clients in a closed loop, each sending its next request when the last one \
             answered, with a warm pool of {} VMs refilled in the background. Host: the \
             same number of clients running the program in the chroot (setup not counted).\n",
            first.case.language,
            crate::POOL_SIZE
        );
        let _ = writeln!(
            out,
            "| clients | requests | executions/s | host executions/s | total p50 | p95 | max |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for r in &throughput {
            let t = r.throughput.as_ref();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.case.concurrency,
                t.map_or(0, |t| t.requests),
                t.map_or_else(|| "–".into(), |t| format!("{:.2}", t.vm_per_second)),
                t.and_then(|t| t.host_per_second)
                    .map_or_else(|| "–".into(), |v| format!("{v:.1}")),
                p(r.vm, |s| s.p50),
                p(r.vm, |s| s.p95),
                p(r.vm, |s| s.max),
            );
        }
        out.push('\n');
    }

    let sessions = group(report, Group::Session);
    if !sessions.is_empty() {
        let _ = writeln!(
            out,
            "## Sessions: the same program again\n\n\
             Hello World as a fresh execution (restored from the snapshot), then in a session: \
             its VM opened, the program run three times back to back (request to result, \
             milliseconds, p50 of the measured runs); then, in another session, the second run \
             after the session idled {} s, as it does while an agent's model decides its next \
             step. Under TCG a new VM translates the interpreter or compiler afresh; a \
             session's later runs find it translated. Where the language has a prestarted \
             interpreter (Python, bash), the first run uses the snapshot's, and after each run \
             the agent starts another while the session waits: back to back, the second run \
             waits for it, and it is the first in this VM to translate the interpreter's \
             start-up; after an idle second it is ready.\n\n\
             | language | fresh execution | session open | first in session | second | third | second after idling | fresh / second | fresh / third | fresh / second after idling |\n\
             |---|---|---|---|---|---|---|---|---|---|",
            crate::SESSION_IDLE.as_secs()
        );
        for result in sessions {
            let times: Vec<crate::SessionTimes> = result
                .vm_samples
                .iter()
                .filter(|s| !s.warmup && s.ok)
                .filter_map(|s| s.session)
                .collect();
            if times.is_empty() {
                let failed = result.vm_samples.iter().find(|s| !s.ok);
                let _ = writeln!(
                    out,
                    "| {} | failed: {} | | | | | | | | |",
                    result.case.language,
                    failed.map_or("no sample", |s| s.status.as_str())
                );
                continue;
            }
            let p50 = |f: fn(&crate::SessionTimes) -> f64| {
                let values: Vec<f64> = times.iter().map(f).collect();
                crate::stats::summarize(&values).map_or(0.0, |s| s.p50)
            };
            let (fresh, second, third, idle) = (
                p50(|t| t.fresh_ms),
                p50(|t| t.second_ms),
                p50(|t| t.third_ms),
                p50(|t| t.idle_second_ms),
            );
            let ratio = |later: f64| fresh / later.max(f64::MIN_POSITIVE);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1}x | {:.1}x | {:.1}x |",
                result.case.language,
                ms(fresh),
                ms(p50(|t| t.open_ms)),
                ms(p50(|t| t.first_ms)),
                ms(second),
                ms(third),
                ms(idle),
                ratio(second),
                ratio(third),
                ratio(idle)
            );
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "### Pause to disk and resume\n\n\
             A session that ran the program once and had {} MiB of random bytes written to its \
             working directory, paused (its VM saved as the pages it changed over its snapshot, \
             plus its devices, and destroyed), resumed, and the program run again (p50, \
             milliseconds).\n\n\
             | language | VM memory | on disk when paused | pause | resume | first run after resume |\n\
             |---|---|---|---|---|---|",
            crate::PAUSE_CHANGE_MIB
        );
        for result in group(report, Group::Session) {
            let times: Vec<crate::PauseTimes> = result
                .vm_samples
                .iter()
                .filter(|s| !s.warmup && s.ok)
                .filter_map(|s| s.session.map(|t| t.paused))
                .collect();
            let Some(first) = times.first() else { continue };
            let p50 = |f: fn(&crate::PauseTimes) -> f64| {
                let values: Vec<f64> = times.iter().map(f).collect();
                crate::stats::summarize(&values).map_or(0.0, |s| s.p50)
            };
            let _ = writeln!(
                out,
                "| {} | {} MiB | {:.1} MiB | {} | {} | {} |",
                result.case.language,
                first.vm_mib,
                p50(|t| t.disk_mib),
                ms(p50(|t| t.pause_ms)),
                ms(p50(|t| t.resume_ms)),
                ms(p50(|t| t.after_resume_ms)),
            );
        }
        out.push('\n');
    }

    let judged = group(report, Group::Judge);
    if !judged.is_empty() {
        let _ = writeln!(
            out,
            "## Judge: compile once\n\n\
             {tests} tests of the Fibonacci program (N from 1 to {tests}, each with its expected \
             output) judged two ways, with as many VMs at once as the machine has CPUs, measured \
             once each: one submission (compiled once, then each test in a fresh VM restored \
             from the snapshot with the compiled program), and {tests} separate executions \
             (each compiling again: each program is made unique, so that none comes from \
             the compile cache). Seconds until every test has its verdict.\n\n\
             | language | one submission (its compile) | {tests} separate executions | separate / submission |\n\
             |---|---|---|---|",
            tests = crate::cases::JUDGE_TESTS
        );
        let languages: Vec<&str> = judged.iter().map(|r| r.case.language.as_str()).collect();
        let mut seen = Vec::new();
        for language in languages {
            if seen.contains(&language) {
                continue;
            }
            seen.push(language);
            let way = |way: crate::JudgeWay| {
                judged
                    .iter()
                    .find(|r| r.case.language == language && r.case.judge == Some(way))
                    .and_then(|r| r.vm_samples.first())
            };
            let (Some(submission), Some(separate)) = (
                way(crate::JudgeWay::Submission),
                way(crate::JudgeWay::Separate),
            ) else {
                continue;
            };
            let seconds = |s: &crate::Sample| {
                if s.ok {
                    format!("{:.1} s", s.total_ms / 1e3)
                } else {
                    format!("failed: {}", s.status)
                }
            };
            let compile = submission
                .compile_ms
                .map_or_else(String::new, |ms| format!(" ({:.1} s)", ms / 1e3));
            let ratio = if submission.ok && separate.ok {
                format!("{:.1}x", separate.total_ms / submission.total_ms)
            } else {
                "–".into()
            };
            let _ = writeln!(
                out,
                "| {language} | {}{compile} | {} | {ratio} |",
                seconds(submission),
                seconds(separate)
            );
        }
        out.push('\n');
    }

    if let Some(price) = report.settings.price_per_hour {
        let costed: Vec<&CaseResult> = report.cases.iter().filter(|r| r.cost.is_some()).collect();
        let _ = writeln!(
            out,
            "## Cost per execution (at {} per hour)\n\n\
             The design's \"Cost per Execution\": the machine's price per hour over the \
             executions it finishes in an hour. One at a time (from each case's total p50, as \
             the design computes it), except the throughput rows, which go by the rate measured \
             with their clients at once.\n\n\
             | case | start | executions per hour | cost per execution | per 1,000 |\n\
             |---|---|---|---|---|",
            money(price)
        );
        for r in costed {
            let cost = r.cost.expect("filtered");
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} |",
                r.case.title_with_language(),
                r.case.start.as_str(),
                cost.executions_per_hour,
                money(cost.per_execution),
                money(cost.per_execution * 1000.0),
            );
        }
        out.push('\n');
    }

    if let Some(first) = report.pool_memory.first() {
        let _ = writeln!(
            out,
            "## Memory of a pooled VM\n\n\
             Paused {} VMs in the warm pool, restored from one snapshot: host memory of \
             each VM's VMM process. PSS counts shared pages (the snapshot's memory file, \
             the VMM's code) once, divided among the processes that map them. A warmed-up \
             VM also holds the translations its warm-up made.\n\n\
             | pool | VMs | RSS p50 (MiB) | RSS min–max | PSS p50 (MiB) | PSS min–max |\n\
             |---|---|---|---|---|---|",
            first.language,
        );
        for memory in &report.pool_memory {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0}–{:.0} | {:.0} | {:.0}–{:.0} |",
                if memory.warm_up {
                    "warmed up"
                } else {
                    "without warm-up"
                },
                memory.vms,
                memory.rss_mib.p50,
                memory.rss_mib.min,
                memory.rss_mib.max,
                memory.pss_mib.p50,
                memory.pss_mib.min,
                memory.pss_mib.max,
            );
        }
        out.push('\n');
    }

    let _ = writeln!(
        out,
        "## Figures\n\n\
         ![Where the time of one execution goes](timeline.svg)\n\n\
         ![Cold boot, snapshot restore and warm pool](boot-comparison.svg)\n"
    );

    let mut notes = Vec::new();
    for r in &report.cases {
        let failed: Vec<String> = r
            .vm_samples
            .iter()
            .chain(&r.host_samples)
            .filter(|s| !s.ok)
            .map(|s| s.status.clone())
            .collect();
        if !failed.is_empty() {
            notes.push(format!(
                "- {}: {} sample(s) failed ({}) and are not in the summaries.",
                r.case.id,
                failed.len(),
                failed.join(", ")
            ));
        }
        let mismatched = r
            .vm_samples
            .iter()
            .filter(|s| {
                s.start
                    .as_deref()
                    .is_some_and(|s| s != r.case.start.started_as())
            })
            .count();
        if mismatched > 0 {
            notes.push(format!(
                "- {}: {mismatched} VM(s) did not start as the case asks ({}), e.g. an empty pool.",
                r.case.id,
                r.case.start.as_str()
            ));
        }
    }
    let host_notes: Vec<&String> = report
        .cases
        .iter()
        .filter_map(|r| r.host_note.as_ref())
        .collect();
    if let Some(note) = host_notes.first() {
        notes.push(format!("- No host baseline: {note}"));
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "## Notes\n\n{}\n", notes.join("\n"));
    }
    let _ = writeln!(
        out,
        "Every sample is in `results.json`. Reproduce with `runner bench --out DIR`."
    );
    out
}

/// The targets and the per-language table of `reports` (one per
/// backend, named), side by side.
pub fn backends(reports: &[(String, Report)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Runner Codes benchmark: backends side by side\n");
    if let Some((_, first)) = reports.first() {
        let m = &first.machine;
        let _ = writeln!(
            out,
            "Measured {} with `runner bench --backends {}` on {} ({} CPUs, {} MiB). Each \
             backend ran the whole suite in turn; its own report is in its folder. **Host** \
             is the same program in a chroot of the language's image on this machine.\n",
            utc(first.started_at),
            reports
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            cell(&m.cpu_model),
            m.cpus,
            m.memory_mib,
        );
        let _ = writeln!(out, "| backend | what it is | suite took |\n|---|---|---|");
        for (name, report) in reports {
            let _ = writeln!(
                out,
                "| {name} | {} ({}) | {:.0} s |",
                cell(&report.machine.backend),
                report.machine.accel,
                report.duration_seconds
            );
        }
        out.push('\n');
    }
    let find = |report: &'_ Report, id: &str| -> Option<CaseResult> {
        report.cases.iter().find(|r| r.case.id == id).cloned()
    };
    let compile_p50 = |r: &CaseResult| compile_summary(r).map(|s| s.p50);
    type Figure = Box<dyn Fn(&Report) -> Option<(f64, String)>>;
    let x = |v: f64| (v, format!("{v:.2}x"));
    let targets: Vec<(&str, &str, Figure)> = vec![
        (
            "Python fib(30), VM total over host",
            "≤ 1.3x (gVisor)",
            Box::new(move |r| find(r, "python/fib30")?.ratio.map(x)),
        ),
        (
            "Python hello from the pool, VM total over host",
            "≤ 3x (gVisor)",
            Box::new(move |r| find(r, "start/pool")?.ratio.map(x)),
        ),
        (
            "Restore to ready (snapshot start, boot + ready p50)",
            "≤ 150 ms (gVisor)",
            Box::new(move |r| {
                let v = find(r, "start/snapshot")?.vm_boot_to_ready?.p50;
                Some((v, format!("{} ms", ms(v))))
            }),
        ),
        (
            "Go hello (compile + run), VM total over host",
            "≤ 2x (gVisor)",
            Box::new(move |r| find(r, "go/hello")?.ratio.map(x)),
        ),
        (
            "C++ a+b compile, <bits/stdc++.h> over <cstdio>",
            "≤ 4x",
            Box::new(move |r| {
                let stdcxx = compile_p50(&find(r, "compile/stdc++")?)?;
                let cstdio = compile_p50(&find(r, "compile/cstdio")?)?;
                Some(x(stdcxx / cstdio))
            }),
        ),
        (
            "A compile cache hit's compile stage (p50)",
            "≤ 50 ms",
            Box::new(move |r| {
                let v = compile_p50(&find(r, "compile/cached")?)?;
                Some((v, format!("{} ms", ms(v))))
            }),
        ),
        (
            "Throughput, 4 clients over 2",
            "≥ 1",
            Box::new(move |r| {
                let rate = |id: &str| find(r, id)?.throughput.map(|t| t.vm_per_second);
                Some(x(rate("throughput/4")? / rate("throughput/2")?))
            }),
        ),
    ];
    let _ = writeln!(out, "## Targets\n");
    let names: Vec<&str> = reports.iter().map(|(name, _)| name.as_str()).collect();
    let _ = writeln!(out, "| figure | target | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(names.len()));
    for (what, goal, figure) in &targets {
        let cells: Vec<String> = reports
            .iter()
            .map(|(_, report)| figure(report).map_or_else(|| "–".into(), |(_, text)| text))
            .collect();
        let _ = writeln!(out, "| {what} | {goal} | {} |", cells.join(" | "));
    }
    out.push('\n');

    let _ = writeln!(
        out,
        "## Programs\n\nThe seed's per-language table on each backend: total p50 (ms) and \
         its ratio to the host, beside the seed's own figure (c5.metal, KVM).\n"
    );
    let header: Vec<String> = names
        .iter()
        .map(|name| format!("{name} p50 | {name} ratio"))
        .collect();
    let _ = writeln!(
        out,
        "| language | program | host p50 | {} | seed |",
        header.join(" | ")
    );
    let _ = writeln!(out, "|---|---|---|{}---|", "---|---|".repeat(names.len()));
    if let Some((_, first)) = reports.first() {
        for r in group(first, Group::Program) {
            let mut cells = Vec::new();
            for (_, report) in reports {
                let same = find(report, &r.case.id);
                cells.push(format!(
                    "{} | {}",
                    same.as_ref()
                        .map_or_else(|| "–".into(), |s| p(s.vm, |v| v.p50)),
                    ratio(same.and_then(|s| s.ratio)),
                ));
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.case.language,
                r.case.title,
                p(r.host, |s| s.p50),
                cells.join(" | "),
                r.case.seed_ms.map_or_else(|| "–".into(), ms),
            );
        }
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "Every sample is in each backend's `results.json`. Reproduce with \
         `runner bench --backends {} --out DIR`.",
        names.join(",")
    );
    out
}

/// The compile stage's times of a case's measured VM samples.
fn compile_summary(r: &CaseResult) -> Option<Summary> {
    let values: Vec<f64> = r
        .vm_samples
        .iter()
        .filter(|s| s.ok && !s.warmup)
        .filter_map(|s| s.compile_ms)
        .collect();
    crate::stats::summarize(&values)
}

/// Text that stays in one table cell: one line, no column bars.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn group(report: &Report, group: Group) -> Vec<&CaseResult> {
    report
        .cases
        .iter()
        .filter(|r| r.case.group == group)
        .collect()
}

/// A start case's boot to ready (p50, p95, min, max) and total (p50, p95)
/// as table cells.
fn start_columns(r: &CaseResult) -> String {
    let (btr, total) = (r.vm_boot_to_ready, r.vm);
    [
        p(btr, |s| s.p50),
        p(btr, |s| s.p95),
        p(btr, |s| s.min),
        p(btr, |s| s.max),
        p(total, |s| s.p50),
        p(total, |s| s.p95),
    ]
    .join(" | ")
}

fn p(summary: Option<Summary>, pick: fn(&Summary) -> f64) -> String {
    summary.as_ref().map_or_else(|| "–".into(), |s| ms(pick(s)))
}

/// Milliseconds, rounded to what the measurement can tell.
pub fn ms(value: f64) -> String {
    if value >= 100.0 {
        let whole = value.round() as u64;
        // Thousands separated, for the long ones under emulation.
        let digits = whole.to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        grouped
    } else {
        format!("{value:.1}")
    }
}

/// An amount of money in the price's unit, to three significant digits.
fn money(value: f64) -> String {
    if value >= 100.0 || value == 0.0 || !value.is_finite() {
        return format!("{value:.2}");
    }
    let decimals = (2 - value.log10().floor() as i32).max(0) as usize;
    format!("{value:.decimals$}")
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |r| format!("{r:.1}x"))
}

/// "2026-11-27 21:30 UTC" from seconds since the epoch.
pub fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(ms(12.345), "12.3");
        assert_eq!(ms(1234.4), "1,234");
        assert_eq!(ms(123_456.0), "123,456");
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_795_815_000), "2026-11-27 21:30 UTC");
        assert_eq!(money(4.0), "4.00");
        assert_eq!(money(1234.5), "1234.50");
        assert_eq!(money(4.0 / 1200.0), "0.00333");
        assert_eq!(money(4.0 / 36000.0), "0.000111");
    }
}
