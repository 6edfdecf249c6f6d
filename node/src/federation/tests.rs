//! Real relays federating over real QUIC on 127.0.0.1: each test relay is a
//! `Relay` over its own store, a libp2p swarm from [`spawn`] and an outbox
//! [`Drainer`], all in this process.

use std::sync::Arc;
use std::time::Duration;

use courier_protocol::api::{DeviceKeys, DeviceList, DeviceListEntry, SignedDeviceList};
use courier_protocol::{
    AckStatus, Address, Bytes, DeliveryBatch, DeviceId, EnvelopeId, EnvelopeKind, ErrorCode,
    FedEnvelope, FedRecipient, OutgoingMessage, RecipientEntry, RelayName, Username,
};
use courier_relay::federation::Federation;
use courier_relay::store::{DeviceRecord, NewAccount};
use courier_relay::{AuthedDevice, MemoryStore, NoNotifier, Relay, Store, SystemClock};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use rand::SeedableRng;

use super::*;

/// One running relay.
pub(super) struct TestRelay {
    pub(super) name: RelayName,
    pub(super) key: Keypair,
    pub(super) store: Arc<dyn Store>,
    pub(super) relay: Arc<Relay>,
    pub(super) fed: Handle,
    pub(super) drainer: Option<Drainer>,
    pub(super) addr: Multiaddr,
}

pub(super) fn name(text: &str) -> RelayName {
    RelayName::parse(text).unwrap()
}

pub(super) struct Options {
    pub(super) policy: Policy,
    pub(super) listen: Option<Multiaddr>,
    pub(super) drain: bool,
    pub(super) peers_file: Option<std::path::PathBuf>,
    /// Outbox retry backoff (base, max) in ms.
    pub(super) backoff_ms: (u64, u64),
    /// `[federation] peers_max`.
    pub(super) peers_max: usize,
    /// `[federation] external_addresses`: what the descriptor advertises.
    pub(super) external: Vec<Multiaddr>,
    /// What one peer may send us.
    pub(super) limits: courier_relay::federation::PeerLimits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: Policy::default(),
            listen: None,
            drain: true,
            peers_file: None,
            backoff_ms: (100, 1000),
            peers_max: peers::PEERS_MAX_DEFAULT,
            external: Vec::new(),
            limits: Default::default(),
        }
    }
}

pub(super) async fn start(
    relay_name: &str,
    key: Keypair,
    store: Arc<dyn Store>,
    options: Options,
) -> TestRelay {
    let relay_name = name(relay_name);
    let mut config = courier_relay::Config::new(relay_name.clone());
    (config.outbox_backoff_base_ms, config.outbox_backoff_max_ms) = options.backoff_ms;
    config.outbox_lease_ms = 5000;
    let wake = Drainer::waker();
    let notifier = Arc::new(OutboxNotifier::new(Arc::new(NoNotifier), wake.clone()));
    let relay = Arc::new(
        Relay::new(
            config,
            store.clone(),
            Arc::new(SystemClock),
            Box::new(rand::rngs::StdRng::seed_from_u64(rand::random())),
        )
        .with_notifier(notifier),
    );
    let mut fed_config = Config::new(relay_name.clone(), key.clone());
    if let Some(listen) = options.listen {
        fed_config.listen = vec![listen];
    }
    fed_config.policy = options.policy;
    fed_config.peers_file = options.peers_file;
    fed_config.peers_max = options.peers_max;
    fed_config.external_addresses = options.external;
    fed_config.limits = options.limits;
    fed_config.idle_timeout = Duration::from_millis(1500);
    fed_config.request_timeout = Duration::from_secs(5);
    fed_config.redial_base_ms = 100;
    fed_config.redial_max_ms = 500;
    let (fed, _task) = spawn(fed_config, Arc::new(RelayInbound(relay.clone())))
        .await
        .unwrap();
    let drainer = options.drain.then(|| {
        Drainer::spawn(
            relay.clone(),
            Arc::new(fed.clone()),
            wake,
            DrainerConfig {
                idle_poll: Duration::from_millis(100),
                expire_every: Duration::from_millis(200),
                ..DrainerConfig::default()
            },
        )
    });
    let addr = fed.listen_addrs().await.unwrap().remove(0);
    TestRelay {
        name: relay_name,
        key,
        store,
        relay,
        fed,
        drainer,
        addr,
    }
}

pub(super) async fn relay(relay_name: &str) -> TestRelay {
    start(
        relay_name,
        Keypair::generate_ed25519(),
        Arc::new(MemoryStore::new()),
        Options::default(),
    )
    .await
}

impl TestRelay {
    pub(super) fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    /// Stops swarm and drainer; the store stays (a process restart keeps
    /// its database).
    pub(super) async fn stop(&mut self) {
        if let Some(d) = self.drainer.take() {
            d.stop().await;
        }
        self.fed.shutdown().await;
        // Let the endpoint close so the port is free again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Registers `user` with device 1 directly in the store (delivery does
    /// not look at keys).
    pub(super) async fn user(&self, user: &str) -> AuthedDevice {
        register(self.store.as_ref(), &self.name, user).await
    }

    pub(super) async fn send(&self, from: &AuthedDevice, seq: u32, to: &[&str]) -> EnvelopeId {
        let mut random = [0u8; 10];
        random[..4].copy_from_slice(&seq.to_be_bytes());
        random[4..].copy_from_slice(&rand::random::<[u8; 6]>());
        let id = EnvelopeId::new(self.relay.now_ms(), random);
        self.relay
            .accept_message(
                from,
                OutgoingMessage {
                    id,
                    body: Bytes::from(ciphertext(seq)),
                    recipients: to
                        .iter()
                        .map(|a| RecipientEntry {
                            to: Address::parse(a).unwrap(),
                            device: DeviceId(1),
                            header: Bytes::from(vec![0xee; 24]),
                        })
                        .collect(),
                    ttl_secs: 3600,
                },
            )
            .await
            .unwrap();
        id
    }

    pub(super) async fn mailbox(
        &self,
        device: &AuthedDevice,
    ) -> Vec<courier_relay::types::Envelope> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.relay.fetch(device, after, 500).await.unwrap();
            if let Some(last) = page.envelopes.last() {
                after = last.seq;
            }
            out.extend(page.envelopes);
            if !page.more {
                return out;
            }
        }
    }

    pub(super) async fn outbox_depth(&self) -> u64 {
        self.relay
            .outbox_destinations()
            .await
            .unwrap()
            .iter()
            .map(|d| d.pending)
            .sum()
    }

    pub(super) async fn peer(&self, peer: PeerId) -> Option<PeerInfo> {
        self.fed
            .peers()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.peer_id == peer.to_base58())
    }
}

