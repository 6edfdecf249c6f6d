//! SVG plots drawn with plotters' SVG backend only: no fonts, no bitmaps,
//! no system libraries (text is emitted as SVG `<text>` and laid out by
//! plotters' built-in size estimate).

use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{FaultMark, Report};

const SIZE: (u32, u32) = (900, 500);
/// Font size of fault labels, in pixels.
const FAULT_FONT_PX: u32 = 11;
/// Longest fault label drawn, in characters (longer ones end in `…`), so a
/// label always fits in half the plot's width.
const FAULT_LABEL_CHARS_MAX: usize = 48;
/// Fault labels cycle through this many rows so neighbours stay readable.
const FAULT_LABEL_ROWS: usize = 6;
/// Headroom above the data for the fault labels, as a share of the data's
/// height.
const FAULT_LABEL_HEADROOM: f64 = 0.45;
/// Relays drawn individually in the outbox plot; the rest are summed.
const OUTBOX_LINES_MAX: usize = 12;

/// Every plot of a report as (file name, SVG text).
pub fn all(report: &Report) -> Vec<(&'static str, String)> {
    vec![
        ("latency_cdf.svg", latency_cdf(report)),
        ("deliveries.svg", deliveries(report)),
        ("outbox_depth.svg", outbox_depth(report)),
    ]
}

fn latency_cdf(report: &Report) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = draw_latency(&root, report);
        let _ = root.present();
    }
    svg
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn draw_latency(root: &Area<'_>, report: &Report) -> PlotResult {
    root.fill(&WHITE)?;
    let cdf = &report.latency.cdf;
    // Log scale: fault-delayed deliveries sit orders of magnitude above the
    // median, and a linear axis would squash everything else into a corner.
    let x_max = cdf.last().map_or(10, |p| p.0).max(10) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "send-to-deliver latency CDF ({} seed {})",
                report.scenario, report.seed
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1f64..x_max * 1.2).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of deliveries")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;
    chart.draw_series(LineSeries::new(
        cdf.iter().map(|&(x, f)| ((x as f64).max(1.0), f)),
        BLUE.stroke_width(2),
    ))?;
    Ok(())
}

fn deliveries(report: &Report) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = draw_deliveries(&root, report);
        let _ = root.present();
    }
    svg
}

fn draw_deliveries(root: &Area<'_>, report: &Report) -> PlotResult {
    root.fill(&WHITE)?;
    let s = &report.series;
    let bucket_s = s.bucket_ms.max(1) as f64 / 1000.0;
    let x_max = (s.deliveries.len() as f64 * bucket_s).max(bucket_s);
    // Counts per bucket, on an integer axis: a rate per second would put
    // fractional ticks on what are whole deliveries.
    let y_max = s.deliveries.iter().copied().max().unwrap_or(1).max(1);
    let y_top = headroom(y_max);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "first deliveries per {} s (red: faults, green: repairs)",
                format_seconds(bucket_s)
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0u64..y_top)?;
    chart
        .configure_mesh()
        .x_desc(time_axis(report))
        .y_desc(format!("deliveries per {} s", format_seconds(bucket_s)))
        .x_label_formatter(&|x| format_seconds(*x))
        .y_label_formatter(&|y| y.to_string())
        .draw()?;
    chart.draw_series(LineSeries::new(
        s.deliveries
            .iter()
            .enumerate()
            .map(|(i, &n)| (i as f64 * bucket_s, n)),
        BLUE.stroke_width(1),
    ))?;
    draw_faults(&mut chart, &report.faults, x_max, y_top)?;
    Ok(())
}

/// The top of a count axis: room above the data for the fault labels.
fn headroom(y_max: u64) -> u64 {
    y_max + ((y_max as f64 * FAULT_LABEL_HEADROOM).ceil() as u64).max(2)
}

/// The x axis title: virtual time, or wall time in loopback.
fn time_axis(report: &Report) -> &'static str {
    if report.mode == "loopback" {
        "wall time (s)"
    } else {
        "simulated time (s)"
    }
}

/// Seconds without a trailing `.0` (`5`, `0.25`).
fn format_seconds(x: f64) -> String {
    let r = (x * 1000.0).round() / 1000.0;
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r}")
    }
}

/// True for marks that repair (drawn green), false for faults (red).
fn is_repair(f: &FaultMark) -> bool {
    ["heal", "restart", "online", "drain"]
        .iter()
        .any(|p| f.label.starts_with(p))
}

