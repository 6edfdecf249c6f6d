//! A report reproduces itself: `courier-sim replay report.json` reruns the
//! embedded scenario text with the recorded seed and finds the same report,
//! and a report that was altered is caught.

// Test setup panics on errors like the tests do.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use courier_simulations::deterministic::{self, Options, Sabotage};
use courier_simulations::replay::replay;
use courier_simulations::report::{SCHEMA_VERSION, sha256_hex};
use courier_simulations::scenario::Scenario;

const SCENARIO: &str = r#"# comments and layout are part of the text the report embeds
name = "replay-test"
duration_ms = 12000
[relays]
count = 3
[users]
per_relay = 3
contacts_per_user = 2
[workload]
rate_per_sec = 6
send_until_ms = 10000
[federation_link]
loss = 0.05
jitter = { dist = "uniform", max_ms = 30 }
[[faults]]
at_ms = 3000
kind = "partition"
sets = [[0], [1, 2]]
[[faults]]
at_ms = 7000
kind = "heal"
"#;

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_courier-sim"))
        .args(args)
        .output()
        .unwrap()
}

fn run_to(dir: &Path, seed: &str) -> std::path::PathBuf {
    let file = dir.join("scenario.toml");
    std::fs::write(&file, SCENARIO).unwrap();
    let out = dir.join("out");
    let o = sim(&[
        "run",
        file.to_str().unwrap(),
        "--seed",
        seed,
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("report.json")
}

#[test]
fn report_embeds_what_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_to(dir.path(), "31");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(v["schema_version"], u64::from(SCHEMA_VERSION));
    assert_eq!(v["courier"]["version"], env!("CARGO_PKG_VERSION"));
    let commit = v["courier"]["commit"].as_str().unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "commit {commit:?}"
    );
    assert_eq!(v["scenario_source"]["text"], SCENARIO);
    assert_eq!(v["scenario_source"]["sha256"], sha256_hex(SCENARIO));
    assert_eq!(v["seed"], 31);
    assert!(
        v.get("sabotage").is_none(),
        "an honest run records no sabotage"
    );
}

#[test]
fn replay_of_an_untouched_report_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_to(dir.path(), "31");
    let rerun = dir.path().join("rerun");
    let o = sim(&[
        "replay",
        report.to_str().unwrap(),
        "--out",
        rerun.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("identical"), "{stdout}");
    // The rerun's own files are the same bytes as the original's.
    for file in ["report.json", "summary.txt", "deliveries.svg"] {
        assert_eq!(
            std::fs::read(dir.path().join("out").join(file)).unwrap(),
            std::fs::read(rerun.join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn replay_names_a_result_that_was_altered() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_to(dir.path(), "31");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let deliveries = v["delivery"]["deliveries"].as_u64().unwrap();
    v["delivery"]["deliveries"] = (deliveries + 1).into();
    std::fs::write(&report, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let o = sim(&["replay", report.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "delivery.deliveries: report {} != rerun {deliveries}",
            deliveries + 1
        )),
        "{stdout}"
    );
}

#[test]
fn replay_refuses_scenario_text_that_does_not_match_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_to(dir.path(), "31");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    v["scenario_source"]["text"] = SCENARIO
        .replace("rate_per_sec = 6", "rate_per_sec = 7")
        .into();
    std::fs::write(&report, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let o = sim(&["replay", report.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not match its SHA-256"), "{stderr}");
}

#[test]
fn replay_reproduces_a_sabotaged_run_and_its_failure() {
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let report = deterministic::run(
        &scenario,
        &Options {
            seed: 4,
            progress: false,
            sabotage: Some(Sabotage::LoseOutboxEntry { relay: 1 }),
        },
    )
    .unwrap();
    assert!(!report.passed(), "{}", report.summary());
    let json = serde_json::to_string_pretty(&report).unwrap();
    assert!(json.contains("\"lose_outbox_entry\""), "{json}");
    let r = replay(&json).unwrap();
    assert!(r.identical(), "{:?}", r.differences);
    assert!(!r.report.passed());
}

#[test]
fn loopback_reports_are_refused_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_to(dir.path(), "31");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    v["mode"] = "loopback".into();
    let err = replay(&v.to_string()).unwrap_err();
    assert!(err.to_string().contains("cannot be replayed"), "{err}");
}
