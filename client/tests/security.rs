//! Security regression tests of the client SDK (issue #13, client items):
//! each attack performed against a real `courier serve` on 127.0.0.1 over
//! real HTTP (or, where the attacker is the relay itself, a hostile server
//! or in-process relays from `courier-testkit` that inject what a hostile
//! relay would), and the client's defence asserted.
//!
//! Attackers forge with the same public crypto API a real client uses and
//! submit over the relay's HTTP API with their own account's token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use courier_client::content::{self, TAG_DIRECT, TAG_GROUP};
use courier_client::store::Table;
use courier_client::transport::Subscription;
use courier_client::wire;
use courier_client::{
    Client, ClientConfig, ClientParts, ClientStore, Error, HttpTransport, MemoryStore, SystemClock,
    Transport, TransportError,
};
use courier_crypto::sealed::{self, SenderAddress};
use courier_crypto::{Identity, IdentityPickle, PreKeyBundle, PublicIdentity, Session};
use courier_protocol::api::{
    AckResponse, ApproveLinkRequest, ApproveLinkResponse, ChallengeRequest, ChallengeResponse,
    DeliveryFailureNotice, DeviceBundle, Envelope, EnvelopeKind, FailedRecipient, FetchResponse,
    KeyBundleResponse, LinkInfo, LinkRequest, LinkResponse, LinkStatus, LoginRequest, PreKeyCount,
    RefreshRequest, RegisterRequest, RegisterResponse, SendResponse, SignedDeviceList,
    SignedPreKey, TokenResponse, UploadOneTimePreKeys,
};
use courier_protocol::{
    Address, Bytes, DeviceId, EnvelopeId, ErrorCode, OutgoingMessage, RecipientEntry, RelayName,
    Username,
};
use courier_testkit::Network;
use rand::rngs::StdRng;
use rand_core::Rng as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::relay_bin;

/// A `courier serve` on free ports, killed on drop.
struct Relay {
    child: Child,
    url: String,
    _tmp: tempfile::TempDir,
}

impl Relay {
    fn start(envs: &[(&str, &str)]) -> Relay {
        let tmp = tempfile::tempdir().unwrap();
        let mut command = Command::new(relay_bin());
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(["--name", "relay-a.test", "--registration", "open"])
            .args(["--http", "127.0.0.1:0"])
            .args(["--p2p", "/ip4/127.0.0.1/udp/0/quic-v1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn courier serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening http=") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60));
        // Owned before anything can panic, so drop kills it.
        let mut relay = Relay {
            child,
            url: String::new(),
            _tmp: tmp,
        };
        let addr = addr.expect("relay printed its address");
        relay.url = format!("http://{addr}");
        relay
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts the key fetches a client makes, by the address they are about.
#[derive(Default)]
struct Counts(Mutex<BTreeMap<String, usize>>);

impl Counts {
    fn bump(&self, who: String) {
        *self.0.lock().unwrap().entry(who).or_default() += 1;
    }

