//! Small end-to-end runs of deterministic mode: one per fault kind, replay
//! from a seed, and a deliberately broken relay that the checker must catch.

// Helpers shared by the tests panic on setup errors like the tests do.
#![allow(clippy::unwrap_used)]

use courier_simulations::deterministic::{self, Options, Sabotage};
use courier_simulations::report::Report;
use courier_simulations::scenario::Scenario;

const BASE: &str = r#"
name = "test"
duration_ms = 20000
[relays]
count = 3
[users]
per_relay = 4
devices_min = 1
devices_max = 2
contacts_per_user = 3
[groups]
count = 2
size_min = 3
size_max = 4
[workload]
rate_per_sec = 8
group_fraction = 0.3
send_until_ms = 16000
"#;

fn run(extra: &str, seed: u64) -> Report {
    let scenario = Scenario::parse(&format!("{BASE}\n{extra}")).unwrap();
    run_scenario(&scenario, seed, None)
}

fn run_scenario(scenario: &Scenario, seed: u64, sabotage: Option<Sabotage>) -> Report {
    deterministic::run(
        scenario,
        &Options {
            seed,
            progress: false,
            sabotage,
        },
    )
    .unwrap()
}

fn assert_clean(report: &Report) {
    assert!(report.passed(), "{}", report.summary());
    assert!(report.drained, "{}", report.summary());
    assert!(
        report.delivery.messages_accepted > 50,
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
fn clean_network_delivers_everything_exactly_once() {
    let r = run("", 1);
    assert_clean(&r);
    assert_eq!(r.federation_network.lost, 0);
}

#[test]
fn partition_then_heal_loses_nothing() {
    let r = run(
        "[[faults]]\nat_ms = 3000\nkind = \"partition\"\nsets = [[0], [1, 2]]\n\
         [[faults]]\nat_ms = 12000\nkind = \"heal\"\n",
        2,
    );
    assert_clean(&r);
    assert!(
        r.federation_network.partitioned > 0,
        "the partition must bite"
    );
    // Messages sent during the partition wait for the heal.
    assert!(r.latency.max_ms > 5_000, "{}", r.summary());
}

#[test]
fn relay_crash_and_restart_from_its_store_loses_nothing() {
    let r = run(
        "[[faults]]\nat_ms = 4000\nkind = \"crash\"\nrelay = 1\n\
         [[faults]]\nat_ms = 10000\nkind = \"restart\"\nrelay = 1\n",
        3,
    );
    assert_clean(&r);
    assert_eq!(r.relays[1].crashes, 1);
}

#[test]
fn relay_still_down_at_the_end_is_restarted_by_the_drain() {
    let r = run(
        "[[faults]]\nat_ms = 15000\nkind = \"crash\"\nrelay = 2\n",
        4,
    );
    assert_clean(&r);
}

#[test]
fn offline_client_gets_its_mailbox_on_return() {
    let r = run(
        "[[faults]]\nat_ms = 2000\nkind = \"client_offline\"\nrelay = 0\nuser = 0\n\
         [[faults]]\nat_ms = 2000\nkind = \"client_offline\"\nrelay = 1\nuser = 2\n\
         [[faults]]\nat_ms = 14000\nkind = \"client_online\"\nrelay = 0\nuser = 0\n",
        5,
    );
    assert_clean(&r);
}

#[test]
fn loss_duplication_and_reordering_still_give_exactly_once() {
    let links = "loss = 0.1\nduplicate = 0.1\nreorder = 0.2\njitter = { dist = \"exponential\", mean_ms = 30.0 }\n";
    let r = run(
        &format!(
            "[clients]\nretry_ms = 500\npoll_interval_ms = 2000\n\
             [federation_link]\n{links}[client_link]\n{links}"
        ),
        6,
    );
    assert_clean(&r);
    let f = &r.federation_network;
    assert!(f.lost > 0 && f.duplicated > 0 && f.reordered > 0, "{f:?}");
    // Duplicated batches reach relays twice; dedup answers "duplicate".
    assert!(r.relays.iter().map(|x| x.federated_duplicates).sum::<u64>() > 0);
}

#[test]
fn chain_topology_reaches_far_relays_through_discovery() {
    let r = run_scenario(
        &Scenario::parse(&BASE.replace(
            "count = 3\n[users]",
            "count = 5\ntopology = \"chain\"\n[users]",
        ))
        .unwrap(),
        7,
        None,
    );
    assert_clean(&r);
}

#[test]
fn same_seed_gives_a_byte_identical_report_and_another_seed_does_not() {
    let extra = "[federation_link]\nloss = 0.05\njitter = { dist = \"uniform\", max_ms = 40 }\n\
                 [[faults]]\nat_ms = 5000\nkind = \"crash\"\nrelay = 0\n\
                 [[faults]]\nat_ms = 9000\nkind = \"restart\"\nrelay = 0\n";
    let dir = tempfile::tempdir().unwrap();
    let a = run(extra, 42);
    let b = run(extra, 42);
    let c = run(extra, 43);
    a.write(&dir.path().join("a")).unwrap();
    b.write(&dir.path().join("b")).unwrap();
    for file in [
        "report.json",
        "summary.txt",
        "latency_cdf.svg",
        "deliveries.svg",
        "outbox_depth.svg",
    ] {
        let x = std::fs::read(dir.path().join("a").join(file)).unwrap();
        let y = std::fs::read(dir.path().join("b").join(file)).unwrap();
        assert!(x == y, "{file} differs between two runs with seed 42");
    }
    assert_ne!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&c).unwrap()
    );
}

