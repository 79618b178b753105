//! results.png: grouped bars (median, with a min–max whisker) per topology,
//! one panel per figure. Text is drawn with a font shipped inside a crate
//! (Hack, from epaint_default_fonts) through plotters' ab_glyph backend, so
//! no system font is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::error::{E2eError, Result};
use super::report::{Report, Row};

const FONT: &str = "sans-serif";

/// A panel: title, the metric, and (group label, case) pairs.
struct Panel {
    title: &'static str,
    metric: &'static str,
    groups: &'static [(&'static str, &'static str)],
}

const PANELS: &[Panel] = &[
    Panel {
        title: "TCP throughput (Gbit/s, higher is better)",
        metric: "gbit_s",
        groups: &[("1 stream", "tcp-1"), ("4 streams", "tcp-4")],
    },
    Panel {
        title: "UDP received (Mpps, higher is better)",
        metric: "rx_mpps",
        groups: &[("64 B", "udp-64B"), ("1400 B", "udp-1400B")],
    },
    Panel {
        title: "Round trip p50 (µs, lower is better)",
        metric: "p50_us",
        groups: &[("ping", "ping"), ("TCP 1-byte RR", "tcp-rr")],
    },
    Panel {
        title: "Round trip p99 (µs, lower is better)",
        metric: "p99_us",
        groups: &[("ping", "ping"), ("TCP 1-byte RR", "tcp-rr")],
    },
    Panel {
        title: "TCP CPU cost (CPU s per Gbit, lower is better)",
        metric: "cpu_s_per_gbit",
        groups: &[("1 stream", "tcp-1"), ("4 streams", "tcp-4")],
    },
    Panel {
        title: "UDP CPU cost (CPU s per Mpkt, lower is better)",
        metric: "cpu_s_per_mpkt",
        groups: &[("64 B", "udp-64B"), ("1400 B", "udp-1400B")],
    },
    Panel {
        title: "64 B scale: received Mpps by pods present",
        metric: "rx_mpps",
        groups: &[
            ("2 pods", "udp-64B"),
            ("16 pods", "udp-64B pods=16"),
            ("64 pods", "udp-64B pods=64"),
        ],
    },
    Panel {
        title: "64 B scale: CPU s per Mpkt by pods present",
        metric: "cpu_s_per_mpkt",
        groups: &[
            ("2 pods", "udp-64B"),
            ("16 pods", "udp-64B pods=16"),
            ("64 pods", "udp-64B pods=64"),
        ],
    },
];

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(23, 190, 207),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut r = Ok(());
    ONCE.call_once(|| {
        r = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        )
        .map_err(|_| E2eError::Report("the bundled font does not parse".into()));
    });
    r
}

fn row<'a>(report: &'a Report, case: &str, metric: &str) -> Option<&'a Row> {
    report
        .summary
        .iter()
        .find(|r| r.case == case && r.metric == metric)
}

fn err<E: std::fmt::Display>(e: E) -> E2eError {
    E2eError::Report(format!("chart: {e}"))
}

