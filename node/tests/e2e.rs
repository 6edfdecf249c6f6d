//! End-to-end: a real `courier serve` process on a free port, real HTTP and
//! WebSocket clients.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::device::{self as client, Device};
use common::{Relay, envelope_id, expect_error, link_second_device};
use courier_protocol::api::LinkResponse;
use courier_protocol::ws::ServerFrame;
use courier_protocol::{Address, DeviceId};
use reqwest::Method;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// The test PostgreSQL's URL, or `None` (and a note) when the tests run
/// without one.
fn postgres_url() -> Option<String> {
    let url = std::env::var("COURIER_TEST_DATABASE_URL").ok();
    if url.is_none() {
        eprintln!("skipping: COURIER_TEST_DATABASE_URL is not set");
    }
    url
}

/// A schema name no other test run uses.
fn fresh_schema() -> String {
    format!("courier_e2e_{:08x}", rand::random::<u32>())
}

async fn next_envelope(socket: &mut client::Socket) -> courier_protocol::api::Envelope {
    loop {
        match socket.next_within(WAIT).await.unwrap() {
            Some(ServerFrame::Envelope { envelope }) => return envelope,
            Some(ServerFrame::PrekeysLow { .. }) => continue,
            other => panic!("expected an envelope, got {other:?}"),
        }
    }
}

/// Sends `body` from `from` to device 1 of `to` over HTTP and returns the
/// envelope that then arrives on `socket` (a socket of that device),
/// checked to be the one sent.
async fn send_and_receive(
    from: &Device,
    to: &Address,
    socket: &mut client::Socket,
    body: &[u8],
) -> courier_protocol::api::Envelope {
    let id = envelope_id();
    from.send(id, body.to_vec(), &[(to.clone(), DeviceId(1))])
        .await
        .unwrap();
    let envelope = next_envelope(socket).await;
    assert_eq!(envelope.id, id);
    envelope
}

