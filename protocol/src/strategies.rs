//! Proptest strategies for every wire type. Each produces values that pass
//! [`crate::Validate`], so they survive a decode; sizes are kept small so
//! property tests stay fast. Enabled in this crate's tests and, for other
//! crates, with the `proptest` feature.

#![allow(missing_docs)] // Each strategy is named after the type it yields.

use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use crate::api::*;
use crate::federation::*;
use crate::limits::{MESSAGE_TTL_SECS_MAX, PUBLIC_KEY_BYTES, SIGNATURE_BYTES};
use crate::ws::{ClientFrame, ServerFrame};
use crate::{
    Address, ApiError, Bytes, DeviceId, EnvelopeId, ErrorBody, ErrorCode, OutgoingMessage,
    RecipientEntry, RelayName, Username,
};

pub fn username() -> impl Strategy<Value = Username> {
    "[a-z0-9]([a-z0-9._-]{0,30}[a-z0-9])?"
        .prop_filter_map("valid username", |s| Username::parse(&s).ok())
}

pub fn relay_name() -> impl Strategy<Value = RelayName> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,3}"
        .prop_filter_map("valid relay name", |s| RelayName::parse(&s).ok())
}

pub fn address() -> impl Strategy<Value = Address> {
    (username(), relay_name()).prop_map(|(u, r)| Address::new(u, r))
}

pub fn device_id() -> impl Strategy<Value = DeviceId> {
    prop_oneof![1u32..=16, any::<u32>()].prop_map(DeviceId)
}

pub fn envelope_id() -> impl Strategy<Value = EnvelopeId> {
    any::<[u8; 16]>().prop_map(EnvelopeId)
}

/// 0..=`max` arbitrary bytes.
pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes)
}

/// Exactly `len` arbitrary bytes.
pub fn bytes_exact(len: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), len).prop_map(Bytes)
}

pub fn public_key() -> impl Strategy<Value = Bytes> {
    bytes_exact(PUBLIC_KEY_BYTES)
}

pub fn signature() -> impl Strategy<Value = Bytes> {
    bytes_exact(SIGNATURE_BYTES)
}

/// Opaque token text (ids, tokens, secrets, codes).
pub fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,40}"
}

/// Free text, including non-ASCII and characters JSON must escape.
pub fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}|[\"\\\\\n\t\u{0}]{0,4}"
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(ErrorCode::ALL)
}

pub fn api_error() -> impl Strategy<Value = ApiError> {
    (error_code(), text()).prop_map(|(code, message)| ApiError { code, message })
}

pub fn error_body() -> impl Strategy<Value = ErrorBody> {
    api_error().prop_map(|error| ErrorBody { error })
}

pub fn device_keys() -> impl Strategy<Value = DeviceKeys> {
    (public_key(), public_key(), signature()).prop_map(|(identity_key, dh_key, sig)| DeviceKeys {
        identity_key,
        dh_key,
        dh_key_signature: sig,
    })
}

pub fn signed_prekey() -> impl Strategy<Value = SignedPreKey> {
    (any::<u32>(), public_key(), signature(), any::<u64>()).prop_map(
        |(id, public, signature, created_ms)| SignedPreKey {
            id,
            public,
            signature,
            created_ms,
        },
    )
}

pub fn one_time_prekey() -> impl Strategy<Value = OneTimePreKey> {
    (any::<u32>(), public_key()).prop_map(|(id, public)| OneTimePreKey { id, public })
}

pub fn device_list_entry() -> impl Strategy<Value = DeviceListEntry> {
    (device_id(), public_key()).prop_map(|(device, identity_key)| DeviceListEntry {
        device,
        identity_key,
    })
}

/// A device list for `address` with unique device ids.
pub fn device_list_for(address: Address) -> impl Strategy<Value = DeviceList> {
    (
        1u64..=u64::MAX,
        btree_map(any::<u32>().prop_map(DeviceId), public_key(), 1..=4),
    )
        .prop_map(move |(version, devices)| DeviceList {
            address: address.clone(),
            version,
            devices: devices
                .into_iter()
                .map(|(device, identity_key)| DeviceListEntry {
                    device,
                    identity_key,
                })
                .collect(),
        })
}

pub fn device_list() -> impl Strategy<Value = DeviceList> {
    address().prop_flat_map(device_list_for)
}

