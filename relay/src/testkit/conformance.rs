//! The store conformance suite: one async function per rule every
//! [`Store`](crate::Store) must keep, each taking the [`Stores`] to test.
//! `courier-relay`'s tests run it over [`MemoryStore`](crate::MemoryStore)
//! and `courier-store-sql`'s over SQLite and PostgreSQL, as one `#[test]`
//! per case through [`conformance_tests!`](crate::conformance_tests).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use courier_protocol::api::{
    ApproveLinkRequest, DeviceList, DeviceListEntry, EnvelopeKind, LinkRequest, LoginRequest,
    OneTimePreKey, UploadOneTimePreKeys,
};
use courier_protocol::federation::{AckStatus, FedEnvelope, FedRecipient};
use courier_protocol::{
    Address, Bytes, DeviceId, EnvelopeId, ErrorCode, OutgoingMessage, RecipientEntry, RelayName,
    Username,
};
use ed25519_dalek::Signer;

use super::*;
use crate::{Notifier, PrekeyBudgetConfig, Registration, RelayError, Requester, StoreStats};

/// Envelope id number `n`, minted at [`T0`].
pub fn id(n: u8) -> EnvelopeId {
    EnvelopeId::new(T0, [n; 10])
}

/// A message with `body` for each (address, device) in `to`, an 8-byte
/// header each, live for an hour.
pub fn message(id: EnvelopeId, to: &[(Address, DeviceId)], body: &[u8]) -> OutgoingMessage {
    OutgoingMessage {
        id,
        body: Bytes(body.to_vec()),
        recipients: to
            .iter()
            .map(|(a, d)| RecipientEntry {
                to: a.clone(),
                device: *d,
                header: Bytes(vec![d.0 as u8; 8]),
            })
            .collect(),
        ttl_secs: 3600,
    }
}

/// `user@relay`.
pub fn remote(user: &str, relay: &str) -> Address {
    Address::new(
        Username::parse(user).unwrap(),
        RelayName::parse(relay).unwrap(),
    )
}

/// The harness store's counts.
pub async fn stats(h: &Harness) -> StoreStats {
    h.store.stats().await.unwrap()
}

/// Usernames are case folded and unique.
pub async fn usernames_are_case_folded_and_unique(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let r = h
        .relay
        .register(register_request("Alice", &signing_key(1), None))
        .await
        .unwrap();
    assert_eq!(r.address.to_string(), "alice@relay-a.example");
    assert_eq!(r.device, DeviceId(1));
    let again = h
        .relay
        .register(register_request("alice", &signing_key(2), None))
        .await;
    assert_eq!(again, Err(RelayError::UsernameTaken));
    // The first account is untouched.
    let list = h
        .relay
        .device_list(&Username::parse("alice").unwrap())
        .await
        .unwrap();
    assert_eq!(
        list.list.devices[0].identity_key,
        device_keys(&signing_key(1)).identity_key
    );
}

/// Stats count accounts and a refused registration adds none.
pub async fn stats_count_accounts_and_a_refused_registration_adds_none(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    assert_eq!(stats(&h).await.accounts, 0);
    h.relay
        .register(register_request("alice", &signing_key(1), None))
        .await
        .unwrap();
    h.relay
        .register(register_request("bob", &signing_key(2), None))
        .await
        .unwrap();
    let taken = h
        .relay
        .register(register_request("ALICE", &signing_key(3), None))
        .await;
    assert_eq!(taken, Err(RelayError::UsernameTaken));
    assert_eq!(
        stats(&h).await,
        StoreStats {
            accounts: 2,
            ..StoreStats::default()
        }
    );
}

/// Invite policy requires a valid single use code.
pub async fn invite_policy_requires_a_valid_single_use_code(stores: &dyn Stores) {
    let Some(h) = Harness::with(stores, |c| c.registration = Registration::Invite).await else {
        return;
    };
    let r = h
        .relay
        .register(register_request("bob", &signing_key(1), None))
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::InviteRequired);
    let r = h
        .relay
        .register(register_request(
            "bob",
            &signing_key(1),
            Some("nope".into()),
        ))
        .await;
    assert_eq!(r, Err(RelayError::InvalidInvite));
    let code = h.relay.create_invite(60_000).await.unwrap();
    h.relay
        .register(register_request("bob", &signing_key(1), Some(code.clone())))
        .await
        .unwrap();
    let code_used = code.clone();
    let r = h
        .relay
        .register(register_request("carol", &signing_key(2), Some(code)))
        .await;
    assert_eq!(r, Err(RelayError::InvalidInvite), "single use");
    // Without a valid invite nobody learns that a name is taken (#13).
    for bad in ["nope", code_used.as_str()] {
        let r = h
            .relay
            .register(register_request("bob", &signing_key(3), Some(bad.into())))
            .await;
        assert_eq!(
            r,
            Err(RelayError::InvalidInvite),
            "taken name, invite {bad}"
        );
    }
    // A taken username does not burn a valid invite.
    let code = h.relay.create_invite(60_000).await.unwrap();
    let r = h
        .relay
        .register(register_request("bob", &signing_key(3), Some(code.clone())))
        .await;
    assert_eq!(r, Err(RelayError::UsernameTaken));
    let unburnt = h.relay.create_invite(60_000).await.unwrap();
    let r = h
        .relay
        .register(register_request(
            "bob",
            &signing_key(5),
            Some(unburnt.clone()),
        ))
        .await;
    assert_eq!(r, Err(RelayError::UsernameTaken));
    h.relay
        .register(register_request("erin", &signing_key(5), Some(unburnt)))
        .await
        .unwrap();
    h.clock.advance(60_001);
    let r = h
        .relay
        .register(register_request("dave", &signing_key(4), Some(code)))
        .await;
    assert_eq!(r, Err(RelayError::InvalidInvite), "expired");
}

/// Forged device list or dh key signature is rejected at registration.
pub async fn forged_device_list_or_dh_key_signature_is_rejected_at_registration(
    stores: &dyn Stores,
) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let sk = signing_key(1);
    let mut req = register_request("eve", &sk, None);
    // The list signed by some other key.
    req.device_list = sign_list(&signing_key(9), req.device_list.list.clone(), DeviceId(1));
    let r = h.relay.register(req).await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::InvalidSignature);
    let mut req = register_request("eve", &sk, None);
    req.device.dh_key = Bytes(vec![0xaa; 32]);
    let r = h.relay.register(req).await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::InvalidSignature);
    assert!(
        h.relay
            .device_list(&Username::parse("eve").unwrap())
            .await
            .is_err(),
        "nothing was registered"
    );
}

/// Login needs the device signature and a fresh challenge.
pub async fn login_needs_the_device_signature_and_a_fresh_challenge(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let d = user(&h, "alice", 1).await;
    let ch = h.relay.challenge(&d.user, d.device).await.unwrap();
    assert_eq!(ch.nonce.len(), 32);
    let bytes = courier_protocol::login_signing_bytes(
        &relay_name(),
        &d.user,
        d.device,
        ch.nonce.as_slice(),
    );
    // Signed by another key.
    let forged = Bytes(signing_key(2).sign(&bytes).to_bytes().to_vec());
    let r = h
        .relay
        .login(LoginRequest {
            challenge_id: ch.challenge_id.clone(),
            signature: forged,
        })
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::InvalidSignature);
    // The challenge was spent by the failed attempt.
    let good = Bytes(d.sk.sign(&bytes).to_bytes().to_vec());
    let r = h
        .relay
        .login(LoginRequest {
            challenge_id: ch.challenge_id,
            signature: good,
        })
        .await;
    assert_eq!(r, Err(RelayError::InvalidChallenge));
    // An expired challenge.
    let ch = h.relay.challenge(&d.user, d.device).await.unwrap();
    h.clock.advance(h.relay.config().challenge_ms);
    let bytes = courier_protocol::login_signing_bytes(
        &relay_name(),
        &d.user,
        d.device,
        ch.nonce.as_slice(),
    );
    let r = h
        .relay
        .login(LoginRequest {
            challenge_id: ch.challenge_id,
            signature: Bytes(d.sk.sign(&bytes).to_bytes().to_vec()),
        })
        .await;
    assert_eq!(r, Err(RelayError::InvalidChallenge));
    // Unknown device.
    let r = h.relay.challenge(&d.user, DeviceId(9)).await;
    assert_eq!(r, Err(RelayError::UnknownDevice));
    assert_eq!(
        h.relay.authenticate("not-a-token").await,
        Err(RelayError::Unauthenticated)
    );
}

/// Refresh token rotates and reuse revokes the session.
pub async fn refresh_token_rotates_and_reuse_revokes_the_session(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let mut d = user(&h, "alice", 1).await;
    let first = d.tokens.clone().unwrap();
    let second = h.relay.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    let a = h.relay.authenticate(&second.access_token).await.unwrap();
    assert_eq!((a.user.as_str(), a.device), ("alice", DeviceId(1)));
    // The first token is reused: a thief and the owner both hold the chain.
    let r = h.relay.refresh(&first.refresh_token).await;
    assert_eq!(r, Err(RelayError::InvalidRefreshToken));
    // The whole session is gone: current access and refresh tokens too.
    assert_eq!(
        h.relay.authenticate(&second.access_token).await,
        Err(RelayError::Unauthenticated)
    );
    assert_eq!(
        h.relay.refresh(&second.refresh_token).await,
        Err(RelayError::InvalidRefreshToken)
    );
    // Another session of the same device is unaffected.
    d.login(&h).await;
    assert!(
        h.relay
            .authenticate(&d.tokens.as_ref().unwrap().access_token)
            .await
            .is_ok()
    );
    assert_eq!(
        h.relay.refresh("garbage").await,
        Err(RelayError::InvalidRefreshToken)
    );
}

