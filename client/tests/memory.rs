//! SDK behaviour between real client instances (real crypto, real SQLite or
//! memory stores) over real relays in one process (`courier-testkit`):
//! every signature, limit and error is the relay's own.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use courier_client::clock::Sleep;
use courier_client::store::Table;
use courier_client::{
    Client, ClientConfig, ClientParts, ClientStore, Clock, Error, ManualClock, MemoryStore,
    SqliteStore, SystemClock,
};
use courier_protocol::{Address, DeviceId};
use courier_testkit::Network;

/// Time that moves only when a test says (timestamps, refresh intervals,
/// prekey rotation), with real waits: these tests also sleep on tokio's
/// timer while a listener or a retry runs. `tests/clock.rs` runs the
/// waits themselves on virtual time.
struct TestClock(ManualClock);

impl TestClock {
    fn advance(&self, by: Duration) {
        self.0.advance(by);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

fn clock() -> Arc<TestClock> {
    Arc::new(TestClock(ManualClock::new(1_700_000_000_000)))
}

async fn client_with(
    net: &Network,
    relay: &str,
    seed: u8,
    store: Arc<dyn ClientStore>,
    clock: Arc<dyn Clock>,
    config: ClientConfig,
) -> Client {
    Client::open(ClientParts {
        transport: Arc::new(net.transport(relay).unwrap()),
        store,
        clock,
        rng_seed: Some([seed; 32]),
        config,
    })
    .await
    .unwrap()
}

async fn user(net: &Network, name: &str, relay: &str, seed: u8) -> (Client, Address) {
    user_with_clock(net, name, relay, seed, clock()).await
}

async fn user_with_clock(
    net: &Network,
    name: &str,
    relay: &str,
    seed: u8,
    clock: Arc<dyn Clock>,
) -> (Client, Address) {
    let c = client_with(
        net,
        relay,
        seed,
        Arc::new(MemoryStore::new()),
        clock,
        ClientConfig::default(),
    )
    .await;
    let address = c.register(name, None, "", &[]).await.unwrap();
    (c, address)
}

fn texts(messages: &[courier_client::Message]) -> Vec<String> {
    messages.iter().map(|m| m.text.clone()).collect()
}

#[tokio::test]
async fn two_users_on_one_relay_talk_both_ways() {
    let net = Network::new();
    let (alice, a) = user(&net, "alice", "relay-a.example", 1).await;
    let (bob, b) = user(&net, "bob", "relay-a.example", 2).await;
    alice.send(&b, "hi bob").await.unwrap();
    alice.send(&b, "second").await.unwrap();
    let got = bob.recv().await.unwrap();
    assert_eq!(texts(&got), ["hi bob", "second"]);
    assert_eq!(got[0].from, a);
    assert!(!got[0].outgoing);
    bob.send(&a, "hi alice").await.unwrap();
    let got = alice.recv().await.unwrap();
    assert_eq!(texts(&got), ["hi alice"]);
    assert_eq!(got[0].from, b);
    // Nothing is shown twice.
    assert!(bob.recv().await.unwrap().is_empty());
    assert!(alice.recv().await.unwrap().is_empty());
    assert_eq!(net.pending(&b, DeviceId(1)).await, 0);
}

#[tokio::test]
async fn two_users_on_two_relays_talk_both_ways() {
    let net = Network::new();
    let (alice, a) = user(&net, "alice", "relay-a.example", 1).await;
    let (bob, b) = user(&net, "bob", "relay-b.example", 2).await;
    alice.send(&b, "across").await.unwrap();
    assert_eq!(texts(&bob.recv().await.unwrap()), ["across"]);
    bob.send(&a, "and back").await.unwrap();
    assert_eq!(texts(&alice.recv().await.unwrap()), ["and back"]);
}

#[tokio::test]
async fn sending_to_an_unknown_user_is_a_clear_error() {
    let net = Network::new();
    let (alice, _) = user(&net, "alice", "relay-a.example", 1).await;
    let nobody: Address = "nobody@relay-a.example".parse().unwrap();
    let err = alice.send(&nobody, "x").await.unwrap_err();
    assert!(matches!(err, Error::UnknownRecipient(_)), "{err}");
    assert_eq!(err.exit_code(), 4);
}

#[tokio::test]
async fn an_unregistered_client_says_so() {
    let net = Network::new();
    let c = client_with(
        &net,
        "relay-a.example",
        1,
        Arc::new(MemoryStore::new()),
        clock(),
        ClientConfig::default(),
    )
    .await;
    let bob: Address = "bob@relay-a.example".parse().unwrap();
    assert!(matches!(c.send(&bob, "x").await, Err(Error::NotRegistered)));
    assert!(matches!(c.recv().await, Err(Error::NotRegistered)));
}

#[tokio::test]
async fn an_unreachable_relay_is_reported_and_nothing_is_recorded() {
    let net = Network::new();
    let (alice, _) = user(&net, "alice", "relay-a.example", 1).await;
    let (_bob, b) = user(&net, "bob", "relay-a.example", 2).await;
    net.set_down(true).await;
    let err = alice.send(&b, "lost?").await.unwrap_err();
    assert!(matches!(err, Error::RelayUnreachable(_)), "{err}");
    net.set_down(false).await;
    assert!(alice.history().await.unwrap().is_empty());
}

#[tokio::test]
async fn out_of_order_and_duplicate_deliveries_show_each_message_once() {
    let net = Network::new();
    let (alice, a) = user(&net, "alice", "relay-a.example", 1).await;
    let (bob, b) = user(&net, "bob", "relay-b.example", 2).await;
    // Establish the session both ways first, then reorder a burst.
    alice.send(&b, "hello").await.unwrap();
    assert_eq!(texts(&bob.recv().await.unwrap()), ["hello"]);
    bob.send(&a, "ok").await.unwrap();
    alice.recv().await.unwrap();
    for i in 0..5 {
        alice.send(&b, &format!("m{i}")).await.unwrap();
    }
    net.reverse_mailbox(&b, DeviceId(1)).await;
    assert!(net.duplicate_last(&b, DeviceId(1)).await);
    assert!(net.duplicate_last(&b, DeviceId(1)).await);
    let mut got = texts(&bob.recv().await.unwrap());
    assert_eq!(got.len(), 5, "{got:?}");
    got.sort();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(net.pending(&b, DeviceId(1)).await, 0);
}

#[tokio::test]
async fn both_sides_starting_a_session_at_once_still_converge() {
    let net = Network::new();
    let (alice, a) = user(&net, "alice", "relay-a.example", 1).await;
    let (bob, b) = user(&net, "bob", "relay-a.example", 2).await;
    alice.send(&b, "from alice").await.unwrap();
    bob.send(&a, "from bob").await.unwrap();
    assert_eq!(texts(&bob.recv().await.unwrap()), ["from alice"]);
    assert_eq!(texts(&alice.recv().await.unwrap()), ["from bob"]);
    for round in 0..3 {
        alice.send(&b, &format!("a{round}")).await.unwrap();
        bob.send(&a, &format!("b{round}")).await.unwrap();
        assert_eq!(texts(&bob.recv().await.unwrap()), [format!("a{round}")]);
        assert_eq!(texts(&alice.recv().await.unwrap()), [format!("b{round}")]);
    }
}

#[tokio::test]
async fn a_crash_between_storing_and_acking_shows_the_message_once_after_restart() {
    let net = Network::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.db");
    let (alice, _) = user(&net, "alice", "relay-a.example", 1).await;
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let bob = client_with(
        &net,
        "relay-a.example",
        2,
        store.clone(),
        clock(),
        ClientConfig::default(),
    )
    .await;
    let b = bob.register("bob", None, "", &[]).await.unwrap();
    drop(bob);
    store.close().await;
    alice.send(&b, "exactly once").await.unwrap();

    let crashing = ClientConfig {
        fail_before_ack: true,
        ..ClientConfig::default()
    };
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let bob = client_with(&net, "relay-a.example", 3, store.clone(), clock(), crashing).await;
    assert!(matches!(
        bob.receive_pending().await,
        Err(Error::FaultInjected)
    ));
    drop(bob);
    store.close().await;
    assert_eq!(net.pending(&b, DeviceId(1)).await, 1, "not acked");

    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let bob = client_with(
        &net,
        "relay-a.example",
        4,
        store,
        clock(),
        ClientConfig::default(),
    )
    .await;
    assert_eq!(texts(&bob.recv().await.unwrap()), ["exactly once"]);
    assert!(bob.recv().await.unwrap().is_empty());
    assert_eq!(net.pending(&b, DeviceId(1)).await, 0);
}

#[tokio::test]
async fn a_contact_with_a_new_identity_is_refused_until_trusted() {
    let net = Network::new();
    let clk = clock();
    let alice = client_with(
        &net,
        "relay-a.example",
        1,
        Arc::new(MemoryStore::new()),
        clk.clone(),
        ClientConfig::default(),
    )
    .await;
    let a = alice.register("alice", None, "", &[]).await.unwrap();
    let (bob, b) = user(&net, "bob", "relay-b.example", 2).await;
    alice.send(&b, "before").await.unwrap();
    assert_eq!(texts(&bob.recv().await.unwrap()), ["before"]);
    let before = alice.safety_number(&b).await.unwrap();

    // Bob's relay forgets him; someone registers "bob" again with new keys.
    net.reset_relay(&b.relay);
    let (bob2, _) = user(&net, "bob", "relay-b.example", 9).await;
    // Within the refresh interval alice still encrypts to the pinned keys only;
    // once she re-reads bob's device list she sees the change.
    clk.advance(Duration::from_millis(
        ClientConfig::default().device_list_refresh_ms + 1,
    ));
    let err = alice.send(&b, "after").await.unwrap_err();
    assert!(matches!(err, Error::IdentityChanged { .. }), "{err}");
    assert_eq!(err.exit_code(), 6);
    // A message from the new identity is surfaced, not silently trusted.
    bob2.send(&a, "trust me").await.unwrap();
    let got = alice.recv().await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].text.contains("identity"), "{}", got[0].text);
    assert!(!got[0].text.contains("trust me"));