/// Draw every panel of `report` into a PNG at `path`.
pub fn render(report: &Report, path: &Path) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1600, 2000)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(90);
    let started = report
        .meta
        .get("started")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let mode = report
        .meta
        .get("mode")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    head.draw(&Text::new(
        format!("ferry end-to-end: median with min–max over repetitions ({mode} mode, {started})"),
        (20, 12),
        (FONT, 26).into_font().color(&BLACK),
    ))
    .map_err(err)?;
    let topos = &report.order;
    for (i, t) in topos.iter().enumerate() {
        let x = 20 + 220 * i as i32;
        let c = COLORS[i % COLORS.len()];
        head.draw(&Rectangle::new([(x, 52), (x + 24, 72)], c.filled()))
            .map_err(err)?;
        head.draw(&Text::new(
            t.clone(),
            (x + 32, 52),
            (FONT, 20).into_font().color(&BLACK),
        ))
        .map_err(err)?;
    }
    let areas = body.split_evenly((4, 2));
    for (area, panel) in areas.iter().zip(PANELS) {
        draw_panel(&root, area, panel, report)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draw one panel into `area`; free text goes on `root`, whose coordinates are
/// the absolute pixels that `backend_coord` returns.
fn draw_panel(root: &Area<'_>, area: &Area<'_>, p: &Panel, report: &Report) -> Result<()> {
    let topos = &report.order;
    let ngroups = p.groups.len();
    let mut ymax: f64 = 0.0;
    for (_, case) in p.groups {
        if let Some(r) = row(report, case, p.metric) {
            for c in r.by_topology.values() {
                ymax = ymax.max(c.value.max);
            }
        }
    }
    let ymax = if ymax > 0.0 && ymax.is_finite() {
        ymax * 1.18
    } else {
        1.0
    };
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, (FONT, 20))
        .margin(14)
        .x_label_area_size(34)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..ngroups as f64, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(6)
        .label_style((FONT, 15))
        .draw()
        .map_err(err)?;
    let width = 0.8 / topos.len().max(1) as f64;
    for (g, (label, case)) in p.groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            label.to_string(),
            (px - 5 * label.chars().count() as i32, py + 8),
            (FONT, 16).into_font().color(&BLACK),
        ))
        .map_err(err)?;
        let Some(r) = row(report, case, p.metric) else {
            let (nx, ny) = chart.backend_coord(&(g as f64 + 0.35, ymax * 0.5));
            root.draw(&Text::new(
                "no data",
                (nx, ny),
                (FONT, 16).into_font().color(&RGBColor(150, 150, 150)),
            ))
            .map_err(err)?;
            continue;
        };
        for (i, t) in topos.iter().enumerate() {
            let Some(c) = r.by_topology.get(t) else {
                continue;
            };
            let color = COLORS[i % COLORS.len()];
            let x0 = g as f64 + 0.1 + width * i as f64;
            let x1 = x0 + width * 0.9;
            let xm = (x0 + x1) / 2.0;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x1, c.value.median)],
                    color.filled(),
                )))
                .map_err(err)?;
            if c.value.n > 1 {
                let cap = width * 0.2;
                let whisker = [
                    vec![(xm, c.value.min), (xm, c.value.max)],
                    vec![(xm - cap, c.value.min), (xm + cap, c.value.min)],
                    vec![(xm - cap, c.value.max), (xm + cap, c.value.max)],
                ];
                for seg in whisker {
                    chart
                        .draw_series(LineSeries::new(seg, BLACK.stroke_width(2)))
                        .map_err(err)?;
                }
            }
            let (tx, ty) = chart.backend_coord(&(x0, c.value.max.max(c.value.median)));
            root.draw(&Text::new(
                super::report::fmt_num(c.value.median),
                (tx, ty - 16),
                (FONT, 12).into_font().color(&BLACK),
            ))
            .map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::report::{summarize_samples, Sample};
    use std::collections::BTreeMap;

    #[test]
    fn renders_a_png_even_with_missing_panels() {
        let mk = |t: &str, case: &str, rep: u32, k: &str, v: f64| Sample {
            topology: t.into(),
            case: case.into(),
            rep,
            metrics: [(k.to_string(), v)].into_iter().collect(),
        };
        let samples = vec![
            mk("bridge", "tcp-1", 0, "gbit_s", 10.0),
            mk("bridge", "tcp-1", 1, "gbit_s", 12.0),
            mk("ferry", "tcp-1", 0, "gbit_s", 6.0),
            mk("ferry", "tcp-1", 1, "gbit_s", 7.5),
            mk("ferry", "ping", 0, "p50_us", 35.0),
        ];
        let report = Report {
            meta: BTreeMap::new(),
            topologies: BTreeMap::new(),
            order: vec!["ferry".into(), "bridge".into()],
            summary: summarize_samples(&samples),
            samples,
            failures: vec![],
        };
        let dir =
            crate::e2e::sys::TempDir::create(&format!("chart{}", std::process::id())).unwrap();
        let p = dir.path.join("r.png");
        render(&report, &p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(
            bytes.len() > 10_000,
            "a 1600x2000 chart with text is not tiny"
        );
    }
}