/// Access tokens expire and logout revokes immediately.
pub async fn access_tokens_expire_and_logout_revokes_immediately(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let d = user(&h, "alice", 1).await;
    let t = d.tokens.clone().unwrap();
    h.clock.advance(h.relay.config().access_token_ms);
    assert_eq!(
        h.relay.authenticate(&t.access_token).await,
        Err(RelayError::TokenExpired)
    );
    let t = h.relay.refresh(&t.refresh_token).await.unwrap();
    let authed = h.relay.authenticate(&t.access_token).await.unwrap();
    h.relay.logout(&authed).await.unwrap();
    assert_eq!(
        h.relay.authenticate(&t.access_token).await,
        Err(RelayError::Unauthenticated)
    );
    assert_eq!(
        h.relay.refresh(&t.refresh_token).await,
        Err(RelayError::InvalidRefreshToken)
    );
}

/// Cached access tokens follow rotation logout reuse and prekey changes.
pub async fn cached_access_tokens_follow_rotation_logout_reuse_and_prekey_changes(
    stores: &dyn Stores,
) {
    let Some(h) = Harness::with(stores, |c| c.prekeys_low_water = 3).await else {
        return;
    };
    let d = user(&h, "alice", 1).await;
    let first = d.tokens.clone().unwrap();
    // Cached by the login helper's authenticate; the prekey hint follows
    // this relay's own uploads and hand-outs without a store read.
    assert_eq!(d.authed().prekeys_low, Some(0));
    h.relay
        .upload_one_time_prekeys(d.authed(), otks(0..4))
        .await
        .unwrap();
    let a = h.relay.authenticate(&first.access_token).await.unwrap();
    assert_eq!(a.prekeys_low, None);
    h.relay
        .key_bundle(&tester(), &d.address(), None)
        .await
        .unwrap();
    h.relay
        .key_bundle(&tester(), &d.address(), None)
        .await
        .unwrap();
    let a = h.relay.authenticate(&first.access_token).await.unwrap();
    assert_eq!(a.prekeys_low, Some(2));
    // Rotation deletes the old access token: refused at once.
    let second = h.relay.refresh(&first.refresh_token).await.unwrap();
    assert_eq!(
        h.relay.authenticate(&first.access_token).await,
        Err(RelayError::Unauthenticated)
    );
    // Reuse of a rotated refresh token revokes the cached current one.
    h.relay.authenticate(&second.access_token).await.unwrap();
    assert!(h.relay.refresh(&first.refresh_token).await.is_err());
    assert_eq!(
        h.relay.authenticate(&second.access_token).await,
        Err(RelayError::Unauthenticated)
    );
    // A second relay process on the same store keeps its own cache: it sees
    // a logout made through the first only after `access_cache_ms`.
    let mut d = d;
    d.login(&h).await;
    let token = d.tokens.clone().unwrap().access_token;
    let other = crate::Relay::new(
        h.relay.config().clone(),
        h.store.clone(),
        h.clock.clone(),
        Box::new(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(8)),
    );
    other.authenticate(&token).await.unwrap();
    h.relay.logout(d.authed()).await.unwrap();
    assert_eq!(
        h.relay.authenticate(&token).await,
        Err(RelayError::Unauthenticated),
        "immediate in the process that logged out"
    );
    assert!(
        other.authenticate(&token).await.is_ok(),
        "the documented lag"
    );
    h.clock.advance(h.relay.config().access_cache_ms);
    assert_eq!(
        other.authenticate(&token).await,
        Err(RelayError::Unauthenticated)
    );
}

/// Audit item 17: a reused refresh token revokes its own session, and only
/// that session's cached tokens leave the cache (it used to empty the whole
/// cache, here and in every process on the same database).
pub async fn a_reused_refresh_token_drops_only_its_own_sessions_cached_tokens(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let alice = user(&h, "alice", 1).await;
    let bob = user(&h, "bob", 2).await;
    let first = alice.tokens.clone().unwrap();
    let bob_token = bob.tokens.clone().unwrap().access_token;
    // Cached by the login helper's authenticate.
    let bob_session = h.relay.authenticate(&bob_token).await.unwrap().session;
    let second = h.relay.refresh(&first.refresh_token).await.unwrap();
    // Bob's session leaves the store behind the relay's back: from here on
    // only the cache knows his token, so accepting it proves no store read.
    h.store.revoke_session(&bob_session).await.unwrap();
    assert_eq!(
        h.relay.refresh(&first.refresh_token).await,
        Err(RelayError::InvalidRefreshToken)
    );
    assert_eq!(
        h.relay.authenticate(&second.access_token).await,
        Err(RelayError::Unauthenticated),
        "the reused session is revoked"
    );
    let still = h.relay.authenticate(&bob_token).await.unwrap();
    assert_eq!(still.user.as_str(), "bob", "another session stays cached");
}

/// Linking a device needs approval signed by an existing device.
pub async fn linking_a_device_needs_approval_signed_by_an_existing_device(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let alice = user(&h, "alice", 1).await;
    let bob = user(&h, "bob", 2).await;
    let new_sk = signing_key(3);
    let new_keys = device_keys(&new_sk);
    let link = h
        .relay
        .open_link(LinkRequest {
            username: alice.user.clone(),
            device: new_keys.clone(),
        })
        .await
        .unwrap();
    assert_eq!(link.code.len(), 8);
    let status = h.relay.link_status(&link.code, &link.secret).await.unwrap();
    assert!(!status.approved);
    assert_eq!(
        h.relay.link_status(&link.code, "wrong").await,
        Err(RelayError::InvalidLinkCode)
    );
    // Another account cannot see or approve it.
    assert_eq!(
        h.relay.link_info(bob.authed(), &link.code).await,
        Err(RelayError::InvalidLinkCode)
    );
    let info = h.relay.link_info(alice.authed(), &link.code).await.unwrap();
    assert_eq!(info.device, new_keys);
    let list = DeviceList {
        address: alice.address(),
        version: 2,
        devices: vec![
            DeviceListEntry {
                device: DeviceId(1),
                identity_key: alice.keys.identity_key.clone(),
            },
            DeviceListEntry {
                device: DeviceId(2),
                identity_key: new_keys.identity_key.clone(),
            },
        ],
    };
    // A list the relay (or anyone without device 1's key) signed.
    let forged = sign_list(&signing_key(9), list.clone(), DeviceId(1));
    let r = h
        .relay
        .approve_link(
            alice.authed(),
            &link.code,
            ApproveLinkRequest {
                device_list: forged,
            },
        )
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::InvalidSignature);
    // Wrong version.
    let mut stale = list.clone();
    stale.version = 1;
    let r = h
        .relay
        .approve_link(
            alice.authed(),
            &link.code,
            ApproveLinkRequest {
                device_list: sign_list(&alice.sk, stale, DeviceId(1)),
            },
        )
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::Conflict);
    assert_eq!(h.store.devices(&alice.user).await.unwrap().len(), 1);
    let signed = sign_list(&alice.sk, list, DeviceId(1));
    let r = h
        .relay
        .approve_link(
            alice.authed(),
            &link.code.to_lowercase(),
            ApproveLinkRequest {
                device_list: signed.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.device, DeviceId(2));
    let status = h.relay.link_status(&link.code, &link.secret).await.unwrap();
    assert_eq!(status.device, Some(DeviceId(2)));
    assert_eq!(h.relay.device_list(&alice.user).await.unwrap(), signed);
    // Approved once only.
    let r = h
        .relay
        .approve_link(
            alice.authed(),
            &link.code,
            ApproveLinkRequest {
                device_list: signed,
            },
        )
        .await;
    assert_eq!(r, Err(RelayError::InvalidLinkCode));
    // The new device logs in with its own key.
    let mut second = TestDevice {
        sk: new_sk,
        keys: new_keys,
        user: alice.user.clone(),
        device: DeviceId(2),
        tokens: None,
        authed: None,
    };
    second.login(&h).await;
    assert_eq!(second.authed().device, DeviceId(2));
    // Expired link codes are refused.
    let link = h
        .relay
        .open_link(LinkRequest {
            username: alice.user.clone(),
            device: device_keys(&signing_key(4)),
        })
        .await
        .unwrap();
    h.clock.advance(h.relay.config().link_ms);
    assert_eq!(
        h.relay.link_info(alice.authed(), &link.code).await,
        Err(RelayError::InvalidLinkCode)
    );
}

/// Forged signed prekey is rejected.
pub async fn forged_signed_prekey_is_rejected(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let d = user(&h, "alice", 1).await;
    let forged = signed_prekey(&signing_key(9), 2);
    let r = h.relay.set_signed_prekey(d.authed(), forged).await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::InvalidSignature);
    let mut tampered = signed_prekey(&d.sk, 2);
    tampered.created_ms += 1;
    let r = h.relay.set_signed_prekey(d.authed(), tampered).await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::InvalidSignature);
    let bundle = h
        .relay
        .key_bundle(&tester(), &d.address(), None)
        .await
        .unwrap();
    assert_eq!(bundle.bundles[0].signed_prekey.id, 1, "unchanged");
    h.relay
        .set_signed_prekey(d.authed(), signed_prekey(&d.sk, 2))
        .await
        .unwrap();
    let bundle = h
        .relay
        .key_bundle(&tester(), &d.address(), None)
        .await
        .unwrap();
    assert_eq!(bundle.bundles[0].signed_prekey.id, 2, "replaced");
}