    alice.trust(&b).await.unwrap();
    assert_ne!(alice.safety_number(&b).await.unwrap(), before);
    alice.send(&b, "after trust").await.unwrap();
    assert_eq!(texts(&bob2.recv().await.unwrap()), ["after trust"]);
}

#[tokio::test]
async fn a_linked_device_gets_new_messages_and_its_accounts_sent_ones() {
    let net = Network::new();
    let (alice, a) = user(&net, "alice", "relay-a.example", 1).await;
    let (bob, b) = user(&net, "bob", "relay-b.example", 2).await;
    alice.send(&b, "old").await.unwrap();
    assert_eq!(texts(&bob.recv().await.unwrap()), ["old"]);

    let phone = client_with(
        &net,
        "relay-b.example",
        3,
        Arc::new(MemoryStore::new()),
        clock(),
        ClientConfig::default(),
    )
    .await;
    let pending = phone.link_start(&b).await.unwrap();
    let code = pending.code.clone();
    let finish = tokio::spawn(async move {
        let account = phone
            .link_finish(pending, "", std::time::Duration::from_millis(10))
            .await
            .unwrap();
        (phone, account)
    });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert_eq!(bob.approve(&code).await.unwrap(), DeviceId(2));
    let (phone, account) = finish.await.unwrap();
    assert_eq!(account.address, b);
    assert_eq!(account.device, DeviceId(2));
    assert_eq!(bob.devices().await.unwrap().len(), 2);

    // Alice's cached list for bob is fresh; after the refresh interval she sees the phone.
    alice.send(&b, "new").await.unwrap();
    bob.recv().await.unwrap();
    // Bob's own send reaches his phone as his own message.
    bob.send(&a, "from bob's laptop").await.unwrap();
    let mine = phone.recv().await.unwrap();
    assert_eq!(texts(&mine), ["from bob's laptop"]);
    assert!(mine[0].outgoing);
    assert_eq!(mine[0].from, b);
    assert_eq!(mine[0].to.as_ref(), Some(&a));
    assert_eq!(texts(&alice.recv().await.unwrap()), ["from bob's laptop"]);
}