/// A signed list for `address` whose signer is one of its devices.
pub fn signed_device_list_for(address: Address) -> impl Strategy<Value = SignedDeviceList> {
    (
        device_list_for(address),
        any::<prop::sample::Index>(),
        signature(),
    )
        .prop_map(|(list, index, signature)| SignedDeviceList {
            signer: index.get(&list.devices).device,
            list,
            signature,
        })
}

pub fn signed_device_list() -> impl Strategy<Value = SignedDeviceList> {
    address().prop_flat_map(signed_device_list_for)
}

pub fn register_request() -> impl Strategy<Value = RegisterRequest> {
    (address(), option::of(token()), device_keys(), signature()).prop_map(
        |(address, invite, device, signature)| RegisterRequest {
            username: address.user.clone(),
            invite,
            device_list: SignedDeviceList {
                list: DeviceList {
                    address,
                    version: 1,
                    devices: vec![DeviceListEntry {
                        device: DeviceId(1),
                        identity_key: device.identity_key.clone(),
                    }],
                },
                signer: DeviceId(1),
                signature,
            },
            device,
        },
    )
}

pub fn register_response() -> impl Strategy<Value = RegisterResponse> {
    (address(), device_id()).prop_map(|(address, device)| RegisterResponse { address, device })
}

pub fn challenge_request() -> impl Strategy<Value = ChallengeRequest> {
    (username(), device_id()).prop_map(|(username, device)| ChallengeRequest { username, device })
}

pub fn challenge_response() -> impl Strategy<Value = ChallengeResponse> {
    (
        token(),
        bytes_exact(crate::limits::NONCE_BYTES),
        any::<u64>(),
    )
        .prop_map(|(challenge_id, nonce, expires_ms)| ChallengeResponse {
            challenge_id,
            nonce,
            expires_ms,
        })
}

pub fn login_request() -> impl Strategy<Value = LoginRequest> {
    (token(), signature()).prop_map(|(challenge_id, signature)| LoginRequest {
        challenge_id,
        signature,
    })
}

pub fn token_response() -> impl Strategy<Value = TokenResponse> {
    (token(), any::<u64>(), token(), any::<u64>()).prop_map(|(a, ae, r, re)| TokenResponse {
        access_token: a,
        access_expires_ms: ae,
        refresh_token: r,
        refresh_expires_ms: re,
    })
}

pub fn refresh_request() -> impl Strategy<Value = RefreshRequest> {
    token().prop_map(|refresh_token| RefreshRequest { refresh_token })
}

pub fn link_request() -> impl Strategy<Value = LinkRequest> {
    (username(), device_keys()).prop_map(|(username, device)| LinkRequest { username, device })
}

pub fn link_response() -> impl Strategy<Value = LinkResponse> {
    (token(), token(), any::<u64>()).prop_map(|(code, secret, expires_ms)| LinkResponse {
        code,
        secret,
        expires_ms,
    })
}

pub fn link_info() -> impl Strategy<Value = LinkInfo> {
    (username(), device_keys(), any::<u64>()).prop_map(|(username, device, expires_ms)| LinkInfo {
        username,
        device,
        expires_ms,
    })
}

pub fn approve_link_request() -> impl Strategy<Value = ApproveLinkRequest> {
    signed_device_list().prop_map(|device_list| ApproveLinkRequest { device_list })
}

pub fn approve_link_response() -> impl Strategy<Value = ApproveLinkResponse> {
    device_id().prop_map(|device| ApproveLinkResponse { device })
}

pub fn link_status_query() -> impl Strategy<Value = LinkStatusQuery> {
    token().prop_map(|secret| LinkStatusQuery { secret })
}

pub fn link_status() -> impl Strategy<Value = LinkStatus> {
    option::of(device_id()).prop_map(|device| LinkStatus {
        approved: device.is_some(),
        device,
    })
}

pub fn upload_one_time_prekeys() -> impl Strategy<Value = UploadOneTimePreKeys> {
    btree_map(any::<u32>(), public_key(), 1..=8).prop_map(|keys| UploadOneTimePreKeys {
        prekeys: keys
            .into_iter()
            .map(|(id, public)| OneTimePreKey { id, public })
            .collect(),
    })
}

pub fn registration_policy() -> impl Strategy<Value = RegistrationPolicy> {
    prop_oneof![
        Just(RegistrationPolicy::Open),
        Just(RegistrationPolicy::Invite)
    ]
}