/// Who asks for bundles in the store tests (budgets are generous there).
fn tester() -> Requester {
    Requester::Account(Username::parse("tester").unwrap())
}

fn otks(range: std::ops::Range<u32>) -> UploadOneTimePreKeys {
    UploadOneTimePreKeys {
        prekeys: range
            .map(|id| OneTimePreKey {
                id,
                // Never all-zero: that is a low-order point, refused.
                public: Bytes(vec![(id % 250 + 1) as u8; 32]),
            })
            .collect(),
    }
}

/// One time prekeys are capped handed out once and low water is reported.
pub async fn one_time_prekeys_are_capped_handed_out_once_and_low_water_is_reported(
    stores: &dyn Stores,
) {
    let Some(h) = Harness::with(stores, |c| {
        c.prekeys_per_device_max = 30;
        c.prekeys_low_water = 3;
    })
    .await
    else {
        return;
    };
    let mut d = user(&h, "alice", 1).await;
    assert_eq!(d.authed().prekeys_low, Some(0));
    let count = h
        .relay
        .upload_one_time_prekeys(d.authed(), otks(0..5))
        .await
        .unwrap();
    assert_eq!((count.one_time, count.low_water), (5, 3));
    let r = h
        .relay
        .upload_one_time_prekeys(d.authed(), otks(100..126))
        .await;
    assert_eq!(r, Err(RelayError::TooManyPrekeys));
    assert_eq!(
        h.relay.prekey_count(d.authed()).await.unwrap().one_time,
        5,
        "a refused upload adds nothing"
    );
    let r = h
        .relay
        .upload_one_time_prekeys(d.authed(), otks(0..0))
        .await;
    assert!(r.is_err(), "empty upload is refused");
    d.login(&h).await;
    assert_eq!(d.authed().prekeys_low, None);
    let mut seen = HashSet::new();
    for _ in 0..5 {
        let b = h
            .relay
            .key_bundle(&tester(), &d.address(), None)
            .await
            .unwrap();
        let k = b.bundles[0].one_time_prekey.clone().unwrap();
        assert!(seen.insert(k.id), "handed out twice");
    }
    let b = h
        .relay
        .key_bundle(&tester(), &d.address(), None)
        .await
        .unwrap();
    assert_eq!(
        b.bundles[0].one_time_prekey, None,
        "pool empty: signed prekey only"
    );
    assert_eq!(b.bundles[0].signed_prekey.id, 1);
    // Told on its next request.
    d.login(&h).await;
    assert_eq!(d.authed().prekeys_low, Some(0));
    assert_eq!(
        h.relay
            .key_bundle(&tester(), &d.address(), Some(DeviceId(7)))
            .await,
        Err(RelayError::UnknownDevice)
    );
    assert_eq!(
        h.relay
            .key_bundle(&tester(), &h.address("nobody"), None)
            .await,
        Err(RelayError::UnknownUser)
    );
    assert_eq!(
        h.relay
            .key_bundle(&tester(), &remote("x", "relay-b.example"), None)
            .await,
        Err(RelayError::NotLocal)
    );
}

/// Audit #13 item 6: one requester cannot drain a device's pool; past its
/// budget it still gets bundles, with the signed prekey only.
pub async fn one_time_prekey_budgets_keep_the_pool_and_still_serve_the_signed_prekey(
    stores: &dyn Stores,
) {
    let Some(h) = Harness::with(stores, |c| {
        c.prekey_budget = PrekeyBudgetConfig {
            account_burst: 2,
            account_refill_ms: 60_000,
            peer_burst: 3,
            peer_refill_ms: 60_000,
            device_burst: 6,
            device_refill_ms: 60_000,
            keys_max: 1000,
        };
    })
    .await
    else {
        return;
    };
    let d = user(&h, "alice", 1).await;
    h.relay
        .upload_one_time_prekeys(d.authed(), otks(0..50))
        .await
        .unwrap();
    let with_one_time = |requester: Requester, times: usize| {
        let relay = Arc::clone(&h.relay);
        let address = d.address();
        async move {
            let mut handed = 0;
            for _ in 0..times {
                let b = relay.key_bundle(&requester, &address, None).await.unwrap();
                assert_eq!(b.bundles.len(), 1, "always served");
                assert_eq!(b.bundles[0].signed_prekey.id, 1);
                handed += usize::from(b.bundles[0].one_time_prekey.is_some());
            }
            handed
        }
    };
    let account = |name: &str| Requester::Account(Username::parse(name).unwrap());
    assert_eq!(with_one_time(account("mallory"), 100).await, 2);
    assert_eq!(h.relay.prekey_count(d.authed()).await.unwrap().one_time, 48);
    // Another requester still gets its own share of the device's budget.
    assert_eq!(with_one_time(account("carol"), 5).await, 2);
    let peer = Requester::Peer(RelayName::parse("relay-b.example").unwrap());
    // The device's budget (6) is what is left for the peer, under its 3.
    assert_eq!(with_one_time(peer.clone(), 10).await, 2);
    assert_eq!(
        with_one_time(account("dave"), 5).await,
        0,
        "device budget spent"
    );
    assert_eq!(h.relay.prekey_count(d.authed()).await.unwrap().one_time, 44);
    // Buckets refill with the relay's clock.
    h.clock.advance(60_000);
    assert_eq!(with_one_time(account("mallory"), 10).await, 1);
}

/// Concurrent bundle fetches hand out each one time prekey once.
pub async fn concurrent_bundle_fetches_hand_out_each_one_time_prekey_once(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let d = user(&h, "alice", 1).await;
    h.relay
        .upload_one_time_prekeys(d.authed(), otks(0..10))
        .await
        .unwrap();
    let address = d.address();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let relay = Arc::clone(&h.relay);
        let address = address.clone();
        tasks.push(h.spawn(async move {
            relay
                .key_bundle(&tester(), &address, Some(DeviceId(1)))
                .await
                .unwrap()
                .bundles[0]
                .one_time_prekey
                .clone()
        }));
    }
    let mut handed = Vec::new();
    for t in tasks {
        if let Some(k) = t.await.unwrap() {
            handed.push(k.id);
        }
    }
    assert_eq!(handed.len(), 10);
    assert_eq!(handed.iter().collect::<HashSet<_>>().len(), 10);
    assert_eq!(h.relay.prekey_count(d.authed()).await.unwrap().one_time, 0);
}

/// Message for five devices stores the body once.
pub async fn message_for_five_devices_stores_the_body_once(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let sender = user(&h, "sender", 1).await;
    let mut to = Vec::new();
    let mut devices = Vec::new();
    for (i, name) in ["r1", "r2", "r3", "r4", "r5"].iter().enumerate() {
        let d = user(&h, name, 10 + i as u8).await;
        to.push((d.address(), d.device));
        devices.push(d);
    }
    let accepted = h
        .relay
        .accept_message(sender.authed(), message(id(1), &to, b"shared body"))
        .await
        .unwrap();
    assert!(!accepted.duplicate);
    assert_eq!(accepted.delivered.len(), 5);
    assert_eq!(accepted.accepted_ms, T0);
    assert_eq!(
        stats(&h).await,
        StoreStats {
            accounts: 6,
            messages: 1,
            bodies: 1,
            mailbox_entries: 5,
            outbox_entries: 0
        }
    );
    for d in &devices {
        let f = h.relay.fetch(d.authed(), 0, 10).await.unwrap();
        assert_eq!(f.envelopes.len(), 1);
        let e = &f.envelopes[0];
        assert_eq!(e.body.as_slice(), b"shared body");
        assert_eq!(e.header.as_slice(), &[1u8; 8]);
        assert_eq!(e.id, id(1));
        assert_eq!(e.origin, relay_name());
        assert_eq!(e.kind, EnvelopeKind::Message);
        assert_eq!(e.expires_ms, T0 + 3600 * 1000);
    }
}

/// Retried send with the same envelope id stores nothing new.
pub async fn retried_send_with_the_same_envelope_id_stores_nothing_new(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let to = [(b.address(), b.device)];
    let first = h
        .relay
        .accept_message(a.authed(), message(id(1), &to, b"hi"))
        .await
        .unwrap();
    let before = stats(&h).await;
    h.clock.advance(5);
    let retry = h
        .relay
        .accept_message(a.authed(), message(id(1), &to, b"hi"))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        retry.accepted_ms, first.accepted_ms,
        "reports the original result"
    );
    assert!(retry.delivered.is_empty());
    assert_eq!(stats(&h).await, before);
    // Same id and sender, other content: refused, nothing changes. (The
    // same id from another sender is a message of its own: see
    // `an_envelope_id_is_deduplicated_per_source`.)
    let r = h
        .relay
        .accept_message(a.authed(), message(id(1), &to, b"other"))
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::Conflict);
    assert_eq!(stats(&h).await, before);
    // Even after the entry was acked, a retry is still a duplicate.
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    h.relay
        .ack(b.authed(), &[f.envelopes[0].seq])
        .await
        .unwrap();
    let retry = h
        .relay
        .accept_message(a.authed(), message(id(1), &to, b"hi"))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        h.relay
            .fetch(b.authed(), 0, 10)
            .await
            .unwrap()
            .envelopes
            .len(),
        0
    );
}

