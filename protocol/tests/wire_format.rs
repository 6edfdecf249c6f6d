//! Byte-exact examples of both encodings. These are the examples in
//! `docs/protocol.md`; a change here is a wire-format change and needs a
//! version bump, not a test update.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use courier_protocol::api::*;
use courier_protocol::codec::{binary, json};
use courier_protocol::federation::*;
use courier_protocol::ws::{ClientFrame, ServerFrame};
use courier_protocol::*;

fn json_text<T: serde::Serialize>(v: &T) -> String {
    String::from_utf8(json::encode(v).unwrap()).unwrap()
}

#[test]
fn websocket_frames_are_tagged_by_type() {
    let ack = ClientFrame::Ack { seqs: vec![3, 4] };
    assert_eq!(json_text(&ack), r#"{"type":"ack","seqs":[3,4]}"#);
    let low = ServerFrame::PrekeysLow { remaining: 5 };
    assert_eq!(json_text(&low), r#"{"type":"prekeys_low","remaining":5}"#);
    let err = ServerFrame::Error {
        error: ApiError::new(ErrorCode::RateLimited),
    };
    assert_eq!(
        json_text(&err),
        r#"{"type":"error","error":{"code":"rate_limited","message":"too many requests"}}"#
    );
    let envelope = ServerFrame::Envelope {
        envelope: Envelope {
            seq: 7,
            id: EnvelopeId([0xab; 16]),
            origin: RelayName::parse("relay-a.example").unwrap(),
            header: Bytes(vec![0xfb, 0xff]),
            body: Bytes(vec![1, 2, 3]),
            received_ms: 1_700_000_000_000,
            expires_ms: 1_700_000_060_000,
            kind: EnvelopeKind::Message,
        },
    };
    assert_eq!(
        json_text(&envelope),
        concat!(
            r#"{"type":"envelope","envelope":{"seq":7,"id":"abababababababababababababababab","#,
            r#""origin":"relay-a.example","header":"-_8","body":"AQID","#,
            r#""received_ms":1700000000000,"expires_ms":1700000060000,"kind":"message"}}"#
        )
    );
    // The binary form of a frame is externally tagged: variant index first.
    assert_eq!(binary::encode(&ack).unwrap(), [1, 0, 2, 3, 4]);
    assert_eq!(binary::encode(&low).unwrap(), [1, 1, 5]);
}

#[test]
fn an_envelope_without_kind_is_a_message() {
    let text = br#"{"seq":1,"id":"00000000000000000000000000000000","origin":"r","header":"","body":"","received_ms":0,"expires_ms":0}"#;
    let e: Envelope = json::decode(text).unwrap();
    assert_eq!(e.kind, EnvelopeKind::Message);
}

#[test]
fn ack_statuses_and_bundle_results_have_fixed_json_forms() {
    assert_eq!(json_text(&AckStatus::Accepted), r#""accepted""#);
    assert_eq!(json_text(&AckStatus::Duplicate), r#""duplicate""#);
    assert_eq!(
        json_text(&AckStatus::Rejected(ErrorCode::MailboxFull)),
        r#"{"rejected":"mailbox_full"}"#
    );
    let err: BundleResponse = Err(ApiError::new(ErrorCode::UnknownUser));
    assert_eq!(
        json_text(&err),
        r#"{"Err":{"code":"unknown_user","message":"no such user"}}"#
    );
}

#[test]
fn federation_frames_are_version_byte_then_postcard() {
    let request = BundleRequest {
        address: Address::parse("bob@r.example").unwrap(),
        device: Some(DeviceId(300)),
    };
    let mut expected = vec![1, 13];
    expected.extend_from_slice(b"bob@r.example");
    expected.extend_from_slice(&[1, 0xac, 0x02]);
    assert_eq!(binary::encode(&request).unwrap(), expected);

    let acks = DeliveryAcks {
        acks: vec![
            EnvelopeAck {
                id: EnvelopeId([9; 16]),
                status: AckStatus::Accepted,
            },
            EnvelopeAck {
                id: EnvelopeId([8; 16]),
                status: AckStatus::Rejected(ErrorCode::MailboxFull),
            },
        ],
    };
    let mut expected = vec![1, 2];
    expected.extend_from_slice(&[9; 16]);
    expected.push(0);
    expected.extend_from_slice(&[8; 16]);
    expected.extend_from_slice(&[2, 20]);
    assert_eq!(binary::encode(&acks).unwrap(), expected);
}

#[test]
fn error_code_binary_indices_follow_declaration_order() {
    // postcard writes an enum variant as its index: codes may only be
    // appended, never reordered or removed. These are the published indices.
    let published = [
        "bad_request",
        "malformed",
        "payload_too_large",
        "too_many_recipients",
        "unauthenticated",
        "token_expired",
        "invalid_refresh_token",
        "invalid_challenge",
        "invalid_signature",
        "forbidden",
        "not_found",
        "unknown_user",
        "unknown_device",
        "invalid_address",
        "username_taken",
        "invite_required",
        "invalid_invite",
        "invalid_link_code",
        "too_many_devices",
        "too_many_prekeys",
        "mailbox_full",
        "rate_limited",
        "conflict",
        "expired",
        "unknown_relay",
        "relay_unreachable",
        "federation_refused",
        "origin_mismatch",
        "pinned_key_mismatch",
        "unsupported_version",
        "unavailable",
        "internal",
        "uri_too_long",
        "headers_too_large",
        "insufficient_storage",
        "mailbox_quota",
        "envelope_kind_refused",
        "outbox_quota",
        "outbox_full",
        "weak_key",
    ];
    assert!(ErrorCode::ALL.len() >= published.len());
    for (index, text) in published.iter().enumerate() {
        let code = ErrorCode::parse(text).unwrap();
        assert_eq!(ErrorCode::ALL[index], code);
        assert_eq!(binary::encode(&code).unwrap(), [1, index as u8], "{text}");
    }
}

#[test]
fn variant_indices_of_other_enums_are_fixed() {
    assert_eq!(binary::encode(&EnvelopeKind::Message).unwrap(), [1, 0]);
    assert_eq!(
        binary::encode(&EnvelopeKind::DeliveryFailure).unwrap(),
        [1, 1]
    );
    assert_eq!(binary::encode(&AckStatus::Accepted).unwrap(), [1, 0]);
    assert_eq!(binary::encode(&AckStatus::Duplicate).unwrap(), [1, 1]);
    let ok: BundleResponse = Err(ApiError::with_message(ErrorCode::BadRequest, ""));
    assert_eq!(binary::encode(&ok).unwrap(), [1, 1, 0, 0]);
}

#[test]
fn non_minimal_varints_decode_to_the_same_value() {
    // postcard accepts a varint with redundant continuation bytes; values
    // (and therefore signed bytes, which are rebuilt from values) are equal.
    let minimal = binary::decode::<DeviceId>(&[1, 5]).unwrap();
    let padded = binary::decode::<DeviceId>(&[1, 0x85, 0x00]).unwrap();
    assert_eq!(minimal, padded);
}

#[test]
fn bool_and_option_tags_other_than_zero_or_one_are_malformed() {
    // LinkStatus = approved (bool) || device (Option<DeviceId>).
    assert_eq!(
        binary::decode::<LinkStatus>(&[1, 1, 1, 4]).unwrap(),
        LinkStatus {
            approved: true,
            device: Some(DeviceId(4))
        }
    );
    for bad in [[1u8, 2, 1, 4], [1, 1, 2, 4]] {
        assert!(matches!(
            binary::decode::<LinkStatus>(&bad),
            Err(courier_protocol::CodecError::Malformed(_))
        ));
    }
    // An enum index past the last variant.
    assert!(binary::decode::<EnvelopeKind>(&[1, 2]).is_err());
    assert!(binary::decode::<ErrorCode>(&[1, 200, 1]).is_err());
}