pub fn relay_info() -> impl Strategy<Value = RelayInfo> {
    (relay_name(), "[0-9a-z.+-]{0,64}", registration_policy()).prop_map(
        |(name, version, registration)| RelayInfo {
            name,
            version,
            registration,
        },
    )
}

pub fn prekey_count() -> impl Strategy<Value = PreKeyCount> {
    (any::<u32>(), any::<u32>()).prop_map(|(one_time, low_water)| PreKeyCount {
        one_time,
        low_water,
    })
}

pub fn key_bundle_query() -> impl Strategy<Value = KeyBundleQuery> {
    option::of(device_id()).prop_map(|device| KeyBundleQuery { device })
}

pub fn device_bundle_for(device: DeviceId) -> impl Strategy<Value = DeviceBundle> {
    (
        device_keys(),
        signed_prekey(),
        option::of(one_time_prekey()),
    )
        .prop_map(move |(keys, signed_prekey, one_time_prekey)| DeviceBundle {
            device,
            keys,
            signed_prekey,
            one_time_prekey,
        })
}

pub fn device_bundle() -> impl Strategy<Value = DeviceBundle> {
    device_id().prop_flat_map(device_bundle_for)
}

pub fn key_bundle_response() -> impl Strategy<Value = KeyBundleResponse> {
    address().prop_flat_map(|address| {
        (
            signed_device_list_for(address.clone()),
            btree_set(any::<u32>(), 0..=3).prop_flat_map(|ids| {
                ids.into_iter()
                    .map(|id| device_bundle_for(DeviceId(id)))
                    .collect::<Vec<_>>()
            }),
        )
            .prop_map(move |(device_list, bundles)| KeyBundleResponse {
                address: address.clone(),
                device_list,
                bundles,
            })
    })
}

pub fn send_response() -> impl Strategy<Value = SendResponse> {
    (envelope_id(), any::<u64>()).prop_map(|(id, accepted_ms)| SendResponse { id, accepted_ms })
}

pub fn fetch_query() -> impl Strategy<Value = FetchQuery> {
    (option::of(any::<u64>()), option::of(1u32..=500))
        .prop_map(|(after, limit)| FetchQuery { after, limit })
}

pub fn envelope_kind() -> impl Strategy<Value = EnvelopeKind> {
    prop_oneof![
        Just(EnvelopeKind::Message),
        Just(EnvelopeKind::DeliveryFailure)
    ]
}

pub fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u64>(),
        envelope_id(),
        relay_name(),
        bytes(96),
        bytes(256),
        any::<u64>(),
        any::<u64>(),
        envelope_kind(),
    )
        .prop_map(
            |(seq, id, origin, header, body, received_ms, expires_ms, kind)| Envelope {
                seq,
                id,
                origin,
                header,
                body,
                received_ms,
                expires_ms,
                kind,
            },
        )
}

pub fn failed_recipient() -> impl Strategy<Value = FailedRecipient> {
    (address(), device_id(), error_code()).prop_map(|(to, device, code)| FailedRecipient {
        to,
        device,
        code,
    })
}

pub fn delivery_failure_notice() -> impl Strategy<Value = DeliveryFailureNotice> {
    (envelope_id(), vec(failed_recipient(), 1..=4))
        .prop_map(|(id, recipients)| DeliveryFailureNotice { id, recipients })
}

pub fn fetch_response() -> impl Strategy<Value = FetchResponse> {
    (vec((1u64..1000, envelope()), 0..=4), any::<bool>()).prop_map(|(items, more)| {
        let mut seq = 0u64;
        let envelopes = items
            .into_iter()
            .map(|(step, mut e)| {
                seq += step;
                e.seq = seq;
                e
            })
            .collect();
        FetchResponse { envelopes, more }
    })
}

pub fn ack_request() -> impl Strategy<Value = AckRequest> {
    vec(any::<u64>(), 1..=16).prop_map(|seqs| AckRequest { seqs })
}

pub fn ack_response() -> impl Strategy<Value = AckResponse> {
    any::<u32>().prop_map(|acked| AckResponse { acked })
}

pub fn recipient_entry() -> impl Strategy<Value = RecipientEntry> {
    (address(), device_id(), bytes(96)).prop_map(|(to, device, header)| RecipientEntry {
        to,
        device,
        header,
    })
}

