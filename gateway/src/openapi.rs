//! Schemas of the wire types for `/v1/openapi.json`.
//!
//! The wire types live in `courier-protocol`, which does not depend on
//! utoipa, so this module mirrors their JSON shape field for field. The test
//! at the bottom keeps the mirrors honest: an example of each type must
//! decode into the real protocol type and name exactly the mirror's fields.
//! Binary fields are unpadded base64url strings; times are Unix ms.

#![allow(dead_code)]

use utoipa::ToSchema;

/// `courier_protocol::api::RelayInfo`.
#[derive(ToSchema)]
#[schema(as = RelayInfo)]
pub struct RelayInfoDoc {
    /// The relay's name, the part after `@` of its users' addresses.
    name: String,
    version: String,
    /// `open` or `invite`.
    registration: String,
}

/// `courier_protocol::api::DeviceKeys`.
#[derive(ToSchema)]
#[schema(as = DeviceKeys)]
pub struct DeviceKeysDoc {
    identity_key: String,
    dh_key: String,
    dh_key_signature: String,
}

/// `courier_protocol::api::DeviceListEntry`.
#[derive(ToSchema)]
#[schema(as = DeviceListEntry)]
pub struct DeviceListEntryDoc {
    device: u32,
    identity_key: String,
}

/// `courier_protocol::api::DeviceList`.
#[derive(ToSchema)]
#[schema(as = DeviceList)]
pub struct DeviceListDoc {
    /// `user@relay`.
    address: String,
    version: u64,
    devices: Vec<DeviceListEntryDoc>,
}

/// `courier_protocol::api::SignedDeviceList`.
#[derive(ToSchema)]
#[schema(as = SignedDeviceList)]
pub struct SignedDeviceListDoc {
    list: DeviceListDoc,
    signer: u32,
    signature: String,
}

/// `courier_protocol::api::RegisterRequest`.
#[derive(ToSchema)]
#[schema(as = RegisterRequest)]
pub struct RegisterRequestDoc {
    username: String,
    invite: Option<String>,
    device: DeviceKeysDoc,
    device_list: SignedDeviceListDoc,
}

/// `courier_protocol::api::RegisterResponse`.
#[derive(ToSchema)]
#[schema(as = RegisterResponse)]
pub struct RegisterResponseDoc {
    address: String,
    device: u32,
}

/// `courier_protocol::api::ChallengeRequest`.
#[derive(ToSchema)]
#[schema(as = ChallengeRequest)]
pub struct ChallengeRequestDoc {
    username: String,
    device: u32,
}

/// `courier_protocol::api::ChallengeResponse`.
#[derive(ToSchema)]
#[schema(as = ChallengeResponse)]
pub struct ChallengeResponseDoc {
    challenge_id: String,
    nonce: String,
    expires_ms: u64,
}

/// `courier_protocol::api::LoginRequest`.
#[derive(ToSchema)]
#[schema(as = LoginRequest)]
pub struct LoginRequestDoc {
    challenge_id: String,
    signature: String,
}

/// `courier_protocol::api::TokenResponse`.
#[derive(ToSchema)]
#[schema(as = TokenResponse)]
pub struct TokenResponseDoc {
    access_token: String,
    access_expires_ms: u64,
    refresh_token: String,
    refresh_expires_ms: u64,
}

/// `courier_protocol::api::RefreshRequest`.
#[derive(ToSchema)]
#[schema(as = RefreshRequest)]
pub struct RefreshRequestDoc {
    refresh_token: String,
}

/// `courier_protocol::api::LinkRequest`.
#[derive(ToSchema)]
#[schema(as = LinkRequest)]
pub struct LinkRequestDoc {
    username: String,
    device: DeviceKeysDoc,
}

/// `courier_protocol::api::LinkResponse`.
#[derive(ToSchema)]
#[schema(as = LinkResponse)]
pub struct LinkResponseDoc {
    code: String,
    secret: String,
    expires_ms: u64,
}

/// `courier_protocol::api::LinkInfo`.
#[derive(ToSchema)]
#[schema(as = LinkInfo)]
pub struct LinkInfoDoc {
    username: String,
    device: DeviceKeysDoc,
    expires_ms: u64,
}

/// `courier_protocol::api::ApproveLinkRequest`.
#[derive(ToSchema)]
#[schema(as = ApproveLinkRequest)]
pub struct ApproveLinkRequestDoc {
    device_list: SignedDeviceListDoc,
}

/// `courier_protocol::api::ApproveLinkResponse`.
#[derive(ToSchema)]
#[schema(as = ApproveLinkResponse)]
pub struct ApproveLinkResponseDoc {
    device: u32,
}

/// `courier_protocol::api::LinkStatus`.
#[derive(ToSchema)]
#[schema(as = LinkStatus)]
pub struct LinkStatusDoc {
    approved: bool,
    device: Option<u32>,
}