#[tokio::test]
async fn messages_reach_every_device_over_websocket_and_offline_devices_catch_up() {
    let relay = Relay::start(&[], &[]);
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    let bob2 = link_second_device(&relay, &bob).await;

    // Keys: upload, then fetch bob's bundle (each one-time prekey once).
    bob.upload_keys(3).await.unwrap();
    bob2.upload_keys(3).await.unwrap();
    let bundle = alice.bundle(&bob.address).await.unwrap();
    assert_eq!(bundle.bundles.len(), 2);
    assert!(bundle.bundles.iter().all(|b| b.one_time_prekey.is_some()));
    let again = alice.bundle(&bob.address).await.unwrap();
    let first_ids: Vec<_> = bundle
        .bundles
        .iter()
        .map(|b| b.one_time_prekey.as_ref().unwrap().id)
        .collect();
    let second_ids: Vec<_> = again
        .bundles
        .iter()
        .map(|b| b.one_time_prekey.as_ref().unwrap().id)
        .collect();
    assert_ne!(
        first_ids, second_ids,
        "a one-time prekey is handed out once"
    );

    // bob's device 1 is online, device 2 offline.
    let mut socket = bob.connect().await.unwrap();
    let to = [
        (bob.address.clone(), DeviceId(1)),
        (bob.address.clone(), DeviceId(2)),
    ];
    let mut sent = Vec::new();
    for i in 0..5u8 {
        let id = envelope_id();
        let response = alice.send(id, vec![i; 32], &to).await.unwrap();
        assert_eq!(response.id, id);
        sent.push(id);
    }
    // A retry with the same id changes nothing.
    alice.send(sent[0], vec![0; 32], &to).await.unwrap();

    let mut got = Vec::new();
    for _ in 0..5 {
        let envelope = next_envelope(&mut socket).await;
        got.push(envelope.id);
        socket.ack(vec![envelope.seq]).await.unwrap();
    }
    assert_eq!(got, sent, "pushed in mailbox order, exactly once");
    assert!(
        socket
            .next_within(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );
    socket.close().await;

    // Acked envelopes are gone from device 1's mailbox.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(bob.fetch(0, 100).await.unwrap().envelopes.is_empty());

    // Device 2 comes online and gets everything, in order; unacked ones
    // come again on the next connection.
    let mut socket2 = bob2.connect().await.unwrap();
    let mut first_pass = Vec::new();
    for _ in 0..5 {
        first_pass.push(next_envelope(&mut socket2).await);
    }
    assert_eq!(first_pass.iter().map(|e| e.id).collect::<Vec<_>>(), sent);
    socket2.close().await;
    let mut socket2 = bob2.connect().await.unwrap();
    for expected in &first_pass {
        let envelope = next_envelope(&mut socket2).await;
        assert_eq!(envelope.seq, expected.seq);
        socket2.ack(vec![envelope.seq]).await.unwrap();
    }
    socket2.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(bob2.fetch(0, 100).await.unwrap().envelopes.is_empty());

    // HTTP polling works as well.
    let id = envelope_id();
    bob.send(
        id,
        b"hi alice".to_vec(),
        &[(alice.address.clone(), DeviceId(1))],
    )
    .await
    .unwrap();
    let fetched = alice.fetch(0, 10).await.unwrap();
    assert_eq!(fetched.envelopes.len(), 1);
    assert_eq!(fetched.envelopes[0].body.as_slice(), b"hi alice");
    assert_eq!(
        alice
            .ack(vec![fetched.envelopes[0].seq])
            .await
            .unwrap()
            .acked,
        1
    );
}

#[tokio::test]
async fn invite_only_registration_needs_a_fresh_code() {
    let relay = Relay::start(&["--name", "relay-x.test"], &[]);
    let register = |invite: Option<String>| {
        let relay = &relay;
        async move { Device::register(&relay.http, &relay.url, &relay.name, "carol", invite).await }
    };
    let err = register(None).await.unwrap_err().to_string();
    assert!(err.contains("invite_required"), "{err}");
    let err = register(Some("not-a-code".into()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid_invite"), "{err}");

    let out = relay.admin(&["invite"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let carol = register(Some(code.clone())).await.unwrap();
    assert_eq!(carol.address.to_string(), "carol@relay-x.test");
    let err = Device::register(&relay.http, &relay.url, &relay.name, "dave", Some(code))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid_invite"), "a code works once: {err}");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_or_logout_revokes() {
    let relay = Relay::start(&[], &[]);
    let mut alice = relay.user("alice").await;
    let first = alice.tokens.clone().unwrap();
    let rotated: courier_protocol::api::TokenResponse = client::decode(
        relay
            .req(Method::POST, "/v1/auth/refresh")
            .json(&json!({"refresh_token": first.refresh_token}))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_ne!(rotated.refresh_token, first.refresh_token);
    alice.tokens = Some(rotated.clone());
    alice.fetch(0, 1).await.unwrap();

    // Reusing the old refresh token revokes the whole session.
    let reuse = relay
        .req(Method::POST, "/v1/auth/refresh")
        .json(&json!({"refresh_token": first.refresh_token}))
        .send()
        .await
        .unwrap();
    expect_error(reuse, 401, "invalid_refresh_token").await;
    let revoked = relay
        .req(Method::GET, "/v1/messages")
        .bearer_auth(&rotated.access_token)
        .send()
        .await
        .unwrap();
    expect_error(revoked, 401, "unauthenticated").await;

    // Logout ends a fresh session at once.
    alice.login().await.unwrap();
    let token = alice.access_token().to_owned();
    let out = relay
        .req(Method::POST, "/v1/auth/logout")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = relay
        .req(Method::GET, "/v1/keys/count")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect_error(after, 401, "unauthenticated").await;
}

#[tokio::test]
async fn expired_access_tokens_are_refused() {
    let relay = Relay::start(&[], &[("COURIER_RELAY_ACCESS_TOKEN_SECS", "1")]);
    let alice = relay.user("alice").await;
    alice.fetch(0, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let response = relay
        .req(Method::GET, "/v1/messages")
        .bearer_auth(alice.access_token())
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "token_expired").await;
}

#[tokio::test]
async fn bad_input_gets_its_documented_error_and_changes_nothing() {
    let relay = Relay::start(&[], &[]);
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    let post = |path: &str, body: &'static str| {
        relay
            .req(Method::POST, path)
            .bearer_auth(alice.access_token())
            .header("content-type", "application/json")
            .body(body)
    };

    // Malformed JSON, wrong types, unknown fields.
    expect_error(
        post("/v1/messages", "{not json").send().await.unwrap(),
        400,
        "malformed",
    )
    .await;
    expect_error(
        post("/v1/messages/ack", r#"{"seqs": "one"}"#)
            .send()
            .await
            .unwrap(),
        400,
        "malformed",
    )
    .await;
    expect_error(
        post("/v1/messages/ack", r#"{"seqs": [1], "extra": true}"#)
            .send()
            .await
            .unwrap(),
        400,
        "malformed",
    )
    .await;
    expect_error(
        post(
            "/v1/auth/challenge",
            r#"{"username": "alice", "device": 1, "x": 1}"#,
        )
        .send()
        .await
        .unwrap(),
        400,
        "malformed",
    )
    .await;
    // Oversized body.
    let big = vec![b'a'; courier_protocol::limits::HTTP_BODY_BYTES_MAX + 1];
    let response = relay
        .req(Method::POST, "/v1/messages")
        .bearer_auth(alice.access_token())
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    expect_error(response, 413, "payload_too_large").await;

    // Missing and forged tokens.
    let response = relay.req(Method::GET, "/v1/messages").send().await.unwrap();
    expect_error(response, 401, "unauthenticated").await;
    let response = relay
        .req(Method::GET, "/v1/messages")
        .bearer_auth("Zm9yZ2Vk")
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "unauthenticated").await;
    let response = relay
        .req(Method::GET, "/v1/ws")
        .header("authorization", "Bearer forged")
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "unauthenticated").await;

    // Another account's mailbox: alice cannot ack bob's envelope.
    let id = envelope_id();
    alice
        .send(
            id,
            b"for bob".to_vec(),
            &[(bob.address.clone(), DeviceId(1))],
        )
        .await
        .unwrap();
    let bobs = bob.fetch(0, 10).await.unwrap();
    assert_eq!(bobs.envelopes.len(), 1);
    assert_eq!(
        alice.ack(vec![bobs.envelopes[0].seq]).await.unwrap().acked,
        0
    );
    assert!(alice.fetch(0, 10).await.unwrap().envelopes.is_empty());
    assert_eq!(bob.fetch(0, 10).await.unwrap().envelopes.len(), 1);

    // Another account's keys: a link code of bob's account is invisible to alice.
    let key = client::new_key();
    let link: LinkResponse = client::decode(
        relay
            .req(Method::POST, "/v1/links")
            .json(&json!({"username": "bob", "device": courier_client::wire::device_keys(&key)}))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let response = relay
        .req(Method::GET, &format!("/v1/links/{}", link.code))
        .bearer_auth(alice.access_token())
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "invalid_link_code").await;
    // A prekey signed by someone else's key is refused.
    let err = {
        let mut mallory = Device::from_parts(
            relay.http.clone(),
            &relay.url,
            alice.address.clone(),
            alice.device,
            client::new_key(),
        );
        mallory.tokens = alice.tokens.clone();
        mallory.upload_keys(1).await.unwrap_err().to_string()
    };
    assert!(err.contains("invalid_signature"), "{err}");

    // A replayed login challenge.
    let challenge = alice.challenge().await.unwrap();
    let login = alice.answer(&challenge);
    let _: courier_protocol::api::TokenResponse =
        alice.post("/v1/auth/login", &login).await.unwrap();
    let response = relay
        .req(Method::POST, "/v1/auth/login")
        .json(&login)
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "invalid_challenge").await;
    // A login signed by the wrong key.
    let challenge = alice.challenge().await.unwrap();
    let mut forged = alice.answer(&challenge);
    forged.signature.0[0] ^= 1;
    let response = relay
        .req(Method::POST, "/v1/auth/login")
        .json(&forged)
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "invalid_signature").await;

    // Unknown routes and wrong methods are JSON too.
    expect_error(
        relay.req(Method::GET, "/v1/nope").send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    let response = relay
        .req(Method::DELETE, "/v1/accounts")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    // Bad address in a key lookup.
    let response = relay
        .req(Method::GET, "/v1/keys/not-an-address")
        .bearer_auth(alice.access_token())
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "invalid_address").await;
}

#[tokio::test]
async fn health_readiness_metrics_openapi_and_headers() {
    let relay = Relay::start(&[], &[]);
    let alice = relay.user("alice").await;
    let response = relay.req(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    let response = relay
        .req(Method::GET, "/readyz")
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");

    alice
        .send(
            envelope_id(),
            vec![1; 8],
            &[(alice.address.clone(), DeviceId(1))],
        )
        .await
        .unwrap();
    let text = relay.metrics().await;
    for name in [
        "courier_http_requests_total",
        "courier_http_request_duration_seconds_bucket",
        "courier_messages_accepted_total",
        "courier_outbox_depth",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(text.contains("route=\"/v1/messages\""), "{text}");

    let doc: serde_json::Value = relay
        .req(Method::GET, "/v1/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/accounts",
        "/v1/messages",
        "/v1/ws",
        "/v1/keys/{address}",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
}

#[tokio::test]
async fn sigterm_closes_websockets_with_a_close_frame_and_exits_cleanly() {
    let mut relay = Relay::start(&[], &[]);
    let alice = relay.user("alice").await;
    let mut socket = alice.connect().await.unwrap();
    // Make sure the connection is live before the signal.
    send_and_receive(&alice, &alice.address, &mut socket, &[7; 8]).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = relay.terminate();
        (status, relay)
    });
    assert!(socket.next_within(WAIT).await.unwrap().is_none(), "closed");
    let (status, _relay) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn kill_9_during_sends_loses_and_duplicates_nothing() {
    let mut relay = Relay::start(&[], &[]);
    let alice = std::sync::Arc::new(relay.user("alice").await);
    let bob = relay.user("bob").await;
    let to = [(bob.address.clone(), DeviceId(1))];

    // Sends 16 at a time until the relay is gone (or a bound is hit), so
    // the kill lands mid-load however fast the machine is.
    let sender = {
        let alice = alice.clone();
        let to = to.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut failed = 0u32;
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0u32;
            while failed == 0 && i < 200_000 {
                let alice = alice.clone();
                let to = to.clone();
                tasks.spawn(async move {
                    let id = envelope_id();
                    alice
                        .send(id, i.to_be_bytes().to_vec(), &to)
                        .await
                        .ok()
                        .map(|_| id)
                });
                i += 1;
                if tasks.len() >= 16 {
                    match tasks.join_next().await {
                        Some(Ok(Some(id))) => accepted.push(id),
                        _ => failed += 1,
                    }
                }
            }
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Some(id)) => accepted.push(id),
                    _ => failed += 1,
                }
            }
            (accepted, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    relay.kill9();
    let (accepted, failed) = sender.await.unwrap();
    assert!(!accepted.is_empty(), "some sends succeeded before the kill");
    assert!(failed > 0, "the kill interrupted the load");

    relay.restart();
    let mut bob = bob;
    bob.base = relay.url.clone();
    bob.login().await.unwrap();
    let mut seen: BTreeMap<courier_protocol::EnvelopeId, usize> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = bob.fetch(after, 500).await.unwrap();
        for envelope in &page.envelopes {
            *seen.entry(envelope.id).or_default() += 1;
            after = envelope.seq;
        }
        if !page.more {
            break;
        }
    }
    for id in &accepted {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "accepted {id} delivered exactly once"
        );
    }
    assert!(seen.values().all(|&n| n == 1), "no envelope twice");
}

#[tokio::test]
async fn postgres_end_to_end_when_configured() {
    let Some(url) = postgres_url() else {
        return;
    };
    let schema = fresh_schema();
    let relay = Relay::start(
        &["--database-url", &url],
        &[("COURIER_DATABASE_SCHEMA", &schema)],
    );
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    bob.upload_keys(2).await.unwrap();
    assert_eq!(alice.bundle(&bob.address).await.unwrap().bundles.len(), 1);
    let mut socket = bob.connect().await.unwrap();
    let envelope = send_and_receive(&alice, &bob.address, &mut socket, b"over postgres").await;
    socket.ack(vec![envelope.seq]).await.unwrap();
    socket.close().await;
    drop(relay);
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[test]
fn address_type_is_what_clients_send() {
    let a: Address = "Alice@Localhost".parse().unwrap();
    assert_eq!(a.to_string(), "alice@localhost");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let relay = Relay::start(
        &[],
        &[
            ("COURIER_RATE_LIMIT_IP_PER_SECOND", "0.5"),
            ("COURIER_RATE_LIMIT_IP_BURST", "3"),
        ],
    );
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let response = relay.req(Method::GET, "/healthz").send().await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").cloned();
            expect_error(response, 429, "rate_limited").await;
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let wait: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
}

#[tokio::test]
async fn a_slow_reader_gets_a_bounded_window_and_loses_nothing() {
    let relay = Relay::start(&[], &[("COURIER_WEBSOCKET_IN_FLIGHT_MAX", "10")]);
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    let to = [(bob.address.clone(), DeviceId(1))];
    let mut sent = Vec::new();
    for i in 0..25u8 {
        let id = envelope_id();
        alice.send(id, vec![i; 16], &to).await.unwrap();
        sent.push(id);
    }
    let mut socket = bob.connect().await.unwrap();
    let mut window = Vec::new();
    for _ in 0..10 {
        window.push(next_envelope(&mut socket).await);
    }
    // Nothing beyond the window until something is acked.
    assert!(
        socket
            .next_within(Duration::from_millis(400))
            .await
            .unwrap()
            .is_none()
    );
    socket
        .ack(window.iter().map(|e| e.seq).collect())
        .await
        .unwrap();
    let mut got: Vec<_> = window.iter().map(|e| e.id).collect();
    while got.len() < 25 {
        let envelope = next_envelope(&mut socket).await;
        got.push(envelope.id);
        socket.ack(vec![envelope.seq]).await.unwrap();
    }
    assert_eq!(got, sent);
}

#[tokio::test]
async fn idle_connections_that_never_answer_pings_are_closed() {
    let relay = Relay::start(
        &[],
        &[
            ("COURIER_WEBSOCKET_PING_INTERVAL_MS", "100"),
            ("COURIER_WEBSOCKET_IDLE_TIMEOUT_MS", "300"),
        ],
    );
    let alice = relay.user("alice").await;
    let mut socket = alice.connect().await.unwrap();
    // Not reading means not answering pings.
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The first frame is the prekeys_low notice (no prekeys uploaded);
    // after it the relay closes.
    let first = socket.next_within(Duration::from_secs(2)).await.unwrap();
    assert!(
        matches!(first, Some(ServerFrame::PrekeysLow { remaining: 0 })),
        "{first:?}"
    );
    let frame = socket.next_within(Duration::from_secs(2)).await.unwrap();
    assert!(frame.is_none(), "closed, got {frame:?}");
}

#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let mut relay = Relay::start_with_stderr(&["--log-format", "json"], &[("RUST_LOG", "info")]);
    let response = relay
        .req(Method::GET, "/healthz")
        .header("x-request-id", "find-me-7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    relay.terminate();
    let logs = relay.stderr_text();
    let line = logs
        .lines()
        .find(|l| l.contains("find-me-7"))
        .unwrap_or_else(|| panic!("no log line with the request id:\n{logs}"));
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(value["span"]["request_id"], "find-me-7");
}

#[tokio::test]
async fn two_federated_relays_carry_bundles_and_pushes_across() {
    let relay_a = Relay::start_federating("relay-a.test", &[]);
    let bootstrap = format!("[\"{}\"]", relay_a.full_address());
    let relay_b = Relay::start(
        &["--name", "relay-b.test", "--registration", "open"],
        &[("COURIER_FEDERATION_BOOTSTRAP", &bootstrap)],
    );
    let alice = relay_a.user("alice").await;
    alice.upload_keys(2).await.unwrap();
    let bob = relay_b.user("bob").await;
    bob.upload_keys(2).await.unwrap();

    // The bootstrap dial happens in the background: retry until peered.
    let deadline = std::time::Instant::now() + WAIT;
    let bundle = loop {
        match bob.bundle(&alice.address).await {
            Ok(bundle) => break bundle,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("bundle over federation: {e}"),
        }
    };
    assert_eq!(bundle.address, alice.address);
    assert!(bundle.bundles[0].one_time_prekey.is_some());

    let mut socket = alice.connect().await.unwrap();
    let envelope = send_and_receive(&bob, &alice.address, &mut socket, b"across").await;
    assert_eq!(envelope.origin.as_str(), "relay-b.test");
    assert_eq!(envelope.body.as_slice(), b"across");
    socket.ack(vec![envelope.seq]).await.unwrap();
}

#[tokio::test]
async fn acks_made_elsewhere_free_a_full_websocket_window() {
    let relay = Relay::start(
        &[],
        &[
            ("COURIER_WEBSOCKET_IN_FLIGHT_MAX", "5"),
            ("COURIER_WEBSOCKET_PING_INTERVAL_MS", "200"),
        ],
    );
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    let to = [(bob.address.clone(), DeviceId(1))];
    let mut sent = Vec::new();
    for i in 0..8u8 {
        let id = envelope_id();
        alice.send(id, vec![i; 8], &to).await.unwrap();
        sent.push(id);
    }
    let mut socket = bob.connect().await.unwrap();
    let mut window = Vec::new();
    for _ in 0..5 {
        window.push(next_envelope(&mut socket).await.seq);
    }
    // Acked over HTTP, not on this connection.
    assert_eq!(bob.ack(window).await.unwrap().acked, 5);
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(next_envelope(&mut socket).await.id);
    }
    assert_eq!(rest, sent[5..]);
}

#[tokio::test]
async fn bad_acks_fetches_and_frames_are_refused() {
    let relay = Relay::start(&[], &[]);
    let alice = relay.user("alice").await;
    let get = |path: &str| {
        relay
            .req(Method::GET, path)
            .bearer_auth(alice.access_token())
    };
    expect_error(
        get("/v1/messages?limit=0").send().await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        get("/v1/messages?limit=501").send().await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        get("/v1/messages?limit=x").send().await.unwrap(),
        400,
        "malformed",
    )
    .await;
    expect_error(
        get("/v1/messages?after=1&zzz=1").send().await.unwrap(),
        400,
        "malformed",
    )
    .await;
    let err = alice.ack(vec![]).await.unwrap_err().to_string();
    assert!(err.contains("bad_request"), "{err}");
    let err = alice
        .ack((1..=501).collect())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("payload_too_large"), "{err}");

    // Frames no client sends: over a raw socket.
    let mut socket = alice.connect_raw().await;
    socket.send_text("{\"type\":\"nack\"}").await;
    socket.send_text("{\"type\":\"ack\",\"seqs\":[]}").await;
    let mut codes = Vec::new();
    while codes.len() < 2 {
        match socket.next_within(WAIT).await {
            Some(ServerFrame::Error { error }) => codes.push(error.code.as_str()),
            Some(ServerFrame::PrekeysLow { .. }) => {}
            other => panic!("expected error frames, got {other:?}"),
        }
    }
    assert_eq!(codes, ["malformed", "bad_request"]);
}

#[tokio::test]
async fn cors_preflight_and_gzip_follow_the_config() {
    let relay = Relay::start(
        &[],
        &[("COURIER_HTTP_CORS_ORIGINS", "[\"https://app.example\"]")],
    );
    let preflight = relay
        .req(Method::OPTIONS, "/v1/messages")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = relay
        .req(Method::GET, "/healthz")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    let doc = relay
        .req(Method::GET, "/v1/openapi.json")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(doc.headers()["content-encoding"], "gzip");
}

#[tokio::test]
async fn a_connected_device_is_told_when_its_prekeys_run_low() {
    let relay = Relay::start(&[], &[("COURIER_RELAY_PREKEYS_LOW_WATER", "3")]);
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    bob.upload_keys(4).await.unwrap();
    let mut socket = bob.connect().await.unwrap();
    // 4 left, low water 3: nothing yet.
    assert!(
        socket
            .next_within(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );
    alice.bundle(&bob.address).await.unwrap();
    alice.bundle(&bob.address).await.unwrap();
    match socket.next_within(WAIT).await.unwrap() {
        Some(ServerFrame::PrekeysLow { remaining }) => assert!(remaining < 3, "{remaining}"),
        other => panic!("expected prekeys_low, got {other:?}"),
    }
}

/// Waits for the answer to each of `requests` on `socket` (envelopes and
/// notices in between are skipped); returns them by request number.
async fn answers(
    socket: &mut client::Socket,
    requests: &[u64],
) -> BTreeMap<u64, Result<courier_protocol::api::SendResponse, courier_protocol::ApiError>> {
    let mut out = BTreeMap::new();
    while out.len() < requests.len() {
        match socket.next_within(WAIT).await.unwrap() {
            Some(ServerFrame::Sent { request, response }) => {
                out.insert(request, Ok(response));
            }
            Some(ServerFrame::Refused { request, error }) => {
                out.insert(request, Err(error));
            }
            Some(ServerFrame::Envelope { .. } | ServerFrame::PrekeysLow { .. }) => {}
            other => panic!("expected an answer, got {other:?}"),
        }
    }
    assert!(out.keys().all(|r| requests.contains(r)));
    out
}

#[tokio::test]
async fn sends_over_the_websocket_are_answered_per_request_and_checked_like_http() {
    let relay = Relay::start(
        &[],
        &[
            ("COURIER_RATE_LIMIT_ACCOUNT_PER_SECOND", "1"),
            ("COURIER_RATE_LIMIT_ACCOUNT_BURST", "20"),
        ],
    );
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    let to = [(bob.address.clone(), DeviceId(1))];
    let mut bob_socket = bob.connect().await.unwrap();
    let mut socket = alice.connect().await.unwrap();

    // Several in flight at once; each answered with its request number.
    let ids: Vec<_> = (0..3).map(|_| envelope_id()).collect();
    for (n, id) in ids.iter().enumerate() {
        socket
            .send_message(n as u64, client::message(*id, vec![n as u8; 8], &to))
            .await
            .unwrap();
    }
    let first = answers(&mut socket, &[0, 1, 2]).await;
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(first[&(n as u64)].as_ref().unwrap().id, *id);
    }
    for id in &ids {
        let envelope = next_envelope(&mut bob_socket).await;
        assert_eq!(envelope.id, *id, "stored and pushed in the order sent");
        bob_socket.ack(vec![envelope.seq]).await.unwrap();
    }

    // A retry answers like the first time and stores nothing new.
    socket
        .send_message(10, client::message(ids[0], vec![0; 8], &to))
        .await
        .unwrap();
    let retry = answers(&mut socket, &[10]).await;
    assert_eq!(retry[&10], first[&0]);

    // Refusals carry HTTP's codes and leave the connection open: an
    // unknown user, a reused id with other content, an invalid message.
    let carol = "carol@localhost".parse::<Address>().unwrap();
    socket
        .send_message(
            11,
            client::message(envelope_id(), vec![1], &[(carol, DeviceId(1))]),
        )
        .await
        .unwrap();
    socket
        .send_message(12, client::message(ids[1], b"other".to_vec(), &to))
        .await
        .unwrap();
    socket
        .send_message(13, client::message(envelope_id(), vec![1], &[]))
        .await
        .unwrap();
    let refused = answers(&mut socket, &[11, 12, 13]).await;
    let code = |r: &Result<_, courier_protocol::ApiError>| r.as_ref().unwrap_err().code;
    assert_eq!(
        code(&refused[&11]),
        courier_protocol::ErrorCode::UnknownUser
    );
    assert_eq!(code(&refused[&12]), courier_protocol::ErrorCode::Conflict);
    assert_eq!(code(&refused[&13]), courier_protocol::ErrorCode::BadRequest);
    // A frame that is not a send at all is an error frame, not a refusal
    // (sent raw: the SDK cannot build it; the raw socket's first frames
    // may be the prekey notice and pushed envelopes).
    let mut raw = alice.connect_raw().await;
    raw.send_text(r#"{"type":"send","request":14,"message":{"id":"x"}}"#)
        .await;
    loop {
        match raw.next_within(WAIT).await {
            Some(ServerFrame::PrekeysLow { .. } | ServerFrame::Envelope { .. }) => {}
            Some(ServerFrame::Error { error }) => {
                assert_eq!(error.code, courier_protocol::ErrorCode::Malformed);
                break;
            }
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    // The per-account rate limit covers sends over the socket: of 30 at
    // once some are refused, and only the accepted ones reach bob.
    let requests: Vec<u64> = (100..130).collect();
    let mut by_request = BTreeMap::new();
    for r in &requests {
        let id = envelope_id();
        by_request.insert(*r, id);
        socket
            .send_message(*r, client::message(id, vec![7], &to))
            .await
            .unwrap();
    }
    let burst = answers(&mut socket, &requests).await;
    let accepted: Vec<_> = requests
        .iter()
        .filter(|r| burst[r].is_ok())
        .map(|r| by_request[r])
        .collect();
    let limited = burst
        .values()
        .filter(|r| matches!(r, Err(e) if e.code == courier_protocol::ErrorCode::RateLimited))
        .count();
    assert!(limited > 0, "the burst of 20 ran out");
    assert_eq!(accepted.len() + limited, requests.len());
    let mut got = Vec::new();
    while got.len() < accepted.len() {
        let envelope = next_envelope(&mut bob_socket).await;
        got.push(envelope.id);
        bob_socket.ack(vec![envelope.seq]).await.unwrap();
    }
    got.sort();
    let mut want = accepted.clone();
    want.sort();
    assert_eq!(got, want, "exactly the accepted sends were stored");

    // After logout the open socket can no longer send: the logout closes
    // it (4001), and a send that got in first is refused; nothing is
    // stored. (First let the account's bucket refill a token.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = alice.access_token().to_owned();
    let out = relay
        .req(Method::POST, "/v1/auth/logout")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    // The socket may already be closed by the relay: then the frame is
    // never read.
    let _ = socket
        .send_message(200, client::message(envelope_id(), vec![9], &to))
        .await;
    loop {
        match socket.next_within(WAIT).await {
            Ok(Some(ServerFrame::Refused { request, error })) => {
                assert_eq!(request, 200);
                assert_eq!(error.code, courier_protocol::ErrorCode::Unauthenticated);
            }
            Ok(Some(ServerFrame::Envelope { .. } | ServerFrame::PrekeysLow { .. })) => {}
            Ok(None) | Err(_) => break,
            Ok(Some(other)) => panic!("after logout: {other:?}"),
        }
    }
    assert!(
        bob_socket
            .next_within(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn websocket_sends_in_flight_at_sigterm_are_answered_or_not_stored() {
    let mut relay = Relay::start(&[], &[]);
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    let to = [(bob.address.clone(), DeviceId(1))];
    let mut socket = alice.connect().await.unwrap();
    // A stream of sends; SIGTERM lands in the middle of it.
    let mut ids = BTreeMap::new();
    for request in 0..200u64 {
        let id = envelope_id();
        ids.insert(request, id);
        socket
            .queue_message(request, client::message(id, vec![1; 64], &to))
            .await
            .unwrap();
    }
    socket.flush().await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = relay.terminate();
        (status, relay)
    });
    // Everything answered `sent` before the close frame is durable. (The
    // relay exits with our unread frames in its socket, so the end may be
    // a reset rather than a close frame.)
    let mut answered = Vec::new();
    while let Ok(Some(frame)) = socket.next_within(WAIT).await {
        if let ServerFrame::Sent { request, response } = frame {
            assert_eq!(response.id, ids[&request]);
            answered.push(response.id);
        }
    }
    let (status, mut relay) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    relay.restart();
    let mut bob = bob;
    bob.base = relay.url.clone();
    bob.login().await.unwrap();
    let stored: Vec<_> = bob
        .fetch(0, 500)
        .await
        .unwrap()
        .envelopes
        .iter()
        .map(|e| e.id)
        .collect();
    let unique: std::collections::BTreeSet<_> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "nothing stored twice");
    for id in &answered {
        assert!(stored.contains(id), "a send answered `sent` was lost");
    }
    // Whatever was stored was sent by this test (answered or not).
    let sent: std::collections::BTreeSet<_> = ids.values().collect();
    assert!(stored.iter().all(|id| sent.contains(id)));
}

#[tokio::test]
async fn two_serve_processes_on_one_postgres_wake_each_others_websockets() {
    let Some(url) = postgres_url() else {
        return;
    };
    let schema = fresh_schema();
    let envs = [("COURIER_DATABASE_SCHEMA", schema.as_str())];
    let one = Relay::start(&["--database-url", &url], &envs);
    let two = Relay::start(&["--database-url", &url], &envs);
    let mut alice = one.user("alice").await;
    let mut bob = one.user("bob").await;
    // Bob listens on process two, alice on process one.
    bob.base = two.url.clone();
    let mut bob_socket = bob.connect().await.unwrap();
    let mut alice_socket = alice.connect().await.unwrap();
    // Sent through process one: process two's session is woken by NOTIFY
    // (it never reads its mailbox on its own while idle).
    let envelope = send_and_receive(&alice, &bob.address, &mut bob_socket, b"via one").await;
    bob_socket.ack(vec![envelope.seq]).await.unwrap();
    // And the other way, sent as a WebSocket frame to process two.
    let back = envelope_id();
    bob_socket
        .send_message(
            1,
            client::message(
                back,
                b"via two".to_vec(),
                &[(alice.address.clone(), DeviceId(1))],
            ),
        )
        .await
        .unwrap();
    assert!(answers(&mut bob_socket, &[1]).await[&1].is_ok());
    let envelope = next_envelope(&mut alice_socket).await;
    assert_eq!(envelope.id, back);
    // A relay in another schema of the same database hears none of it.
    let other_schema = fresh_schema();
    let other = Relay::start(
        &["--database-url", &url],
        &[("COURIER_DATABASE_SCHEMA", other_schema.as_str())],
    );
    let carol = other.user("carol").await;
    let mut carol_socket = carol.connect().await.unwrap();
    alice.base = two.url.clone();
    send_and_receive(&alice, &bob.address, &mut bob_socket, b"x").await;
    while let Some(frame) = carol_socket
        .next_within(Duration::from_millis(300))
        .await
        .unwrap()
    {
        assert!(
            matches!(frame, ServerFrame::PrekeysLow { .. }),
            "carol's relay heard another relay's traffic: {frame:?}"
        );
    }
}

#[tokio::test]
async fn a_logout_in_one_serve_process_revokes_the_token_in_another_at_once() {
    let Some(url) = postgres_url() else {
        return;
    };
    let schema = fresh_schema();
    let envs = [("COURIER_DATABASE_SCHEMA", schema.as_str())];
    let one = Relay::start(&["--database-url", &url], &envs);
    let two = Relay::start(&["--database-url", &url], &envs);
    let alice = one.user("alice").await;
    let token = alice.access_token().to_owned();
    let count = |relay: &Relay| {
        relay
            .req(Method::GET, "/v1/keys/count")
            .bearer_auth(&token)
            .send()
    };
    // Process two has the token in its cache now (trusted for 30 s).
    assert_eq!(count(&two).await.unwrap().status(), 200);
    let out = one
        .req(Method::POST, "/v1/auth/logout")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    // Process two hears of it over NOTIFY well before its cache would
    // have let the token go.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let response = count(&two).await.unwrap();
        if response.status() == 401 {
            expect_error(response, 401, "unauthenticated").await;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process two still accepts a token logged out in process one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