#[tokio::test]
async fn new_device_of_a_contact_is_picked_up_from_its_device_list() {
    let net = Network::new();
    let clk = clock();
    let alice = client_with(
        &net,
        "relay-a.example",
        1,
        Arc::new(MemoryStore::new()),
        clk.clone(),
        ClientConfig::default(),
    )
    .await;
    let a = alice.register("alice", None, "", &[]).await.unwrap();
    let (bob, b) = user(&net, "bob", "relay-b.example", 2).await;
    alice.send(&b, "one").await.unwrap();
    let phone = client_with(
        &net,
        "relay-b.example",
        3,
        Arc::new(MemoryStore::new()),
        clock(),
        ClientConfig::default(),
    )
    .await;
    let pending = phone.link_start(&b).await.unwrap();
    let code = pending.code.clone();
    let finish = tokio::spawn(async move {
        phone
            .link_finish(pending, "", std::time::Duration::from_millis(10))
            .await
            .unwrap();
        phone
    });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    bob.approve(&code).await.unwrap();
    let phone = finish.await.unwrap();
    clk.advance(Duration::from_millis(
        ClientConfig::default().device_list_refresh_ms + 1,
    ));
    alice.send(&b, "two").await.unwrap();
    assert_eq!(texts(&bob.recv().await.unwrap()), ["one", "two"]);
    assert_eq!(texts(&phone.recv().await.unwrap()), ["two"]);
    phone.send(&a, "from the phone").await.unwrap();
    assert_eq!(texts(&alice.recv().await.unwrap()), ["from the phone"]);
}