pub fn outgoing_message() -> impl Strategy<Value = OutgoingMessage> {
    (
        envelope_id(),
        bytes(256),
        vec(recipient_entry(), 1..=4),
        1..=MESSAGE_TTL_SECS_MAX,
    )
        .prop_map(|(id, body, mut recipients, ttl_secs)| {
            recipients.sort_by(|a, b| (&a.to, a.device).cmp(&(&b.to, b.device)));
            recipients.dedup_by(|a, b| a.to == b.to && a.device == b.device);
            OutgoingMessage {
                id,
                body,
                recipients,
                ttl_secs,
            }
        })
}

pub fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        envelope().prop_map(|envelope| ServerFrame::Envelope { envelope }),
        any::<u32>().prop_map(|remaining| ServerFrame::PrekeysLow { remaining }),
        api_error().prop_map(|error| ServerFrame::Error { error }),
        (any::<u64>(), send_response())
            .prop_map(|(request, response)| ServerFrame::Sent { request, response }),
        (any::<u64>(), api_error())
            .prop_map(|(request, error)| ServerFrame::Refused { request, error }),
    ]
}

pub fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        vec(any::<u64>(), 1..=16).prop_map(|seqs| ClientFrame::Ack { seqs }),
        (any::<u64>(), outgoing_message())
            .prop_map(|(request, message)| ClientFrame::Send { request, message }),
    ]
}

pub fn relay_descriptor() -> impl Strategy<Value = RelayDescriptor> {
    (
        relay_name(),
        "12D3KooW[1-9A-HJ-NP-Za-km-z]{44}",
        vec(text(), 0..=3),
        text(),
        text(),
        vec(text(), 0..=3),
        any::<u64>(),
    )
        .prop_map(
            |(name, peer_id, addresses, http_url, version, features, issued_ms)| RelayDescriptor {
                name,
                peer_id,
                addresses,
                http_url,
                version,
                features,
                issued_ms,
            },
        )
}

pub fn signed_descriptor() -> impl Strategy<Value = SignedDescriptor> {
    (relay_descriptor(), signature()).prop_map(|(descriptor, signature)| SignedDescriptor {
        descriptor,
        signature,
    })
}

pub fn hello() -> impl Strategy<Value = Hello> {
    (signed_descriptor(), vec(signed_descriptor(), 0..=3))
        .prop_map(|(descriptor, known)| Hello { descriptor, known })
}

pub fn bundle_request() -> impl Strategy<Value = BundleRequest> {
    (address(), option::of(device_id()))
        .prop_map(|(address, device)| BundleRequest { address, device })
}

pub fn bundle_response() -> impl Strategy<Value = BundleResponse> {
    prop_oneof![
        key_bundle_response().prop_map(Ok),
        api_error().prop_map(Err)
    ]
}

pub fn fed_recipient() -> impl Strategy<Value = FedRecipient> {
    (username(), device_id(), bytes(96)).prop_map(|(user, device, header)| FedRecipient {
        user,
        device,
        header,
    })
}

pub fn fed_envelope() -> impl Strategy<Value = FedEnvelope> {
    (
        envelope_id(),
        bytes(256),
        vec(fed_recipient(), 1..=4),
        any::<u64>(),
        envelope_kind(),
    )
        .prop_map(|(id, body, mut recipients, expires_ms, kind)| {
            recipients.sort_by(|a, b| (&a.user, a.device).cmp(&(&b.user, b.device)));
            recipients.dedup_by(|a, b| a.user == b.user && a.device == b.device);
            FedEnvelope {
                id,
                body,
                recipients,
                expires_ms,
                kind,
            }
        })
}

pub fn delivery_batch() -> impl Strategy<Value = DeliveryBatch> {
    (relay_name(), vec(fed_envelope(), 1..=4)).prop_map(|(origin, mut envelopes)| {
        envelopes.sort_by_key(|e| e.id);
        envelopes.dedup_by_key(|e| e.id);
        DeliveryBatch { origin, envelopes }
    })
}

pub fn ack_status() -> impl Strategy<Value = AckStatus> {
    prop_oneof![
        Just(AckStatus::Accepted),
        Just(AckStatus::Duplicate),
        error_code().prop_map(AckStatus::Rejected),
    ]
}

pub fn envelope_ack() -> impl Strategy<Value = EnvelopeAck> {
    (envelope_id(), ack_status()).prop_map(|(id, status)| EnvelopeAck { id, status })
}

pub fn delivery_acks() -> impl Strategy<Value = DeliveryAcks> {
    vec(envelope_ack(), 0..=6).prop_map(|acks| DeliveryAcks { acks })
}
