//! The SVG plots read right: no text runs off the canvas, count axes have
//! whole-number ticks, and every fault line carries its label. Checked on
//! the SVG text itself (plotters writes labels as `<text>` elements).

// Test setup panics on errors like the tests do.
#![allow(clippy::unwrap_used)]

use courier_simulations::deterministic::{self, Options};
use courier_simulations::plot;
use courier_simulations::scenario::Scenario;

/// Canvas size of every plot.
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 500.0;
/// Average glyph width of sans-serif as a share of the font size; generous,
/// so the check errs towards "clipped".
const GLYPH_WIDTH: f64 = 0.6;

struct Text {
    x: f64,
    y: f64,
    anchor: String,
    rotated: bool,
    font_px: f64,
    text: String,
}

fn attr(attrs: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = format!(" {attrs}").find(&key)? + key.len() - 1;
    let rest = &attrs[start..];
    Some(rest[..rest.find('"')?].to_string())
}

fn texts(svg: &str) -> Vec<Text> {
    svg.split("<text ")
        .skip(1)
        .map(|chunk| {
            let (attrs, rest) = chunk.split_once('>').unwrap();
            let body = rest.split("</text>").next().unwrap().trim();
            let num = |n: &str| attr(attrs, n).unwrap().parse::<f64>().unwrap();
            Text {
                x: num("x"),
                y: num("y"),
                anchor: attr(attrs, "text-anchor").unwrap_or_else(|| "start".into()),
                rotated: attr(attrs, "transform").is_some(),
                font_px: num("font-size"),
                text: body
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            }
        })
        .collect()
}

fn plots() -> Vec<(&'static str, String, Vec<String>)> {
    // Faults right at the start and near the end of the run, where labels
    // used to run off the plot, and more of them than label rows.
    let s = Scenario::parse(
        r#"
name = "plots"
duration_ms = 30000
[relays]
count = 3
[users]
per_relay = 3
[workload]
rate_per_sec = 5
send_until_ms = 25000
[[faults]]
at_ms = 200
kind = "partition"
sets = [[0], [1, 2]]
[[faults]]
at_ms = 9000
kind = "heal"
[[faults]]
at_ms = 12000
kind = "crash"
relay = 2
[[faults]]
at_ms = 15000
kind = "restart"
relay = 2
[[faults]]
at_ms = 26000
kind = "client_offline"
relay = 0
user = 1
[[faults]]
at_ms = 29000
kind = "client_online"
relay = 0
user = 1
[[faults]]
at_ms = 29900
kind = "partition"
sets = [[0], [1], [2]]
"#,
    )
    .unwrap();
    let report = deterministic::run(
        &s,
        &Options {
            seed: 2,
            progress: false,
            sabotage: None,
        },
    )
    .unwrap();
    let labels: Vec<String> = report.faults.iter().map(|f| f.label.clone()).collect();
    assert!(labels.len() >= 7, "{labels:?}");
    plot::all(&report)
        .into_iter()
        .map(|(name, svg)| (name, svg, labels.clone()))
        .collect()
}

#[test]
fn no_text_runs_off_the_canvas() {
    for (name, svg, _) in plots() {
        for t in texts(&svg).iter().filter(|t| !t.rotated) {
            let w = t.text.chars().count() as f64 * t.font_px * GLYPH_WIDTH;
            let (left, right) = match t.anchor.as_str() {
                "middle" => (t.x - w / 2.0, t.x + w / 2.0),
                "end" => (t.x - w, t.x),
                _ => (t.x, t.x + w),
            };
            assert!(
                left >= 0.0 && right <= WIDTH && t.y >= 0.0 && t.y + t.font_px <= HEIGHT,
                "{name}: {:?} spans x {left:.0}..{right:.0} at y {}",
                t.text,
                t.y
            );
        }
    }
}

#[test]
fn count_axes_have_whole_number_ticks() {
    for (name, svg, _) in plots() {
        if name == "latency_cdf.svg" {
            continue;
        }
        // The y tick labels: right-aligned against the left axis.
        let ticks: Vec<Text> = texts(&svg)
            .into_iter()
            .filter(|t| t.anchor == "end" && t.x < 100.0)
            .collect();
        assert!(ticks.len() >= 3, "{name}: no y ticks found");
        for t in ticks {
            assert!(
                t.text.parse::<u64>().is_ok(),
                "{name}: tick {:?} on a count axis",
                t.text
            );
        }
    }
}

#[test]
fn every_fault_line_is_labelled() {
    for (name, svg, labels) in plots() {
        if name == "latency_cdf.svg" {
            continue;
        }
        let drawn: Vec<String> = texts(&svg).into_iter().map(|t| t.text).collect();
        for label in &labels {
            assert!(
                drawn.iter().any(|d| d == label
                    || (d.ends_with('…') && label.starts_with(d.trim_end_matches('…')))),
                "{name}: no label for fault {label:?} in {drawn:?}"
            );
        }
    }
}
