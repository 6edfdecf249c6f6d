//! The `courier` command line: init, id, status, failures.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{BIN, Relay, envelope_id};
use courier_protocol::DeviceId;

fn courier(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn init_writes_config_and_key_and_id_prints_the_same_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("relay-a");
    let dir_s = dir.to_str().unwrap();
    let out = courier(&[
        "init",
        "--data-dir",
        dir_s,
        "--name",
        "relay-a.example",
        "--p2p",
        "/ip4/127.0.0.1/udp/4500/quic-v1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let peer = lines.next().unwrap().to_owned();
    assert!(peer.starts_with("12D3KooW"), "{peer}");
    assert_eq!(
        lines.next().unwrap(),
        format!("/ip4/127.0.0.1/udp/4500/quic-v1/p2p/{peer}")
    );
    let config = std::fs::read_to_string(dir.join("courier.toml")).unwrap();
    assert!(config.contains("name = \"relay-a.example\""), "{config}");

    let out = courier(&["id", "--data-dir", dir_s]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
        peer
    );

    // A second init refuses to overwrite, with one line on stderr.
    let out = courier(&["init", "--data-dir", dir_s, "--name", "relay-a.example"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
}

#[test]
fn commands_on_a_missing_relay_or_bad_config_fail_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("none");
    for args in [
        vec!["id", "--data-dir", dir.to_str().unwrap()],
        vec!["invite", "--data-dir", dir.to_str().unwrap()],
        vec!["status", "--data-dir", dir.to_str().unwrap()],
        vec!["peer", "list", "--data-dir", dir.to_str().unwrap()],
    ] {
        let out = courier(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("courier.toml"), "nmae = \"typo\"\n").unwrap();
    let out = courier(&["serve", "--data-dir", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("nmae"));
}

#[tokio::test]
async fn status_reports_users_and_mailbox_depth_while_the_relay_runs() {
    let relay = Relay::start(&[], &[]);
    let alice = relay.user("alice").await;
    relay.user("bob").await;
    for _ in 0..3 {
        alice
            .send(
                envelope_id(),
                vec![1; 8],
                &[(alice.address.clone(), DeviceId(1))],
            )
            .await
            .unwrap();
    }
    let out = relay.admin(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["users"], 2);
    assert_eq!(status["mailbox_depth"], 3);
    assert_eq!(status["outbox_depth"], 0);
    assert_eq!(status["name"], "localhost");
    assert_eq!(status["http"], relay.url.trim_start_matches("http://"));
    let text = relay.admin(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("users:         2"), "{text}");
}
