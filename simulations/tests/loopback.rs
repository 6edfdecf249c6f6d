//! Loopback mode against real `courier` and `courier-client` processes.
//! Skips (with a note) when those binaries have not been built into the
//! workspace target directory.

use std::path::PathBuf;

use courier_simulations::loopback::{self, Binaries, LoopbackError};
use courier_simulations::scenario::Scenario;

fn built(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/debug")
        .join(name);
    path.is_file().then_some(path)
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
    let (Some(courier), Some(courier_client)) = (built("courier"), built("courier-client")) else {
        eprintln!(
            "skipping: build courier-node and courier-client first (target/debug/courier, courier-client)"
        );
        return;
    };
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
