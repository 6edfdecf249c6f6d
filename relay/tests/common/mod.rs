//! Test harness shared by the relay's integration tests: a relay over each
//! store kind, and a test device that signs with a real Ed25519 key.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use courier_protocol::api::{
    DeviceKeys, DeviceList, DeviceListEntry, LoginRequest, RegisterRequest, SignedDeviceList,
    SignedPreKey, TokenResponse,
};
use courier_protocol::{Address, Bytes, DeviceId, RelayName, Username};
use courier_relay::{AuthedDevice, Config, ManualClock, MemoryStore, Notifier, Relay, Store};
use ed25519_dalek::{Signer, SigningKey};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The relay under test is called this.
pub const RELAY: &str = "relay-a.example";
/// Tests start at this time.
pub const T0: u64 = 1_800_000_000_000;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Memory,
    Sqlite,
    Postgres,
}

/// A relay over a fresh store, with a manual clock.
pub struct Harness {
    pub relay: Arc<Relay>,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<PgSchema>,
}

/// Drops a test's PostgreSQL schema when the test ends (also on panic).
pub struct PgSchema {
    url: String,
    name: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use sqlx::{Connection, Executor};
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    let _ = c
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS {name} CASCADE"
                        )))
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

pub fn relay_name() -> RelayName {
    RelayName::parse(RELAY).unwrap()
}

impl Harness {
    /// A harness over `kind` with default config, or `None` (PostgreSQL
    /// without `COURIER_TEST_DATABASE_URL`).
    pub async fn new(kind: Kind) -> Option<Harness> {
        Self::with(kind, |_| {}).await
    }

    /// Same, with the config adjusted.
    pub async fn with(kind: Kind, adjust: impl FnOnce(&mut Config)) -> Option<Harness> {
        Self::build(kind, adjust, None).await
    }

    /// Same, with a notifier.
    pub async fn build(
        kind: Kind,
        adjust: impl FnOnce(&mut Config),
        notifier: Option<Arc<dyn Notifier>>,
    ) -> Option<Harness> {
        let mut config = Config::new(relay_name());
        // Store tests hand out many one-time prekeys to one requester; the
        // budgets have tests of their own, which set them.
        config.prekey_budget.account_burst = 1_000_000;
        config.prekey_budget.peer_burst = 1_000_000;
        config.prekey_budget.device_burst = 1_000_000;
        adjust(&mut config);
        let mut dir = None;
        let mut schema = None;
        let store: Arc<dyn Store> = match kind {
            Kind::Memory => Arc::new(MemoryStore::new()),
            Kind::Sqlite => {
                let d = tempfile::tempdir().unwrap();
                let s = courier_relay::SqliteStore::open(
                    d.path().join("courier.db"),
                    Default::default(),
                )
                .await
                .unwrap();
                dir = Some(d);
                Arc::new(s)
            }
            Kind::Postgres => {
                let Ok(url) = std::env::var("COURIER_TEST_DATABASE_URL") else {
                    eprintln!("skipped: COURIER_TEST_DATABASE_URL is not set");
                    return None;
                };
                let name = format!("relay_test_{:016x}", rand::random::<u64>());
                schema = Some(PgSchema {
                    url: url.clone(),
                    name: name.clone(),
                });
                let s = courier_relay::PostgresStore::connect(
                    &url,
                    courier_relay::PostgresOptions {
                        schema: Some(name),
                        readers: 4,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                Arc::new(s)
            }
        };
        let clock = Arc::new(ManualClock::new(T0));
        let relay = Relay::new(
            config,
            store.clone(),
            clock.clone(),
            Box::new(StdRng::seed_from_u64(7)),
        );
        let relay = match notifier {
            Some(n) => relay.with_notifier(n),
            None => relay,
        };
        Some(Harness {
            relay: Arc::new(relay),
            clock,
            store,
            _dir: dir,
            _schema: schema,
        })
    }

    pub fn address(&self, user: &str) -> Address {
        Address::new(Username::parse(user).unwrap(), relay_name())
    }

    /// The SQLite database file (SQLite harnesses only).
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("courier.db"))
    }
}