    fn of(&self, who: &Address) -> usize {
        self.0
            .lock()
            .unwrap()
            .get(&who.to_string())
            .copied()
            .unwrap_or(0)
    }
}

/// The real HTTP transport with a counter on device-list and bundle fetches.
struct Counting {
    inner: HttpTransport,
    relay: RelayName,
    counts: Arc<Counts>,
}

#[async_trait]
impl Transport for Counting {
    async fn relay_info(&self) -> Result<Option<courier_protocol::api::RelayInfo>, TransportError> {
        self.inner.relay_info().await
    }
    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, TransportError> {
        self.inner.register(req).await
    }
    async fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, TransportError> {
        self.inner.challenge(req).await
    }
    async fn login(&self, req: &LoginRequest) -> Result<TokenResponse, TransportError> {
        self.inner.login(req).await
    }
    async fn refresh(&self, req: &RefreshRequest) -> Result<TokenResponse, TransportError> {
        self.inner.refresh(req).await
    }
    async fn device_list(&self, username: &Username) -> Result<SignedDeviceList, TransportError> {
        self.counts
            .bump(Address::new(username.clone(), self.relay.clone()).to_string());
        self.inner.device_list(username).await
    }
    async fn create_link(&self, req: &LinkRequest) -> Result<LinkResponse, TransportError> {
        self.inner.create_link(req).await
    }
    async fn link_status(&self, code: &str, secret: &str) -> Result<LinkStatus, TransportError> {
        self.inner.link_status(code, secret).await
    }
    async fn link_info(&self, token: &str, code: &str) -> Result<LinkInfo, TransportError> {
        self.inner.link_info(token, code).await
    }
    async fn approve_link(
        &self,
        token: &str,
        code: &str,
        req: &ApproveLinkRequest,
    ) -> Result<ApproveLinkResponse, TransportError> {
        self.inner.approve_link(token, code, req).await
    }
    async fn put_signed_prekey(
        &self,
        token: &str,
        key: &SignedPreKey,
    ) -> Result<(), TransportError> {
        self.inner.put_signed_prekey(token, key).await
    }
    async fn upload_one_time_prekeys(
        &self,
        token: &str,
        req: &UploadOneTimePreKeys,
    ) -> Result<PreKeyCount, TransportError> {
        self.inner.upload_one_time_prekeys(token, req).await
    }
    async fn prekey_count(&self, token: &str) -> Result<PreKeyCount, TransportError> {
        self.inner.prekey_count(token).await
    }
    async fn key_bundle(
        &self,
        token: &str,
        address: &Address,
        device: Option<DeviceId>,
    ) -> Result<KeyBundleResponse, TransportError> {
        self.counts.bump(address.to_string());
        self.inner.key_bundle(token, address, device).await
    }
    async fn send(
        &self,
        token: &str,
        message: &OutgoingMessage,
    ) -> Result<SendResponse, TransportError> {
        self.inner.send(token, message).await
    }
    async fn fetch(
        &self,
        token: &str,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<FetchResponse, TransportError> {
        self.inner.fetch(token, after, limit).await
    }
    async fn ack(&self, token: &str, seqs: &[u64]) -> Result<AckResponse, TransportError> {
        self.inner.ack(token, seqs).await
    }
    async fn subscribe(&self, token: &str) -> Result<Box<dyn Subscription>, TransportError> {
        self.inner.subscribe(token).await
    }
}

/// One SDK client on the relay, with its store at hand so the test can act
/// as that account on the raw API (an attacker is just another account).
struct User {
    client: Client,
    store: Arc<MemoryStore>,
    address: Address,
    http: HttpTransport,
    counts: Arc<Counts>,
}

impl User {
    async fn register(relay: &Relay, name: &str, config: ClientConfig) -> User {
        let store = Arc::new(MemoryStore::new());
        let counts = Arc::new(Counts::default());
        let http = HttpTransport::new(&relay.url).unwrap();
        let transport = Counting {
            inner: http.clone(),
            relay: RelayName::parse("relay-a.test").unwrap(),
            counts: counts.clone(),
        };
        let client = Client::open(ClientParts {
            transport: Arc::new(transport),
            store: store.clone(),
            clock: Arc::new(SystemClock),
            rng_seed: None,
            config,
        })
        .await
        .unwrap();
        let address = client.register(name, None, &relay.url, &[]).await.unwrap();
        User {
            client,
            store,
            address,
            http,
            counts,
        }
    }

    async fn token(&self) -> String {
        let raw = self
            .store
            .get(Table::Meta, "tokens")
            .await
            .unwrap()
            .unwrap();
        let tokens: TokenResponse = serde_json::from_slice(&raw).unwrap();
        tokens.access_token
    }

    async fn identity(&self) -> Identity {
        let raw = self
            .store
            .get(Table::Meta, "identity")
            .await
            .unwrap()
            .unwrap();
        let pickle: IdentityPickle = serde_json::from_slice(&raw).unwrap();
        Identity::from_pickle(&pickle).unwrap()
    }