/// Fetch returns entries in order from a cursor.
pub async fn fetch_returns_entries_in_order_from_a_cursor(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    for n in 0..7u8 {
        h.relay
            .accept_message(a.authed(), message(id(n), &[(b.address(), b.device)], &[n]))
            .await
            .unwrap();
    }
    let page = h.relay.fetch(b.authed(), 0, 3).await.unwrap();
    assert!(page.more);
    let bodies: Vec<u8> = page.envelopes.iter().map(|e| e.body.0[0]).collect();
    assert_eq!(bodies, [0, 1, 2]);
    let seqs: Vec<u64> = page.envelopes.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let page2 = h.relay.fetch(b.authed(), seqs[2], 10).await.unwrap();
    assert!(!page2.more);
    let bodies: Vec<u8> = page2.envelopes.iter().map(|e| e.body.0[0]).collect();
    assert_eq!(bodies, [3, 4, 5, 6]);
    // Other mailboxes are separate.
    assert!(
        h.relay
            .fetch(a.authed(), 0, 10)
            .await
            .unwrap()
            .envelopes
            .is_empty()
    );
}

/// Audit item 2: a read of big entries holds at most the byte cap (plus the
/// one entry that crosses it, which the relay trims off), never a whole
/// batch of 100 × 256 KiB.
pub async fn fetches_are_capped_by_bytes_and_always_progress(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let to = [(b.address(), b.device)];
    for n in 0..6u8 {
        h.relay
            .accept_message(a.authed(), message(id(n), &to, &vec![n; 100_000]))
            .await
            .unwrap();
    }
    // The store itself stops after the entry that crosses the cap.
    let raw = h
        .store
        .fetch(&b.user, b.device, 0, 100, 250_000, T0)
        .await
        .unwrap();
    assert_eq!(raw.len(), 3, "stops right after crossing 250 000 bytes");
    // Two entries (header 8 + body 100 000 each) fit under 250 000.
    let page = h
        .relay
        .fetch_bounded(b.authed(), 0, 100, 250_000)
        .await
        .unwrap();
    let bodies: Vec<u8> = page.envelopes.iter().map(|e| e.body.0[0]).collect();
    assert_eq!(bodies, [0, 1]);
    assert!(page.more);
    // An entry bigger than the cap still comes, alone: readers progress.
    let last = page.envelopes[1].seq;
    let page = h
        .relay
        .fetch_bounded(b.authed(), last, 100, 1_000)
        .await
        .unwrap();
    let bodies: Vec<u8> = page.envelopes.iter().map(|e| e.body.0[0]).collect();
    assert_eq!(bodies, [2]);
    assert!(page.more);
    // The count limit still holds, and the end of the mailbox is reported.
    let page = h.relay.fetch(b.authed(), last, 100).await.unwrap();
    assert_eq!(page.envelopes.len(), 4);
    assert!(!page.more);
}

/// Acking out of order and twice is safe and frees the body.
pub async fn acking_out_of_order_and_twice_is_safe_and_frees_the_body(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let c = user(&h, "carol", 3).await;
    for n in 0..3u8 {
        h.relay
            .accept_message(
                a.authed(),
                message(
                    id(n),
                    &[(b.address(), b.device), (c.address(), c.device)],
                    &[n],
                ),
            )
            .await
            .unwrap();
    }
    let seqs: Vec<u64> = h
        .relay
        .fetch(b.authed(), 0, 10)
        .await
        .unwrap()
        .envelopes
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        h.relay
            .ack(b.authed(), &[seqs[2], seqs[0]])
            .await
            .unwrap()
            .acked,
        2
    );
    assert_eq!(
        h.relay
            .ack(b.authed(), &[seqs[0], seqs[2]])
            .await
            .unwrap()
            .acked,
        0
    );
    assert_eq!(h.relay.ack(b.authed(), &[9999]).await.unwrap().acked, 0);
    let left = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    assert_eq!(left.envelopes.len(), 1);
    assert_eq!(left.envelopes[0].seq, seqs[1]);
    // Carol still has all three; bodies stay until her acks.
    assert_eq!(stats(&h).await.bodies, 3);
    let cseqs: Vec<u64> = h
        .relay
        .fetch(c.authed(), 0, 10)
        .await
        .unwrap()
        .envelopes
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(cseqs.len(), 3);
    // Acking someone else's seq does nothing to them.
    h.relay.ack(a.authed(), &cseqs).await.unwrap();
    assert_eq!(
        h.relay
            .fetch(c.authed(), 0, 10)
            .await
            .unwrap()
            .envelopes
            .len(),
        3
    );
    h.relay.ack(c.authed(), &cseqs).await.unwrap();
    h.relay.ack(b.authed(), &[seqs[1]]).await.unwrap();
    let s = stats(&h).await;
    assert_eq!((s.bodies, s.mailbox_entries), (0, 0));
    // New mail gets a fresh seq, never a reused one.
    h.relay
        .accept_message(a.authed(), message(id(9), &[(b.address(), b.device)], b"x"))
        .await
        .unwrap();
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    assert!(f.envelopes[0].seq > seqs[2]);
}

/// Expired entries are purged.
pub async fn expired_entries_are_purged(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let c = user(&h, "carol", 3).await;
    let mut m = message(id(1), &[(b.address(), b.device)], b"short");
    m.ttl_secs = 10;
    h.relay.accept_message(a.authed(), m).await.unwrap();
    // Two recipients: both entries expire in one purge, releasing the
    // body by two references at once.
    let mut m = message(
        id(4),
        &[(b.address(), b.device), (c.address(), c.device)],
        b"short, twice",
    );
    m.ttl_secs = 10;
    h.relay.accept_message(a.authed(), m).await.unwrap();
    h.relay
        .accept_message(
            a.authed(),
            message(id(2), &[(b.address(), b.device)], b"long"),
        )
        .await
        .unwrap();
    h.clock.advance(10_000);
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    assert_eq!(f.envelopes.len(), 1, "expired entries are not delivered");
    assert_eq!(f.envelopes[0].body.as_slice(), b"long");
    let report = h.relay.purge_expired().await.unwrap();
    assert_eq!(report.mailbox_entries, 3);
    assert_eq!(report.messages, 2);
    let s = stats(&h).await;
    assert_eq!((s.messages, s.bodies, s.mailbox_entries), (1, 1, 1));
    h.clock.advance(3600 * 1000);
    h.relay.purge_expired().await.unwrap();
    assert_eq!(
        stats(&h).await,
        StoreStats {
            accounts: 3,
            ..StoreStats::default()
        }
    );
    // A purge frees depth: the mailboxes take new mail, and their depth
    // is what is really in them.
    h.relay
        .accept_message(
            a.authed(),
            message(
                id(3),
                &[(b.address(), b.device), (c.address(), c.device)],
                b"new",
            ),
        )
        .await
        .unwrap();
    assert_eq!(stats(&h).await.mailbox_entries, 2);
}

/// A full mailbox refuses the whole message.
pub async fn a_full_mailbox_refuses_the_whole_message(stores: &dyn Stores) {
    let Some(h) = Harness::with(stores, |c| c.mailbox_depth_max = 2).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let c = user(&h, "carol", 3).await;
    for n in 0..2 {
        h.relay
            .accept_message(a.authed(), message(id(n), &[(b.address(), b.device)], b"x"))
            .await
            .unwrap();
    }
    let before = stats(&h).await;
    let r = h
        .relay
        .accept_message(
            a.authed(),
            message(
                id(7),
                &[(c.address(), c.device), (b.address(), b.device)],
                b"y",
            ),
        )
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::MailboxFull);
    assert_eq!(
        stats(&h).await,
        before,
        "nothing stored, not even for carol"
    );
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    h.relay
        .ack(b.authed(), &[f.envelopes[0].seq])
        .await
        .unwrap();
    h.relay
        .accept_message(
            a.authed(),
            message(
                id(7),
                &[(c.address(), c.device), (b.address(), b.device)],
                b"y",
            ),
        )
        .await
        .unwrap();
}

/// Unknown recipient refuses the whole message.
pub async fn unknown_recipient_refuses_the_whole_message(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let r = h
        .relay
        .accept_message(
            a.authed(),
            message(
                id(1),
                &[(b.address(), b.device), (b.address(), DeviceId(5))],
                b"x",
            ),
        )
        .await;
    assert_eq!(r, Err(RelayError::UnknownDevice));
    let r = h
        .relay
        .accept_message(
            a.authed(),
            message(
                id(1),
                &[(b.address(), b.device), (h.address("nobody"), DeviceId(1))],
                b"x",
            ),
        )
        .await;
    assert_eq!(r, Err(RelayError::UnknownUser));
    assert_eq!(
        stats(&h).await,
        StoreStats {
            accounts: 2,
            ..StoreStats::default()
        }
    );
    // Malformed: no recipients, oversized body, duplicate recipient, bad ttl.
    let mut m = message(id(2), &[], b"x");
    assert!(h.relay.accept_message(a.authed(), m.clone()).await.is_err());
    m = message(id(2), &[(b.address(), b.device)], &vec![0; 300 * 1024]);
    assert_eq!(
        h.relay
            .accept_message(a.authed(), m)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::PayloadTooLarge
    );
    m = message(
        id(2),
        &[(b.address(), b.device), (b.address(), b.device)],
        b"x",
    );
    assert!(h.relay.accept_message(a.authed(), m).await.is_err());
    m = message(id(2), &[(b.address(), b.device)], b"x");
    m.ttl_secs = 0;
    assert!(h.relay.accept_message(a.authed(), m).await.is_err());
    assert_eq!(
        stats(&h).await,
        StoreStats {
            accounts: 2,
            ..StoreStats::default()
        }
    );
}