/// Registers `user` with device 1 on relay `relay` directly in its store.
pub(super) async fn register(store: &dyn Store, relay: &RelayName, user: &str) -> AuthedDevice {
    let username = Username::parse(user).unwrap();
    let keys = DeviceKeys {
        identity_key: Bytes::from(vec![1; 32]),
        dh_key: Bytes::from(vec![2; 32]),
        dh_key_signature: Bytes::from(vec![3; 64]),
    };
    store
        .register(NewAccount {
            device: DeviceRecord {
                user: username.clone(),
                device: DeviceId(1),
                keys: keys.clone(),
                signed_prekey: None,
                one_time_count: 0,
                created_ms: 0,
            },
            device_list: SignedDeviceList {
                list: DeviceList {
                    address: Address::new(username.clone(), relay.clone()),
                    version: 1,
                    devices: vec![DeviceListEntry {
                        device: DeviceId(1),
                        identity_key: keys.identity_key,
                    }],
                },
                signer: DeviceId(1),
                signature: Bytes::from(vec![4; 64]),
            },
            invite: None,
            now_ms: 0,
        })
        .await
        .unwrap();
    AuthedDevice {
        user: username,
        device: DeviceId(1),
        session: "test".into(),
        prekeys_low: None,
    }
}

/// What a sender's client would put in the body: never the plaintext.
pub(super) const PLAINTEXT: &[u8] = b"meet me at the old mill at noon";

pub(super) fn ciphertext(seq: u32) -> Vec<u8> {
    // A stand-in cipher (keystream from the sequence number): the relays
    // must carry these bytes unchanged and never anything readable.
    PLAINTEXT
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ (0x5a ^ (i as u8).wrapping_mul(31) ^ seq as u8 | 0x80))
        .collect()
}

