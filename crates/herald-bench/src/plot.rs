//! A small hand-written SVG: delivery latency (p50 and p99, log scale) against
//! subscribers, one colour per target.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::Report;

const W: f64 = 750.0;
const H: f64 = 440.0;
const LEFT: f64 = 100.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn colour(target: &str) -> &'static str {
    match target {
        "herald" => "#d62728",
        "nchan" => "#1f77b4",
        _ => "#2ca02c",
    }
}

pub fn write_svg(path: &Path, report: &Report) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, svg(report))?;
    Ok(())
}

pub fn svg(report: &Report) -> String {
    let mut subs: Vec<usize> = report.fanout.iter().map(|r| r.subscribers).collect();
    subs.sort_unstable();
    subs.dedup();
    let values: Vec<f64> = report
        .fanout
        .iter()
        .flat_map(|r| [r.latency.p50_ms, r.latency.p99_ms])
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min).max(0.01);
    let hi = values.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (lo_e, hi_e) = (lo.log10().floor(), hi.log10().ceil());
    let floor = 10f64.powf(lo_e);
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (v.max(floor).log10() - lo_e) / (hi_e - lo_e));
    let (smin, smax) = (*subs.first().unwrap_or(&1) as f64, *subs.last().unwrap_or(&10) as f64);
    let log_x = smax / smin.max(1.0) >= 4.0;
    let x = |n: usize| {
        let t = if subs.len() < 2 {
            0.5
        } else if log_x {
            ((n as f64).ln() - smin.ln()) / (smax.ln() - smin.ln())
        } else {
            (n as f64 - smin) / (smax - smin)
        };
        LEFT + 30.0 + (W - LEFT - RIGHT - 60.0) * t
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">SSE delivery latency at {} messages/s against subscribers ({}, {} CPUs)</text>"#,
        W / 2.0,
        report.fanout.first().map_or(0.0, |r| r.latency_rate),
        report.date,
        report.machine.cpus
    );
    // Axes and grid.
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = writeln!(s, r#"<path d="M{x0} {y0} V{y1} H{x1}" stroke="black" fill="none"/>"#);
    let mut e = lo_e;
    while e <= hi_e {
        let v = 10f64.powf(e);
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" x2="{x1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            yy + 4.0,
            if v >= 1.0 {
                format!("{v:.0} ms")
            } else {
                format!("{v} ms")
            }
        );
        e += 1.0;
    }
    for &n in &subs {
        let xx = x(n);
        let _ = writeln!(
            s,
            r#"<line x1="{xx:.1}" x2="{xx:.1}" y1="{y1}" y2="{}" stroke="black"/><text x="{xx:.1}" y="{}" text-anchor="middle">{n}</text>"#,
            y1 + 5.0,
            y1 + 20.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">subscribers</text>"#,
        (x0 + x1) / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">latency (command sent → event received)</text>"#,
        (y0 + y1) / 2.0
    );
    // Series.
    let mut targets: Vec<&str> = report.fanout.iter().map(|r| r.target.as_str()).collect();
    targets.dedup();
    let mut seen = Vec::new();
    for t in targets {
        if seen.contains(&t) {
            continue;
        }
        seen.push(t);
        let mut points: Vec<(usize, f64, f64)> = report
            .fanout
            .iter()
            .filter(|r| r.target == t)
            .map(|r| (r.subscribers, r.latency.p50_ms, r.latency.p99_ms))
            .collect();
        points.sort_by_key(|p| p.0);
        for (idx, dash) in [(1usize, ""), (2, r#" stroke-dasharray="6 4""#)] {
            let d: Vec<String> = points
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let v = if idx == 1 { p.1 } else { p.2 };
                    format!("{}{:.1} {:.1}", if i == 0 { "M" } else { "L" }, x(p.0), y(v))
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<path d="{}" stroke="{}" stroke-width="2" fill="none"{dash}/>"#,
                d.join(" "),
                colour(t)
            );
            for p in &points {
                let v = if idx == 1 { p.1 } else { p.2 };
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    x(p.0),
                    y(v),
                    colour(t)
                );
            }
        }
    }
    // Legend.
    for (i, t) in seen.iter().enumerate() {
        let ly = TOP + 10.0 + i as f64 * 40.0;
        let lx = W - RIGHT + 15.0;
        let c = colour(t);
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{t} p50</text>"#,
            lx + 25.0,
            lx + 30.0,
            ly + 4.0
        );
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{}" y2="{}" stroke="{c}" stroke-width="2" stroke-dasharray="6 4"/><text x="{}" y="{}">{t} p99</text>"#,
            lx + 25.0,
            ly + 16.0,
            ly + 16.0,
            lx + 30.0,
            ly + 20.0
        );
    }
    s.push_str("</svg>\n");
    s
}