#[tokio::test]
async fn a_group_across_three_relays_and_a_removed_member_stops_reading() {
    let net = Network::new();
    let (alice, a) = user(&net, "alice", "relay-a.example", 1).await;
    let (bob, b) = user(&net, "bob", "relay-b.example", 2).await;
    let carol_store = Arc::new(MemoryStore::new());
    let carol = client_with(
        &net,
        "relay-c.example",
        3,
        carol_store.clone(),
        clock(),
        ClientConfig::default(),
    )
    .await;
    let c = carol.register("carol", None, "", &[]).await.unwrap();
    alice
        .group_create("team", &[b.clone(), c.clone()])
        .await
        .unwrap();
    alice.group_send("team", "hello team").await.unwrap();
    // One submission per message: every member device is a recipient of it.
    let last = net.sent().last().unwrap().clone();
    assert_eq!(last.recipients.len(), 2);
    for (client, who) in [(&bob, "bob"), (&carol, "carol")] {
        let got = client.recv().await.unwrap();
        assert_eq!(texts(&got), ["hello team"], "{who}");
        assert_eq!(got[0].group.as_deref(), Some("team"));
        assert_eq!(got[0].from, a);
    }
    bob.group_send("team", "bob here").await.unwrap();
    assert_eq!(texts(&alice.recv().await.unwrap()), ["bob here"]);
    assert_eq!(texts(&carol.recv().await.unwrap()), ["bob here"]);

    alice
        .group_remove("team", std::slice::from_ref(&c))
        .await
        .unwrap();
    bob.recv().await.unwrap();
    alice.group_send("team", "without carol").await.unwrap();
    bob.group_send("team", "bye carol").await.unwrap();
    assert!(carol.recv().await.unwrap().is_empty());
    let later: Vec<_> = net.sent().iter().rev().take(2).cloned().collect();
    for m in &later {
        assert!(
            m.recipients.iter().all(|r| r.to != c),
            "carol is no recipient"
        );
    }
    assert_eq!(texts(&bob.recv().await.unwrap()), ["without carol"]);
    assert_eq!(texts(&alice.recv().await.unwrap()), ["bye carol"]);
    // Carol, never told, still posts: members do not show it.
    carol.group_send("team", "still here?").await.unwrap();
    assert!(alice.recv().await.unwrap().is_empty());
    assert!(bob.recv().await.unwrap().is_empty());

    // Even handed the new bodies, carol holds no sender key that opens them:
    // both alice and bob rotated after the removal.
    let mut carol_chains = Vec::new();
    for (_, v) in carol_store.scan(Table::SenderKeys, "").await.unwrap() {
        let receivers: serde_json::Value = serde_json::from_slice(&v).unwrap();
        for r in receivers.as_array().into_iter().flatten() {
            carol_chains.push(r["chain_id"].as_u64().unwrap() as u32);
        }
    }
    assert_eq!(carol_chains.len(), 2, "alice's and bob's first keys");
    for m in &later {
        let chain = courier_crypto::SenderKeyReceiver::message_chain_id(m.body.as_slice()).unwrap();
        assert!(
            !carol_chains.contains(&chain),
            "a removed member holds the new key"
        );
    }
}