    /// What waits in this account's device-1 mailbox on the relay.
    async fn mailbox(&self) -> Vec<Envelope> {
        let token = self.token().await;
        self.http.fetch(&token, None, None).await.unwrap().envelopes
    }

    /// Submits one envelope (header, body) to `to`'s device 1 as this account.
    async fn submit(&self, to: &Address, header: Vec<u8>, body: Vec<u8>) {
        let token = self.token().await;
        let message = OutgoingMessage {
            id: envelope_id(),
            body: Bytes(body),
            recipients: vec![RecipientEntry {
                to: to.clone(),
                device: DeviceId(1),
                header: Bytes(header),
            }],
            ttl_secs: 3600,
        };
        self.http.send(&token, &message).await.unwrap();
    }

    /// `to`'s device-1 prekey bundle, fetched as this account.
    async fn bundle(&self, to: &Address) -> DeviceBundle {
        let token = self.token().await;
        let resp = self.http.key_bundle(&token, to, Some(DeviceId(1))).await;
        resp.unwrap().bundles.remove(0)
    }

    fn texts(messages: &[courier_client::Message]) -> Vec<String> {
        messages.iter().map(|m| m.text.clone()).collect()
    }
}

fn envelope_id() -> EnvelopeId {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut random = [0u8; 10];
    rng().fill_bytes(&mut random);
    EnvelopeId::new(ms, random)
}

fn rng() -> StdRng {
    rand::make_rng::<StdRng>()
}

fn public_identity(bundle: &DeviceBundle) -> PublicIdentity {
    wire::public_identity(&bundle.keys).unwrap()
}

fn prekey_bundle(bundle: &DeviceBundle) -> PreKeyBundle {
    wire::prekey_bundle(bundle).unwrap()
}

/// Item 1 (client side): envelopes the victim can never open (group
/// messages under a sender-key chain nobody gave it) are acked after the
/// bound and parked locally, so the mailbox empties instead of staying
/// full; a real group message that waited for its sender key is opened
/// from the park once the key arrives, and shown exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_envelopes_are_parked_and_acked_and_a_late_sender_key_opens_them_once() {
    // One source may fill the whole mailbox here: this test is about the
    // client's defence alone (the relay's per-source share is tested in
    // node/tests/security/mailbox.rs).
    let relay = Relay::start(&[
        ("COURIER_RELAY_MAILBOX_DEPTH_MAX", "8"),
        ("COURIER_RELAY_MAILBOX_PER_SOURCE_MAX", "8"),
    ]);
    let alice = User::register(&relay, "alice", ClientConfig::default()).await;
    let config = ClientConfig {
        defer_attempts_max: 2,
        ..ClientConfig::default()
    };
    let bob = User::register(&relay, "bob", config).await;
    let mallory = User::register(&relay, "mallory", ClientConfig::default()).await;

    // Alice's sender key for the group reaches bob's mailbox; the test
    // holds it back (takes it out) so bob reads the group message first.
    alice
        .client
        .group_create("g", std::slice::from_ref(&bob.address))
        .await
        .unwrap();
    let held = bob.mailbox().await;
    assert_eq!(held.len(), 1, "the sender-key delivery");
    let key_envelope = held[0].clone();
    bob.http
        .ack(&bob.token().await, &[key_envelope.seq])
        .await
        .unwrap();
    alice.client.group_send("g", "hello group").await.unwrap();