#[test]
fn relay_that_loses_an_outbox_entry_is_caught_by_the_checker() {
    let scenario = Scenario::parse(BASE).unwrap();
    let honest = run_scenario(&scenario, 8, None);
    assert_clean(&honest);
    let broken = run_scenario(&scenario, 8, Some(Sabotage::LoseOutboxEntry { relay: 0 }));
    assert!(!broken.passed(), "the checker must fail a lossy relay");
    let no_loss = broken
        .invariants
        .iter()
        .find(|v| v.name == "no_loss")
        .unwrap();
    assert!(!no_loss.passed);
    assert!(no_loss.violations >= 1);
    assert!(
        no_loss.counterexamples[0].contains("never reached"),
        "{:?}",
        no_loss.counterexamples
    );
    // The lost message was sent by a user of relay 0.
    assert!(no_loss.counterexamples[0].contains("@r0/"));
    // Everything else still held.
    for v in broken.invariants.iter().filter(|v| v.name != "no_loss") {
        assert!(v.passed, "{v:?}");
    }
}

#[test]
fn messages_max_caps_the_workload_exactly() {
    let scenario = Scenario::parse(&BASE.replace(
        "send_until_ms = 16000",
        "send_until_ms = 16000\nmessages_max = 25",
    ))
    .unwrap();
    let r = run_scenario(&scenario, 9, None);
    assert_eq!(r.delivery.messages_started, 25);
    assert!(r.passed(), "{}", r.summary());
}

#[test]
fn every_shipped_scenario_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 6);
    for path in names {
        Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// A relay replaying every batch it sends: receivers recognise the copies
/// by envelope id and nothing is delivered twice.
#[test]
fn replayed_batches_are_recognised_and_delivered_once() {
    let r = run(
        "[[faults]]\nat_ms = 1000\nkind = \"replay_batches\"\nrelay = 0",
        21,
    );
    assert_clean(&r);
    let duplicates: u64 = r.relays.iter().map(|s| s.federated_duplicates).sum();
    assert!(duplicates > 10, "the replays happened: {}", r.summary());
}

/// A relay sending batches that claim another relay's origin (over its
/// own authenticated link): every forged envelope is refused, and had one
/// got in, its recipient would hold one message twice (`at_most_once`).
#[test]
fn batches_with_a_forged_origin_are_refused_whole() {
    let r = run(
        "[[faults]]\nat_ms = 1000\nkind = \"forge_origin\"\nrelay = 0\nclaims = 1",
        22,
    );
    assert_clean(&r);
    let refused: u64 = r.relays.iter().map(|s| s.federated_refused).sum();
    assert!(refused > 10, "the forgeries happened: {}", r.summary());
}

/// One account floods an offline user's mailbox (a quarter of it is that
/// account's share): the flooder is held back with `mailbox_quota`, no one
/// else is refused with `mailbox_full`, and once the victim is back every
/// message, the flood's included, is delivered.
#[test]
fn an_account_flooding_a_mailbox_gets_only_its_share() {
    let text = BASE.replace("count = 3\n", "count = 3\nmailbox_depth_max = 40\n");
    let scenario = Scenario::parse(&format!(
        "{text}
[[faults]]
at_ms = 500
kind = \"client_offline\"
relay = 1
user = 0
[[faults]]
at_ms = 1000
kind = \"flood\"
relay = 1
user = 1
to_relay = 1
to_user = 0
count = 60
[[faults]]
at_ms = 14000
kind = \"client_online\"
relay = 1
user = 0
"
    ))
    .unwrap();
    let r = run_scenario(&scenario, 23, None);
    assert_clean(&r);
    let refused = |code: &str| -> u64 {
        r.relays
            .iter()
            .map(|s| s.sends_refused.get(code).copied().unwrap_or(0))
            .sum()
    };
    assert!(refused("mailbox_quota") > 0, "{}", r.summary());
    assert_eq!(refused("mailbox_full"), 0, "{}", r.summary());
}
