//! The seed's two figures, as SVG: where the time of one execution goes,
//! and cold boot against snapshot restore and warm pool.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::report::ms;
use crate::{Group, Report};

type Failure = anyhow::Error;

fn failed(e: impl std::fmt::Display) -> Failure {
    anyhow::anyhow!("drawing a figure: {e}")
}

/// `n` categories, one segment each (a one-category range would be empty).
fn segments(
    n: i32,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordi32> {
    (0..(n - 1).max(1)).into_segmented()
}

/// The label of a category's segment, at its centre.
fn segment_label(labels: &[String], value: &SegmentValue<i32>) -> String {
    match value {
        SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// One stacked bar per execution kind: VMM start, guest boot and agent,
/// the compile and run stages, the rest of the execution (files in, output
/// out, the agent's own work) and the host's own overhead, at their medians.
pub fn timeline(report: &Report) -> Result<String, Failure> {
    let mut rows: Vec<(String, [f64; 6])> = Vec::new();
    for r in &report.cases {
        let label = match r.case.group {
            Group::VmStart => format!(
                "{} Hello World, {} start",
                r.case.language,
                r.case.start.as_str()
            ),
            Group::Program | Group::Compile => format!("{} {}", r.case.language, r.case.title),
            Group::Kernel => r.case.title.clone(),
            // Many VMs each, or one VM for several executions: no one
            // execution's timeline.
            Group::Throughput | Group::Judge | Group::Session => continue,
        };
        if r.vm.is_none() {
            continue;
        }
        let p = r.phases;
        let agent = (p.execution_ms - p.compile_ms - p.run_ms).max(0.0);
        let host = (p.total_ms - p.boot_ms - p.ready_ms - p.execution_ms).max(0.0);
        rows.push((
            label,
            [p.boot_ms, p.ready_ms, p.compile_ms, p.run_ms, agent, host],
        ));
    }
    let max_x = rows
        .iter()
        .map(|(_, parts)| parts.iter().sum::<f64>())
        .fold(1.0, f64::max)
        // Room on the right for the legend.
        * 1.4;
    let n = rows.len().max(1) as i32;
    let mut svg = String::new();
    {
        // Room for the legend however few rows there are.
        let height = (120 + 28 * n as u32).max(300);
        let root = SVGBackend::with_string(&mut svg, (1100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Where the time of one execution goes (p50, {})",
                    report.machine.accel
                ),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(230)
            .build_cartesian_2d(0f64..max_x, segments(n))
            .map_err(failed)?;
        let labels: Vec<String> = rows.iter().rev().map(|(l, _)| l.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len().max(1))
            .y_label_formatter(&|v| segment_label(&labels, v))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("milliseconds")
            .draw()
            .map_err(failed)?;
        let phases = [
            ("VMM start", RGBColor(0x4e, 0x79, 0xa7)),
            ("guest boot + agent ready", RGBColor(0xf2, 0x8e, 0x2b)),
            ("compile stage", RGBColor(0xb0, 0x7a, 0xa1)),
            ("run stage", RGBColor(0x59, 0xa1, 0x4f)),
            (
                "agent: files, output, stage set-up",
                RGBColor(0xed, 0xc9, 0x48),
            ),
            ("host side", RGBColor(0xba, 0xb0, 0xac)),
        ];
        for (k, (name, color)) in phases.into_iter().enumerate() {
            let bars = rows.iter().enumerate().map(|(i, (_, parts))| {
                let y = n - 1 - i as i32;
                let x0: f64 = parts[..k].iter().sum();
                let mut bar = Rectangle::new(
                    [
                        (x0, SegmentValue::Exact(y)),
                        (x0 + parts[k], SegmentValue::Exact(y + 1)),
                    ],
                    color.filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            });
            chart
                .draw_series(bars)
                .map_err(failed)?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// Boot to ready, cold against snapshot against warm pool, on a log scale
/// (they differ by orders of magnitude).
pub fn boot_comparison(report: &Report) -> Result<String, Failure> {
    let bars: Vec<(String, f64, f64)> = report
        .cases
        .iter()
        .filter(|r| r.case.group == Group::VmStart)
        .filter_map(|r| {
            let btr = r.vm_boot_to_ready?;
            let total = r.vm?;
            Some((r.case.start.as_str().to_string(), btr.p50, total.p50))
        })
        .collect();
    let n = bars.len().max(1) as i32;
    let max_y = bars.iter().map(|b| b.2).fold(10.0, f64::max) * 3.0;
    let language = report
        .cases
        .iter()
        .find(|r| r.case.group == Group::VmStart)
        .map_or("", |r| r.case.language.as_str());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Cold boot vs snapshot vs warm pool ({language} hello, p50, {})",
                    report.machine.accel
                ),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(segments(n), (1f64..max_y).log_scale())
            .map_err(failed)?;
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len().max(1))
            .x_label_formatter(&|v| segment_label(&labels, v))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("milliseconds (log scale)")
            .draw()
            .map_err(failed)?;
        let series = [
            ("boot to ready", RGBColor(0x4e, 0x79, 0xa7), 0usize),
            ("hello world, total", RGBColor(0x59, 0xa1, 0x4f), 1usize),
        ];
        for (name, color, which) in series {
            let rects = bars.iter().enumerate().map(|(i, (_, btr, total))| {
                let value = if which == 0 { *btr } else { *total };
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i as i32), 1.0),
                        (SegmentValue::Exact(i as i32 + 1), value.max(1.0)),
                    ],
                    color.filled(),
                );
                // Two bars side by side in each segment.
                if which == 0 {
                    bar.set_margin(0, 0, 30, 120);
                } else {
                    bar.set_margin(0, 0, 120, 30);
                }
                bar
            });
            chart
                .draw_series(rects)
                .map_err(failed)?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, btr, total))| {
                Text::new(
                    format!("{} / {} ms", ms(*btr), ms(*total)),
                    (SegmentValue::CenterOf(i as i32), total.max(1.0) * 1.4),
                    ("sans-serif", 15).into_font().color(&BLACK),
                )
            }))
            .map_err(failed)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}