    // Mallory fills the rest of bob's mailbox with group messages under
    // chains bob has no key for.
    let bob_identity = public_identity(&mallory.bundle(&bob.address).await);
    let me = mallory.identity().await;
    let from = SenderAddress {
        address: mallory.address.to_string(),
        device: 1,
    };
    for _ in 0..7 {
        let mut body = vec![1u8, 4];
        let mut junk = [0u8; 100];
        rng().fill_bytes(&mut junk);
        body.extend_from_slice(&junk);
        let mut payload = vec![TAG_GROUP];
        let mut gid = [0u8; 16];
        rng().fill_bytes(&mut gid);
        payload.extend_from_slice(&gid);
        payload.extend_from_slice(&content::body_hash(&body));
        let header = sealed::seal(&me, &from, &bob_identity, &payload, &mut rng()).unwrap();
        mallory.submit(&bob.address, header, body).await;
    }
    assert_eq!(bob.mailbox().await.len(), 8);
    // The attack: the mailbox is full, legitimate senders are refused.
    match alice.client.send(&bob.address, "refused").await {
        Err(Error::Api(e)) => assert_eq!(e.code, ErrorCode::MailboxFull),
        other => panic!("expected mailbox_full, got {other:?}"),
    }

    // Bob's client tries up to the bound, then parks and acks.
    for _ in 0..2 {
        assert!(bob.client.recv().await.unwrap().is_empty());
    }
    assert!(
        bob.mailbox().await.is_empty(),
        "unreadable envelopes were acked after the bound"
    );
    let parked = bob.store.scan(Table::Deferred, "p/").await.unwrap();
    assert_eq!(parked.len(), 8, "all eight are parked locally");

    // Senders get through again.
    alice.client.send(&bob.address, "after").await.unwrap();
    // The held sender key arrives late (resent under a new envelope id).
    alice
        .submit(
            &bob.address,
            key_envelope.header.as_slice().to_vec(),
            key_envelope.body.as_slice().to_vec(),
        )
        .await;
    let mut got = User::texts(&bob.client.recv().await.unwrap());
    got.sort();
    assert_eq!(got, ["after", "hello group"]);
    assert!(bob.client.recv().await.unwrap().is_empty());
    let history = bob.client.history().await.unwrap();
    let shown = history.iter().filter(|m| m.text == "hello group").count();
    assert_eq!(shown, 1, "the parked message is shown exactly once");
    let parked = bob.store.scan(Table::Deferred, "p/").await.unwrap();
    assert_eq!(parked.len(), 7, "only mallory's junk stays parked");
    assert!(bob.mailbox().await.is_empty());
}

/// Item 7: a first (prekey) message without a one-time prekey, replayed
/// under a new envelope id, is refused (and acked): shown once only.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_first_message_without_a_one_time_prekey_is_shown_once() {
    // No one-time prekeys at all, so the first message uses none.
    let relay = Relay::start(&[("COURIER_RELAY_PREKEYS_LOW_WATER", "0")]);
    let alice = User::register(&relay, "alice", ClientConfig::default()).await;
    let config = ClientConfig {
        one_time_prekeys_target: 0,
        ..ClientConfig::default()
    };
    let bob = User::register(&relay, "bob", config).await;
    let mallory = User::register(&relay, "mallory", ClientConfig::default()).await;
    assert!(
        mallory.bundle(&bob.address).await.one_time_prekey.is_none(),
        "bob has no one-time prekeys"
    );

    alice.client.send(&bob.address, "first").await.unwrap();
    // The attacker (here: anyone who saw the envelope) keeps a copy.
    let copy = bob.mailbox().await.remove(0);
    assert_eq!(User::texts(&bob.client.recv().await.unwrap()), ["first"]);

    for _ in 0..2 {
        mallory
            .submit(
                &bob.address,
                copy.header.as_slice().to_vec(),
                copy.body.as_slice().to_vec(),
            )
            .await;
        assert!(
            bob.client.recv().await.unwrap().is_empty(),
            "the replay is refused"
        );
        assert!(bob.mailbox().await.is_empty(), "and acked");
    }
    let history = bob.client.history().await.unwrap();
    assert_eq!(history.iter().filter(|m| m.text == "first").count(), 1);
    // The real session still works both ways.
    alice.client.send(&bob.address, "second").await.unwrap();
    assert_eq!(User::texts(&bob.client.recv().await.unwrap()), ["second"]);
    bob.client.send(&alice.address, "reply").await.unwrap();
    assert_eq!(User::texts(&alice.client.recv().await.unwrap()), ["reply"]);
}