/// A device with a real identity key.
pub struct TestDevice {
    pub sk: SigningKey,
    pub keys: DeviceKeys,
    pub user: Username,
    pub device: DeviceId,
    pub tokens: Option<TokenResponse>,
    pub authed: Option<AuthedDevice>,
}

pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn device_keys(sk: &SigningKey) -> DeviceKeys {
    let dh_key = Bytes(vec![sk.to_bytes()[0] ^ 0x55; 32]);
    let sig = sk.sign(&courier_protocol::dh_key_signing_bytes(dh_key.as_slice()));
    DeviceKeys {
        identity_key: Bytes(sk.verifying_key().to_bytes().to_vec()),
        dh_key,
        dh_key_signature: Bytes(sig.to_bytes().to_vec()),
    }
}

pub fn sign_list(sk: &SigningKey, list: DeviceList, signer: DeviceId) -> SignedDeviceList {
    let sig = sk.sign(&list.signing_bytes());
    SignedDeviceList {
        list,
        signer,
        signature: Bytes(sig.to_bytes().to_vec()),
    }
}

pub fn register_request(user: &str, sk: &SigningKey, invite: Option<String>) -> RegisterRequest {
    let keys = device_keys(sk);
    let list = DeviceList {
        address: Address::new(Username::parse(user).unwrap(), relay_name()),
        version: 1,
        devices: vec![DeviceListEntry {
            device: DeviceId(1),
            identity_key: keys.identity_key.clone(),
        }],
    };
    RegisterRequest {
        username: Username::parse(user).unwrap(),
        invite,
        device: keys,
        device_list: sign_list(sk, list, DeviceId(1)),
    }
}

pub fn signed_prekey(sk: &SigningKey, id: u32) -> SignedPreKey {
    let mut k = SignedPreKey {
        id,
        public: Bytes(vec![id as u8; 32]),
        signature: Bytes::default(),
        created_ms: T0,
    };
    k.signature = Bytes(sk.sign(&k.signing_bytes()).to_bytes().to_vec());
    k
}

impl TestDevice {
    /// Logs in by challenge; stores the tokens and the authenticated device.
    pub async fn login(&mut self, h: &Harness) {
        let ch = h.relay.challenge(&self.user, self.device).await.unwrap();
        let bytes = courier_protocol::login_signing_bytes(
            &relay_name(),
            &self.user,
            self.device,
            ch.nonce.as_slice(),
        );
        let tokens = h
            .relay
            .login(LoginRequest {
                challenge_id: ch.challenge_id,
                signature: Bytes(self.sk.sign(&bytes).to_bytes().to_vec()),
            })
            .await
            .unwrap();
        self.authed = Some(h.relay.authenticate(&tokens.access_token).await.unwrap());
        self.tokens = Some(tokens);
    }

    pub fn authed(&self) -> &AuthedDevice {
        self.authed.as_ref().unwrap()
    }

    pub fn address(&self) -> Address {
        Address::new(self.user.clone(), relay_name())
    }
}

/// Registers `user` (device 1, key from `seed`), logs in and uploads a
/// signed prekey.
pub async fn user(h: &Harness, user: &str, seed: u8) -> TestDevice {
    let sk = signing_key(seed);
    h.relay
        .register(register_request(user, &sk, None))
        .await
        .unwrap();
    let mut d = TestDevice {
        keys: device_keys(&sk),
        sk,
        user: Username::parse(user).unwrap(),
        device: DeviceId(1),
        tokens: None,
        authed: None,
    };
    d.login(h).await;
    h.relay
        .set_signed_prekey(d.authed(), signed_prekey(&d.sk, 1))
        .await
        .unwrap();
    d
}
