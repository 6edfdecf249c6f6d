//! Security regression tests: keys (audit #13 items 6, 18 and 19).
//!
//! Item 6: one-time prekey budgets, locally and per peer. Item 18:
//! enumeration (query-string tokens, invite before username). Item 19:
//! low-order X25519 keys are refused at upload.

use std::time::{Duration, Instant};

use crate::common::device::{self as client, Device};
use courier_protocol::api::{
    DeviceKeys, DeviceList, DeviceListEntry, OneTimePreKey, PreKeyCount, RegisterRequest,
    SignedPreKey, UploadOneTimePreKeys,
};
use courier_protocol::{Address, Bytes, DeviceId, Username, signing};
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::json;

use crate::common::{Relay, expect_error};

const WAIT: Duration = Duration::from_secs(20);

/// No per-IP or per-account request limits, so what limits a drain is the
/// prekey budget and nothing else.
const NO_RATE_LIMITS: [(&str, &str); 2] = [
    ("COURIER_RATE_LIMIT_IP_PER_SECOND", "0"),
    ("COURIER_RATE_LIMIT_ACCOUNT_PER_SECOND", "0"),
];

/// Fills `device`'s pool with `count` one-time prekeys (a signed prekey too).
async fn fill_pool(device: &Device, count: u32) {
    device.upload_keys(0).await.ok();
    let mut id = 0;
    while id < count {
        let n = (count - id).min(200);
        let prekeys = (id..id + n)
            .map(|id| OneTimePreKey {
                id,
                public: Bytes(rand::random::<[u8; 32]>().to_vec()),
            })
            .collect();
        let _: PreKeyCount = device
            .post("/v1/keys/one-time", &UploadOneTimePreKeys { prekeys })
            .await
            .unwrap();
        id += n;
    }
    assert_eq!(pool(device).await, count);
}

async fn pool(device: &Device) -> u32 {
    let count: PreKeyCount = device.get("/v1/keys/count").await.unwrap();
    count.one_time
}

/// Fetches `address`'s bundle `times` times (16 at once); how many of the
/// answers carried a one-time prekey. Every answer must be a bundle with
/// the signed prekey.
async fn drain(by: &Device, address: &Address, times: usize) -> usize {
    futures::stream::iter(0..times)
        .map(|_| async move {
            let bundle = by.bundle(address).await.unwrap();
            assert_eq!(bundle.bundles.len(), 1, "the bundle is always served");
            bundle.bundles[0].one_time_prekey.is_some()
        })
        .buffer_unordered(16)
        .filter(|had| std::future::ready(*had))
        .count()
        .await
}

#[tokio::test]
async fn an_account_fetching_a_bundle_1000_times_takes_only_its_budget_of_one_time_prekeys() {
    let relay = Relay::start(&[], &NO_RATE_LIMITS);
    let victim = relay.user("victim").await;
    fill_pool(&victim, 1000).await;
    let mallory = relay.user("mallory").await;
    let handed = drain(&mallory, &victim.address, 1000).await;
    // Default budget: 5 per (account, device), one more per 10 minutes.
    assert!(handed <= 5, "mallory got {handed} one-time prekeys");
    assert!(pool(&victim).await >= 995);
    // Another requester still gets one-time prekeys, within the device's
    // budget.
    let carol = relay.user("carol").await;
    assert!(drain(&carol, &victim.address, 3).await >= 1);
}

#[tokio::test]
async fn many_accounts_together_take_only_the_devices_budget_and_still_get_bundles() {
    let mut envs = NO_RATE_LIMITS.to_vec();
    envs.push(("COURIER_PREKEY_BUDGET_DEVICE_BURST", "10"));
    // No refill while the test runs, however slow the machine.
    envs.push(("COURIER_PREKEY_BUDGET_DEVICE_REFILL_SECS", "86400"));
    let relay = Relay::start(&[], &envs);
    let victim = relay.user("victim").await;
    fill_pool(&victim, 100).await;
    let mut handed = 0;
    for i in 0..6 {
        let sybil = relay.user(&format!("sybil{i}")).await;
        handed += drain(&sybil, &victim.address, 10).await;
    }
    assert_eq!(handed, 10, "the device's budget, not 6 accounts × 5");
    assert_eq!(pool(&victim).await, 90);
    // Past the budget first contact still works: signed prekey only.
    let late = relay.user("late").await;
    let bundle = late.bundle(&victim.address).await.unwrap();
    assert_eq!(bundle.bundles[0].one_time_prekey, None);
    assert_eq!(bundle.bundles[0].signed_prekey.id, 1);
}

