//! Peering on virtual time: no sockets, no clock, no libp2p. Each test
//! plays the adapter: it feeds events in and looks at the actions out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use courier_protocol::{Bytes, ErrorCode, Hello, RelayDescriptor, RelayName, SignedDescriptor};

use super::book::{PeerBook, PeerFile, Policy, PolicyMode, Refusal};
use super::*;
use crate::federation::{FederationError, PeerLimits, retry_delay_ms};

/// Signatures are the adapter's (node checks them with libp2p keys); here
/// a descriptor is "signed" when its signature is `sig:` + its key, so a
/// forged one can still be told apart.
struct TestVerify;

impl Verify for TestVerify {
    fn verify(&self, signed: &SignedDescriptor) -> Result<PeerKey, DescriptorError> {
        let key = &signed.descriptor.peer_id;
        if signed.signature.as_slice() != format!("sig:{key}").as_bytes() {
            return Err(DescriptorError::BadSignature(key.clone()));
        }
        Ok(PeerKey::new(key.clone()))
    }
}

fn name(text: &str) -> RelayName {
    text.parse().unwrap()
}

fn key(text: &str) -> PeerKey {
    PeerKey::new(text)
}

fn descriptor(key: &str, relay: &str, issued_ms: u64) -> SignedDescriptor {
    SignedDescriptor {
        descriptor: RelayDescriptor {
            name: name(relay),
            peer_id: key.to_owned(),
            addresses: vec![format!("/memory/{key}")],
            http_url: String::new(),
            version: "0.1.0".into(),
            features: vec![],
            issued_ms,
        },
        signature: Bytes::from(format!("sig:{key}").into_bytes()),
    }
}

fn hello(key: &str, relay: &str) -> Hello {
    Hello {
        descriptor: descriptor(key, relay, 1),
        known: vec![],
    }
}

const BASE_MS: u64 = 1000;
const MAX_MS: u64 = 8000;

/// Peering for `relay-a.example` whose jitter is whatever `random` holds.
fn peering(policy: Policy, random: Arc<AtomicU64>) -> Peering<u32> {
    let book = PeerBook::new(
        name("relay-a.example"),
        key("A"),
        policy,
        PeerFile::default(),
        Arc::new(TestVerify),
    );
    let config = Config {
        name: name("relay-a.example"),
        redial_base_ms: BASE_MS,
        redial_max_ms: MAX_MS,
        queued_per_peer_max: 2,
        limits: PeerLimits {
            batch_envelopes_max: 10,
            envelopes_per_sec: 1,
            burst_envelopes: 3,
            ..PeerLimits::default()
        },
    };
    Peering::new(
        config,
        book,
        descriptor("A", "relay-a.example", 1),
        Box::new(move || random.load(Ordering::Relaxed)),
    )
}

fn open() -> Peering<u32> {
    peering(Policy::default(), Arc::new(AtomicU64::new(0)))
}

fn drain(p: &mut Peering<u32>, now_ms: u64) -> Vec<Action<u32>> {
    std::iter::from_fn(|| p.poll_action(now_ms)).collect()
}

fn failed(actions: &[Action<u32>]) -> Vec<(u32, FederationError)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fail { request, error } => Some((*request, error.clone())),
            _ => None,
        })
        .collect()
}

fn sent(actions: &[Action<u32>]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { request, .. } => Some(*request),
            _ => None,
        })
        .collect()
}

fn hellos_to(actions: &[Action<u32>]) -> Vec<PeerKey> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendHello { peer, .. } => Some(peer.clone()),
            _ => None,
        })
        .collect()
}

fn disconnects(actions: &[Action<u32>]) -> Vec<PeerKey> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Disconnect { peer } => Some(peer.clone()),
            _ => None,
        })
        .collect()
}

/// Connects `peer` (as dialer) and completes its hello as `relay`.
fn federate(p: &mut Peering<u32>, peer: &str, relay: &str, now_ms: u64) -> Vec<Action<u32>> {
    p.handle_connected(&key(peer), true, now_ms);
    p.handle_hello_response(&key(peer), &hello(peer, relay), now_ms)
        .unwrap();
    drain(p, now_ms)
}

use crate::federation::tests::batch;