/// Remote recipients go to the outbox once per relay.
pub async fn remote_recipients_go_to_the_outbox_once_per_relay(stores: &dyn Stores) {
    let Some(h) = Harness::with(stores, |c| {
        c.outbox_lease_ms = 1000;
        c.outbox_backoff_base_ms = 1000;
    })
    .await
    else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let to = [
        (b.address(), b.device),
        (remote("x", "relay-b.example"), DeviceId(1)),
        (remote("x", "relay-b.example"), DeviceId(2)),
        (remote("y", "relay-b.example"), DeviceId(1)),
        (remote("z", "relay-c.example"), DeviceId(1)),
    ];
    let acc = h
        .relay
        .accept_message(a.authed(), message(id(1), &to, b"group"))
        .await
        .unwrap();
    assert_eq!(acc.delivered.len(), 1);
    assert_eq!(acc.remote.len(), 2);
    let s = stats(&h).await;
    assert_eq!((s.bodies, s.mailbox_entries, s.outbox_entries), (1, 1, 2));
    let dests = h.relay.outbox_destinations().await.unwrap();
    assert_eq!(
        dests
            .iter()
            .map(|d| (d.relay.as_str(), d.pending))
            .collect::<Vec<_>>(),
        [("relay-b.example", 1), ("relay-c.example", 1)]
    );
    let rb = RelayName::parse("relay-b.example").unwrap();
    let batch = h.relay.outbox_take_batch(&rb, 10).await.unwrap();
    assert_eq!(batch.len(), 1);
    let e = &batch[0];
    assert_eq!(e.body.as_slice(), b"group");
    assert_eq!(e.recipients.len(), 3);
    assert_eq!(e.envelope, id(1));
    assert_eq!(e.attempts, 0);
    let fed = e.to_fed_envelope();
    assert_eq!(fed.recipients[0].header.as_slice(), &[1u8; 8]);
    // Leased: not offered again until the lease ends.
    assert!(h.relay.outbox_take_batch(&rb, 10).await.unwrap().is_empty());
    h.clock.advance(1000);
    let again = h.relay.outbox_take_batch(&rb, 10).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "a crashed attempt is retried after the lease"
    );
    let next = h.relay.outbox_reschedule(&again[0]).await.unwrap();
    let now = h.relay.now_ms();
    assert!(next > now && next <= now + 1000, "base backoff with jitter");
    assert!(h.relay.outbox_take_batch(&rb, 10).await.unwrap().is_empty());
    h.clock.set(next);
    let third = h.relay.outbox_take_batch(&rb, 10).await.unwrap();
    assert_eq!(third[0].attempts, 1);
    let later = h.relay.outbox_reschedule(&third[0]).await.unwrap();
    assert!(later > next + 1000 - 1 && later <= next + 2000, "doubles");
    assert_eq!(
        h.relay.outbox_mark_delivered(&[third[0].id]).await.unwrap(),
        1
    );
    assert_eq!(
        h.relay.outbox_mark_delivered(&[third[0].id]).await.unwrap(),
        0
    );
    // Body stays: bob and relay-c still reference it.
    assert_eq!(stats(&h).await.bodies, 1);
    let rc = RelayName::parse("relay-c.example").unwrap();
    let c = h.relay.outbox_take_batch(&rc, 10).await.unwrap();
    h.relay.outbox_mark_delivered(&[c[0].id]).await.unwrap();
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    h.relay
        .ack(b.authed(), &[f.envelopes[0].seq])
        .await
        .unwrap();
    let s = stats(&h).await;
    assert_eq!((s.bodies, s.mailbox_entries, s.outbox_entries), (0, 0, 0));
    assert!(h.relay.outbox_destinations().await.unwrap().is_empty());
}

/// Outbox expiry sends a failure notice to the sender device.
pub async fn outbox_expiry_sends_a_failure_notice_to_the_sender_device(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let mut m = message(
        id(1),
        &[(remote("x", "relay-b.example"), DeviceId(3))],
        b"lost",
    );
    m.ttl_secs = 60;
    h.relay.accept_message(a.authed(), m).await.unwrap();
    assert_eq!(h.relay.outbox_expire().await.unwrap(), 0, "not yet");
    h.clock.advance(60_000);
    let rb = RelayName::parse("relay-b.example").unwrap();
    assert!(
        h.relay.outbox_take_batch(&rb, 10).await.unwrap().is_empty(),
        "expired entries are not delivered"
    );
    assert_eq!(h.relay.outbox_expire().await.unwrap(), 1);
    let f = h.relay.fetch(a.authed(), 0, 10).await.unwrap();
    assert_eq!(f.envelopes.len(), 1);
    let notice = &f.envelopes[0];
    assert_eq!(notice.kind, EnvelopeKind::DeliveryFailure);
    let body: courier_protocol::api::DeliveryFailureNotice =
        serde_json::from_slice(notice.body.as_slice()).unwrap();
    assert_eq!(body.id, id(1));
    assert_eq!(body.recipients.len(), 1);
    assert_eq!(body.recipients[0].to, remote("x", "relay-b.example"));
    assert_eq!(body.recipients[0].device, DeviceId(3));
    assert_eq!(body.recipients[0].code, ErrorCode::Expired);
    let s = stats(&h).await;
    assert_eq!(s.outbox_entries, 0);
    assert_eq!(h.relay.outbox_expire().await.unwrap(), 0);
    // A permanent rejection gives a notice at once.
    let m = message(
        id(2),
        &[(remote("x", "relay-b.example"), DeviceId(3))],
        b"no",
    );
    h.relay.accept_message(a.authed(), m).await.unwrap();
    let batch = h.relay.outbox_take_batch(&rb, 10).await.unwrap();
    h.relay
        .outbox_fail(&batch[0], ErrorCode::UnknownDevice)
        .await
        .unwrap();
    let f = h.relay.fetch(a.authed(), notice.seq, 10).await.unwrap();
    assert_eq!(f.envelopes.len(), 1);
    assert_eq!(stats(&h).await.outbox_entries, 0);
}

/// Federated envelopes are deduplicated and checked.
pub async fn federated_envelopes_are_deduplicated_and_checked(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let b = user(&h, "bob", 2).await;
    let origin = RelayName::parse("relay-b.example").unwrap();
    let env = |n: u8, to: Vec<(Username, DeviceId)>| FedEnvelope {
        id: id(n),
        body: Bytes(vec![n; 4]),
        recipients: to
            .into_iter()
            .map(|(user, device)| FedRecipient {
                user,
                device,
                header: Bytes(vec![9; 4]),
            })
            .collect(),
        expires_ms: T0 + 60_000,
        kind: EnvelopeKind::Message,
    };
    let acks = h
        .relay
        .accept_federated(
            &origin,
            vec![
                env(
                    1,
                    vec![(b.user.clone(), b.device), (b.user.clone(), DeviceId(9))],
                ),
                env(
                    1,
                    vec![(b.user.clone(), b.device), (b.user.clone(), DeviceId(9))],
                ),
                env(2, vec![(Username::parse("nobody").unwrap(), DeviceId(1))]),
                FedEnvelope {
                    expires_ms: T0,
                    ..env(3, vec![(b.user.clone(), b.device)])
                },
            ],
        )
        .await;
    let statuses: Vec<AckStatus> = acks.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [
            AckStatus::Accepted,
            AckStatus::Duplicate,
            AckStatus::Rejected(ErrorCode::UnknownDevice),
            AckStatus::Rejected(ErrorCode::BadRequest),
        ]
    );
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    assert_eq!(
        f.envelopes.len(),
        1,
        "delivered once, to the device that exists"
    );
    assert_eq!(f.envelopes[0].origin, origin);
    assert_eq!(f.envelopes[0].body.as_slice(), &[1u8; 4]);
    // The same id from another relay is not a duplicate of this one, nor
    // a conflict: deduplication is per source.
    let other = RelayName::parse("relay-c.example").unwrap();
    let acks = h
        .relay
        .accept_federated(&other, vec![env(1, vec![(b.user.clone(), b.device)])])
        .await;
    assert_eq!(acks[0].status, AckStatus::Accepted);
    // Nor is other content from the same relay under that id: a relay
    // speaks for many senders (see `an_envelope_id_is_deduplicated_per_source`).
    let acks = h
        .relay
        .accept_federated(
            &origin,
            vec![FedEnvelope {
                body: Bytes(vec![0xee; 4]),
                ..env(1, vec![(b.user.clone(), b.device)])
            }],
        )
        .await;
    assert_eq!(acks[0].status, AckStatus::Accepted);
    // An envelope claiming to come from ourselves is refused.
    let acks = h
        .relay
        .accept_federated(
            &relay_name(),
            vec![env(5, vec![(b.user.clone(), b.device)])],
        )
        .await;
    assert_eq!(acks[0].status, AckStatus::Rejected(ErrorCode::Forbidden));
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Notifier for Recorder {
    fn mailbox(&self, user: &Username, device: DeviceId, seq: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("mail {user}/{device} {seq}"));
    }
    fn outbox(&self, relay: &RelayName) {
        self.0.lock().unwrap().push(format!("outbox {relay}"));
    }
    fn prekeys_low(&self, user: &Username, device: DeviceId, remaining: u32) {
        self.0
            .lock()
            .unwrap()
            .push(format!("low {user}/{device} {remaining}"));
    }
}