#[tokio::test]
async fn relays_hold_neither_plaintext_nor_sender_address() {
    let net = Network::new();
    let (alice, a) = user(&net, "alice", "relay-a.example", 1).await;
    let (bob, b) = user(&net, "bob", "relay-b.example", 2).await;
    let (_carol, c) = user(&net, "carol", "relay-b.example", 3).await;
    alice.send(&b, "secret-plaintext-123").await.unwrap();
    alice
        .group_create("g", &[b.clone(), c.clone()])
        .await
        .unwrap();
    alice.group_send("g", "group-secret-456").await.unwrap();
    bob.recv().await.unwrap();
    let sender = a.to_string();
    for m in net.sent() {
        let mut all = m.body.as_slice().to_vec();
        for r in &m.recipients {
            all.extend_from_slice(r.header.as_slice());
        }
        for needle in [
            "secret-plaintext-123",
            "group-secret-456",
            sender.as_str(),
            "alice",
        ] {
            assert!(
                !all.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} visible to relays"
            );
        }
    }
}

#[tokio::test]
async fn one_time_prekeys_are_refilled_under_the_low_water_mark() {
    let net = Network::new();
    let bob_store = Arc::new(MemoryStore::new());
    let bob = client_with(
        &net,
        "relay-a.example",
        2,
        bob_store.clone(),
        clock(),
        ClientConfig::default(),
    )
    .await;
    let b = bob.register("bob", None, "", &[]).await.unwrap();
    let one_time = || async { bob_store.scan(Table::PreKeys, "o/").await.unwrap().len() };
    assert_eq!(one_time().await, 100);
    // Drain bob's pool from many senders' first messages.
    for i in 0..95u8 {
        let (s, _) = user(&net, &format!("s{i}"), "relay-a.example", 10 + i).await;
        s.send(&b, "hi").await.unwrap();
    }
    assert_eq!(bob.recv().await.unwrap().len(), 95);
    assert_eq!(one_time().await, 5, "each first message used one");
    bob.maintain_keys().await.unwrap();
    assert_eq!(one_time().await, 100, "refilled to the target");
    let (late, _) = user(&net, "late", "relay-a.example", 200).await;
    late.send(&b, "still works").await.unwrap();
    assert_eq!(texts(&bob.recv().await.unwrap()), ["still works"]);
}

#[tokio::test]
async fn the_signed_prekey_rotates_on_schedule_and_old_sessions_still_start() {
    let net = Network::new();
    let clk = clock();
    let store: Arc<dyn ClientStore> = Arc::new(MemoryStore::new());
    let bob = client_with(
        &net,
        "relay-a.example",
        2,
        store.clone(),
        clk.clone(),
        ClientConfig::default(),
    )
    .await;
    let b = bob.register("bob", None, "", &[]).await.unwrap();
    let (alice, _) = user(&net, "alice", "relay-a.example", 1).await;
    alice.send(&b, "under key 1").await.unwrap();
    clk.advance(Duration::from_millis(
        ClientConfig::default().signed_prekey_rotation_ms,
    ));
    bob.maintain_keys().await.unwrap();
    let spks = store.scan(Table::PreKeys, "s/").await.unwrap();
    let ids: Vec<&str> = spks.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(ids, ["s/1", "s/2"]);
    // A message started under the previous signed prekey still opens.
    assert_eq!(texts(&bob.recv().await.unwrap()), ["under key 1"]);
    let (carol, _) = user(&net, "carol", "relay-a.example", 3).await;
    carol.send(&b, "under key 2").await.unwrap();
    assert_eq!(texts(&bob.recv().await.unwrap()), ["under key 2"]);
}

