//! Test support for crates that implement [`Store`]: the store
//! conformance suite ([`conformance`], one `#[test]` per case through
//! [`conformance_tests!`](crate::conformance_tests)) and its harness — a
//! [`Relay`] over a fresh store with a manual clock, and test devices that
//! sign with real Ed25519 keys. Behind the `testkit` feature; it brings no
//! runtime: the [`Stores`] under test say how to spawn a task.
#![allow(clippy::unwrap_used)]

pub mod conformance;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use courier_protocol::api::{
    DeviceKeys, DeviceList, DeviceListEntry, LoginRequest, RegisterRequest, SignedDeviceList,
    SignedPreKey, TokenResponse,
};
use courier_protocol::{Address, Bytes, DeviceId, RelayName, Username};
use ed25519_dalek::{Signer, SigningKey};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::{AuthedDevice, Config, ManualClock, MemoryStore, Notifier, Relay, Store};

/// The relay under test is called this.
pub const RELAY: &str = "relay-a.example";
/// Tests start at this time.
pub const T0: u64 = 1_800_000_000_000;

/// A future a [`Spawner`] runs.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs a task concurrently with the test, on a runtime the store works on.
pub type Spawner = Arc<dyn Fn(BoxFuture<'static, ()>) + Send + Sync>;

/// A fresh, empty store for one test.
pub struct Fresh {
    /// The store.
    pub store: Arc<dyn Store>,
    /// What must live as long as the store (a temporary directory, a guard
    /// that drops a database schema); the harness keeps it.
    pub keep: Box<dyn Any + Send + Sync>,
}

/// The kind of store a suite runs against.
#[async_trait]
pub trait Stores: Send + Sync {
    /// A fresh, empty store, or `None` when this kind cannot run here (the
    /// test then passes without running; say why on stderr).
    async fn fresh(&self) -> Option<Fresh>;
    /// How tests spawn concurrent tasks (callers of the same store).
    fn spawner(&self) -> Spawner;
}

/// [`MemoryStore`]s; tasks run on threads of their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory;

#[async_trait]
impl Stores for Memory {
    async fn fresh(&self) -> Option<Fresh> {
        Some(Fresh {
            store: Arc::new(MemoryStore::new()),
            keep: Box::new(()),
        })
    }

    fn spawner(&self) -> Spawner {
        Arc::new(|task| {
            std::thread::spawn(move || futures::executor::block_on(task));
        })
    }
}

/// A relay over a fresh store, with a manual clock.
pub struct Harness {
    /// The relay.
    pub relay: Arc<Relay>,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    /// Its store.
    pub store: Arc<dyn Store>,
    /// What the store needs kept alive ([`Fresh::keep`]).
    pub keep: Box<dyn Any + Send + Sync>,
    spawner: Spawner,
}

/// The name of the relay under test.
pub fn relay_name() -> RelayName {
    RelayName::parse(RELAY).unwrap()
}

impl Harness {
    /// A harness over a fresh store of `stores` with default config, or
    /// `None` if `stores` cannot run here.
    pub async fn new(stores: &dyn Stores) -> Option<Harness> {
        Self::with(stores, |_| {}).await
    }

    /// Same, with the config adjusted.
    pub async fn with(stores: &dyn Stores, adjust: impl FnOnce(&mut Config)) -> Option<Harness> {
        Self::build(stores, adjust, None).await
    }

    /// Same, with a notifier.
    pub async fn build(
        stores: &dyn Stores,
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
        let Fresh { store, keep } = stores.fresh().await?;
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
            keep,
            spawner: stores.spawner(),
        })
    }

    /// `user@` the relay under test.
    pub fn address(&self, user: &str) -> Address {
        Address::new(Username::parse(user).unwrap(), relay_name())
    }

    /// Runs `task` concurrently; its output, or `Err` if it panicked.
    pub fn spawn<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> futures::channel::oneshot::Receiver<T> {
        let (tx, rx) = futures::channel::oneshot::channel();
        (self.spawner)(Box::pin(async move {
            let _ = tx.send(task.await);
        }));
        rx
    }
}

/// A device with a real identity key.
pub struct TestDevice {
    /// Its identity key.
    pub sk: SigningKey,
    /// Its public keys.
    pub keys: DeviceKeys,
    /// The account.
    pub user: Username,
    /// The device id.
    pub device: DeviceId,
    /// Tokens of its login, once logged in.
    pub tokens: Option<TokenResponse>,
    /// The device as authenticated by its access token, once logged in.
    pub authed: Option<AuthedDevice>,
}

