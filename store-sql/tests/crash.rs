//! Crash test: a child process accepts messages into a SQLite file in a
//! loop, printing each envelope id after `accept_message` returns; the
//! parent SIGKILLs it mid-load, reopens the file and finds every printed id.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_protocol::api::{DeviceKeys, DeviceList, DeviceListEntry, RegisterRequest};
use courier_protocol::{
    Address, Bytes, DeviceId, EnvelopeId, OutgoingMessage, RecipientEntry, RelayName, Username,
};
use courier_relay::{AuthedDevice, Config, Relay, SystemClock};
use courier_store_sql::SqliteStore;
use ed25519_dalek::{Signer, SigningKey};
use rand::SeedableRng;
use rand::rngs::StdRng;

const CHILD_DB: &str = "COURIER_RELAY_CRASH_CHILD_DB";
const RELAY: &str = "relay-a.example";
/// The child stops by itself after this many messages or this long.
const CHILD_MESSAGES_MAX: u64 = 200_000;
const CHILD_SECS_MAX: u64 = 60;
/// The parent kills the child after reading this many ids.
const KILL_AFTER: usize = 400;

fn relay_over(store: SqliteStore, seed: u64) -> Relay {
    Relay::new(
        Config::new(RelayName::parse(RELAY).unwrap()),
        Arc::new(store),
        Arc::new(SystemClock),
        Box::new(StdRng::seed_from_u64(seed)),
    )
}

fn authed(user: &str) -> AuthedDevice {
    AuthedDevice {
        user: Username::parse(user).unwrap(),
        device: DeviceId(1),
        session: String::new(),
        prekeys_low: None,
    }
}

fn register(user: &str, seed: u8) -> RegisterRequest {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let dh_key = Bytes(vec![seed; 32]);
    let keys = DeviceKeys {
        identity_key: Bytes(sk.verifying_key().to_bytes().to_vec()),
        dh_key_signature: Bytes(
            sk.sign(&courier_protocol::dh_key_signing_bytes(dh_key.as_slice()))
                .to_bytes()
                .to_vec(),
        ),
        dh_key,
    };
    let list = DeviceList {
        address: Address::new(
            Username::parse(user).unwrap(),
            RelayName::parse(RELAY).unwrap(),
        ),
        version: 1,
        devices: vec![DeviceListEntry {
            device: DeviceId(1),
            identity_key: keys.identity_key.clone(),
        }],
    };
    let signature = Bytes(sk.sign(&list.signing_bytes()).to_bytes().to_vec());
    RegisterRequest {
        username: Username::parse(user).unwrap(),
        invite: None,
        device: keys,
        device_list: courier_protocol::api::SignedDeviceList {
            list,
            signer: DeviceId(1),
            signature,
        },
    }
}

/// The child role: does nothing unless the parent started this binary with
/// `CHILD_DB` set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let store = SqliteStore::open(&path, Default::default()).await.unwrap();
    let relay = Arc::new(relay_over(store, 2));
    let started = Instant::now();
    // Several concurrent senders, so kills land inside group commits.
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let relay = relay.clone();
        tasks.push(tokio::spawn(async move {
            let sender = authed("alice");
            let to = Address::new(
                Username::parse("bob").unwrap(),
                RelayName::parse(RELAY).unwrap(),
            );
            let mut n = task;
            while n < CHILD_MESSAGES_MAX && started.elapsed().as_secs() < CHILD_SECS_MAX {
                let mut random = [0u8; 10];
                random[..8].copy_from_slice(&n.to_be_bytes());
                let id = EnvelopeId::new(1, random);
                let message = OutgoingMessage {
                    id,
                    body: Bytes(vec![7; 64]),
                    recipients: vec![RecipientEntry {
                        to: to.clone(),
                        device: DeviceId(1),
                        header: Bytes(vec![1; 16]),
                    }],
                    ttl_secs: 3600,
                };
                relay.accept_message(&sender, message).await.unwrap();
                // Printed only after accept returned: the parent may hold us
                // to every id it reads.
                println!("ACCEPTED {id}");
                n += 8;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_survives_sigkill() {
    if std::env::var(CHILD_DB).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("courier.db");
    {
        let store = SqliteStore::open(&path, Default::default()).await.unwrap();
        let relay = relay_over(store.clone(), 1);
        relay.register(register("alice", 1)).await.unwrap();
        relay.register(register("bob", 2)).await.unwrap();
        store.close().await;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("ACCEPTED ")
                && lines_tx.send(id.to_owned()).is_err()
            {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while printed.len() < KILL_AFTER && Instant::now() < deadline {
        match lines_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(id) => printed.push(id),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    // SIGKILL: no destructors, no flush, no clean close of the database.
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    // Ids the child printed before it died are still in the pipe.
    printed.extend(lines_rx.try_iter());
    assert!(
        printed.len() >= KILL_AFTER,
        "the child printed only {} ids",
        printed.len()
    );

    let store = SqliteStore::open(&path, Default::default()).await.unwrap();
    let relay = relay_over(store, 3);
    let bob = authed("bob");
    let mut stored = HashSet::new();
    let mut after = 0;
    loop {
        let page = relay.fetch(&bob, after, 500).await.unwrap();
        for e in &page.envelopes {
            stored.insert(e.id.to_string());
            after = e.seq;
        }
        if !page.more {
            break;
        }
    }
    eprintln!(
        "child printed {} accepted ids before SIGKILL; {} found after reopening",
        printed.len(),
        stored.len()
    );
    let missing: Vec<&String> = printed.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted messages lost after SIGKILL, e.g. {:?}",
        missing.len(),
        printed.len(),
        missing.first()
    );
    assert!(stored.len() >= printed.len());
}
