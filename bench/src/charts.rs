//! The report's SVG charts (plotters, SVG backend only: no fonts or native libraries).
//!
//! - `bench-distribution.svg`: one panel per workload; for each model, one bar per
//!   worker giving its share of the connections (of the requests, for the workloads
//!   whose clients hold their connections), against a dashed line at the fair
//!   share `100/N %`. A balanced model is a row of equal bars on the line.
//! - `bench-latency.svg`: one panel per workload; p50, p99 and p99.9 per model on a
//!   log scale, so the 25 ms stalls of `uneven` and sub-millisecond medians fit together.
//! - `bench-held-idle.svg` (held-idle results only): memory and descriptors of the
//!   master and the workers before and while thousands of idle clients are held.

use std::io;
use std::path::Path;

use plotters::prelude::*;

use super::report::{HeldIdle, Row};
use super::{procs, Model, Workload};

/// A percentile series: its legend, colour, and how to read it from a row.
type Series = (&'static str, RGBColor, fn(&Row) -> f64);

fn err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

fn layout(rows: &[Row]) -> (Vec<Workload>, Vec<Model>) {
    let mut workloads = Vec::new();
    let mut models = Vec::new();
    for r in rows {
        if !workloads.contains(&r.workload) {
            workloads.push(r.workload);
        }
        if !models.contains(&r.model) {
            models.push(r.model);
        }
    }
    (workloads, models)
}

/// Formats the x axis: a model's name under the middle of its group of bars.
fn model_label(models: &[Model], x: f64) -> String {
    let i = x.floor();
    if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 && (i as usize) < models.len() {
        models[i as usize].name().to_string()
    } else {
        String::new()
    }
}

/// Draws the per-worker connection shares.
pub fn distribution(rows: &[Row], workers: usize, path: &Path) -> io::Result<()> {
    let (workloads, models) = layout(rows);
    let n = models.len().max(1);
    let root = SVGBackend::new(path, (1100, 260 * workloads.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((workloads.len().max(1), 1));
    for (panel, &w) in panels.iter().zip(&workloads) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{w}: share of {} per worker ({workers} workers; dashed = fair share)",
                    if w.counts_requests() { "requests" } else { "connections" }
                ),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..n as f64, 0f64..100f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * n + 1)
            .x_label_formatter(&|x| model_label(&models, *x))
            .y_desc(if w.counts_requests() { "% of requests" } else { "% of connections" })
            .draw()
            .map_err(err)?;
        let width = 0.8 / workers.max(1) as f64;
        for (i, &m) in models.iter().enumerate() {
            let Some(r) = rows.iter().find(|r| r.model == m && r.workload == w) else {
                continue;
            };
            let total: u64 = r.counts().iter().sum();
            let bars = r.counts().iter().enumerate().map(|(k, &c)| {
                let share = if total == 0 { 0.0 } else { 100.0 * c as f64 / total as f64 };
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, share)], Palette99::pick(k).filled())
            });
            chart.draw_series(bars).map_err(err)?;
        }
        let fair = 100.0 / workers.max(1) as f64;
        chart
            .draw_series(DashedLineSeries::new(vec![(0.0, fair), (n as f64, fair)], 6, 4, BLACK.stroke_width(1)))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Draws p50/p99/p99.9 per model, log scale.
