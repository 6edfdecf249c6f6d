//! `courier-load` against a spawned relay: it registers, sends, receives
//! over WebSockets and reports.

#![allow(clippy::unwrap_used)]

mod common;

use common::Relay;

#[test]
fn load_tool_reports_every_message_delivered_over_http_and_over_websocket_sends() {
    let relay = Relay::start(
        &[],
        &[
            ("COURIER_RATE_LIMIT_IP_PER_SECOND", "0"),
            ("COURIER_RATE_LIMIT_ACCOUNT_PER_SECOND", "0"),
        ],
    );
    for via in ["http", "ws"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_courier-load"))
            .args(["--url", &relay.url, "--clients", "4", "--json", "send"])
            .args(["--rate", "200", "--duration", "1", "--senders", "4"])
            .args(["--via", via])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{via}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["via"], via, "{report}");
        assert_eq!(report["sent"], 200, "{report}");
        assert_eq!(report["delivered"], 200, "{report}");
        assert_eq!(report["send_errors"], 0, "{report}");
        for q in ["p50", "p99", "p999"] {
            assert!(report["latency_ms"][q].as_f64().unwrap() > 0.0, "{report}");
        }
        assert!(
            report["send_answer_ms"]["p50"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
}

#[test]
fn idle_mode_holds_connections() {
    let relay = Relay::start(&[], &[("COURIER_RATE_LIMIT_IP_PER_SECOND", "0")]);
    let pid = relay.child.id().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_courier-load"))
        .args(["--url", &relay.url, "--clients", "20", "--json", "idle"])
        .args(["--hold", "0.2", "--relay-pid", &pid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["connections"], 20, "{report}");
    assert!(
        report["relay_rss_after_kib"].as_u64().unwrap() > 0,
        "{report}"
    );
}