/// The identity key made from `seed`.
pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Public keys of `sk`'s device, its DH key signed.
pub fn device_keys(sk: &SigningKey) -> DeviceKeys {
    let dh_key = Bytes(vec![sk.to_bytes()[0] ^ 0x55; 32]);
    let sig = sk.sign(&courier_protocol::dh_key_signing_bytes(dh_key.as_slice()));
    DeviceKeys {
        identity_key: Bytes(sk.verifying_key().to_bytes().to_vec()),
        dh_key,
        dh_key_signature: Bytes(sig.to_bytes().to_vec()),
    }
}

/// `list` signed by `signer` with `sk`.
pub fn sign_list(sk: &SigningKey, list: DeviceList, signer: DeviceId) -> SignedDeviceList {
    let sig = sk.sign(&list.signing_bytes());
    SignedDeviceList {
        list,
        signer,
        signature: Bytes(sig.to_bytes().to_vec()),
    }
}

/// A registration of `user` with device 1 keyed by `sk`.
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

/// Signed prekey `id`, signed with `sk`.
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

    /// The authenticated device (after [`TestDevice::login`]).
    pub fn authed(&self) -> &AuthedDevice {
        self.authed.as_ref().unwrap()
    }

    /// Its account's address.
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

/// Defines one `#[test]` per conformance case, each running
/// `$block_on(courier_relay::testkit::conformance::<case>(&$stores))`:
/// `$stores` is an expression giving the [`Stores`](crate::testkit::Stores)
/// under test, `$block_on` a function that drives a future to completion
/// on a runtime the store works on. The one list of cases is here.
#[macro_export]
macro_rules! conformance_tests {
    ($stores:expr, $block_on:path) => {
        $crate::conformance_tests!(@cases $stores, $block_on;
            usernames_are_case_folded_and_unique,
            stats_count_accounts_and_a_refused_registration_adds_none,
            invite_policy_requires_a_valid_single_use_code,
            forged_device_list_or_dh_key_signature_is_rejected_at_registration,
            login_needs_the_device_signature_and_a_fresh_challenge,
            refresh_token_rotates_and_reuse_revokes_the_session,
            access_tokens_expire_and_logout_revokes_immediately,
            cached_access_tokens_follow_rotation_logout_reuse_and_prekey_changes,
            linking_a_device_needs_approval_signed_by_an_existing_device,
            forged_signed_prekey_is_rejected,
            one_time_prekeys_are_capped_handed_out_once_and_low_water_is_reported,
            concurrent_bundle_fetches_hand_out_each_one_time_prekey_once,
            message_for_five_devices_stores_the_body_once,
            retried_send_with_the_same_envelope_id_stores_nothing_new,
            fetch_returns_entries_in_order_from_a_cursor,
            acking_out_of_order_and_twice_is_safe_and_frees_the_body,
            expired_entries_are_purged,
            a_full_mailbox_refuses_the_whole_message,
            unknown_recipient_refuses_the_whole_message,
            remote_recipients_go_to_the_outbox_once_per_relay,
            outbox_expiry_sends_a_failure_notice_to_the_sender_device,
            federated_envelopes_are_deduplicated_and_checked,
            the_notifier_hears_of_new_mail_outbox_entries_and_low_prekeys,
            concurrent_sends_are_batched_and_each_gets_its_own_answer,
            outbox_wake_makes_backed_off_entries_due_but_leaves_leased_ones,
            concurrent_acks_from_many_devices_are_each_counted_once,
            a_federated_batch_is_stored_in_order_with_its_odd_envelopes_answered_alone,
            the_notifier_hears_of_each_mailboxs_entries_in_seq_order,
            a_reused_refresh_token_drops_only_its_own_sessions_cached_tokens,
            fetches_are_capped_by_bytes_and_always_progress,
            an_envelope_id_is_deduplicated_per_source,
            each_source_gets_only_its_share_of_a_mailbox,
            concurrent_sends_over_a_share_are_refused_exactly_beyond_it,
            a_sources_share_and_the_mailbox_are_bounded_in_bytes_too,
            outbox_due_reads_a_bounded_window_of_destinations_in_due_order,
            one_time_prekey_budgets_keep_the_pool_and_still_serve_the_signed_prekey,
        );
    };
    (@cases $stores:expr, $block_on:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $block_on($crate::testkit::conformance::$case(&$stores));
            }
        )*
    };
}