pub fn latency(rows: &[Row], path: &Path) -> io::Result<()> {
    let (workloads, models) = layout(rows);
    let n = models.len().max(1);
    let top = rows.iter().map(|r| r.latency.p999).fold(1.0f64, f64::max) * 2.0;
    let floor = 0.01f64;
    let root = SVGBackend::new(path, (1100, 260 * workloads.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((workloads.len().max(1), 1));
    let series: [Series; 3] = [
        ("p50", RGBColor(0x4e, 0x79, 0xa7), |r| r.latency.p50),
        ("p99", RGBColor(0xf2, 0x8e, 0x2b), |r| r.latency.p99),
        ("p99.9", RGBColor(0xe1, 0x57, 0x59), |r| r.latency.p999),
    ];
    for (panel, &w) in panels.iter().zip(&workloads) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{w}: latency per request (ms, log scale)"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(44)
            // An empty strip left of the first model holds the legend, clear of every bar.
            .build_cartesian_2d(-0.5f64..n as f64, (floor..top).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * n + 2)
            .x_label_formatter(&|x| model_label(&models, *x))
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        for (k, (label, color, get)) in series.iter().enumerate() {
            let bars: Vec<_> = models
                .iter()
                .enumerate()
                .filter_map(|(i, &m)| {
                    let r = rows.iter().find(|r| r.model == m && r.workload == w)?;
                    let x0 = i as f64 + 0.15 + k as f64 * 0.24;
                    Some(Rectangle::new([(x0, floor), (x0 + 0.22, get(r).max(floor))], color.filled()))
                })
                .collect();
            let color = *color;
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(*label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A figure of the master (0 for kernel models, which have none).
fn master(s: &procs::Sample, f: fn(&procs::ProcMem) -> u64) -> f64 {
    s.master.as_ref().map(f).unwrap_or(0) as f64
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A held-idle bar: its legend, colour, and how to read it from a row's measurements.
type HeldSeries = (&'static str, RGBColor, fn(&HeldIdle) -> f64);

/// Draws where the held-idle workload's idle connections cost: resident memory and open
/// descriptors of the master and of the workers (summed), before the idle clients
/// connected and while they were held.
pub fn held_idle(rows: &[Row], path: &Path) -> io::Result<()> {
    let held: Vec<(Model, &HeldIdle)> = rows.iter().filter_map(|r| Some((r.model, r.held.as_ref()?))).collect();
    let n = held.len().max(1);
    let panels: [(String, &str, [HeldSeries; 4]); 2] = [
        (
            "resident memory (MiB), workers summed".into(),
            "MiB",
            [
                ("master, before", RGBColor(0xa0, 0xcb, 0xe8), |h| master(&h.baseline, |p| p.rss_kib) / 1024.0),
                ("master, idle held", RGBColor(0x4e, 0x79, 0xa7), |h| master(&h.held, |p| p.rss_kib) / 1024.0),
                ("workers, before", RGBColor(0xff, 0xbe, 0x7d), |h| mib(h.baseline.workers_rss_kib())),
                ("workers, idle held", RGBColor(0xf2, 0x8e, 0x2b), |h| mib(h.held.workers_rss_kib())),
            ],
        ),
        (
            "open descriptors, workers summed".into(),
            "descriptors",
            [
                ("master, before", RGBColor(0xa0, 0xcb, 0xe8), |h| master(&h.baseline, |p| p.fds)),
                ("master, idle held", RGBColor(0x4e, 0x79, 0xa7), |h| master(&h.held, |p| p.fds)),
                ("workers, before", RGBColor(0xff, 0xbe, 0x7d), |h| h.baseline.workers_fds() as f64),
                ("workers, idle held", RGBColor(0xf2, 0x8e, 0x2b), |h| h.held.workers_fds() as f64),
            ],
        ),
    ];
    let idle = held.iter().map(|(_, h)| h.idle).max().unwrap_or(0);
    let models: Vec<Model> = held.iter().map(|(m, _)| *m).collect();
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((2, 1));
    for (area, (title, unit, series)) in areas.iter().zip(&panels) {
        let top = held.iter().flat_map(|(_, h)| series.iter().map(move |s| (s.2)(h))).fold(1.0f64, f64::max) * 1.25;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("held-idle, {idle} idle keep-alive clients: {title}"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5f64..n as f64, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * n + 2)
            .x_label_formatter(&|x| model_label(&models, *x))
            .y_desc(*unit)
            .draw()
            .map_err(err)?;
        for (k, (label, color, get)) in series.iter().enumerate() {
            let bars: Vec<_> = held
                .iter()
                .enumerate()
                .map(|(i, (_, h))| {
                    let x0 = i as f64 + 0.1 + k as f64 * 0.2;
                    Rectangle::new([(x0, 0.0), (x0 + 0.18, get(h))], color.filled())
                })
                .collect();
            let color = *color;
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(*label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