/// Item 8: sealed envelopes that claim to come from carol but are not
/// authenticated by carol's keys make no burst of fetches of carol's keys
/// and raise no identity-change warning; carol's own messages still work.
#[tokio::test(flavor = "multi_thread")]
async fn forged_claims_of_a_sender_cause_no_refetch_burst_and_no_identity_warning() {
    let relay = Relay::start(&[]);
    let carol = User::register(&relay, "carol", ClientConfig::default()).await;
    let bob = User::register(&relay, "bob", ClientConfig::default()).await;
    let mallory = User::register(&relay, "mallory", ClientConfig::default()).await;
    carol
        .client
        .send(&bob.address, "hi from carol")
        .await
        .unwrap();
    assert_eq!(
        User::texts(&bob.client.recv().await.unwrap()),
        ["hi from carol"]
    );
    let before = bob.counts.of(&carol.address);

    let bundle = mallory.bundle(&bob.address).await;
    let bob_identity = public_identity(&bundle);
    let me = mallory.identity().await;
    let claimed = SenderAddress {
        address: carol.address.to_string(),
        device: 1,
    };
    for i in 0..20 {
        let mut payload = vec![TAG_DIRECT];
        if i % 2 == 0 {
            // A real X3DH first message, but under mallory's identity.
            let mut session = Session::initiate(&me, &prekey_bundle(&bundle), &mut rng()).unwrap();
            payload.extend_from_slice(&session.encrypt(b"forged", &mut rng()).unwrap());
        } else {
            // Garbage that only claims a ratchet message.
            payload.extend_from_slice(&[1, 1]);
            let mut junk = [0u8; 80];
            rng().fill_bytes(&mut junk);
            payload.extend_from_slice(&junk);
        }
        let header = sealed::seal(&me, &claimed, &bob_identity, &payload, &mut rng()).unwrap();
        mallory.submit(&bob.address, header, vec![1; 40]).await;
    }
    let shown = bob.client.recv().await.unwrap();
    assert!(shown.is_empty(), "nothing shown: {shown:?}");
    let warnings = bob
        .client
        .history()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.text.contains("identity"))
        .count();
    assert_eq!(warnings, 0, "no identity-change warning");
    let fetches = bob.counts.of(&carol.address) - before;
    assert!(fetches <= 1, "{fetches} fetches of carol's keys");
    assert!(bob.mailbox().await.is_empty(), "the forgeries are acked");

    carol.client.send(&bob.address, "still me").await.unwrap();
    assert_eq!(User::texts(&bob.client.recv().await.unwrap()), ["still me"]);
}

/// Item 12 (client side): a delivery-failure notice whose origin is not
/// the home relay (another relay forged it) is acked and not shown; the
/// home relay's own notices still are. The relay that forges it is the
/// attacker here, so the test kit injects the notice in its name (real relays
/// refuse such notices from peers: that is the relay's side of the item).
#[tokio::test]
async fn a_delivery_failure_notice_from_a_federated_origin_is_dropped() {
    let net = Network::new();
    let parts = |relay: &str| ClientParts {
        transport: Arc::new(net.transport(relay).unwrap()),
        store: Arc::new(MemoryStore::new()),
        clock: Arc::new(SystemClock),
        rng_seed: None,
        config: ClientConfig::default(),
    };
    let alice = Client::open(parts("relay-a.example")).await.unwrap();
    let a = alice.register("alice", None, "", &[]).await.unwrap();
    let notice = |origin: &str| {
        let body = DeliveryFailureNotice {
            id: envelope_id(),
            recipients: vec![FailedRecipient {
                to: Address::parse("bob@relay-b.example").unwrap(),
                device: DeviceId(1),
                code: ErrorCode::UnknownUser,
            }],
        };
        Envelope {
            seq: 0,
            id: envelope_id(),
            origin: RelayName::parse(origin).unwrap(),
            header: Bytes(Vec::new()),
            body: Bytes(serde_json::to_vec(&body).unwrap()),
            received_ms: 1,
            expires_ms: u64::MAX / 2,
            kind: EnvelopeKind::DeliveryFailure,
        }
    };
    assert!(net.inject(&a, DeviceId(1), notice("relay-b.example")));
    assert!(
        alice.recv().await.unwrap().is_empty(),
        "forged notice hidden"
    );
    assert_eq!(net.pending(&a, DeviceId(1)).await, 0, "and acked");
    assert!(net.inject(&a, DeviceId(1), notice("relay-a.example")));
    let shown = alice.recv().await.unwrap();
    assert_eq!(shown.len(), 1);
    assert!(shown[0].text.contains("not delivered"), "{}", shown[0].text);
}