#[tokio::test]
async fn a_peer_fetching_many_bundles_takes_only_its_budget_of_one_time_prekeys() {
    let mut envs_b = NO_RATE_LIMITS.to_vec();
    envs_b.push(("COURIER_PREKEY_BUDGET_PEER_BURST", "8"));
    envs_b.push(("COURIER_PREKEY_BUDGET_PEER_REFILL_SECS", "86400"));
    let relay_b = Relay::start_federating("relay-b.test", &envs_b);
    let bootstrap = format!("[\"{}\"]", relay_b.full_address());
    let mut envs_a = NO_RATE_LIMITS.to_vec();
    envs_a.push(("COURIER_FEDERATION_BOOTSTRAP", &bootstrap));
    let relay_a = Relay::start(
        &["--name", "relay-a.test", "--registration", "open"],
        &envs_a,
    );
    let victim = relay_b.user("victim").await;
    fill_pool(&victim, 200).await;
    let mallory = relay_a.user("mallory").await;

    // The bootstrap dial happens in the background: retry until peered.
    let deadline = Instant::now() + WAIT;
    let mut handed = loop {
        match mallory.bundle(&victim.address).await {
            Ok(bundle) => break usize::from(bundle.bundles[0].one_time_prekey.is_some()),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("bundle over federation: {e}"),
        }
    };
    handed += drain(&mallory, &victim.address, 60).await;
    assert!(handed <= 8, "relay-a's users got {handed} one-time prekeys");
    assert!(pool(&victim).await >= 192);
    // A local requester on relay-b is not held back by the peer's budget.
    let local = relay_b.user("local").await;
    assert!(drain(&local, &victim.address, 3).await >= 1);
}

/// Every 32-byte string X25519 decodes to a point of small order: the
/// canonical u = 0, 1, p - 1 and the two of order 8 (the 7 points of small
/// order of Curve25519 other than the identity, plus the twist's order-4
/// point), the non-canonical p and p + 1 (= 0 and 1), and each of these
/// with the top bit set (X25519 ignores it).
fn small_order_encodings() -> Vec<[u8; 32]> {
    let hex = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    let mut out = Vec::new();
    for h in hex {
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
        }
        out.push(key);
        key[31] |= 0x80;
        out.push(key);
    }
    out
}

/// Sends `request` and asserts it is refused with 400 `weak_key`.
async fn refused_as_weak(request: reqwest::RequestBuilder) {
    expect_error(request.send().await.unwrap(), 400, "weak_key").await;
}

