//! Loopback mode against real `courier` and `courier-client` processes.
//! The binaries are taken from this test's own target directory (wherever
//! `CARGO_TARGET_DIR` puts it) and built there first if they are missing.

use std::path::PathBuf;
use std::process::Command;

use courier_simulations::loopback::{self, Binaries, LoopbackError};
use courier_simulations::scenario::Scenario;

/// `<target>/debug/<name>`, built with cargo if it is not there yet.
fn built(name: &str) -> PathBuf {
    // This test runs as <target>/debug/deps/loopback-<hash>.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in <target>/debug/deps");
    let path = dir.join(name);
    if !path.is_file() {
        let package = if name == "courier" {
            "courier-node"
        } else {
            "courier-client"
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
    }
    assert!(path.is_file(), "no {name} at {}", path.display());
    path
}

#[test]
fn missing_binary_is_a_clear_error() {
    let err = Binaries::locate(Some(PathBuf::from("/nonexistent/courier")), None).unwrap_err();
    assert!(matches!(err, LoopbackError::MissingBinary(_)));
    assert!(err.to_string().contains("/nonexistent/courier"));
}

#[test]
fn oversized_scenario_is_refused_before_starting_anything() {
    let s = Scenario::parse(
        "name = \"big\"\nduration_ms = 1000\n[relays]\ncount = 20\n[users]\nper_relay = 10\n[workload]\nrate_per_sec = 1\n",
    )
    .unwrap();
    let bins = Binaries {
        courier: PathBuf::from("/bin/false"),
        courier_client: PathBuf::from("/bin/false"),
    };
    let dir = tempfile::tempdir().unwrap();
    let err = loopback::run(&s, &bins, dir.path()).unwrap_err();
    assert!(matches!(err, LoopbackError::TooLarge(200)), "{err}");
}

#[test]
fn two_real_relays_deliver_everything_and_store_no_plaintext() {
    let (courier, courier_client) = (built("courier"), built("courier-client"));
    let s = Scenario::parse(
        r#"
name = "loopback-test"
duration_ms = 6000
[relays]
count = 2
[users]
per_relay = 2
contacts_per_user = 2
[workload]
rate_per_sec = 1
send_until_ms = 4000
[clients]
poll_interval_ms = 1000
"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = loopback::run(
        &s,
        &Binaries {
            courier,
            courier_client,
        },
        dir.path(),
    )
    .unwrap();
    assert!(report.passed(), "{}", report.summary());
    assert!(
        report.delivery.messages_accepted > 0,
        "{}",
        report.summary()
    );
    assert_eq!(
        report.delivery.deliveries,
        report.delivery.deliveries_expected,
        "{}",
        report.summary()
    );
}

#[test]
fn loopback_partition_delays_delivery_until_healed_and_loses_nothing() {
    if let Err(why) = courier_simulations::netns::available() {
        eprintln!("SKIPPED: loopback partitions need network namespaces: {why}");
        return;
    }
    let (courier, courier_client) = (built("courier"), built("courier-client"));
    // One user per relay, each the other's only contact: every message
    // crosses the partition.
    let (partition_ms, heal_ms) = (1_000, 11_000);
    let s = Scenario::parse(&format!(
        r#"
name = "loopback-partition"
duration_ms = 14000
[relays]
count = 2
[users]
per_relay = 1
contacts_per_user = 1
[workload]
rate_per_sec = 1
send_until_ms = 9000
[clients]
poll_interval_ms = 1000
[[faults]]
at_ms = {partition_ms}
kind = "partition"
sets = [[0], [1]]
[[faults]]
at_ms = {heal_ms}
kind = "heal"
"#
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = loopback::run(
        &s,
        &Binaries {
            courier,
            courier_client,
        },
        dir.path(),
    )
    .unwrap();
    let summary = report.summary();
    let facts = report.loopback.as_ref().unwrap();
    assert_eq!(facts.isolation, "network_namespaces", "{summary}");
    assert!(
        facts.applied.iter().any(|a| a.starts_with("partition")),
        "{summary}"
    );
    // Nothing lost.
    assert!(report.passed(), "{summary}");
    assert!(report.delivery.messages_accepted >= 3, "{summary}");
    assert_eq!(
        report.delivery.deliveries, report.delivery.deliveries_expected,
        "{summary}"
    );
    // Nothing crosses while the partition stands (a message sent just before
    // it may still arrive in the next poll), everything after the heal.
    let bucket = report.series.bucket_ms;
    let during: u64 = report
        .series
        .deliveries
        .iter()
        .enumerate()
        .filter(|&(b, _)| {
            let t = b as u64 * bucket;
            t >= partition_ms + 2 * bucket && t + bucket <= heal_ms
        })
        .map(|(_, &n)| n)
        .sum();
    assert_eq!(during, 0, "deliveries during the partition: {summary}");
    assert!(
        report.latency.max_ms >= heal_ms - 9_000,
        "the message sent last waited for the heal: {summary}"
    );
    // The relays' own counters saw the federation work.
    let m = report.federation_metrics_total().unwrap();
    assert!(
        m.envelopes_delivered >= report.delivery.messages_accepted,
        "{summary}"
    );
    assert_eq!(m.envelopes_received, m.envelopes_delivered, "{summary}");
    // The run removed its namespaces.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let me = format!("csim{}x", std::process::id());
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&me),
        "namespaces left behind: {}",
        String::from_utf8_lossy(&list.stdout)
    );
}

#[test]
fn stale_namespaces_of_dead_runs_are_swept_and_live_ones_kept() {
    if let Err(why) = courier_simulations::netns::available() {
        eprintln!("SKIPPED: needs network namespaces: {why}");
        return;
    }
    let ip = |args: &[&str]| {
        let o = Command::new("ip").args(args).output().unwrap();
        assert!(o.status.success(), "ip {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Above the kernel's largest pid_max (2^22), so no such process exists.
    let dead = "csim4194399x0-r0";
    let live = format!("csim{}x9999-r0", std::process::id());
    ip(&["netns", "add", dead]);
    ip(&["netns", "add", &live]);
    // A loopback run starting in parallel may sweep it first; either way it
    // must be gone after this call.
    let swept = courier_simulations::netns::sweep_stale();
    let list = ip(&["netns", "list"]);
    let _ = Command::new("ip").args(["netns", "del", &live]).status();
    assert!(!list.contains(dead), "swept {swept:?}, left: {list}");
    assert!(
        list.contains(&live),
        "a live run's namespace was swept: {list}"
    );
}
