//! The run report: a summary table for the terminal, a JSON file and SVG
//! plots. Nothing here reads a clock or iterates a hash map, so the same
//! scenario and seed give byte-identical files.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::checker::{DeliveryStats, Verdict};
use crate::deterministic::Sabotage;
use crate::net::NetStats;
use crate::scenario::Scenario;

/// Version of the `report.json` schema (documented in docs/simulations.md).
/// Bump it when a field changes meaning or disappears.
pub const SCHEMA_VERSION: u32 = 2;

/// Everything a run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Version of this schema ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// The Courier build that produced the report.
    pub courier: Build,
    /// `deterministic` or `loopback`.
    pub mode: String,
    /// Scenario name.
    pub scenario: String,
    /// The scenario's full text and digest, so the report reruns itself
    /// (`courier-sim replay report.json`).
    pub scenario_source: ScenarioSource,
    /// The seed (replay with `courier-sim run SCENARIO --seed N`).
    pub seed: u64,
    /// The deliberate relay bug the run was made with, if any (part of what
    /// a replay must reproduce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sabotage: Option<Sabotage>,
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
    /// Loopback only: how the fault schedule and link models were applied to
    /// the real processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loopback: Option<LoopbackFacts>,
}

/// The Courier build a report came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    /// Courier's version (the workspace version).
    pub version: String,
    /// The git commit the simulator was built from (`unknown` when built
    /// outside a git checkout without `COURIER_GIT_COMMIT`).
    pub commit: String,
}

impl Build {
    /// The build of this binary (recorded at compile time).
    pub fn current() -> Self {
        Build {
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: env!("COURIER_GIT_COMMIT").to_string(),
        }
    }
}

/// A scenario as it was run: its verbatim text and that text's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScenarioSource {
    /// SHA-256 of `text`, lowercase hex.
    pub sha256: String,
    /// The scenario file, verbatim.
    pub text: String,
}

impl ScenarioSource {
    /// The source of `scenario` (the text it was parsed from).
    pub fn of(scenario: &Scenario) -> Self {
        ScenarioSource {
            sha256: sha256_hex(&scenario.source),
            text: scenario.source.clone(),
        }
    }
}

/// SHA-256 of `text`, lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// How a loopback run applied its faults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoopbackFacts {
    /// `network_namespaces` (each relay in its own namespace, partitions
    /// applied) or `none` (all relays on 127.0.0.1, partitions recorded
    /// only).
    pub isolation: String,
    /// Why isolation is `none`, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation_unavailable: Option<String>,
    /// Parts of the scenario that were applied to the real network
    /// (e.g. `partition`, `federation_link latency 25 ms via netem`).
    pub applied: Vec<String>,
    /// Parts of the scenario that were not applied, each with the reason.
    pub not_applied: Vec<String>,
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
    /// Loopback only: the relay's own federation counters, scraped from
    /// its `GET /metrics` and summed over its restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub federation_metrics: Option<FederationMetrics>,
}

/// A real relay's federation counters (Prometheus
/// `courier_federation_envelopes_{sent,received}_total`, summed over
/// peers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FederationMetrics {
    /// Envelopes sent that the peer accepted (`result="delivered"`).
    pub envelopes_delivered: u64,
    /// Envelopes sent that will be retried (`result="retried"`: the peer
    /// asked for a retry or the request failed).
    pub envelopes_retried: u64,
    /// Envelopes sent that the peer refused for good (`result="failed"`).
    pub envelopes_failed: u64,
    /// Envelopes received from peers.
    pub envelopes_received: u64,
}

impl std::ops::AddAssign for FederationMetrics {
    fn add_assign(&mut self, o: Self) {
        self.envelopes_delivered += o.envelopes_delivered;
        self.envelopes_retried += o.envelopes_retried;
        self.envelopes_failed += o.envelopes_failed;
        self.envelopes_received += o.envelopes_received;
    }
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

    /// The relays' federation counters summed, when the run measured them
    /// (loopback).
    pub fn federation_metrics_total(&self) -> Option<FederationMetrics> {
        let mut total: Option<FederationMetrics> = None;
        for m in self.relays.iter().filter_map(|r| r.federation_metrics) {
            *total.get_or_insert_with(FederationMetrics::default) += m;
        }
        total
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
        if let Some(m) = self.federation_metrics_total() {
            // Real relays: their own counters; the links are the kernel's,
            // so there is nothing to count per packet.
            row(
                &mut s,
                "federation deliv/retry/fail",
                format!(
                    "{}/{}/{}",
                    m.envelopes_delivered, m.envelopes_retried, m.envelopes_failed
                ),
            );
            row(
                &mut s,
                "federation received",
                m.envelopes_received.to_string(),
            );
        } else {
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
        }
        if let Some(l) = &self.loopback {
            let _ = writeln!(s, "  isolation: {}", l.isolation);
            if let Some(why) = &l.isolation_unavailable {
                let _ = writeln!(s, "    ({why}: faults between relays recorded only)");
            }
            for a in &l.applied {
                let _ = writeln!(s, "    applied: {a}");
            }
            for n in &l.not_applied {
                let _ = writeln!(s, "    NOT applied: {n}");
            }
        }
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