#[tokio::test]
async fn low_order_x25519_keys_are_refused_at_every_upload() {
    let relay = Relay::start(&[], &NO_RATE_LIMITS);
    let alice = relay.user("alice").await;
    alice.upload_keys(3).await.unwrap();
    for (i, weak) in small_order_encodings().into_iter().enumerate() {
        // As the identity DH key, at registration and when linking.
        let key = client::new_key();
        let keys = DeviceKeys {
            identity_key: Bytes(key.public().signing_key().to_vec()),
            dh_key: Bytes(weak.to_vec()),
            dh_key_signature: Bytes(key.sign(&signing::dh_key_signing_bytes(&weak)).to_vec()),
        };
        let user = Username::parse(&format!("weak{i}")).unwrap();
        let address = Address::new(user.clone(), relay.name.clone());
        let list = DeviceList {
            address,
            version: 1,
            devices: vec![DeviceListEntry {
                device: DeviceId(1),
                identity_key: keys.identity_key.clone(),
            }],
        };
        let register = RegisterRequest {
            username: user,
            invite: None,
            device: keys.clone(),
            device_list: courier_client::wire::sign_list(&key, list, DeviceId(1)),
        };
        refused_as_weak(relay.req(Method::POST, "/v1/accounts").json(&register)).await;
        refused_as_weak(
            relay
                .req(Method::POST, "/v1/links")
                .json(&json!({"username": alice.address.user, "device": keys})),
        )
        .await;

        // As a signed prekey, correctly signed.
        let created_ms = 1_700_000_000_000;
        let signature = alice
            .key
            .sign(&signing::signed_prekey_signing_bytes(7, &weak, created_ms));
        let prekey = SignedPreKey {
            id: 7,
            public: Bytes(weak.to_vec()),
            signature: Bytes(signature.to_vec()),
            created_ms,
        };
        refused_as_weak(
            relay
                .req(Method::PUT, "/v1/keys/signed-prekey")
                .bearer_auth(alice.access_token())
                .json(&prekey),
        )
        .await;

        // As a one-time prekey, among good ones: the whole upload is refused.
        let upload = UploadOneTimePreKeys {
            prekeys: vec![
                OneTimePreKey {
                    id: 100,
                    public: Bytes(rand::random::<[u8; 32]>().to_vec()),
                },
                OneTimePreKey {
                    id: 101,
                    public: Bytes(weak.to_vec()),
                },
            ],
        };
        refused_as_weak(
            relay
                .req(Method::POST, "/v1/keys/one-time")
                .bearer_auth(alice.access_token())
                .json(&upload),
        )
        .await;
    }
    // Nothing changed: the old signed prekey and the 3 one-time prekeys.
    assert_eq!(pool(&alice).await, 3);
    let bob = relay.user("bob").await;
    let bundle = bob.bundle(&alice.address).await.unwrap();
    assert_eq!(bundle.bundles[0].signed_prekey.id, 1);
}

#[tokio::test]
async fn access_tokens_in_the_query_string_are_refused_except_on_the_websocket() {
    let relay = Relay::start(&[], &[]);
    let alice = relay.user("alice").await;
    let token = alice.access_token().to_owned();
    for path in ["/v1/keys/count", "/v1/messages?after=0"] {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{path}{sep}access_token={token}");
        let response = relay.req(Method::GET, &url).send().await.unwrap();
        expect_error(response, 401, "unauthenticated").await;
        // Even next to a valid header: the token has leaked into the URL.
        let response = relay
            .req(Method::GET, &url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        expect_error(response, 401, "unauthenticated").await;
        let response = relay
            .req(Method::GET, path)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "the header works on {path}");
    }
    // The WebSocket upgrade (browsers cannot set headers there) still
    // takes it.
    let socket = alice.connect().await.unwrap();
    socket.close().await;
}

#[tokio::test]
async fn without_a_valid_invite_a_taken_username_is_not_revealed() {
    let relay = Relay::start(&["--name", "relay-x.test"], &[]);
    let out = relay.admin(&["invite"]);
    assert!(out.status.success());
    let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    Device::register(
        &relay.http,
        &relay.url,
        &relay.name,
        "carol",
        Some(code.clone()),
    )
    .await
    .unwrap();
    for invite in [Some("not-a-code".to_owned()), Some(code)] {
        let err = Device::register(&relay.http, &relay.url, &relay.name, "carol", invite)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid_invite"), "{err}");
        let err = Device::register(&relay.http, &relay.url, &relay.name, "nobody", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("invite_required"), "{err}");
    }
    // With a valid invite the name is taken, and the invite is not spent.
    let out = relay.admin(&["invite"]);
    let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let err = Device::register(
        &relay.http,
        &relay.url,
        &relay.name,
        "carol",
        Some(code.clone()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("username_taken"), "{err}");
    Device::register(&relay.http, &relay.url, &relay.name, "dave", Some(code))
        .await
        .unwrap();
}