#[test]
fn queued_requests_go_out_when_the_hello_completes() {
    let mut p = open();
    p.send(&key("B"), 1, 1);
    let actions = drain(&mut p, 0);
    assert_eq!(hellos_to(&actions), vec![key("B")]);
    assert!(sent(&actions).is_empty());
    assert_eq!(p.queued(&key("B")), 1);

    let actions = federate(&mut p, "B", "relay-b.example", 5);
    assert_eq!(sent(&actions), vec![1]);
    assert!(matches!(actions.last(), Some(Action::SavePeerFile)));
    assert_eq!(p.route(&name("relay-b.example")), Ok(key("B")));
    // Federating: the next request goes straight out.
    p.send(&key("B"), 2, 1);
    assert_eq!(sent(&drain(&mut p, 6)), vec![2]);
    assert_eq!(p.runtime(&key("B")).unwrap().counters.batches_sent, 2);
}

#[test]
fn another_key_for_a_pinned_name_is_refused_and_disconnected() {
    let mut p = open();
    federate(&mut p, "B", "relay-b.example", 0);
    p.send(&key("EVIL"), 7, 3);
    drain(&mut p, 1);
    p.handle_connected(&key("EVIL"), true, 2);
    let refusal = p
        .handle_hello_response(&key("EVIL"), &hello("EVIL", "relay-b.example"), 2)
        .unwrap_err();
    assert!(matches!(refusal, Refusal::PinnedKeyMismatch { .. }));
    assert_eq!(refusal.code(), ErrorCode::PinnedKeyMismatch);
    let actions = drain(&mut p, 2);
    assert_eq!(disconnects(&actions), vec![key("EVIL")]);
    assert!(matches!(
        failed(&actions)[..],
        [(7, FederationError::Refused(_))]
    ));
    assert!(!p.is_federating(&key("EVIL")));
    assert_eq!(p.book().pinned(&name("relay-b.example")), Some(key("B")));
    assert_eq!(p.route(&name("relay-b.example")), Ok(key("B")));
}

#[test]
fn a_hello_signed_for_another_connection_or_forged_is_refused() {
    let mut p = open();
    // C's descriptor over B's connection.
    assert!(matches!(
        p.handle_hello(&key("B"), &hello("C", "relay-c.example"), 0),
        Err(Refusal::Descriptor(DescriptorError::WrongPeer { .. }))
    ));
    let mut forged = hello("C", "relay-c.example");
    forged.descriptor.signature = Bytes::from(b"sig:B".to_vec());
    assert!(matches!(
        p.handle_hello(&key("C"), &forged, 0),
        Err(Refusal::Descriptor(DescriptorError::BadSignature(_)))
    ));
    assert_eq!(disconnects(&drain(&mut p, 0)), vec![key("B"), key("C")]);
    assert!(p.book().is_empty());
}

#[test]
fn a_full_book_evicts_a_relay_not_connected_now_and_never_a_live_one() {
    let mut p = open();
    p.set_peers_max(2);
    federate(&mut p, "B", "relay-b.example", 1);
    federate(&mut p, "C", "relay-c.example", 2);
    // C goes away; B stays. D's own hello needs room: C gives it.
    p.handle_disconnected(&key("C"), 0, 3);
    federate(&mut p, "D", "relay-d.example", 4);
    assert_eq!(p.book().len(), 2);
    assert!(p.book().descriptor(&name("relay-b.example")).is_some());
    assert!(p.book().descriptor(&name("relay-c.example")).is_none());
    // Both left are live: E is refused and disconnected.
    p.handle_connected(&key("E"), false, 5);
    assert!(matches!(
        p.handle_hello(&key("E"), &hello("E", "relay-e.example"), 5),
        Err(Refusal::BookFull { max: 2, .. })
    ));
    assert_eq!(disconnects(&drain(&mut p, 5)), vec![key("E")]);
    assert_eq!(p.runtime(&key("E")).unwrap().counters.hellos_refused, 1);
}

#[test]
fn gossip_of_a_new_relay_is_pushed_to_the_other_peers() {
    let mut p = open();
    federate(&mut p, "B", "relay-b.example", 0);
    p.handle_connected(&key("C"), false, 1);
    let mut h = hello("C", "relay-c.example");
    h.known.push(descriptor("X", "relay-x.example", 1));
    p.handle_hello(&key("C"), &h, 1).unwrap();
    let actions = drain(&mut p, 1);
    // B hears of C and X; C gets our answer.
    assert_eq!(hellos_to(&actions), vec![key("B")]);
    let answer = actions.iter().find_map(|a| match a {
        Action::AnswerHello { peer, hello } if *peer == key("C") => Some(hello),
        _ => None,
    });
    assert_eq!(answer.unwrap().known.len(), 2);
    // X is only a hint: routable, not pinned.
    assert!(p.book().routable(&name("relay-x.example")));
    assert_eq!(p.book().pinned(&name("relay-x.example")), None);
}