/// Polls `check` until it holds or `secs` pass.
pub(super) async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_peer_over_quic_and_exchange_signed_descriptors() {
    let a = relay("relay-a.example").await;
    let b = relay("relay-b.example").await;
    assert!(a.addr.to_string().contains("/udp/"));
    assert!(a.addr.to_string().contains("/quic-v1/p2p/"));
    let named = a.fed.add_peer(b.addr.clone()).await.unwrap();
    assert_eq!(named, b.name);
    let on_a = a.peer(b.peer_id()).await.unwrap();
    assert_eq!(on_a.name.as_ref(), Some(&b.name));
    assert_eq!(on_a.state, PeerState::Connected);
    assert!(on_a.added);
    eventually(5, "b knows a", || async {
        b.peer(a.peer_id())
            .await
            .is_some_and(|p| p.name.as_ref() == Some(&a.name) && p.state == PeerState::Connected)
    })
    .await;
    eventually(10, "a ping rtt", || async {
        a.peer(b.peer_id())
            .await
            .is_some_and(|p| p.rtt_ms.is_some())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_from_alice_on_a_reaches_bob_on_b() {
    let a = relay("relay-a.example").await;
    let b = relay("relay-b.example").await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    let id = a.send(&alice, 1, &["bob@relay-b.example"]).await;
    eventually(10, "bob has the message", || async {
        !b.mailbox(&bob).await.is_empty()
    })
    .await;
    let got = b.mailbox(&bob).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].origin, a.name);
    assert_eq!(got[0].body.as_slice(), ciphertext(1).as_slice());
    eventually(5, "a's outbox empties", || async {
        a.outbox_depth().await == 0
    })
    .await;
    let on_a = a.peer(b.peer_id()).await.unwrap();
    assert_eq!(on_a.counters.delivered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_to_a_relay_it_never_peered_with_through_shared_descriptors() {
    let a = relay("relay-a.example").await;
    let b = relay("relay-b.example").await;
    let c = relay("relay-c.example").await;
    let alice = a.user("alice").await;
    let carol = c.user("carol").await;
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    c.fed.add_peer(b.addr.clone()).await.unwrap();
    // B learned C after A, and pushes what it learned to A: a hint (no
    // name pinned to it yet).
    eventually(10, "a learns c's descriptor from b", || async {
        a.peer(c.peer_id()).await.is_some()
    })
    .await;
    let hinted = a.peer(c.peer_id()).await.unwrap();
    assert!(!hinted.added);
    assert_eq!(hinted.name, None);
    a.send(&alice, 1, &["carol@relay-c.example"]).await;
    eventually(10, "carol has the message", || async {
        c.mailbox(&carol).await.len() == 1
    })
    .await;
    let got = c.mailbox(&carol).await;
    assert_eq!(got[0].origin, a.name);
    // A dialled the hint and C said hello itself: now it is pinned.
    assert_eq!(
        a.peer(c.peer_id()).await.unwrap().name,
        Some(c.name.clone())
    );
    // Directly from A: B never carried it.
    assert_eq!(
        b.peer(a.peer_id()).await.unwrap().counters.batches_received,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_for_a_pinned_name_with_another_key_is_refused() {
    let a = relay("relay-a.example").await;
    let mut b = relay("relay-b.example").await;
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    b.stop().await;
    // Someone else now claims to be relay-b.example, with its own key.
    let impostor = relay("relay-b.example").await;
    let err = impostor.fed.add_peer(a.addr.clone()).await.unwrap_err();
    assert!(
        matches!(err, Error::Unreachable { .. } | Error::Refused(_)),
        "{err}"
    );
    let err = a.fed.add_peer(impostor.addr.clone()).await.unwrap_err();
    assert!(
        matches!(err, Error::Refused(ref why) if why.contains("pinned")),
        "{err}"
    );
    // The pin and the real descriptor are unchanged.
    let on_a = a.peer(b.peer_id()).await.unwrap();
    assert_eq!(on_a.name.as_ref(), Some(&b.name));
    // The refused impostor holds no name (nor, once gone, any state).
    assert!(
        a.peer(impostor.peer_id())
            .await
            .is_none_or(|p| p.name.is_none())
    );

    // The operator re-pins: now the new key is accepted for the name.
    a.fed
        .pin(name("relay-b.example"), impostor.peer_id())
        .await
        .unwrap();
    // The connection of the refused attempt is torn down asynchronously;
    // a hello may still land on it (and its one retry too) and come back
    // unreachable. Never refused again, though: that is what is asserted.
    let mut added = None;
    for _ in 0..5 {
        match a.fed.add_peer(impostor.addr.clone()).await {
            Ok(relay) => {
                added = Some(relay);
                break;
            }
            Err(e) => {
                assert!(matches!(e, Error::Unreachable { .. }), "{e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    assert_eq!(added, Some(name("relay-b.example")));
}

/// Audit item 11: M gossips a self-signed descriptor for "relay-c.example"
/// (a key of its own) to A before the genuine relay-c ever talked to A. The
/// forgery is only a hint: when the genuine relay-c says hello to A itself,
/// it is accepted and pinned, the hint is dropped, and mail flows both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossiped_forgery_for_an_unpinned_name_never_locks_out_the_genuine_relay() {
    let a = relay("relay-a.example").await;
    // M's own book holds the forged descriptor, so M's hellos share it.
    let forger = Keypair::generate_ed25519();
    let forged = descriptor::sign(
        &forger,
        courier_protocol::RelayDescriptor {
            name: name("relay-c.example"),
            peer_id: forger.public().to_peer_id().to_base58(),
            addresses: vec!["/ip4/127.0.0.1/udp/9/quic-v1".into()],
            http_url: String::new(),
            version: "0.1.0".into(),
            features: vec![],
            issued_ms: u64::MAX / 2,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(peers::PEERS_FILE);
    let mut book = peers::PeerFile::default();
    book.pins.insert(
        name("relay-c.example"),
        forger.public().to_peer_id().to_base58(),
    );
    book.descriptors.insert(name("relay-c.example"), forged);
    std::fs::write(&file, serde_json::to_vec(&book).unwrap()).unwrap();
    let m = start(
        "relay-m.example",
        Keypair::generate_ed25519(),
        Arc::new(MemoryStore::new()),
        Options {
            peers_file: Some(file),
            ..Options::default()
        },
    )
    .await;
    m.fed.add_peer(a.addr.clone()).await.unwrap();
    // A took the forgery as a hint for the name, not a pin.
    let forged_peer = forger.public().to_peer_id();
    eventually(10, "a heard of relay-c from m", || async {
        a.peer(forged_peer).await.is_some()
    })
    .await;
    assert_eq!(a.peer(forged_peer).await.unwrap().name, None);

    // The genuine relay-c, with its own key, dials A directly.
    let c = relay("relay-c.example").await;
    assert_eq!(c.fed.add_peer(a.addr.clone()).await.unwrap(), a.name);
    let on_a = a.peer(c.peer_id()).await.unwrap();
    assert_eq!(on_a.name.as_ref(), Some(&c.name));
    assert_eq!(on_a.state, PeerState::Connected);
    assert!(a.peer(forged_peer).await.is_none(), "the hint is dropped");

    let alice = a.user("alice").await;
    let carol = c.user("carol").await;
    a.send(&alice, 1, &["carol@relay-c.example"]).await;
    c.send(&carol, 2, &["alice@relay-a.example"]).await;
    eventually(10, "mail crossed both ways", || async {
        c.mailbox(&carol).await.len() == 1 && a.mailbox(&alice).await.len() == 1
    })
    .await;
    assert_eq!(a.mailbox(&alice).await[0].origin, c.name);
}

/// Audit item 13: a peer's budget counts bytes, not only envelopes: a peer
/// sending a few large envelopes past its byte burst is throttled
/// (`rate_limited`, which the origin retries), and nothing of the refused
/// batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_byte_budget_is_throttled() {
    let a = relay("relay-a.example").await;
    let b = start(
        "relay-b.example",
        Keypair::generate_ed25519(),
        Arc::new(MemoryStore::new()),
        Options {
            limits: courier_relay::federation::PeerLimits {
                burst_bytes: 200 * 1024,
                bytes_per_sec: 1,
                ..Default::default()
            },
            ..Options::default()
        },
    )
    .await;
    let bob = b.user("bob").await;
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    let batch = |n: u8| DeliveryBatch {
        origin: a.name.clone(),
        envelopes: vec![FedEnvelope {
            id: EnvelopeId::new(a.relay.now_ms(), [n; 10]),
            body: Bytes::from(vec![n; 120 * 1024]),
            recipients: vec![FedRecipient {
                user: bob.user.clone(),
                device: DeviceId(1),
                header: Bytes::from(vec![1]),
            }],
            expires_ms: a.relay.now_ms() + 60_000,
            kind: EnvelopeKind::Message,
        }],
    };
    // One envelope each: far under the envelope budget, but the second
    // takes the bytes past the burst.
    let first = a.fed.deliver(&b.name, batch(1)).await.unwrap();
    assert_eq!(first.acks[0].status, AckStatus::Accepted);
    let second = a.fed.deliver(&b.name, batch(2)).await.unwrap();
    assert_eq!(
        second.acks[0].status,
        AckStatus::Rejected(ErrorCode::RateLimited)
    );
    assert_eq!(b.mailbox(&bob).await.len(), 1);
}

/// Audit item 13: per-PeerId state does not outlive peers the book does
/// not hold: after many refused relays came and went, the relay holds
/// state for none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_refused_peers_is_pruned_when_they_leave() {
    let a = start(
        "relay-a.example",
        Keypair::generate_ed25519(),
        Arc::new(MemoryStore::new()),
        Options {
            policy: Policy {
                mode: PolicyMode::Allowlist,
                allow: Default::default(),
                deny: Default::default(),
            },
            ..Options::default()
        },
    )
    .await;
    for i in 0..8 {
        let mut x = start(
            &format!("relay-x{i}.example"),
            Keypair::generate_ed25519(),
            Arc::new(MemoryStore::new()),
            Options {
                drain: false,
                ..Options::default()
            },
        )
        .await;
        assert!(x.fed.add_peer(a.addr.clone()).await.is_err());
        x.stop().await;
    }
    eventually(20, "a holds no state for the refused peers", || async {
        a.fed.peers().await.unwrap().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_delivering_envelopes_that_claim_another_origin_is_refused() {
    let a = relay("relay-a.example").await;
    let b = relay("relay-b.example").await;
    let bob = b.user("bob").await;
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    // A speaks for relay-a.example but hands over an envelope "from" C.
    let forged = DeliveryBatch {
        origin: name("relay-c.example"),
        envelopes: vec![FedEnvelope {
            id: EnvelopeId::new(a.relay.now_ms(), [7; 10]),
            body: Bytes::from(ciphertext(7)),
            recipients: vec![FedRecipient {
                user: bob.user.clone(),
                device: DeviceId(1),
                header: Bytes::from(vec![1]),
            }],
            expires_ms: a.relay.now_ms() + 60_000,
            kind: EnvelopeKind::Message,
        }],
    };
    let acks = a.fed.deliver(&b.name, forged).await.unwrap();
    assert_eq!(
        acks.acks[0].status,
        AckStatus::Rejected(ErrorCode::OriginMismatch)
    );
    assert!(b.mailbox(&bob).await.is_empty());
    assert_eq!(
        b.peer(a.peer_id()).await.unwrap().counters.batches_refused,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_relay_is_refused_under_allowlist() {
    let b = relay("relay-b.example").await;
    let a = start(
        "relay-a.example",
        Keypair::generate_ed25519(),
        Arc::new(MemoryStore::new()),
        Options {
            policy: Policy {
                mode: PolicyMode::Allowlist,
                allow: [b.name.to_string()].into(),
                deny: Default::default(),
            },
            ..Options::default()
        },
    )
    .await;
    let c = relay("relay-c.example").await;
    let alice = a.user("alice").await;
    // Listed: fine both ways.
    assert_eq!(b.fed.add_peer(a.addr.clone()).await.unwrap(), a.name);
    // Unlisted C dials A: refused; A knows nothing about C afterwards.
    assert!(c.fed.add_peer(a.addr.clone()).await.is_err());
    let on_a = a.peer(c.peer_id()).await;
    assert!(on_a.is_none_or(|p| p.name.is_none()));
    // And A will not send to C either.
    a.fed.add_peer(c.addr.clone()).await.unwrap_err();
    let err = a
        .fed
        .fetch_bundle(
            &c.name,
            courier_protocol::BundleRequest {
                address: Address::parse("carol@relay-c.example").unwrap(),
                device: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownRelay);
    let _ = alice;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_message_crosses_once_per_relay_and_stores_no_plaintext() {
    let a = relay("relay-a.example").await;
    let b = relay("relay-b.example").await;
    let c = relay("relay-c.example").await;
    let alice = a.user("alice").await;
    let mut members = Vec::new();
    for n in ["a1", "a2"] {
        members.push((0, a.user(n).await));
    }
    for n in ["b1", "b2", "b3"] {
        members.push((1, b.user(n).await));
    }
    for n in ["c1", "c2", "c3", "c4"] {
        members.push((2, c.user(n).await));
    }
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    a.fed.add_peer(c.addr.clone()).await.unwrap();
    let to = [
        "a1@relay-a.example",
        "a2@relay-a.example",
        "b1@relay-b.example",
        "b2@relay-b.example",
        "b3@relay-b.example",
        "c1@relay-c.example",
        "c2@relay-c.example",
        "c3@relay-c.example",
        "c4@relay-c.example",
    ];
    let rounds = 5;
    for seq in 0..rounds {
        a.send(&alice, seq, &to).await;
        // One message at a time, so each batch holds exactly one envelope.
        eventually(10, "the message reaches every relay", || async {
            a.outbox_depth().await == 0
        })
        .await;
    }
    let relays = [&a, &b, &c];
    for (r, member) in &members {
        let got = relays[*r].mailbox(member).await;
        assert_eq!(got.len(), rounds as usize, "{}", member.user);
    }
    for remote in [&b, &c] {
        let from_a = remote.peer(a.peer_id()).await.unwrap().counters;
        assert_eq!(
            from_a.batches_received,
            u64::from(rounds),
            "one batch per message"
        );
        assert_eq!(
            from_a.envelopes_received,
            u64::from(rounds),
            "body once per relay"
        );
    }
    // Nothing any relay stored is readable.
    for (r, member) in &members {
        for envelope in relays[*r].mailbox(member).await {
            let stored = [envelope.body.as_slice(), envelope.header.as_slice()].concat();
            assert!(
                !stored.windows(PLAINTEXT.len()).any(|w| w == PLAINTEXT),
                "plaintext found on {}",
                relays[*r].name
            );
        }
    }
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

async fn total(relay: &TestRelay, devices: &[AuthedDevice]) -> Vec<EnvelopeId> {
    let mut ids = Vec::new();
    for d in devices {
        ids.extend(relay.mailbox(d).await.into_iter().map(|e| e.id));
    }
    ids
}

/// After a partition healed and both sides caught up: 51 messages each way,
/// none twice, and `a` connected to `b` again.
async fn healed_with_51_each_way_exactly_once(
    a: &TestRelay,
    b: &TestRelay,
    alice: &AuthedDevice,
    bob: &AuthedDevice,
) {
    // Room for a late duplicate to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to_bob = total(b, std::slice::from_ref(bob)).await;
    let to_alice = total(a, std::slice::from_ref(alice)).await;
    assert_eq!((to_bob.len(), to_alice.len()), (51, 51));
    assert_unique(&to_bob);
    assert_unique(&to_alice);
    eventually(10, "connected again", || async {
        a.peer(b.peer_id())
            .await
            .is_some_and(|p| p.state == PeerState::Connected)
    })
    .await;
}

fn assert_unique(ids: &[EnvelopeId]) {
    let mut sorted = ids.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "an envelope was delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_for_a_stopped_relay_arrive_exactly_once_after_restart() {
    let a = relay("relay-a.example").await;
    let b_key = Keypair::generate_ed25519();
    let b_store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut b = start(
        "relay-b.example",
        b_key.clone(),
        b_store.clone(),
        Options::default(),
    )
    .await;
    let alice = a.user("alice").await;
    let bobs = [b.user("bob").await, b.user("bea").await];
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    let listen = without_p2p(&b.addr);
    b.stop().await;

    let mut sent = Vec::new();
    for i in 0..1000u32 {
        let to = if i % 2 == 0 {
            "bob@relay-b.example"
        } else {
            "bea@relay-b.example"
        };
        sent.push(a.send(&alice, i, &[to]).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        total(&b, &bobs).await.is_empty(),
        "B is down: nothing arrives"
    );
    assert_eq!(a.outbox_depth().await, 1000);

    // B comes back on the same address with the same key and database.
    let b = start(
        "relay-b.example",
        b_key,
        b_store,
        Options {
            listen: Some(listen),
            ..Options::default()
        },
    )
    .await;
    eventually(60, "all 1000 delivered", || async {
        total(&b, &bobs).await.len() >= 1000
    })
    .await;
    eventually(10, "a's outbox drains", || async {
        a.outbox_depth().await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = total(&b, &bobs).await;
    assert_eq!(got.len(), 1000);
    assert_unique(&got);
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_comes_back_gets_its_backlog_without_waiting_out_the_backoff() {
    // Backoff of a minute or more: without the wake-up on hello the backlog
    // would sit for at least 30 s after B is back.
    let a = start(
        "relay-a.example",
        Keypair::generate_ed25519(),
        Arc::new(MemoryStore::new()),
        Options {
            backoff_ms: (60_000, 600_000),
            ..Options::default()
        },
    )
    .await;
    let b_key = Keypair::generate_ed25519();
    let b_store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut b = start(
        "relay-b.example",
        b_key.clone(),
        b_store.clone(),
        Options::default(),
    )
    .await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    let listen = without_p2p(&b.addr);
    b.stop().await;

    for i in 0..20u32 {
        a.send(&alice, i, &["bob@relay-b.example"]).await;
    }
    eventually(20, "A tried B and backed off", || async {
        let now = a.relay.now_ms();
        a.relay
            .outbox_destinations()
            .await
            .unwrap()
            .iter()
            .any(|d| d.pending == 20 && d.next_attempt_ms > now + 20_000)
    })
    .await;

    let b = start(
        "relay-b.example",
        b_key,
        b_store,
        Options {
            listen: Some(listen),
            ..Options::default()
        },
    )
    .await;
    eventually(15, "the backlog arrives right after the hello", || async {
        total(&b, std::slice::from_ref(&bob)).await.len() >= 20
    })
    .await;
    assert_unique(&total(&b, std::slice::from_ref(&bob)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_a_peer_then_unblocking_it_delivers_traffic_both_ways_exactly_once() {
    let a = relay("relay-a.example").await;
    let b = relay("relay-b.example").await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    a.send(&alice, 0, &["bob@relay-b.example"]).await;
    b.send(&bob, 0, &["alice@relay-a.example"]).await;
    eventually(10, "first exchange", || async {
        b.mailbox(&bob).await.len() == 1 && a.mailbox(&alice).await.len() == 1
    })
    .await;

    // Partition: each side drops the other's connections and dials.
    a.fed.set_blocked(b.peer_id(), true).await.unwrap();
    b.fed.set_blocked(a.peer_id(), true).await.unwrap();
    for i in 1..=50 {
        a.send(&alice, i, &["bob@relay-b.example"]).await;
        b.send(&bob, i, &["alice@relay-a.example"]).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        b.mailbox(&bob).await.len(),
        1,
        "nothing crosses the partition"
    );
    assert_eq!(a.mailbox(&alice).await.len(), 1);
    assert_eq!(a.peer(b.peer_id()).await.unwrap().state, PeerState::Refused);

    // Heal.
    a.fed.set_blocked(b.peer_id(), false).await.unwrap();
    b.fed.set_blocked(a.peer_id(), false).await.unwrap();
    eventually(30, "both directions catch up", || async {
        b.mailbox(&bob).await.len() >= 51 && a.mailbox(&alice).await.len() >= 51
    })
    .await;
    healed_with_51_each_way_exactly_once(&a, &b, &alice, &bob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_commands_talk_to_the_running_relay_and_edit_the_book_when_it_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::generate_ed25519();
    let mut fed = Config::new(name("relay-a.example"), key.clone());
    fed.peers_file = Some(dir.path().join(peers::PEERS_FILE));
    fed.control_socket = Some(dir.path().join(control::SOCKET_FILE));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a_relay = Arc::new(Relay::new(
        courier_relay::Config::new(name("relay-a.example")),
        store,
        Arc::new(SystemClock),
        Box::new(rand::rngs::StdRng::seed_from_u64(1)),
    ));
    let (a, task) = spawn(fed, Arc::new(RelayInbound(a_relay))).await.unwrap();
    let b = relay("relay-b.example").await;

    let added = control::peer_add(dir.path(), &b.addr.to_string())
        .await
        .unwrap();
    assert!(matches!(added, control::Outcome::Live(ref t) if t.contains("relay-b.example")));
    let listed = control::peers(dir.path()).await.unwrap();
    let on_a = listed
        .iter()
        .find(|p| p.peer_id == b.peer_id().to_base58())
        .unwrap();
    assert_eq!(on_a.state, PeerState::Connected);
    assert!(control::table(&listed, 0).contains("relay-b.example"));
    // Bad input: a clear error, nothing changed.
    assert!(
        control::peer_add(dir.path(), "/ip4/127.0.0.1/udp/1/quic-v1")
            .await
            .is_err()
    );
    assert!(
        control::peer_remove(dir.path(), "not-a-peer")
            .await
            .is_err()
    );

    let removed = control::peer_remove(dir.path(), &b.peer_id().to_base58())
        .await
        .unwrap();
    assert!(matches!(removed, control::Outcome::Live(_)));
    assert_eq!(a.peer(b.peer_id()).await.unwrap().state, PeerState::Refused);

    // Stopped relay: the commands edit peers.json, read on the next start.
    a.shutdown().await;
    task.await.unwrap();
    assert!(!dir.path().join(control::SOCKET_FILE).exists());
    let saved = control::peer_add(dir.path(), &b.addr.to_string())
        .await
        .unwrap();
    assert!(matches!(saved, control::Outcome::Saved(_)));
    let offline = control::peers(dir.path()).await.unwrap();
    let b_entry = offline
        .iter()
        .find(|p| p.peer_id == b.peer_id().to_base58())
        .unwrap();
    assert!(b_entry.added);
    assert_eq!(b_entry.name.as_ref(), Some(&b.name));
    assert_eq!(b_entry.state, PeerState::Disconnected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gossiping_more_relays_than_the_cap_leaves_the_book_at_the_cap_and_operator_peers_intact()
 {
    // M's own book holds 300 relays it made up, each signed by a fresh key
    // so every descriptor checks out; its hello shares them all.
    let m_dir = tempfile::tempdir().unwrap();
    let mut made_up = peers::PeerFile::default();
    for i in 0..300 {
        let key = Keypair::generate_ed25519();
        let relay = name(&format!("made-up-{i}.example"));
        let d = descriptor::sign(
            &key,
            courier_protocol::RelayDescriptor {
                name: relay.clone(),
                peer_id: key.public().to_peer_id().to_base58(),
                addresses: vec!["/ip4/192.0.2.1/udp/4433/quic-v1".into()],
                http_url: String::new(),
                version: "0.1.0".into(),
                features: vec![],
                issued_ms: 1,
            },
        );
        made_up
            .pins
            .insert(relay.clone(), key.public().to_peer_id().to_base58());
        made_up.descriptors.insert(relay, d);
    }
    let m_book = m_dir.path().join(peers::PEERS_FILE);
    std::fs::write(&m_book, serde_json::to_vec(&made_up).unwrap()).unwrap();
    let m = start(
        "relay-m.example",
        Keypair::generate_ed25519(),
        Arc::new(MemoryStore::new()),
        Options {
            peers_file: Some(m_book),
            ..Options::default()
        },
    )
    .await;

    let a_dir = tempfile::tempdir().unwrap();
    let a_book = a_dir.path().join(peers::PEERS_FILE);
    let a = start(
        "relay-a.example",
        Keypair::generate_ed25519(),
        Arc::new(MemoryStore::new()),
        Options {
            peers_file: Some(a_book.clone()),
            peers_max: 50,
            ..Options::default()
        },
    )
    .await;
    let b = relay("relay-b.example").await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    let p = Keypair::generate_ed25519().public().to_peer_id();
    a.fed.pin(name("relay-p.example"), p).await.unwrap();

    // M dials A: its hello carries 300 descriptors, six times A's cap.
    assert_eq!(m.fed.add_peer(a.addr.clone()).await.unwrap(), a.name);
    let book = || peers::load(&a_book).unwrap();
    eventually(10, "A has taken M's hello", || async {
        book()
            .entries
            .keys()
            .any(|n| n.as_str().starts_with("made-up-"))
    })
    .await;
    let saved = book();
    let mut held = peers::new_book(name("x.example"), p, Policy::default(), saved.clone());
    assert_eq!(held.len(), 50, "the book is at its cap");
    assert!(held.set_max(50).is_empty());
    // Operator peers intact: B (added, still federating) and the pin.
    assert_eq!(saved.pins.get(&b.name), Some(&b.peer_id().to_base58()));
    assert!(saved.descriptors.contains_key(&b.name));
    assert!(saved.added.contains_key(&b.peer_id().to_base58()));
    assert_eq!(
        saved.pins.get(&name("relay-p.example")),
        Some(&p.to_base58())
    );
    // M itself, talking to A, is in; of its hearsay, what fits.
    assert!(saved.descriptors.contains_key(&m.name));
    let heard = saved
        .entries
        .values()
        .filter(|e| e.learned_from.as_deref() == Some(m.peer_id().to_base58().as_str()))
        .count();
    assert_eq!(heard, 50 - 3);
    let on_a = a.fed.peers().await.unwrap();
    assert!(on_a.len() <= 50, "{} peers listed", on_a.len());

    // Federation with the operator's peer goes on.
    let id = a.send(&alice, 1, &["bob@relay-b.example"]).await;
    eventually(10, "bob has the message", || async {
        b.mailbox(&bob).await.iter().any(|e| e.id == id)
    })
    .await;
    assert_eq!(
        a.peer(b.peer_id()).await.unwrap().state,
        PeerState::Connected
    );
}

/// `addr` with its `/ip4/…` replaced by `host` (a `/dns…` component).
fn by_name(addr: &Multiaddr, host: libp2p::multiaddr::Protocol<'static>) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            libp2p::multiaddr::Protocol::Ip4(_) => host.clone(),
            p => p,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_peer_through_dns_multiaddrs_and_deliver_both_ways() {
    use libp2p::multiaddr::Protocol;
    let a = relay("relay-a.example").await;
    let b = relay("relay-b.example").await;
    let c = relay("relay-c.example").await;
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let dns4 = by_name(&a.addr, Protocol::Dns4("localhost".into()));
    assert!(
        dns4.to_string().starts_with("/dns4/localhost/udp/"),
        "{dns4}"
    );

    // B dials A by name.
    assert_eq!(b.fed.add_peer(dns4.clone()).await.unwrap(), a.name);
    let to_alice = b.send(&bob, 1, &["alice@relay-a.example"]).await;
    eventually(10, "alice has bob's message", || async {
        a.mailbox(&alice).await.iter().any(|e| e.id == to_alice)
    })
    .await;
    let to_bob = a.send(&alice, 2, &["bob@relay-b.example"]).await;
    eventually(10, "bob has alice's message", || async {
        b.mailbox(&bob).await.iter().any(|e| e.id == to_bob)
    })
    .await;
    // The name is what B keeps and redials.
    let on_b = b.peer(a.peer_id()).await.unwrap();
    assert_eq!(on_b.address.as_deref(), Some(dns4.to_string().as_str()));
    assert_eq!(on_b.state, PeerState::Connected);

    // `/dns/` (A or AAAA) works the same way.
    let dns = by_name(&a.addr, Protocol::Dns("localhost".into()));
    assert_eq!(c.fed.add_peer(dns).await.unwrap(), a.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_that_does_not_resolve_is_a_clear_error_and_is_redialled_with_backoff() {
    let a = relay("relay-a.example").await;
    let ghost = Keypair::generate_ed25519().public().to_peer_id();
    // `.invalid` never resolves (RFC 6761), without asking any server.
    let addr: Multiaddr = format!("/dns4/nonexistent.invalid/udp/4433/quic-v1/p2p/{ghost}")
        .parse()
        .unwrap();
    let err = a.fed.add_peer(addr.clone()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{text}");
    // Which address, and that the name did not resolve.
    assert!(
        text.contains("dial failed: /dns4/nonexistent.invalid/udp/4433/quic-v1: DNS error: "),
        "{text}"
    );
    assert!(text.contains("nonexistent.invalid."), "{text}");
    // Like any unreachable added peer: kept, and redialled with backoff.
    eventually(20, "redialled and still failing", || async {
        a.peer(ghost).await.is_some_and(|p| {
            p.added
                && p.dial_failures >= 3
                && p.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("nonexistent.invalid"))
        })
    })
    .await;
    let on_a = a.peer(ghost).await.unwrap();
    assert_ne!(on_a.state, PeerState::Connected);
    assert_eq!(on_a.address.as_deref(), Some(addr.to_string().as_str()));
}

/// A UDP forwarder on 127.0.0.1 standing in for the network between two
/// relays: datagrams arriving on `front` leave from a second socket to
/// `target`, and what comes back to that socket goes to whoever last sent to
/// `front`. Cut, it drops every datagram both ways, which QUIC sees as total
/// packet loss (no close, no error: keep-alives and the idle timeout have to
/// find out).
struct Forwarder {
    front: std::net::SocketAddr,
    target: Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
    cut: Arc<std::sync::atomic::AtomicBool>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn bind() -> Forwarder {
        use std::sync::atomic::Ordering::Relaxed;
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = Arc::new(std::sync::Mutex::new(None));
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let addr = front.local_addr().unwrap();
        let task = tokio::spawn({
            let (target, cut, dropped) = (target.clone(), cut.clone(), dropped.clone());
            async move {
                let mut client = None;
                let (mut out, mut home) = (vec![0u8; 65_536], vec![0u8; 65_536]);
                loop {
                    tokio::select! {
                        got = front.recv_from(&mut out) => {
                            let Ok((n, from)) = got else { continue };
                            client = Some(from);
                            let to = *target.lock().unwrap();
                            match to {
                                _ if cut.load(Relaxed) => {
                                    dropped.fetch_add(1, Relaxed);
                                }
                                Some(to) => {
                                    let _ = back.send_to(&out[..n], to).await;
                                }
                                None => {}
                            }
                        }
                        got = back.recv_from(&mut home) => {
                            let Ok((n, _)) = got else { continue };
                            match client {
                                _ if cut.load(Relaxed) => {
                                    dropped.fetch_add(1, Relaxed);
                                }
                                Some(to) => {
                                    let _ = front.send_to(&home[..n], to).await;
                                }
                                None => {}
                            }
                        }
                    }
                }
            }
        });
        Forwarder {
            front: addr,
            target,
            cut,
            dropped,
            task,
        }
    }

    /// Where datagrams go: a relay's real QUIC address.
    fn forward_to(&self, addr: &Multiaddr) {
        use libp2p::multiaddr::Protocol;
        let mut ip = None;
        let mut port = None;
        for p in addr.iter() {
            match p {
                Protocol::Ip4(a) => ip = Some(a),
                Protocol::Udp(p) => port = Some(p),
                _ => {}
            }
        }
        *self.target.lock().unwrap() = Some((ip.unwrap(), port.unwrap()).into());
    }

    /// The address relays dial to go through the forwarder.
    fn multiaddr(&self) -> Multiaddr {
        format!("/ip4/127.0.0.1/udp/{}/quic-v1", self.front.port())
            .parse()
            .unwrap()
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Relaxed);
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_then_heal_delivers_traffic_both_ways_exactly_once() {
    // Each relay advertises a forwarder as its address, so every dial
    // either way crosses one (A→B through `to_b`, B→A through `to_a`).
    let to_a = Forwarder::bind().await;
    let to_b = Forwarder::bind().await;
    let start_behind = |relay_name: &'static str, forwarder: &Forwarder| {
        let external = vec![forwarder.multiaddr()];
        async move {
            start(
                relay_name,
                Keypair::generate_ed25519(),
                Arc::new(MemoryStore::new()),
                Options {
                    external,
                    ..Options::default()
                },
            )
            .await
        }
    };
    let a = start_behind("relay-a.example", &to_a).await;
    let b = start_behind("relay-b.example", &to_b).await;
    to_a.forward_to(&a.addr);
    to_b.forward_to(&b.addr);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let b_via_forwarder = to_b
        .multiaddr()
        .with(libp2p::multiaddr::Protocol::P2p(b.peer_id()));
    a.fed.add_peer(b_via_forwarder).await.unwrap();
    a.send(&alice, 0, &["bob@relay-b.example"]).await;
    b.send(&bob, 0, &["alice@relay-a.example"]).await;
    eventually(10, "first exchange", || async {
        b.mailbox(&bob).await.len() == 1 && a.mailbox(&alice).await.len() == 1
    })
    .await;

    // Partition: every datagram dropped, both ways. Sends go on being
    // accepted into the outboxes.
    to_a.set_cut(true);
    to_b.set_cut(true);
    for i in 1..=50 {
        a.send(&alice, i, &["bob@relay-b.example"]).await;
        b.send(&bob, i, &["alice@relay-a.example"]).await;
    }
    // The idle timeout (1.5 s here) notices the silence on both sides.
    eventually(15, "both sides lose the connection", || async {
        a.peer(b.peer_id())
            .await
            .is_some_and(|p| p.state != PeerState::Connected)
            && b.peer(a.peer_id())
                .await
                .is_some_and(|p| p.state != PeerState::Connected)
    })
    .await;
    // Redials time out in the handshake; every envelope's batch goes
    // unanswered at least once, and the drainer backs off.
    for (from, to) in [(&a, &b), (&b, &a)] {
        eventually(20, "the drainer retries and backs off", || async {
            let now = from.relay.now_ms();
            let on_from = from.peer(to.peer_id()).await.unwrap();
            let backed_off = from
                .relay
                .outbox_destinations()
                .await
                .unwrap()
                .iter()
                .any(|d| d.relay == to.name && d.pending == 50 && d.next_attempt_ms > now);
            on_from.dial_failures > 0 && on_from.counters.retried >= 50 && backed_off
        })
        .await;
    }
    assert_eq!(b.mailbox(&bob).await.len(), 1, "nothing crossed");
    assert_eq!(a.mailbox(&alice).await.len(), 1, "nothing crossed");
    assert!(to_a.dropped() > 0 && to_b.dropped() > 0);

    // Heal: the same path carries datagrams again.
    to_a.set_cut(false);
    to_b.set_cut(false);
    eventually(30, "both directions catch up", || async {
        b.mailbox(&bob).await.len() >= 51 && a.mailbox(&alice).await.len() >= 51
    })
    .await;
    eventually(10, "both outboxes drain", || async {
        a.outbox_depth().await == 0 && b.outbox_depth().await == 0
    })
    .await;
    healed_with_51_each_way_exactly_once(&a, &b, &alice, &bob).await;
}

trait PeerOfHandle {
    async fn peer(&self, peer: PeerId) -> Option<PeerInfo>;
}

impl PeerOfHandle for Handle {
    async fn peer(&self, peer: PeerId) -> Option<PeerInfo> {
        self.peers()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.peer_id == peer.to_base58())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_member_group_over_ten_relays_costs_ten_federation_deliveries() {
    let a = relay("relay-a.example").await;
    let alice = a.user("alice").await;
    let mut remotes = Vec::new();
    let mut to = Vec::new();
    for r in 0..10 {
        let remote = relay(&format!("relay-{r}.example")).await;
        for m in 0..10 {
            remote.user(&format!("m{m}")).await;
            to.push(format!("m{m}@relay-{r}.example"));
        }
        a.fed.add_peer(remote.addr.clone()).await.unwrap();
        remotes.push(remote);
    }
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    a.send(&alice, 1, &to).await;
    eventually(20, "every relay got the message", || async {
        a.outbox_depth().await == 0
    })
    .await;
    let mut deliveries = 0;
    for remote in &remotes {
        let from_a = remote.peer(a.peer_id()).await.unwrap().counters;
        assert_eq!(from_a.envelopes_received, 1, "body once per relay");
        deliveries += from_a.batches_received;
    }
    assert_eq!(deliveries, 10);
    let sent: u64 = a
        .fed
        .peers()
        .await
        .unwrap()
        .iter()
        .map(|p| p.counters.batches_sent)
        .sum();
    assert_eq!(sent, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_bundle_is_fetched_over_federation_and_its_one_time_prekey_used_once() {
    use courier_protocol::api::{OneTimePreKey, SignedPreKey};
    let a = relay("relay-a.example").await;
    let b = relay("relay-b.example").await;
    let bob = b.user("bob").await;
    b.store
        .set_signed_prekey(
            &bob.user,
            DeviceId(1),
            SignedPreKey {
                id: 1,
                public: Bytes::from(vec![5; 32]),
                signature: Bytes::from(vec![6; 64]),
                created_ms: 1,
            },
        )
        .await
        .unwrap();
    b.store
        .add_one_time_prekeys(
            &bob.user,
            DeviceId(1),
            vec![OneTimePreKey {
                id: 7,
                public: Bytes::from(vec![8; 32]),
            }],
            100,
        )
        .await
        .unwrap();
    a.fed.add_peer(b.addr.clone()).await.unwrap();
    let address = Address::parse("bob@relay-b.example").unwrap();
    let fetch = || courier_relay::federation::fetch_remote_bundle(&a.fed, &address, None);
    let first = fetch().await.unwrap();
    assert_eq!(first.device_list.list.address, address);
    assert_eq!(first.bundles.len(), 1);
    assert_eq!(
        first.bundles[0].one_time_prekey.as_ref().map(|k| k.id),
        Some(7)
    );
    // Consumed on relay B: the next fetch gets none.
    let second = fetch().await.unwrap();
    assert!(second.bundles[0].one_time_prekey.is_none());
    // Unknown user and unknown relay: clear errors.
    let nobody = Address::parse("nobody@relay-b.example").unwrap();
    let err = courier_relay::federation::fetch_remote_bundle(&a.fed, &nobody, None)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownUser);
    let elsewhere = Address::parse("x@relay-z.example").unwrap();
    let err = courier_relay::federation::fetch_remote_bundle(&a.fed, &elsewhere, None)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownRelay);
}