/// A vertical line per fault with its label at the top: labels in the
/// right half end at their line, so none runs off the plot.
fn draw_faults(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordu64>>,
    faults: &[FaultMark],
    x_max: f64,
    y_top: u64,
) -> PlotResult {
    let (_, y_range) = chart.plotting_area().get_pixel_range();
    let row_px = (FAULT_FONT_PX + 3) as i32;
    for (i, f) in faults.iter().enumerate() {
        let x = f.at_ms as f64 / 1000.0;
        let color = if is_repair(f) { GREEN } else { RED };
        chart.draw_series(LineSeries::new([(x, 0), (x, y_top)], color.stroke_width(1)))?;
        let mut label: String = f.label.chars().take(FAULT_LABEL_CHARS_MAX).collect();
        if f.label.chars().count() > FAULT_LABEL_CHARS_MAX {
            label.push('…');
        }
        let right_half = x > x_max / 2.0;
        let h = if right_half { HPos::Right } else { HPos::Left };
        let (px, _) = chart.backend_coord(&(x, y_top));
        // A few pixels off the line, on the side the text runs to.
        let px = if right_half { px - 3 } else { px + 3 };
        let py = y_range.start + 4 + row_px * (i % FAULT_LABEL_ROWS) as i32;
        let font = ("sans-serif", FAULT_FONT_PX)
            .into_font()
            .color(&color)
            .pos(Pos::new(h, VPos::Top));
        chart.plotting_area().strip_coord_spec().draw(&Text::new(
            label,
            (px - chart_left(chart), py - y_range.start),
            font,
        ))?;
    }
    Ok(())
}

/// The plotting area's left edge in backend pixels.
fn chart_left(
    chart: &ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordu64>>,
) -> i32 {
    chart.plotting_area().get_pixel_range().0.start
}

fn outbox_depth(report: &Report) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = draw_outbox(&root, report);
        let _ = root.present();
    }
    svg
}

fn draw_outbox(root: &Area<'_>, report: &Report) -> PlotResult {
    root.fill(&WHITE)?;
    let s = &report.series;
    let bucket_s = s.bucket_ms.max(1) as f64 / 1000.0;
    let samples = s.outbox_depth.iter().map(Vec::len).max().unwrap_or(0);
    let x_max = (samples as f64 * bucket_s).max(bucket_s);
    // The deepest relays get their own line; the rest are summed so a
    // hundred-relay plot stays legible.
    let mut order: Vec<usize> = (0..s.outbox_depth.len()).collect();
    order.sort_by_key(|&r| {
        (
            std::cmp::Reverse(s.outbox_depth[r].iter().copied().max().unwrap_or(0)),
            r,
        )
    });
    let shown: Vec<usize> = order.iter().copied().take(OUTBOX_LINES_MAX).collect();
    let rest: Vec<u64> = (0..samples)
        .map(|i| {
            order
                .iter()
                .skip(OUTBOX_LINES_MAX)
                .map(|&r| s.outbox_depth[r].get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let y_max = shown
        .iter()
        .flat_map(|&r| s.outbox_depth[r].iter().copied())
        .chain(rest.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let y_top = headroom(y_max);
    let mut chart = ChartBuilder::on(root)
        .caption(
            "outbox depth per relay (red: faults, green: repairs)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0u64..y_top)?;
    chart
        .configure_mesh()
        .x_desc(time_axis(report))
        .y_desc("envelopes waiting")
        .x_label_formatter(&|x| format_seconds(*x))
        .y_label_formatter(&|y| y.to_string())
        .draw()?;
    for (k, &r) in shown.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let name = report
            .relays
            .get(r)
            .map_or_else(|| format!("r{r}"), |x| x.name.clone());
        chart
            .draw_series(LineSeries::new(
                s.outbox_depth[r]
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| (i as f64 * bucket_s, d)),
                color.stroke_width(1),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
    }
    if s.outbox_depth.len() > OUTBOX_LINES_MAX {
        chart
            .draw_series(LineSeries::new(
                rest.iter()
                    .enumerate()
                    .map(|(i, &d)| (i as f64 * bucket_s, d)),
                BLACK.stroke_width(1),
            ))?
            .label("all others (sum)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK));
    }
    draw_faults(&mut chart, &report.faults, x_max, y_top)?;
    chart
        .configure_series_labels()
        // Below the fault labels, which take the top of the plot.
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