#[test]
fn an_operator_peer_is_redialled_with_growing_capped_jittered_backoff() {
    let random = Arc::new(AtomicU64::new(0));
    let mut p = peering(Policy::default(), random.clone());
    p.add_peer(key("B"), &PeerAddr::new("/memory/b"), 0);
    // Added: a hello at once; once it fails, dials with backoff.
    assert_eq!(hellos_to(&drain(&mut p, 0)), vec![key("B")]);
    p.handle_hello_failed(&key("B"), false, "unreachable");
    let mut now = 0;
    let mut delays = Vec::new();
    for attempt in 1..=6u32 {
        // Jitter comes from the injected value, nothing else.
        random.store(u64::from(attempt) * 7919, Ordering::Relaxed);
        let actions = drain(&mut p, now);
        let dials: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Dial { peer, addrs } => Some((peer.clone(), addrs.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(dials, vec![(key("B"), vec![PeerAddr::new("/memory/b")])]);
        // Not again while the dial is under way, nor before it is due.
        assert!(p.poll_timeout().is_none());
        p.handle_dial_failed(&key("B"), "refused".into(), now);
        let due = p.poll_timeout().unwrap();
        let delay = due - now;
        assert_eq!(
            delay,
            retry_delay_ms(attempt, BASE_MS, MAX_MS, u64::from(attempt) * 7919)
        );
        assert!(drain(&mut p, due - 1).is_empty(), "dialled early");
        delays.push(delay);
        now = due;
    }
    assert!(delays[1] > delays[0] / 2 + BASE_MS / 2, "{delays:?}");
    assert!(delays[2] >= 2 * BASE_MS, "{delays:?}");
    assert!(delays.iter().all(|d| *d <= MAX_MS), "{delays:?}");
    assert!(delays[5] >= MAX_MS / 2, "{delays:?}");
    assert_eq!(p.runtime(&key("B")).unwrap().dial_failures, 6);

    // Another draw, another delay: the jitter is the injected value's.
    let mut q = peering(Policy::default(), Arc::new(AtomicU64::new(1)));
    q.add_peer(key("B"), &PeerAddr::new("/memory/b"), 0);
    drain(&mut q, 0);
    q.handle_hello_failed(&key("B"), false, "unreachable");
    drain(&mut q, 0);
    q.handle_dial_failed(&key("B"), "refused".into(), 0);
    assert_ne!(q.poll_timeout(), Some(delays[0]));

    // A connection resets the backoff; a drop starts it again from the base.
    p.handle_connected(&key("B"), true, now);
    assert_eq!(hellos_to(&drain(&mut p, now)), vec![key("B")]);
    p.handle_hello_response(&key("B"), &hello("B", "relay-b.example"), now)
        .unwrap();
    drain(&mut p, now);
    assert!(p.poll_timeout().is_none());
    p.handle_disconnected(&key("B"), 0, now + 10);
    assert!(matches!(drain(&mut p, now + 10)[..], [Action::Dial { .. }]));
    p.handle_dial_failed(&key("B"), "refused".into(), now + 10);
    assert!(p.poll_timeout().unwrap() - (now + 10) <= BASE_MS);
}

#[test]
fn a_hello_whose_connection_closed_is_retried_once_then_its_requests_fail() {
    let mut p = open();
    p.send(&key("B"), 1, 2);
    assert_eq!(hellos_to(&drain(&mut p, 0)), vec![key("B")]);
    // Closed under it: one retry, nothing failed yet.
    assert!(!p.handle_hello_failed(&key("B"), true, "closed"));
    let actions = drain(&mut p, 1);
    assert_eq!(hellos_to(&actions), vec![key("B")]);
    assert!(failed(&actions).is_empty());
    // Closed again: given up, the queue fails as unreachable.
    assert!(p.handle_hello_failed(&key("B"), true, "closed"));
    let actions = drain(&mut p, 2);
    assert!(hellos_to(&actions).is_empty());
    assert!(matches!(
        &failed(&actions)[..],
        [(1, FederationError::Unreachable { reason, .. })] if reason == "closed"
    ));
    assert_eq!(p.runtime(&key("B")).unwrap().counters.retried, 2);
    // Any other failure gives up at once.
    p.send(&key("B"), 2, 1);
    drain(&mut p, 3);
    assert!(p.handle_hello_failed(&key("B"), false, "timeout"));
    assert_eq!(failed(&drain(&mut p, 3)).len(), 1);
}

#[test]
fn policy_allowlist_denylist_and_blocking() {
    let allow = Policy {
        mode: PolicyMode::Allowlist,
        allow: ["relay-b.example".to_owned()].into(),
        deny: Default::default(),
    };
    let mut p = peering(allow, Arc::new(AtomicU64::new(0)));
    assert!(
        p.handle_hello(&key("B"), &hello("B", "relay-b.example"), 0)
            .is_ok()
    );
    assert!(matches!(
        p.handle_hello(&key("C"), &hello("C", "relay-c.example"), 0),
        Err(Refusal::Policy { .. })
    ));

    let deny = Policy {
        mode: PolicyMode::Denylist,
        allow: Default::default(),
        deny: ["C".to_owned()].into(),
    };
    let mut p = peering(deny, Arc::new(AtomicU64::new(0)));
    assert!(
        p.handle_hello(&key("B"), &hello("B", "relay-b.example"), 0)
            .is_ok()
    );
    assert!(matches!(
        p.handle_hello(&key("C"), &hello("C", "relay-c.example"), 0),
        Err(Refusal::Policy { .. })
    ));

    // Blocking a federating peer disconnects it, fails what waits for it
    // and keeps requests from being routed to it.
    let mut p = open();
    federate(&mut p, "B", "relay-b.example", 0);
    p.handle_disconnected(&key("B"), 0, 1);
    p.send(&key("B"), 9, 1);
    drain(&mut p, 1);
    p.set_blocked(&key("B"), true);
    let actions = drain(&mut p, 2);
    assert_eq!(disconnects(&actions), vec![key("B")]);
    assert_eq!(failed(&actions).len(), 1);
    assert!(matches!(
        p.route(&name("relay-b.example")),
        Err(FederationError::Unreachable { .. })
    ));
    // Removed by the operator: refused, not routed.
    p.set_blocked(&key("B"), false);
    assert!(p.remove_peer(&key("B")));
    assert_eq!(
        p.route(&name("relay-b.example")),
        Err(FederationError::Refused(name("relay-b.example")))
    );
    assert!(matches!(
        p.handle_hello(&key("B"), &hello("B", "relay-b.example"), 3),
        Err(Refusal::Removed { .. })
    ));
}

#[test]
fn requests_over_the_queue_cap_fail_at_once() {
    let mut p = open();
    for request in 1..=3 {
        p.send(&key("B"), request, 1);
    }
    let actions = drain(&mut p, 0);
    assert_eq!(
        hellos_to(&actions),
        vec![key("B")],
        "one hello for the queue"
    );
    assert!(matches!(
        &failed(&actions)[..],
        [(3, FederationError::Unreachable { reason, .. })] if reason.contains("too many")
    ));
    assert_eq!(p.queued(&key("B")), 2);
    assert_eq!(
        sent(&federate(&mut p, "B", "relay-b.example", 1)),
        vec![1, 2]
    );
}

#[test]
fn batches_from_a_stranger_a_false_origin_or_over_the_rate_are_refused() {
    let mut p = open();
    let b = key("B");
    let b_batch = |n| batch("relay-b.example", n);
    assert_eq!(
        p.admit_batch(&b, &b_batch(1), 0),
        Err(ErrorCode::FederationRefused)
    );
    federate(&mut p, "B", "relay-b.example", 0);
    federate(&mut p, "C", "relay-c.example", 0);
    assert_eq!(
        p.admit_batch(&b, &batch("relay-c.example", 1), 0),
        Err(ErrorCode::OriginMismatch)
    );
    assert_eq!(
        p.admit_batch(&b, &b_batch(2), 0),
        Ok(name("relay-b.example"))
    );
    // Burst of 3: one left.
    assert_eq!(
        p.admit_batch(&b, &b_batch(2), 0),
        Err(ErrorCode::RateLimited)
    );
    assert!(p.admit_batch(&b, &b_batch(1), 0).is_ok());
    // One envelope a second refills.
    assert_eq!(
        p.admit_batch(&b, &b_batch(1), 500),
        Err(ErrorCode::RateLimited)
    );
    assert!(p.admit_batch(&b, &b_batch(1), 1000).is_ok());
    assert_eq!(
        p.admit_batch(&b, &b_batch(11), 100_000),
        Err(ErrorCode::PayloadTooLarge)
    );
    // Another peer has a bucket of its own.
    assert!(
        p.admit_batch(&key("C"), &batch("relay-c.example", 3), 0)
            .is_ok()
    );
    let c = p.runtime(&b).unwrap().counters;
    assert_eq!(
        (c.batches_received, c.batches_refused, c.envelopes_received),
        (3, 5, 4)
    );
    // Blocked: refused whatever its rate.
    p.set_blocked(&b, true);
    assert_eq!(
        p.admit_batch(&b, &b_batch(1), 200_000),
        Err(ErrorCode::FederationRefused)
    );
}