/// `courier_protocol::api::SignedPreKey`.
#[derive(ToSchema)]
#[schema(as = SignedPreKey)]
pub struct SignedPreKeyDoc {
    id: u32,
    public: String,
    signature: String,
    created_ms: u64,
}

/// `courier_protocol::api::OneTimePreKey`.
#[derive(ToSchema)]
#[schema(as = OneTimePreKey)]
pub struct OneTimePreKeyDoc {
    id: u32,
    public: String,
}

/// `courier_protocol::api::UploadOneTimePreKeys`.
#[derive(ToSchema)]
#[schema(as = UploadOneTimePreKeys)]
pub struct UploadOneTimePreKeysDoc {
    prekeys: Vec<OneTimePreKeyDoc>,
}

/// `courier_protocol::api::PreKeyCount`.
#[derive(ToSchema)]
#[schema(as = PreKeyCount)]
pub struct PreKeyCountDoc {
    one_time: u32,
    low_water: u32,
}

/// `courier_protocol::api::DeviceBundle`.
#[derive(ToSchema)]
#[schema(as = DeviceBundle)]
pub struct DeviceBundleDoc {
    device: u32,
    keys: DeviceKeysDoc,
    signed_prekey: SignedPreKeyDoc,
    one_time_prekey: Option<OneTimePreKeyDoc>,
}

/// `courier_protocol::api::KeyBundleResponse`.
#[derive(ToSchema)]
#[schema(as = KeyBundleResponse)]
pub struct KeyBundleResponseDoc {
    address: String,
    device_list: SignedDeviceListDoc,
    bundles: Vec<DeviceBundleDoc>,
}

/// `courier_protocol::RecipientEntry`.
#[derive(ToSchema)]
#[schema(as = RecipientEntry)]
pub struct RecipientEntryDoc {
    to: String,
    device: u32,
    header: String,
}

/// `courier_protocol::OutgoingMessage`.
#[derive(ToSchema)]
#[schema(as = OutgoingMessage)]
pub struct OutgoingMessageDoc {
    /// 32 lowercase hex digits.
    id: String,
    body: String,
    recipients: Vec<RecipientEntryDoc>,
    ttl_secs: u64,
}

/// `courier_protocol::api::SendResponse`.
#[derive(ToSchema)]
#[schema(as = SendResponse)]
pub struct SendResponseDoc {
    id: String,
    accepted_ms: u64,
}

/// `courier_protocol::api::Envelope`.
#[derive(ToSchema)]
#[schema(as = Envelope)]
pub struct EnvelopeDoc {
    seq: u64,
    id: String,
    origin: String,
    header: String,
    body: String,
    received_ms: u64,
    expires_ms: u64,
    /// `message` or `delivery_failure`.
    kind: String,
}

/// `courier_protocol::api::FetchResponse`.
#[derive(ToSchema)]
#[schema(as = FetchResponse)]
pub struct FetchResponseDoc {
    envelopes: Vec<EnvelopeDoc>,
    more: bool,
}

/// `courier_protocol::api::AckRequest`.
#[derive(ToSchema)]
#[schema(as = AckRequest)]
pub struct AckRequestDoc {
    seqs: Vec<u64>,
}

/// `courier_protocol::api::AckResponse`.
#[derive(ToSchema)]
#[schema(as = AckResponse)]
pub struct AckResponseDoc {
    acked: u32,
}

/// `courier_protocol::ApiError`.
#[derive(ToSchema)]
#[schema(as = ApiError)]
pub struct ApiErrorDoc {
    /// A stable code, e.g. `invalid_challenge`.
    code: String,
    message: String,
}