/// A hostile "relay": answers every HTTP request with `head` and then
/// `body_chunk` repeated (chunked encoding) until the client hangs up or
/// `limit` bytes went out. Returns the URL and a handle giving the bytes
/// written.
async fn hostile_http(
    head: &'static str,
    limit: usize,
) -> (String, tokio::task::JoinHandle<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let mut request = Vec::new();
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                return 0;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let mut written = 0usize;
        if sock.write_all(head.as_bytes()).await.is_err() {
            return written;
        }
        let chunk = vec![b' '; 64 * 1024];
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk,
            b"\r\n".to_vec(),
        ]
        .concat();
        while written < limit {
            if sock.write_all(&framed).await.is_err() {
                break;
            }
            written += framed.len();
        }
        written
    });
    (url, task)
}

/// Item 19 (client part): an endless response body fails cleanly at the
/// response cap, without the client reading (or holding) the stream.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_http_body_from_the_relay_is_cut_off_at_the_cap() {
    let limit = 256 * 1024 * 1024;
    let (url, server) = hostile_http(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        limit,
    )
    .await;
    let transport = HttpTransport::new(&url).unwrap();
    let err = transport
        .device_list(&Username::parse("bob").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::BadResponse(m) if m.contains("larger than")),
        "{err:?}"
    );
    drop(transport);
    let written = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .unwrap()
        .unwrap();
    // The cap plus what socket buffers hold, far from the endless stream.
    assert!(written < 64 * 1024 * 1024, "{written} bytes were sent");
}

/// Item 19: a declared body over the cap is refused before reading it.
#[tokio::test(flavor = "multi_thread")]
async fn a_declared_huge_http_body_is_refused_up_front() {
    let (url, _server) = hostile_http(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\n\r\n",
        1024 * 1024,
    )
    .await;
    let transport = HttpTransport::new(&url).unwrap();
    let err = transport.prekey_count("token").await.unwrap_err();
    assert!(
        matches!(&err, TransportError::BadResponse(m) if m.contains("larger than")),
        "{err:?}"
    );
}

/// Item 19: a WebSocket frame over the protocol's frame limit is refused
/// by the client instead of being buffered and decoded.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_websocket_frame_from_the_relay_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        use futures::SinkExt;
        let (sock, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(sock).await.unwrap();
        // Valid JSON of a real frame type, just far too large.
        let text = format!(
            r#"{{"type":"error","error":{{"code":"internal","message":"{}"}}}}"#,
            "x".repeat(2 * 1024 * 1024)
        );
        let _ = ws
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let transport = HttpTransport::new(&url).unwrap();
    let mut sub = transport.subscribe("token").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap();
    match got {
        Err(TransportError::BadResponse(m)) => assert!(m.contains("too long"), "{m}"),
        other => {
            let got = format!("{other:?}");
            panic!(
                "expected the frame to be refused, got {}",
                &got[..got.len().min(200)]
            )
        }
    }
    server.abort();
}