/// The notifier hears of new mail outbox entries and low prekeys.
pub async fn the_notifier_hears_of_new_mail_outbox_entries_and_low_prekeys(stores: &dyn Stores) {
    let recorder = Arc::new(Recorder::default());
    let Some(h) = Harness::build(
        stores,
        |c| c.prekeys_low_water = 2,
        Some(recorder.clone() as Arc<dyn Notifier>),
    )
    .await
    else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let to = [
        (b.address(), b.device),
        (remote("x", "relay-b.example"), DeviceId(1)),
    ];
    h.relay
        .accept_message(a.authed(), message(id(1), &to, b"x"))
        .await
        .unwrap();
    // A duplicate notifies nobody.
    h.relay
        .accept_message(a.authed(), message(id(1), &to, b"x"))
        .await
        .unwrap();
    h.relay
        .upload_one_time_prekeys(b.authed(), otks(0..3))
        .await
        .unwrap();
    for _ in 0..3 {
        h.relay
            .key_bundle(&tester(), &b.address(), None)
            .await
            .unwrap();
    }
    let heard = recorder.0.lock().unwrap().clone();
    assert_eq!(
        heard,
        [
            "mail bob/1 1",
            "outbox relay-b.example",
            "low bob/1 1",
            "low bob/1 0"
        ]
    );
}

/// Concurrent sends are batched and each gets its own answer.
pub async fn concurrent_sends_are_batched_and_each_gets_its_own_answer(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let c = user(&h, "carol", 3).await;
    h.relay
        .accept_message(
            a.authed(),
            message(id(200), &[(b.address(), b.device)], b"first"),
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..120u8 {
        let relay = Arc::clone(&h.relay);
        let sender = a.authed().clone();
        let (to, m) = match n % 12 {
            // A retry of an accepted message.
            0 => (vec![(b.address(), b.device)], id(200)),
            // An unknown device.
            1 => (vec![(b.address(), DeviceId(9))], id(n)),
            // Two local recipients.
            2 => (
                vec![(b.address(), b.device), (c.address(), c.device)],
                id(n),
            ),
            _ => (vec![(b.address(), b.device)], id(n)),
        };
        let body: &[u8] = if n % 12 == 0 { b"first" } else { &[n] };
        let msg = message(m, &to, body);
        tasks.push(h.spawn(async move { (n, relay.accept_message(&sender, msg).await) }));
    }
    let mut seqs = HashSet::new();
    for t in tasks {
        let (n, r) = t.await.unwrap();
        match n % 12 {
            0 => assert!(r.unwrap().duplicate),
            1 => assert_eq!(r, Err(RelayError::UnknownDevice)),
            2 => {
                let acc = r.unwrap();
                assert_eq!(acc.delivered.len(), 2);
                assert!(seqs.insert(acc.delivered[0].seq));
            }
            _ => {
                let acc = r.unwrap();
                assert!(!acc.duplicate);
                assert!(seqs.insert(acc.delivered[0].seq), "seq handed out twice");
            }
        }
    }
    // 1 first + 100 valid for bob; 10 for carol.
    let f = h.relay.fetch(b.authed(), 0, 500).await.unwrap();
    assert_eq!(f.envelopes.len(), 101);
    assert!(f.envelopes.windows(2).all(|w| w[0].seq < w[1].seq));
    let ids: HashSet<EnvelopeId> = f.envelopes.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 101);
    for e in &f.envelopes {
        if e.id != id(200) {
            assert_eq!(e.body.as_slice(), &e.id.0[6..7]);
        }
    }
    let s = stats(&h).await;
    assert_eq!((s.messages, s.mailbox_entries), (101, 111));
    let all: Vec<u64> = f.envelopes.iter().map(|e| e.seq).collect();
    assert_eq!(h.relay.ack(b.authed(), &all).await.unwrap().acked, 101);
    let s = stats(&h).await;
    assert_eq!((s.bodies, s.mailbox_entries), (10, 10));
    // A round of only valid sends (stored together, several per statement).
    let mut tasks = Vec::new();
    for n in 0..60u8 {
        let relay = Arc::clone(&h.relay);
        let sender = a.authed().clone();
        let msg = message(
            EnvelopeId::new(T0 + 1, [n; 10]),
            &[(b.address(), b.device), (c.address(), c.device)],
            &[n],
        );
        tasks.push(h.spawn(async move { relay.accept_message(&sender, msg).await.unwrap() }));
    }
    let mut bob_seqs = HashSet::new();
    for t in tasks {
        let acc = t.await.unwrap();
        assert_eq!(acc.delivered.len(), 2);
        assert!(bob_seqs.insert(acc.delivered[0].seq));
    }
    let f = h.relay.fetch(b.authed(), 0, 500).await.unwrap();
    assert_eq!(f.envelopes.len(), 60);
    for e in &f.envelopes {
        assert_eq!(e.body.as_slice(), &e.id.0[6..7]);
        assert!(bob_seqs.contains(&e.seq));
    }
    let f = h.relay.fetch(c.authed(), 0, 500).await.unwrap();
    assert_eq!(f.envelopes.len(), 70);
    assert!(f.envelopes.windows(2).all(|w| w[0].seq < w[1].seq));
}

/// Outbox wake makes backed off entries due but leaves leased ones.
pub async fn outbox_wake_makes_backed_off_entries_due_but_leaves_leased_ones(stores: &dyn Stores) {
    let Some(h) = Harness::with(stores, |c| {
        c.outbox_lease_ms = 1000;
        c.outbox_backoff_base_ms = 60_000;
        c.outbox_backoff_max_ms = 600_000;
    })
    .await
    else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let rb = RelayName::parse("relay-b.example").unwrap();
    let rc = RelayName::parse("relay-c.example").unwrap();
    for n in 1..=2 {
        let to = [(remote("x", "relay-b.example"), DeviceId(1))];
        h.relay
            .accept_message(a.authed(), message(id(n), &to, b"b"))
            .await
            .unwrap();
    }
    let to = [(remote("y", "relay-c.example"), DeviceId(1))];
    h.relay
        .accept_message(a.authed(), message(id(3), &to, b"c"))
        .await
        .unwrap();
    // One relay-b entry backs off for a minute or more; the other is leased
    // to an attempt in flight. relay-c's entry backs off too.
    let taken = h.relay.outbox_take_batch(&rb, 1).await.unwrap();
    h.relay.outbox_reschedule(&taken[0]).await.unwrap();
    let leased = h.relay.outbox_take_batch(&rb, 1).await.unwrap();
    assert_eq!(leased.len(), 1);
    let c = h.relay.outbox_take_batch(&rc, 1).await.unwrap();
    h.relay.outbox_reschedule(&c[0]).await.unwrap();
    assert!(h.relay.outbox_take_batch(&rb, 10).await.unwrap().is_empty());

    assert_eq!(
        h.relay.outbox_wake(&rb).await.unwrap(),
        1,
        "only the backed-off one"
    );
    let due = h.relay.outbox_take_batch(&rb, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, taken[0].id);
    assert_ne!(
        due[0].id, leased[0].id,
        "the leased entry is not offered twice"
    );
    assert!(
        h.relay.outbox_take_batch(&rc, 10).await.unwrap().is_empty(),
        "other destinations keep their backoff"
    );
    assert_eq!(
        h.relay.outbox_wake(&rb).await.unwrap(),
        0,
        "nothing left to wake"
    );
}

/// Concurrent acks from many devices are each counted once.
pub async fn concurrent_acks_from_many_devices_are_each_counted_once(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let c = user(&h, "carol", 3).await;
    // 40 messages to bob and carol (a body each, two refs each).
    for n in 0..40u8 {
        h.relay
            .accept_message(
                a.authed(),
                message(
                    id(n),
                    &[(b.address(), b.device), (c.address(), c.device)],
                    &[n],
                ),
            )
            .await
            .unwrap();
    }
    let seqs = |d: &TestDevice| {
        let relay = Arc::clone(&h.relay);
        let authed = d.authed().clone();
        async move {
            relay
                .fetch(&authed, 0, 100)
                .await
                .unwrap()
                .envelopes
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<u64>>()
        }
    };
    let bob = seqs(&b).await;
    let carol = seqs(&c).await;
    assert_eq!((bob.len(), carol.len()), (40, 40));
    // Everyone acks at once, one seq per call (what many WebSocket
    // connections do), so the store sees them in shared batches: bob's
    // seqs twice (a retry), carol's once plus one that does not exist,
    // and alice "acks" bob's seqs, which must not touch bob's mailbox.
    let mut tasks = Vec::new();
    for (who, list) in [(&b, &bob), (&b, &bob), (&c, &carol), (&a, &bob)] {
        for seq in list.iter().copied().chain([99_999]) {
            let relay = Arc::clone(&h.relay);
            let authed = who.authed().clone();
            let name = who.user.clone();
            tasks.push(
                h.spawn(async move { (name, relay.ack(&authed, &[seq]).await.unwrap().acked) }),
            );
        }
    }
    let mut acked: std::collections::HashMap<Username, u32> = Default::default();
    for t in tasks {
        let (name, n) = t.await.unwrap();
        assert!(n <= 1, "one seq acked at most once per call");
        *acked.entry(name).or_default() += n;
    }
    assert_eq!(acked[&b.user], 40, "each of bob's entries counted once");
    assert_eq!(acked[&c.user], 40);
    assert_eq!(acked[&a.user], 0);
    let s = stats(&h).await;
    assert_eq!((s.bodies, s.mailbox_entries), (0, 0));
    // Depth went back to zero: a full mailbox's worth fits again.
    for n in 0..3u8 {
        h.relay
            .accept_message(
                a.authed(),
                message(
                    EnvelopeId::new(T0 + 1, [n; 10]),
                    &[(b.address(), b.device)],
                    b"again",
                ),
            )
            .await
            .unwrap();
    }
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    assert_eq!(f.envelopes.len(), 3);
    assert!(
        f.envelopes[0].seq > *bob.last().unwrap(),
        "seqs never reused"
    );
}

