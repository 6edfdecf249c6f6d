//! The run report: a summary table for the terminal, a JSON file and SVG
//! plots. Nothing here reads a clock or iterates a hash map, so the same
//! scenario and seed give byte-identical files.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::checker::{DeliveryStats, Verdict};
use crate::net::NetStats;

/// Everything a run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Report format version.
    pub format: u32,
    /// `deterministic` or `loopback`.
    pub mode: String,
    /// Scenario name.
    pub scenario: String,
    /// The seed (replay with `courier-sim run SCENARIO --seed N`).
    pub seed: u64,
    /// Relays, users, devices, groups.
    pub population: Population,
    /// Simulated time at the end of the run, in milliseconds.
    pub simulated_ms: u64,
    /// True when the drain emptied every outbox and mailbox before
    /// `drain_ms_max`.
    pub drained: bool,
    /// Delivery counters.
    pub delivery: DeliveryStats,
    /// Send-to-deliver latency of first copies.
    pub latency: LatencySummary,
    /// Relay ↔ relay network counters.
    pub federation_network: NetStats,
    /// Client ↔ relay network counters.
    pub client_network: NetStats,
    /// Per-relay counters.
    pub relays: Vec<RelaySummary>,
    /// The fault schedule as applied.
    pub faults: Vec<FaultMark>,
    /// Invariant verdicts.
    pub invariants: Vec<Verdict>,
    /// Time series behind the plots.
    pub series: Series,
}

/// Population of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Population {
    /// Relays.
    pub relays: u32,
    /// Users.
    pub users: u64,
    /// Devices.
    pub devices: u64,
    /// Groups.
    pub groups: u32,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: u64,
    /// 90th percentile.
    pub p90_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Largest.
    pub max_ms: u64,
    /// CDF points `(latency_ms, fraction ≤ latency)`, at most 200.
    pub cdf: Vec<(u64, f64)>,
}

impl LatencySummary {
    /// Summarises samples (sorted in place).
    pub fn from_samples(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return LatencySummary::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let pct = |p: f64| samples[(((n - 1) as f64) * p).round() as usize];
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        let points = n.min(200);
        let mut cdf = Vec::with_capacity(points + 1);
        cdf.push((samples[0], 1.0 / n as f64));
        for i in 1..=points {
            let idx = (i * n / points).saturating_sub(1);
            cdf.push((samples[idx], (idx + 1) as f64 / n as f64));
        }
        cdf.dedup();
        LatencySummary {
            count: n as u64,
            mean_ms: round3(sum as f64 / n as f64),
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            max_ms: samples[n - 1],
            cdf: cdf.into_iter().map(|(x, f)| (x, round3(f))).collect(),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Per-relay counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelaySummary {
    /// Relay name.
    pub name: String,
    /// Messages its clients submitted that it accepted.
    pub accepted: u64,
    /// Envelopes it accepted from peers (not counting duplicates).
    pub federated_in: u64,
    /// Duplicate envelopes from peers it recognised.
    pub federated_duplicates: u64,
    /// Delivery batches it sent.
    pub batches_out: u64,
    /// Times it crashed.
    pub crashes: u32,
    /// Largest outbox depth sampled.
    pub outbox_depth_max: u64,
    /// Envelopes of delivery batches it refused (forged origin, limits).
    pub federated_refused: u64,
    /// Its clients' send attempts it refused, by error code (transient
    /// refusals, retried by the client, count once per attempt).
    pub sends_refused: std::collections::BTreeMap<String, u64>,
}

/// A fault as applied, for the report and the plots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultMark {
    /// When.
    pub at_ms: u64,
    /// What.
    pub label: String,
}

/// Sampled time series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Series {
    /// Width of one bucket, in milliseconds.
    pub bucket_ms: u64,
    /// First deliveries per bucket.
    pub deliveries: Vec<u64>,
    /// Outbox depth per relay (outer index) per sample (inner index).
    pub outbox_depth: Vec<Vec<u64>>,
}

impl Report {
    /// True when every invariant held.
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|v| v.passed)
    }

    /// The summary table for the terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "courier-sim {} — scenario {:?}, seed {}",
            self.mode, self.scenario, self.seed
        );
        let p = &self.population;
        let _ = writeln!(
            s,
            "  {} relays, {} users, {} devices, {} groups; simulated {:.1} s{}",
            p.relays,
            p.users,
            p.devices,
            p.groups,
            self.simulated_ms as f64 / 1000.0,
            if self.drained {
                ""
            } else {
                " (drain limit hit)"
            }
        );
        let d = &self.delivery;
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<28} {v:>14}");
        };
        row(&mut s, "messages started", d.messages_started.to_string());
        row(&mut s, "messages accepted", d.messages_accepted.to_string());
        row(
            &mut s,
            "deliveries expected",
            d.deliveries_expected.to_string(),
        );
        row(&mut s, "deliveries", d.deliveries.to_string());
        row(&mut s, "re-fetches (lost acks)", d.refetches.to_string());
        row(
            &mut s,
            "reordered (cross-relay)",
            d.reordered_remote.to_string(),
        );
        let l = &self.latency;
        row(
            &mut s,
            "latency p50/p90/p99/max ms",
            format!("{}/{}/{}/{}", l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
        );
        let f = &self.federation_network;
        row(
            &mut s,
            "federation sent/lost/dup",
            format!("{}/{}/{}", f.sent, f.lost + f.partitioned, f.duplicated),
        );
        let c = &self.client_network;
        row(
            &mut s,
            "client link sent/lost/dup",
            format!("{}/{}/{}", c.sent, c.lost + c.partitioned, c.duplicated),
        );
        let _ = writeln!(s, "  invariants:");
        for v in &self.invariants {
            let _ = writeln!(
                s,
                "    {:<22} {:<4}  checked {:>10}  violations {:>8}",
                v.name,
                if v.passed { "PASS" } else { "FAIL" },
                v.checked,
                v.violations
            );
            for c in v.counterexamples.iter().take(5) {
                let _ = writeln!(s, "        e.g. {c}");
            }
        }
        let _ = writeln!(
            s,
            "  result: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }

    /// Writes `report.json`, `summary.txt` and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json + "\n")?;
        std::fs::write(dir.join("summary.txt"), self.summary())?;
        for (name, svg) in crate::plot::all(self) {
            std::fs::write(dir.join(name), svg)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_percentiles() {
        let mut samples: Vec<u64> = (1..=100).collect();
        let l = LatencySummary::from_samples(&mut samples);
        assert_eq!(l.p50_ms, 51);
        assert_eq!(l.p99_ms, 99);
        assert_eq!(l.max_ms, 100);
        assert_eq!(l.cdf.last(), Some(&(100, 1.0)));
    }
}