/// A client on `relay-a.example` of `net`, keeping its state in `store`.
async fn open_parked(net: &Network, store: &Arc<MemoryStore>, config: ClientConfig) -> Client {
    Client::open(ClientParts {
        transport: Arc::new(net.transport("relay-a.example").unwrap()),
        store: store.clone(),
        clock: Arc::new(SystemClock),
        rng_seed: None,
        config,
    })
    .await
    .unwrap()
}

/// Item 1: what is parked is bounded in number and bytes (the oldest go
/// first) and dropped at its expiry.
#[tokio::test]
async fn parked_envelopes_are_bounded_and_expire() {
    let net = Network::new();
    let store = Arc::new(MemoryStore::new());
    let bob = open_parked(
        &net,
        &store,
        ClientConfig {
            defer_attempts_max: 1,
            parked_max: 3,
            ..ClientConfig::default()
        },
    )
    .await;
    let b = bob.register("bob", None, "", &[]).await.unwrap();
    let raw = store.get(Table::Meta, "identity").await.unwrap().unwrap();
    let pickle: IdentityPickle = serde_json::from_slice(&raw).unwrap();
    let bob_identity = Identity::from_pickle(&pickle).unwrap().public().clone();
    let mallory = Identity::generate(&mut rng());
    let from = SenderAddress {
        address: "mallory@relay-a.example".into(),
        device: 1,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // A group message under a chain bob never got: never readable.
    let junk = |expires_ms: u64| {
        let mut body = vec![1u8, 4];
        body.extend_from_slice(&[7; 100]);
        let mut payload = vec![TAG_GROUP];
        payload.extend_from_slice(&[9; 16]);
        payload.extend_from_slice(&content::body_hash(&body));
        let header = sealed::seal(&mallory, &from, &bob_identity, &payload, &mut rng()).unwrap();
        Envelope {
            seq: 0,
            id: envelope_id(),
            origin: RelayName::parse("relay-a.example").unwrap(),
            header: Bytes(header),
            body: Bytes(body),
            received_ms: now,
            expires_ms,
            kind: EnvelopeKind::Message,
        }
    };
    let one = {
        let e = junk(0);
        e.header.len() + e.body.len()
    };
    // One that expires soon, then five more: only the newest three stay.
    assert!(net.inject(&b, DeviceId(1), junk(now + 1500)));
    bob.recv().await.unwrap();
    for _ in 0..5 {
        assert!(net.inject(&b, DeviceId(1), junk(now + 3_600_000)));
        bob.recv().await.unwrap();
    }
    assert_eq!(net.pending(&b, DeviceId(1)).await, 0, "all acked");
    let parked = store.scan(Table::Deferred, "p/").await.unwrap();
    assert_eq!(parked.len(), 3, "bounded in number");

    // Bounded in bytes: two fit, a third pushes the oldest out.
    let small = open_parked(
        &net,
        &store,
        ClientConfig {
            defer_attempts_max: 1,
            parked_bytes_max: 2 * one,
            ..ClientConfig::default()
        },
    )
    .await;
    assert!(net.inject(&b, DeviceId(1), junk(now + 3_600_000)));
    small.recv().await.unwrap();
    let parked = store.scan(Table::Deferred, "p/").await.unwrap();
    assert_eq!(parked.len(), 2, "bounded in bytes");

    // Expiry: a parked envelope past its relay expiry is dropped.
    let short = open_parked(
        &net,
        &store,
        ClientConfig {
            defer_attempts_max: 1,
            ..ClientConfig::default()
        },
    )
    .await;
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    assert!(net.inject(&b, DeviceId(1), junk(soon)));
    short.recv().await.unwrap();
    let before = store.scan(Table::Deferred, "p/").await.unwrap().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    short.recv().await.unwrap();
    let after = store.scan(Table::Deferred, "p/").await.unwrap().len();
    assert_eq!(after, before - 1, "the expired one is gone");
}