/// A federated batch is stored in order with its odd envelopes answered alone.
pub async fn a_federated_batch_is_stored_in_order_with_its_odd_envelopes_answered_alone(
    stores: &dyn Stores,
) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let b = user(&h, "bob", 2).await;
    let c = user(&h, "carol", 3).await;
    let origin = RelayName::parse("relay-b.example").unwrap();
    let env = |n: u8, to: Vec<(Username, DeviceId)>| FedEnvelope {
        id: id(n),
        body: Bytes(vec![n; 4]),
        recipients: to
            .into_iter()
            .map(|(user, device)| FedRecipient {
                user,
                device,
                header: Bytes(vec![9; 4]),
            })
            .collect(),
        expires_ms: T0 + 60_000,
        kind: EnvelopeKind::Message,
    };
    // 100 envelopes in one delivery; every 10th also names an unknown
    // device (stored for the known one), and the last repeats the first.
    let mut batch: Vec<FedEnvelope> = (0..100u8)
        .map(|n| {
            let mut to = vec![(b.user.clone(), b.device), (c.user.clone(), c.device)];
            if n % 10 == 0 {
                to.push((Username::parse("nobody").unwrap(), DeviceId(1)));
            }
            env(n, to)
        })
        .collect();
    batch.push(batch[0].clone());
    let acks = h.relay.accept_federated(&origin, batch).await;
    assert_eq!(acks.len(), 101);
    for (n, ack) in acks.iter().take(100).enumerate() {
        assert_eq!(ack.id, id(n as u8));
        assert_eq!(ack.status, AckStatus::Accepted, "envelope {n}");
    }
    assert_eq!(acks[100].status, AckStatus::Duplicate);
    for d in [&b, &c] {
        let f = h.relay.fetch(d.authed(), 0, 500).await.unwrap();
        let order: Vec<EnvelopeId> = f.envelopes.iter().map(|e| e.id).collect();
        let expected: Vec<EnvelopeId> = (0..100u8).map(id).collect();
        assert_eq!(order, expected, "the batch's order is each mailbox's order");
    }
    let s = stats(&h).await;
    assert_eq!((s.messages, s.mailbox_entries), (100, 200));
}

/// Records the seqs handed over per device, with the entries themselves
/// (as a push hub does).
#[derive(Default)]
struct SeqRecorder(Mutex<Vec<(String, u64)>>);

impl Notifier for SeqRecorder {
    fn mailbox(&self, user: &Username, device: DeviceId, seq: u64) {
        self.0
            .lock()
            .unwrap()
            .push((format!("{user}/{device}"), seq));
    }
    fn wants_envelopes(&self) -> bool {
        true
    }
    fn envelope(
        &self,
        user: &Username,
        device: DeviceId,
        seq: u64,
        make: &dyn Fn() -> crate::types::Envelope,
    ) {
        assert_eq!(make().seq, seq);
        self.mailbox(user, device, seq);
    }
}

/// The notifier hears of each mailboxs entries in seq order.
pub async fn the_notifier_hears_of_each_mailboxs_entries_in_seq_order(stores: &dyn Stores) {
    let recorder = Arc::new(SeqRecorder::default());
    let Some(h) = Harness::build(stores, |_| {}, Some(recorder.clone() as Arc<dyn Notifier>)).await
    else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let c = user(&h, "carol", 3).await;
    // Many concurrent senders, so the store commits them in groups and the
    // callers resume in any order on two threads: the notifier must still
    // hear of each mailbox's entries in seq order, or a push hub would see
    // gaps that are not there.
    let mut tasks = Vec::new();
    for n in 0..400u32 {
        let relay = Arc::clone(&h.relay);
        let sender = a.authed().clone();
        let to = match n % 3 {
            0 => vec![(b.address(), b.device)],
            1 => vec![(c.address(), c.device)],
            _ => vec![(b.address(), b.device), (c.address(), c.device)],
        };
        let mut random = [0u8; 10];
        random[..4].copy_from_slice(&n.to_be_bytes());
        let msg = message(EnvelopeId::new(T0 + 2, random), &to, &n.to_be_bytes());
        tasks.push(h.spawn(async move { relay.accept_message(&sender, msg).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let heard = recorder.0.lock().unwrap().clone();
    let bob = format!("bob/{}", b.device);
    let carol = format!("carol/{}", c.device);
    for (device, count) in [(bob, 267), (carol, 266)] {
        let seqs: Vec<u64> = heard
            .iter()
            .filter(|(d, _)| *d == device)
            .map(|(_, seq)| *seq)
            .collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs.len(), count, "{device}");
        assert_eq!(seqs, expected, "{device}: entries heard out of seq order");
    }
}

/// Audit #13 item 5: a co-recipient who learned an envelope id (or guessed
/// it) and stored it first does not turn the real message into a conflict.
pub async fn an_envelope_id_is_deduplicated_per_source(stores: &dyn Stores) {
    let Some(h) = Harness::new(stores).await else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let m = user(&h, "mallory", 3).await;
    let to = [(b.address(), b.device)];
    // Mallory squats the id alice will use.
    let squat = h
        .relay
        .accept_message(m.authed(), message(id(1), &to, b"squat"))
        .await
        .unwrap();
    assert!(!squat.duplicate);
    let real = h
        .relay
        .accept_message(a.authed(), message(id(1), &to, b"real"))
        .await
        .unwrap();
    assert!(
        !real.duplicate,
        "alice's message is stored, not a duplicate"
    );
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    let bodies: Vec<&[u8]> = f.envelopes.iter().map(|e| e.body.as_slice()).collect();
    assert_eq!(bodies, [&b"squat"[..], &b"real"[..]]);
    assert!(f.envelopes.iter().all(|e| e.id == id(1)));
    // Retries stay idempotent per source; other content from the same
    // source is still a conflict.
    let before = stats(&h).await;
    for (who, body) in [(&a, &b"real"[..]), (&m, &b"squat"[..])] {
        let retry = h
            .relay
            .accept_message(who.authed(), message(id(1), &to, body))
            .await
            .unwrap();
        assert!(retry.duplicate);
    }
    let r = h
        .relay
        .accept_message(a.authed(), message(id(1), &to, b"changed"))
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::Conflict);
    assert_eq!(stats(&h).await, before);
    // Federated: a local squatter and another relay do not block the id
    // for the relay the real message comes from.
    let origin = RelayName::parse("relay-b.example").unwrap();
    let env = |body: &[u8]| FedEnvelope {
        id: id(2),
        body: Bytes(body.to_vec()),
        recipients: vec![FedRecipient {
            user: b.user.clone(),
            device: b.device,
            header: Bytes(vec![9; 4]),
        }],
        expires_ms: T0 + 60_000,
        kind: EnvelopeKind::Message,
    };
    h.relay
        .accept_message(m.authed(), message(id(2), &to, b"squat"))
        .await
        .unwrap();
    let other = RelayName::parse("relay-c.example").unwrap();
    let acks = h.relay.accept_federated(&other, vec![env(b"c")]).await;
    assert_eq!(acks[0].status, AckStatus::Accepted);
    // A user of the origin relay itself who learned the id stores it there
    // first: the origin speaks for all its users, so the destination sees
    // one source for both; the real envelope is still a message of its own.
    let acks = h
        .relay
        .accept_federated(&origin, vec![env(b"squat via relay-b")])
        .await;
    assert_eq!(acks[0].status, AckStatus::Accepted);
    let acks = h
        .relay
        .accept_federated(&origin, vec![env(b"real"), env(b"real")])
        .await;
    let statuses: Vec<AckStatus> = acks.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [AckStatus::Accepted, AckStatus::Duplicate]);
    let retry = h.relay.accept_federated(&origin, vec![env(b"real")]).await;
    assert_eq!(
        retry[0].status,
        AckStatus::Duplicate,
        "retries stay idempotent"
    );
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    let bodies: Vec<&[u8]> = f.envelopes.iter().map(|e| e.body.as_slice()).collect();
    assert_eq!(
        bodies,
        [
            &b"squat"[..],
            &b"real"[..],
            &b"squat"[..],
            &b"c"[..],
            &b"squat via relay-b"[..],
            &b"real"[..]
        ]
    );
    assert_eq!(f.envelopes[5].origin, origin);
}

/// Audit #13 item 1: one source (a local account, or a remote relay) fills
/// at most its share of a device's mailbox; everyone else still gets
/// through, and acks and purge give the share back.
pub async fn each_source_gets_only_its_share_of_a_mailbox(stores: &dyn Stores) {
    let Some(h) = Harness::with(stores, |c| {
        c.mailbox_depth_max = 10;
        c.mailbox_per_source_max = 3;
    })
    .await
    else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let b = user(&h, "bob", 2).await;
    let c = user(&h, "carol", 3).await;
    let m = user(&h, "mallory", 4).await;
    let to_b = [(b.address(), b.device)];
    for n in 0..3 {
        h.relay
            .accept_message(m.authed(), message(id(n), &to_b, b"junk"))
            .await
            .unwrap();
    }
    let before = stats(&h).await;
    let r = h
        .relay
        .accept_message(
            m.authed(),
            message(
                id(3),
                &[(c.address(), c.device), (b.address(), b.device)],
                b"junk",
            ),
        )
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::MailboxQuota);
    assert_eq!(
        stats(&h).await,
        before,
        "nothing stored, not even for carol"
    );
    // A second sender is not affected.
    let ok = h
        .relay
        .accept_message(a.authed(), message(id(10), &to_b, b"hello"))
        .await
        .unwrap();
    assert_eq!(ok.delivered.len(), 1);
    // Mallory's share is per recipient device: carol still takes hers.
    h.relay
        .accept_message(m.authed(), message(id(4), &[(c.address(), c.device)], b"x"))
        .await
        .unwrap();
    // An ack gives a share back.
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    assert_eq!(f.envelopes.len(), 4);
    h.relay
        .ack(b.authed(), &[f.envelopes[0].seq])
        .await
        .unwrap();
    h.relay
        .accept_message(m.authed(), message(id(5), &to_b, b"junk"))
        .await
        .unwrap();
    let r = h
        .relay
        .accept_message(m.authed(), message(id(6), &to_b, b"junk"))
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::MailboxQuota);
    // Federated mail counts against the relay it came from.
    let env = |n: u8| FedEnvelope {
        id: id(20 + n),
        body: Bytes(vec![n; 4]),
        recipients: vec![FedRecipient {
            user: b.user.clone(),
            device: b.device,
            header: Bytes(vec![9; 4]),
        }],
        expires_ms: T0 + 60_000,
        kind: EnvelopeKind::Message,
    };
    let origin = RelayName::parse("relay-b.example").unwrap();
    let acks = h
        .relay
        .accept_federated(&origin, (0..4).map(env).collect())
        .await;
    let statuses: Vec<AckStatus> = acks.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [
            AckStatus::Accepted,
            AckStatus::Accepted,
            AckStatus::Accepted,
            AckStatus::Rejected(ErrorCode::MailboxQuota),
        ]
    );
    let other = RelayName::parse("relay-c.example").unwrap();
    let acks = h.relay.accept_federated(&other, vec![env(5)]).await;
    assert_eq!(acks[0].status, AckStatus::Accepted);
    // 3 mallory + 1 alice + 3 relay-b + 1 relay-c; the depth limit still
    // holds for everyone together.
    assert_eq!(
        h.relay
            .fetch(b.authed(), 0, 20)
            .await
            .unwrap()
            .envelopes
            .len(),
        8
    );
    // Purge gives shares back too.
    h.clock.advance(3_600_001);
    h.relay.purge_expired().await.unwrap();
    for n in 0..3 {
        h.relay
            .accept_message(m.authed(), message(id(30 + n), &to_b, b"junk"))
            .await
            .unwrap();
    }
    let acks = h
        .relay
        .accept_federated(
            &origin,
            vec![FedEnvelope {
                expires_ms: T0 + 7_200_000,
                ..env(9)
            }],
        )
        .await;
    assert_eq!(acks[0].status, AckStatus::Accepted);
}

