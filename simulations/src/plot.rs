//! SVG plots drawn with plotters' SVG backend only: no fonts, no bitmaps,
//! no system libraries (text is emitted as SVG `<text>` and laid out by
//! plotters' built-in size estimate).

use plotters::prelude::*;

use crate::report::Report;

const SIZE: (u32, u32) = (900, 500);
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
    let y_max = s.deliveries.iter().copied().max().unwrap_or(1).max(1) as f64 / bucket_s;
    let mut chart = ChartBuilder::on(root)
        .caption(
            "deliveries per second (red: faults, green: repairs)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("deliveries / s")
        .draw()?;
    chart.draw_series(LineSeries::new(
        s.deliveries
            .iter()
            .enumerate()
            .map(|(i, &n)| (i as f64 * bucket_s, n as f64 / bucket_s)),
        BLUE.stroke_width(1),
    ))?;
    for (i, f) in report.faults.iter().enumerate() {
        let x = f.at_ms as f64 / 1000.0;
        let repair = f.label.starts_with("heal")
            || f.label.starts_with("restart")
            || f.label.starts_with("online")
            || f.label.starts_with("drain");
        let color = if repair { GREEN } else { RED };
        chart.draw_series(LineSeries::new(
            [(x, 0.0), (x, y_max * 1.1)],
            color.stroke_width(1),
        ))?;
        // Stagger labels so neighbouring faults stay readable.
        let y = y_max * (1.05 - 0.06 * (i % 6) as f64);
        chart.draw_series(std::iter::once(Text::new(
            f.label.clone(),
            (x, y),
            ("sans-serif", 11).into_font().color(&color),
        )))?;
    }
    Ok(())
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
        .max(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption("outbox depth per relay", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("envelopes waiting")
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
                    .map(|(i, &d)| (i as f64 * bucket_s, d as f64)),
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
                    .map(|(i, &d)| (i as f64 * bucket_s, d as f64)),
                BLACK.stroke_width(1),
            ))?
            .label("all others (sum)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK));
    }
    for f in &report.faults {
        let x = f.at_ms as f64 / 1000.0;
        chart.draw_series(LineSeries::new(
            [(x, 0.0), (x, y_max * 1.1)],
            RGBColor(200, 200, 200).stroke_width(1),
        ))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
