//! The SDK's waits run on the clock it is given: with a [`ManualClock`],
//! timer-driven behaviour happens when the test moves time, never on the
//! wall clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use courier_client::{Client, ClientParts, ManualClock, MemoryStore};
use courier_testkit::Network;

const START_MS: u64 = 1_700_000_000_000;

async fn client(net: &Network, clock: &ManualClock, seed: u8) -> Arc<Client> {
    let client = Client::open(ClientParts {
        transport: Arc::new(net.transport("relay-a.example").unwrap()),
        store: Arc::new(MemoryStore::new()),
        clock: Arc::new(clock.clone()),
        rng_seed: Some([seed; 32]),
        config: Default::default(),
    })
    .await
    .unwrap();
    Arc::new(client)
}

/// Lets spawned tasks run until `done` holds (at most a bounded number of
/// scheduler turns: none of them waits on real time).
async fn settle(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..10_000 {
        if done() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    done()
}

#[tokio::test(flavor = "current_thread")]
async fn listen_ends_when_the_clients_clock_passes_its_deadline() {
    let net = Network::new();
    let clock = ManualClock::new(START_MS);
    let bob = client(&net, &clock, 2).await;
    bob.register("bob", None, "", &[]).await.unwrap();

    let listening = {
        let bob = bob.clone();
        tokio::spawn(async move { bob.listen(Duration::from_secs(3600), |_| {}).await })
    };
    // Parked on the clock: the WebSocket pump waits for its deadline.
    assert!(settle(|| clock.sleepers() == 1).await);
    assert_eq!(clock.next_deadline_ms(), Some(START_MS + 3_600_000));
    clock.advance(Duration::from_secs(3599));
    assert!(!settle(|| listening.is_finished()).await, "ended early");

    clock.advance(Duration::from_secs(1));
    assert!(settle(|| listening.is_finished()).await, "did not end");
    listening.await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_link_is_polled_again_only_when_the_poll_interval_has_passed() {
    let net = Network::new();
    let clock = ManualClock::new(START_MS);
    let laptop = client(&net, &clock, 1).await;
    let phone = client(&net, &clock, 2).await;
    let address = laptop.register("alice", None, "", &[]).await.unwrap();

    let pending = phone.link_start(&address).await.unwrap();
    let code = pending.code.clone();
    let finishing = {
        let phone = phone.clone();
        tokio::spawn(async move {
            phone
                .link_finish(pending, "", Duration::from_secs(30))
                .await
        })
    };
    // First poll: not approved yet, so it waits one interval on the clock.
    assert!(settle(|| clock.sleepers() == 1).await);
    assert_eq!(clock.next_deadline_ms(), Some(START_MS + 30_000));
    laptop.approve(&code).await.unwrap();
    assert!(!settle(|| finishing.is_finished()).await);

    clock.advance(Duration::from_secs(30));
    assert!(settle(|| finishing.is_finished()).await);
    let account = finishing.await.unwrap().unwrap();
    assert_eq!(account.address, address);
    assert_ne!(account.device.0, 1);
}