/// Audit item 4: the drainer's look at the outbox reads at most
/// `entries_max` due entries, earliest due first, and names at most
/// `destinations_max` destinations; entries backing off, leased or expired
/// are not due, and the earliest future due time is reported.
pub async fn outbox_due_reads_a_bounded_window_of_destinations_in_due_order(stores: &dyn Stores) {
    let Some(h) = Harness::with(stores, |c| {
        c.outbox_lease_ms = 10_000;
        c.outbox_backoff_base_ms = 60_000;
        c.outbox_backoff_max_ms = 600_000;
    })
    .await
    else {
        return;
    };
    let a = user(&h, "alice", 1).await;
    let relay = |n: usize| format!("relay-{n}.example");
    // relay-0 has a backlog of three, then relay-1..relay-9 one each, each
    // accepted (so due) a millisecond after the one before.
    let mut n = 0u8;
    for r in [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9] {
        n += 1;
        let to = [(remote("x", &relay(r)), DeviceId(1))];
        h.relay
            .accept_message(a.authed(), message(id(n), &to, b"m"))
            .await
            .unwrap();
        h.clock.advance(1);
    }
    let store = h.relay.store();
    let now = h.relay.now_ms();
    let names = |due: &crate::store::OutboxDue| {
        due.destinations
            .iter()
            .map(|d| (d.relay.to_string(), d.pending))
            .collect::<Vec<_>>()
    };
    let due = store.outbox_due(now, 1000, 4).await.unwrap();
    assert_eq!(
        names(&due),
        [(relay(0), 3), (relay(1), 1), (relay(2), 1), (relay(3), 1)]
    );
    assert_eq!(due.next_due_ms, None);
    // The scan stops after `entries_max` due entries.
    let due = store.outbox_due(now, 4, 100).await.unwrap();
    assert_eq!(names(&due), [(relay(0), 3), (relay(1), 1)]);

    // relay-0's backlog backs off, relay-1's entry is leased: neither due.
    let r0 = RelayName::parse(&relay(0)).unwrap();
    let mut backoff = u64::MAX;
    for entry in h.relay.outbox_take_batch(&r0, 10).await.unwrap() {
        backoff = backoff.min(h.relay.outbox_reschedule(&entry).await.unwrap());
    }
    let r1 = RelayName::parse(&relay(1)).unwrap();
    assert_eq!(h.relay.outbox_take_batch(&r1, 10).await.unwrap().len(), 1);
    let due = store.outbox_due(now, 1000, 3).await.unwrap();
    assert_eq!(names(&due), [(relay(2), 1), (relay(3), 1), (relay(4), 1)]);
    assert_eq!(due.next_due_ms, Some(now + 10_000), "the lease ends first");
    assert!(backoff > now + 10_000);

    // Past every message's expiry nothing is due, however long it waited.
    let later = now + 3_600_000 + 1;
    let due = store.outbox_due(later, 1000, 100).await.unwrap();
    assert!(due.destinations.is_empty(), "{:?}", due.destinations);
}

/// The batched path (concurrent sends in one transaction) holds the share
/// as exactly as the one-by-one path.
pub async fn concurrent_sends_over_a_share_are_refused_exactly_beyond_it(stores: &dyn Stores) {
    let Some(h) = Harness::with(stores, |c| c.mailbox_per_source_max = 5).await else {
        return;
    };
    let b = user(&h, "bob", 2).await;
    let m = user(&h, "mallory", 4).await;
    let a = user(&h, "alice", 1).await;
    let to_b = [(b.address(), b.device)];
    let sends = (0..20).map(|n| {
        let relay = h.relay.clone();
        let who = if n % 4 == 3 {
            a.authed().clone()
        } else {
            m.authed().clone()
        };
        let msg = message(id(n), &to_b, b"junk");
        async move { (n % 4 == 3, relay.accept_message(&who, msg).await) }
    });
    let results = futures::future::join_all(sends).await;
    let mut mallory_ok = 0;
    for (from_alice, r) in results {
        match (from_alice, r) {
            (true, r) => assert!(r.is_ok(), "alice is never refused: {r:?}"),
            (false, Ok(_)) => mallory_ok += 1,
            (false, Err(e)) => assert_eq!(e.code(), ErrorCode::MailboxQuota),
        }
    }
    assert_eq!(mallory_ok, 5);
    assert_eq!(
        h.relay
            .fetch(b.authed(), 0, 50)
            .await
            .unwrap()
            .envelopes
            .len(),
        10
    );
}

/// Bytes: a source's share and the whole mailbox are bounded in size as
/// well as in entries (one huge-message flood pins as well as many small).
pub async fn a_sources_share_and_the_mailbox_are_bounded_in_bytes_too(stores: &dyn Stores) {
    let Some(h) = Harness::with(stores, |c| {
        c.mailbox_per_source_bytes_max = 2 * (1000 + 8);
        c.mailbox_bytes_max = 5 * (1000 + 8);
    })
    .await
    else {
        return;
    };
    let b = user(&h, "bob", 2).await;
    let to_b = [(b.address(), b.device)];
    let big = vec![7u8; 1000];
    let mut senders = Vec::new();
    for (n, name) in ["s0", "s1", "s2"].iter().enumerate() {
        senders.push(user(&h, name, 10 + n as u8).await);
    }
    for n in 0..2 {
        h.relay
            .accept_message(senders[0].authed(), message(id(n), &to_b, &big))
            .await
            .unwrap();
    }
    let r = h
        .relay
        .accept_message(senders[0].authed(), message(id(2), &to_b, &big))
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::MailboxQuota);
    for n in 0..2 {
        h.relay
            .accept_message(senders[1].authed(), message(id(10 + n), &to_b, &big))
            .await
            .unwrap();
    }
    h.relay
        .accept_message(senders[2].authed(), message(id(20), &to_b, &big))
        .await
        .unwrap();
    // Five big entries: the mailbox is full in bytes for everyone.
    let r = h
        .relay
        .accept_message(senders[2].authed(), message(id(21), &to_b, &big))
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::MailboxFull);
    let f = h.relay.fetch(b.authed(), 0, 10).await.unwrap();
    h.relay
        .ack(b.authed(), &[f.envelopes[0].seq])
        .await
        .unwrap();
    h.relay
        .accept_message(senders[2].authed(), message(id(21), &to_b, &big))
        .await
        .unwrap();
    // The mailbox is exactly full again: even a small entry is refused.
    let r = h
        .relay
        .accept_message(senders[0].authed(), message(id(2), &to_b, b"small"))
        .await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::MailboxFull);
}