#[tokio::test]
async fn listening_hands_over_messages_as_they_arrive() {
    let net = Network::new();
    let (alice, _) = user(&net, "alice", "relay-a.example", 1).await;
    // Listening lasts real time here: the client's clock is the system's.
    let (bob, b) = user_with_clock(&net, "bob", "relay-a.example", 2, Arc::new(SystemClock)).await;
    let bob = Arc::new(bob);
    let listener = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            bob.listen(std::time::Duration::from_millis(500), |m| got.push(m.text))
                .await
                .unwrap();
            got
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    alice.send(&b, "pushed").await.unwrap();
    assert_eq!(listener.await.unwrap(), ["pushed"]);
    assert_eq!(net.pending(&b, DeviceId(1)).await, 0);
}

#[tokio::test]
async fn expired_or_revoked_tokens_are_renewed_without_the_user_noticing() {
    let net = Network::new();
    let (alice, _) = user(&net, "alice", "relay-a.example", 1).await;
    let (bob, b) = user(&net, "bob", "relay-a.example", 2).await;
    alice.send(&b, "one").await.unwrap();
    net.expire_access_tokens().await;
    alice.send(&b, "two (after refresh)").await.unwrap();
    // Bob reads before the relays' clock jumps past every token's
    // lifetime: the undelivered messages would expire with them.
    let mut got = texts(&bob.recv().await.unwrap());
    net.expire_all_tokens().await;
    alice.send(&b, "three (after a new login)").await.unwrap();
    got.extend(texts(&bob.recv().await.unwrap()));
    assert_eq!(
        got,
        ["one", "two (after refresh)", "three (after a new login)"]
    );
}

#[tokio::test]
async fn listening_reconnects_after_the_relay_comes_back() {
    let net = Network::new();
    let (alice, _) = user(&net, "alice", "relay-a.example", 1).await;
    // Listening lasts real time here: the client's clock is the system's.
    let (bob, b) = user_with_clock(&net, "bob", "relay-a.example", 2, Arc::new(SystemClock)).await;
    let bob = Arc::new(bob);
    let listener = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            bob.listen(std::time::Duration::from_millis(1500), |m| got.push(m.text))
                .await
                .unwrap();
            got
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    alice.send(&b, "before").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    net.set_down(true).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    net.set_down(false).await;
    alice.send(&b, "after").await.unwrap();
    assert_eq!(listener.await.unwrap(), ["before", "after"]);
}

#[tokio::test]
async fn a_first_message_from_an_unreachable_relay_waits_without_blocking_others() {
    let net = Network::new();
    let (alice, _) = user(&net, "alice", "relay-a.example", 1).await;
    let (carol, _) = user(&net, "carol", "relay-b.example", 3).await;
    let (bob, b) = user(&net, "bob", "relay-b.example", 2).await;
    alice.send(&b, "from afar").await.unwrap();
    carol.send(&b, "from nearby").await.unwrap();
    // Bob cannot read alice's device list while relay-a is gone.
    net.set_relay_down("relay-a.example", true).await;
    assert_eq!(texts(&bob.recv().await.unwrap()), ["from nearby"]);
    assert_eq!(
        net.pending(&b, DeviceId(1)).await,
        1,
        "alice's message waits"
    );
    net.set_relay_down("relay-a.example", false).await;
    assert_eq!(texts(&bob.recv().await.unwrap()), ["from afar"]);
    assert_eq!(net.pending(&b, DeviceId(1)).await, 0);
}