/// `courier_protocol::ErrorBody`: every error response.
#[derive(ToSchema)]
#[schema(as = ErrorBody)]
pub struct ErrorBodyDoc {
    error: ApiErrorDoc,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use courier_protocol::api as wire;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};
    use utoipa::PartialSchema;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;

    use super::*;

    fn fields<T: PartialSchema>() -> BTreeSet<String> {
        match T::schema() {
            RefOr::T(Schema::Object(object)) => object.properties.keys().cloned().collect(),
            _ => panic!("not an object schema"),
        }
    }

    /// `example` decodes as `Real` and names exactly `Doc`'s fields.
    fn check<Doc: PartialSchema, Real: DeserializeOwned>(example: Value) {
        let keys: BTreeSet<String> = example.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, fields::<Doc>(), "fields of {example}");
        serde_json::from_value::<Real>(example.clone())
            .unwrap_or_else(|e| panic!("{e}: {example}"));
    }

    #[test]
    fn mirrors_name_exactly_the_fields_of_the_wire_types() {
        let k = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let sig = "A".repeat(86);
        let keys = json!({"identity_key": k, "dh_key": k, "dh_key_signature": sig});
        let entry = json!({"device": 1, "identity_key": k});
        let list = json!({"address": "alice@localhost", "version": 1, "devices": [entry]});
        let signed = json!({"list": list, "signer": 1, "signature": sig});
        let spk = json!({"id": 1, "public": k, "signature": sig, "created_ms": 1});
        let otk = json!({"id": 2, "public": k});
        let bundle =
            json!({"device": 1, "keys": keys, "signed_prekey": spk, "one_time_prekey": otk});
        let id = "ab".repeat(16);
        let envelope = json!({"seq": 1, "id": id, "origin": "localhost", "header": "AA",
            "body": "AA", "received_ms": 1, "expires_ms": 2, "kind": "message"});

        check::<RelayInfoDoc, wire::RelayInfo>(
            json!({"name": "localhost", "version": "0.1.0", "registration": "invite"}),
        );
        check::<DeviceKeysDoc, wire::DeviceKeys>(keys.clone());
        check::<DeviceListEntryDoc, wire::DeviceListEntry>(entry);
        check::<DeviceListDoc, wire::DeviceList>(list);
        check::<SignedDeviceListDoc, wire::SignedDeviceList>(signed.clone());
        check::<RegisterRequestDoc, wire::RegisterRequest>(
            json!({"username": "alice", "invite": null, "device": keys, "device_list": signed}),
        );
        check::<RegisterResponseDoc, wire::RegisterResponse>(
            json!({"address": "alice@localhost", "device": 1}),
        );
        check::<ChallengeRequestDoc, wire::ChallengeRequest>(
            json!({"username": "alice", "device": 1}),
        );
        check::<ChallengeResponseDoc, wire::ChallengeResponse>(
            json!({"challenge_id": "c", "nonce": k, "expires_ms": 1}),
        );
        check::<LoginRequestDoc, wire::LoginRequest>(
            json!({"challenge_id": "c", "signature": sig}),
        );
        check::<TokenResponseDoc, wire::TokenResponse>(json!({"access_token": "a",
            "access_expires_ms": 1, "refresh_token": "r", "refresh_expires_ms": 2}));
        check::<RefreshRequestDoc, wire::RefreshRequest>(json!({"refresh_token": "r"}));
        check::<LinkRequestDoc, wire::LinkRequest>(json!({"username": "alice", "device": keys}));
        check::<LinkResponseDoc, wire::LinkResponse>(
            json!({"code": "C", "secret": "s", "expires_ms": 1}),
        );
        check::<LinkInfoDoc, wire::LinkInfo>(
            json!({"username": "alice", "device": keys, "expires_ms": 1}),
        );
        check::<ApproveLinkRequestDoc, wire::ApproveLinkRequest>(json!({"device_list": signed}));
        check::<ApproveLinkResponseDoc, wire::ApproveLinkResponse>(json!({"device": 2}));
        check::<LinkStatusDoc, wire::LinkStatus>(json!({"approved": true, "device": 2}));
        check::<SignedPreKeyDoc, wire::SignedPreKey>(spk);
        check::<OneTimePreKeyDoc, wire::OneTimePreKey>(otk.clone());
        check::<UploadOneTimePreKeysDoc, wire::UploadOneTimePreKeys>(json!({"prekeys": [otk]}));
        check::<PreKeyCountDoc, wire::PreKeyCount>(json!({"one_time": 1, "low_water": 20}));
        check::<DeviceBundleDoc, wire::DeviceBundle>(bundle.clone());
        check::<KeyBundleResponseDoc, wire::KeyBundleResponse>(
            json!({"address": "alice@localhost", "device_list": signed, "bundles": [bundle]}),
        );
        let recipient = json!({"to": "bob@localhost", "device": 1, "header": "AA"});
        check::<RecipientEntryDoc, courier_protocol::RecipientEntry>(recipient.clone());
        check::<OutgoingMessageDoc, courier_protocol::OutgoingMessage>(
            json!({"id": id, "body": "AA", "recipients": [recipient], "ttl_secs": 60}),
        );
        check::<SendResponseDoc, wire::SendResponse>(json!({"id": id, "accepted_ms": 1}));
        check::<EnvelopeDoc, wire::Envelope>(envelope.clone());
        check::<FetchResponseDoc, wire::FetchResponse>(
            json!({"envelopes": [envelope], "more": false}),
        );
        check::<AckRequestDoc, wire::AckRequest>(json!({"seqs": [1]}));
        check::<AckResponseDoc, wire::AckResponse>(json!({"acked": 1}));
        let error = json!({"code": "malformed", "message": "m"});
        check::<ApiErrorDoc, courier_protocol::ApiError>(error.clone());
        check::<ErrorBodyDoc, courier_protocol::ErrorBody>(json!({"error": error}));
    }
}
