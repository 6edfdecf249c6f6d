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
