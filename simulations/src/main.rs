//! `courier-sim`: run Courier network simulations from scenario files.
//!
//! Exit status: 0 when every invariant held (`replay`: the rerun was
//! identical), 1 when one was violated (`replay`: the rerun differed), 2 when
//! the run could not be carried out (bad scenario, IO error).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use courier_simulations::deterministic::{self, Options, Sabotage};
use courier_simulations::report::Report;
use courier_simulations::scenario::Scenario;

#[derive(Parser)]
#[command(name = "courier-sim", version, about = "Courier network simulations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario deterministically in one process on virtual time.
    Run {
        /// Scenario file (TOML), e.g. simulations/scenarios/partition-heal.toml.
        scenario: PathBuf,
        /// Seed of every random choice; the same scenario and seed give the
        /// same report. Without it a seed is picked and printed.
        #[arg(long)]
        seed: Option<u64>,
        /// Directory for report.json, summary.txt and the SVG plots
        /// (default: sim-out/<scenario>-seed<N>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Never draw the progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Deliberately break relay N (it loses one outbox entry) to see the
        /// checker fail.
        #[arg(long, value_name = "RELAY")]
        sabotage_lose_outbox_entry: Option<u32>,
    },
    /// Run a scenario against real `courier` processes on 127.0.0.1.
    Loopback {
        /// Scenario file (TOML); keep it small (a few relays and users).
        scenario: PathBuf,
        /// Directory for the report (default: sim-out/<scenario>-loopback).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The `courier` binary (default: next to this one, then $PATH).
        #[arg(long)]
        courier: Option<PathBuf>,
        /// The `courier-client` binary (default: next to this one, then $PATH).
        #[arg(long)]
        courier_client: Option<PathBuf>,
    },
    /// Rerun a deterministic report from the scenario text and seed it
    /// embeds, and check the new report is identical (exit 0) or list what
    /// differs (exit 1).
    Replay {
        /// A `report.json` written by `courier-sim run`.
        report: PathBuf,
        /// Also write the rerun's report, summary and plots here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Parse and validate a scenario without running it.
    Check {
        /// Scenario file (TOML).
        scenario: PathBuf,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { scenario } => {
            let s = Scenario::load(&scenario)?;
            println!(
                "{}: ok ({} relays, {} users)",
                scenario.display(),
                s.relays.count,
                s.user_count()
            );
            Ok(true)
        }
        Command::Run {
            scenario,
            seed,
            out,
            no_progress,
            sabotage_lose_outbox_entry,
        } => {
            let s = Scenario::load(&scenario)?;
            let seed = seed.unwrap_or_else(pick_seed);
            eprintln!(
                "courier-sim: scenario {:?}, seed {seed} (rerun: courier-sim run {} --seed {seed}, or courier-sim replay REPORT)",
                s.name,
                scenario.display()
            );
            let options = Options {
                seed,
                progress: !no_progress && std::io::stderr().is_terminal(),
                sabotage: sabotage_lose_outbox_entry
                    .map(|relay| Sabotage::LoseOutboxEntry { relay }),
            };
            let started = Instant::now();
            let report = deterministic::run(&s, &options)?;
            let wall = started.elapsed();
            let out = out
                .unwrap_or_else(|| PathBuf::from("sim-out").join(format!("{}-seed{seed}", s.name)));
            finish(&report, &out)?;
            let ratio = report.simulated_ms as f64 / wall.as_secs_f64().max(1e-9) / 1000.0;
            println!(
                "  wall time {:.2} s, simulated/real time {:.1}x",
                wall.as_secs_f64(),
                ratio
            );
            Ok(report.passed())
        }
        Command::Replay { report, out } => {
            let json = std::fs::read_to_string(&report)
                .with_context(|| format!("reading {}", report.display()))?;
            let replay = courier_simulations::replay::replay(&json)
                .with_context(|| format!("replaying {}", report.display()))?;
            if let Some(out) = out {
                finish(&replay.report, &out)?;
            }
            let here = &replay.report.courier;
            let there = &replay.original_build;
            if here != there {
                println!(
                    "  note: report written by courier {} ({}), replayed by {} ({})",
                    there.version, there.commit, here.version, here.commit
                );
            }
            if replay.identical() {
                println!(
                    "replay of {}: identical (scenario {:?} sha256 {}, seed {})",
                    report.display(),
                    replay.report.scenario,
                    replay.report.scenario_source.sha256,
                    replay.report.seed
                );
            } else {
                println!("replay of {}: DIFFERENT", report.display());
                for d in &replay.differences {
                    println!("  {d}");
                }
            }
            Ok(replay.identical())
        }
        Command::Loopback {
            scenario,
            out,
            courier,
            courier_client,
        } => {
            let s = Scenario::load(&scenario)?;
            let out = out
                .unwrap_or_else(|| PathBuf::from("sim-out").join(format!("{}-loopback", s.name)));
            let binaries =
                courier_simulations::loopback::Binaries::locate(courier, courier_client)?;
            let report =
                courier_simulations::loopback::run(&s, &binaries, &out).context("loopback run")?;
            finish(&report, &out)?;
            Ok(report.passed())
        }
    }
}

fn finish(report: &Report, out: &std::path::Path) -> anyhow::Result<()> {
    report
        .write(out)
        .with_context(|| format!("writing the report to {}", out.display()))?;
    print!("{}", report.summary());
    println!("  report: {}", out.join("report.json").display());
    Ok(())
}

/// A seed for runs that did not name one; printed so the run can be replayed.
fn pick_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}
