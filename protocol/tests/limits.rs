//! Every limit a decoder enforces, pinned at the boundary: the largest
//! allowed value decodes, one more is refused with the documented code.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use courier_protocol::api::*;
use courier_protocol::codec::{CodecError, binary, json};
use courier_protocol::federation::*;
use courier_protocol::limits::*;
use courier_protocol::ws::ClientFrame;
use courier_protocol::*;

fn key(len: usize) -> Bytes {
    Bytes(vec![7; len])
}

fn address() -> Address {
    Address::parse("alice@relay-a.example").unwrap()
}

fn fed_envelope(id: u8, recipients: usize) -> FedEnvelope {
    FedEnvelope {
        id: EnvelopeId([id; 16]),
        body: Bytes(vec![1; 10]),
        recipients: (0..recipients)
            .map(|i| FedRecipient {
                user: Username::parse("bob").unwrap(),
                device: DeviceId(i as u32),
                header: Bytes(vec![2; 4]),
            })
            .collect(),
        expires_ms: 1,
        kind: EnvelopeKind::Message,
    }
}

fn batch(envelopes: Vec<FedEnvelope>) -> DeliveryBatch {
    DeliveryBatch {
        origin: RelayName::parse("relay-a.example").unwrap(),
        envelopes,
    }
}

fn outgoing(recipients: usize) -> OutgoingMessage {
    OutgoingMessage {
        id: EnvelopeId([1; 16]),
        body: Bytes(vec![1; 10]),
        recipients: (0..recipients)
            .map(|i| RecipientEntry {
                to: address(),
                device: DeviceId(i as u32),
                header: Bytes(vec![2; 4]),
            })
            .collect(),
        ttl_secs: 60,
    }
}

/// The binary decoder's verdict on a value.
fn binary_verdict<T>(value: &T) -> Result<(), ErrorCode>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Validate,
{
    let bytes = binary::encode(value).unwrap();
    binary::decode::<T>(&bytes)
        .map(|_| ())
        .map_err(|e| e.code())
}

/// The JSON decoder's verdict on a value.
fn json_verdict<T>(value: &T) -> Result<(), ErrorCode>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Validate,
{
    let bytes = json::encode(value).unwrap();
    json::decode::<T>(&bytes).map(|_| ()).map_err(|e| e.code())
}

#[test]
fn batch_of_max_envelopes_is_accepted_and_one_more_is_too_large() {
    let full: Vec<_> = (0..BATCH_ENVELOPES_MAX)
        .map(|i| {
            let mut e = fed_envelope(0, 1);
            e.id = EnvelopeId::new(i as u64, [0; 10]);
            e
        })
        .collect();
    assert_eq!(binary_verdict(&batch(full.clone())), Ok(()));
    let mut over = full;
    let mut extra = fed_envelope(0, 1);
    extra.id = EnvelopeId([0xff; 16]);
    over.push(extra);
    assert_eq!(
        binary_verdict(&batch(over)),
        Err(ErrorCode::PayloadTooLarge)
    );
}

#[test]
fn empty_batch_and_duplicate_envelope_ids_are_bad_requests() {
    assert_eq!(binary_verdict(&batch(vec![])), Err(ErrorCode::BadRequest));
    assert_eq!(
        binary_verdict(&batch(vec![fed_envelope(3, 1), fed_envelope(3, 1)])),
        Err(ErrorCode::BadRequest)
    );
}

#[test]
fn recipients_are_limited_in_messages_and_federation_envelopes() {
    assert_eq!(json_verdict(&outgoing(RECIPIENTS_MAX)), Ok(()));
    assert_eq!(
        json_verdict(&outgoing(RECIPIENTS_MAX + 1)),
        Err(ErrorCode::TooManyRecipients)
    );
    assert_eq!(json_verdict(&outgoing(0)), Err(ErrorCode::BadRequest));
    assert_eq!(
        binary_verdict(&batch(vec![fed_envelope(1, RECIPIENTS_MAX)])),
        Ok(())
    );
    assert_eq!(
        binary_verdict(&batch(vec![fed_envelope(1, RECIPIENTS_MAX + 1)])),
        Err(ErrorCode::TooManyRecipients)
    );
    assert_eq!(
        binary_verdict(&batch(vec![fed_envelope(1, 0)])),
        Err(ErrorCode::BadRequest)
    );
}

#[test]
fn a_recipient_device_named_twice_is_a_bad_request() {
    let mut m = outgoing(2);
    m.recipients[1].device = m.recipients[0].device;
    assert_eq!(json_verdict(&m), Err(ErrorCode::BadRequest));
    let mut e = fed_envelope(1, 2);
    e.recipients[1].device = e.recipients[0].device;
    assert_eq!(binary_verdict(&batch(vec![e])), Err(ErrorCode::BadRequest));
}

#[test]
fn body_and_header_sizes_are_limited() {
    let mut e = fed_envelope(1, 1);
    e.body = Bytes(vec![0; BODY_BYTES_MAX]);
    e.recipients[0].header = Bytes(vec![0; HEADER_BYTES_MAX]);
    assert_eq!(binary_verdict(&batch(vec![e.clone()])), Ok(()));
    let mut big_body = e.clone();
    big_body.body.0.push(0);
    assert_eq!(
        binary_verdict(&batch(vec![big_body])),
        Err(ErrorCode::PayloadTooLarge)
    );
    let mut big_header = e;
    big_header.recipients[0].header.0.push(0);
    assert_eq!(
        binary_verdict(&batch(vec![big_header])),
        Err(ErrorCode::PayloadTooLarge)
    );

    let mut m = outgoing(1);
    m.body = Bytes(vec![0; BODY_BYTES_MAX + 1]);
    assert_eq!(json_verdict(&m), Err(ErrorCode::PayloadTooLarge));
    let mut m = outgoing(1);
    m.recipients[0].header = Bytes(vec![0; HEADER_BYTES_MAX + 1]);
    assert_eq!(json_verdict(&m), Err(ErrorCode::PayloadTooLarge));

    let envelope = Envelope {
        seq: 1,
        id: EnvelopeId([0; 16]),
        origin: RelayName::parse("r").unwrap(),
        header: Bytes(vec![]),
        body: Bytes(vec![0; BODY_BYTES_MAX + 1]),
        received_ms: 0,
        expires_ms: 0,
        kind: EnvelopeKind::Message,
    };
    assert_eq!(json_verdict(&envelope), Err(ErrorCode::PayloadTooLarge));
}

#[test]
fn largest_message_fits_the_http_body_and_batch_limits() {
    // One message at every limit at once must still be sendable: it has to
    // fit the gateway's body limit as JSON and one federation batch.
    let long_address = Address::parse(&format!(
        "{}@{}",
        "u".repeat(USERNAME_BYTES_MAX),
        [
            "r".repeat(63),
            "r".repeat(63),
            "r".repeat(63),
            "r".repeat(61)
        ]
        .join(".")
    ))
    .unwrap();
    let mut m = outgoing(RECIPIENTS_MAX);
    m.body = Bytes(vec![0xff; BODY_BYTES_MAX]);
    for r in &mut m.recipients {
        r.to = long_address.clone();
        r.header = Bytes(vec![0xff; HEADER_BYTES_MAX]);
    }
    let json_len = json::encode(&m).unwrap().len();
    assert!(json_len <= HTTP_BODY_BYTES_MAX, "{json_len}");
    assert_eq!(json_verdict(&m), Ok(()));

    let mut e = fed_envelope(1, RECIPIENTS_MAX);
    e.body = Bytes(vec![0xff; BODY_BYTES_MAX]);
    for r in &mut e.recipients {
        r.user = long_address.user.clone();
        r.header = Bytes(vec![0xff; HEADER_BYTES_MAX]);
    }
    let b = batch(vec![e]);
    let len = binary::encode(&b).unwrap().len();
    assert!(len <= BATCH_BYTES_MAX, "{len}");
    assert!(
        binary::decode_with_limit::<DeliveryBatch>(&binary::encode(&b).unwrap(), BATCH_BYTES_MAX)
            .is_ok()
    );
}

#[test]
fn keys_and_signatures_must_have_their_exact_size() {
    let good = DeviceKeys {
        identity_key: key(PUBLIC_KEY_BYTES),
        dh_key: key(PUBLIC_KEY_BYTES),
        dh_key_signature: key(SIGNATURE_BYTES),
    };
    assert_eq!(json_verdict(&good), Ok(()));
    for (field, len, code) in [
        (0, PUBLIC_KEY_BYTES - 1, ErrorCode::BadRequest),
        (0, PUBLIC_KEY_BYTES + 1, ErrorCode::BadRequest),
        (1, 0, ErrorCode::BadRequest),
        (2, SIGNATURE_BYTES - 1, ErrorCode::BadRequest),
        (2, KEY_BYTES_MAX + 1, ErrorCode::PayloadTooLarge),
    ] {
        let mut k = good.clone();
        *[&mut k.identity_key, &mut k.dh_key, &mut k.dh_key_signature][field] = key(len);
        assert_eq!(json_verdict(&k), Err(code), "field {field} len {len}");
        assert_eq!(binary_verdict(&k), Err(code), "field {field} len {len}");
    }
    let prekey = SignedPreKey {
        id: 1,
        public: key(PUBLIC_KEY_BYTES),
        signature: key(SIGNATURE_BYTES - 1),
        created_ms: 0,
    };
    assert_eq!(json_verdict(&prekey), Err(ErrorCode::BadRequest));
    let otk = OneTimePreKey {
        id: 1,
        public: key(33),
    };
    assert_eq!(json_verdict(&otk), Err(ErrorCode::BadRequest));
}

fn device_list(devices: usize) -> SignedDeviceList {
    SignedDeviceList {
        list: DeviceList {
            address: address(),
            version: 1,
            devices: (1..=devices)
                .map(|i| DeviceListEntry {
                    device: DeviceId(i as u32),
                    identity_key: key(32),
                })
                .collect(),
        },
        signer: DeviceId(1),
        signature: key(64),
    }
}

#[test]
fn device_lists_are_limited_and_the_signer_must_be_listed() {
    assert_eq!(json_verdict(&device_list(DEVICES_PER_ACCOUNT_MAX)), Ok(()));
    assert_eq!(
        json_verdict(&device_list(DEVICES_PER_ACCOUNT_MAX + 1)),
        Err(ErrorCode::TooManyDevices)
    );
    let mut unlisted = device_list(2);
    unlisted.signer = DeviceId(3);
    assert_eq!(json_verdict(&unlisted), Err(ErrorCode::BadRequest));
    let mut twice = device_list(2);
    twice.list.devices[1].device = DeviceId(1);
    assert_eq!(json_verdict(&twice), Err(ErrorCode::BadRequest));
    let mut version_zero = device_list(1);
    version_zero.list.version = 0;
    assert_eq!(json_verdict(&version_zero), Err(ErrorCode::BadRequest));
}

#[test]
fn registration_must_carry_a_matching_initial_device_list() {
    let keys = DeviceKeys {
        identity_key: key(32),
        dh_key: key(32),
        dh_key_signature: key(64),
    };
    let good = RegisterRequest {
        username: address().user,
        invite: None,
        device: keys,
        device_list: device_list(1),
    };
    assert_eq!(json_verdict(&good), Ok(()));
    let mut other_user = good.clone();
    other_user.username = Username::parse("mallory").unwrap();
    assert_eq!(json_verdict(&other_user), Err(ErrorCode::BadRequest));
    let mut other_key = good.clone();
    other_key.device.identity_key = key(32).0.iter().map(|b| b ^ 1).collect::<Vec<_>>().into();
    assert_eq!(json_verdict(&other_key), Err(ErrorCode::BadRequest));
    let mut two_devices = good.clone();
    two_devices.device_list = device_list(2);
    assert_eq!(json_verdict(&two_devices), Err(ErrorCode::BadRequest));
    let mut long_invite = good;
    long_invite.invite = Some("x".repeat(CODE_BYTES_MAX + 1));
    assert_eq!(json_verdict(&long_invite), Err(ErrorCode::PayloadTooLarge));
}

#[test]
fn prekey_uploads_are_limited() {
    let upload = |n: usize| UploadOneTimePreKeys {
        prekeys: (0..n)
            .map(|i| OneTimePreKey {
                id: i as u32,
                public: key(32),
            })
            .collect(),
    };
    assert_eq!(
        json_verdict(&upload(ONE_TIME_PREKEYS_PER_UPLOAD_MAX)),
        Ok(())
    );
    assert_eq!(
        json_verdict(&upload(ONE_TIME_PREKEYS_PER_UPLOAD_MAX + 1)),
        Err(ErrorCode::TooManyPrekeys)
    );
    assert_eq!(json_verdict(&upload(0)), Err(ErrorCode::BadRequest));
    let mut dup = upload(2);
    dup.prekeys[1].id = 0;
    assert_eq!(json_verdict(&dup), Err(ErrorCode::BadRequest));
}

#[test]
fn acks_and_fetches_are_limited() {
    let ack = |n: usize| AckRequest {
        seqs: (0..n as u64).collect(),
    };
    assert_eq!(json_verdict(&ack(ACK_SEQS_MAX)), Ok(()));
    assert_eq!(
        json_verdict(&ack(ACK_SEQS_MAX + 1)),
        Err(ErrorCode::PayloadTooLarge)
    );
    assert_eq!(json_verdict(&ack(0)), Err(ErrorCode::BadRequest));
    let frame = ClientFrame::Ack {
        seqs: (0..=ACK_SEQS_MAX as u64).collect(),
    };
    assert_eq!(json_verdict(&frame), Err(ErrorCode::PayloadTooLarge));
    for (limit, verdict) in [
        (Some(0), Err(ErrorCode::BadRequest)),
        (Some(FETCH_LIMIT_MAX as u32), Ok(())),
        (Some(FETCH_LIMIT_MAX as u32 + 1), Err(ErrorCode::BadRequest)),
        (None, Ok(())),
    ] {
        let q = FetchQuery { after: None, limit };
        assert_eq!(json_verdict(&q), verdict, "{limit:?}");
    }
}

#[test]
fn tokens_and_descriptor_texts_are_limited() {
    let r = RefreshRequest {
        refresh_token: "t".repeat(TOKEN_BYTES_MAX + 1),
    };
    assert_eq!(json_verdict(&r), Err(ErrorCode::PayloadTooLarge));
    let r = RefreshRequest {
        refresh_token: String::new(),
    };
    assert_eq!(json_verdict(&r), Err(ErrorCode::BadRequest));

    let d = RelayDescriptor {
        name: RelayName::parse("relay-a.example").unwrap(),
        peer_id: "12D3KooW".into(),
        addresses: vec!["/ip4/127.0.0.1/udp/1/quic-v1".into(); DESCRIPTOR_ADDRESSES_MAX],
        http_url: "http://127.0.0.1:1".into(),
        version: "0.1.0".into(),
        features: vec![features::WIRE_V1.into()],
        issued_ms: 0,
    };
    let signed = |d: RelayDescriptor| SignedDescriptor {
        descriptor: d,
        signature: key(64),
    };
    assert_eq!(binary_verdict(&signed(d.clone())), Ok(()));
    let mut many = d.clone();
    many.addresses.push("x".into());
    assert_eq!(
        binary_verdict(&signed(many)),
        Err(ErrorCode::PayloadTooLarge)
    );
    let mut long = d.clone();
    long.http_url = "h".repeat(DESCRIPTOR_TEXT_BYTES_MAX + 1);
    assert_eq!(
        binary_verdict(&signed(long)),
        Err(ErrorCode::PayloadTooLarge)
    );
    let hello = Hello {
        descriptor: signed(d.clone()),
        known: vec![signed(d); HELLO_KNOWN_MAX + 1],
    };
    assert_eq!(binary_verdict(&hello), Err(ErrorCode::PayloadTooLarge));
}

#[test]
fn a_frame_claiming_a_huge_list_fails_without_allocating_it() {
    // version 1, origin "r", then a list length of 2^62 envelopes and no
    // envelopes: the decoder must fail on the missing bytes, not reserve
    // memory for the claimed count.
    let mut frame = vec![1, 1, b'r'];
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
    assert!(matches!(
        binary::decode::<DeliveryBatch>(&frame),
        Err(CodecError::Malformed(_))
    ));
    // The same for a byte string claiming 2^62 bytes.
    let mut frame = vec![1, 1, b'r', 1, 0];
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
    assert!(binary::decode::<DeliveryBatch>(&frame).is_err());
}

#[test]
fn a_list_far_over_its_limit_is_refused_with_the_precise_code() {
    // 20 000 recipients really present in the frame: decoding keeps only
    // RECIPIENTS_MAX + 1 of them, and validation names the limit.
    let e = fed_envelope(1, 20_000);
    let bytes = binary::encode(&batch(vec![e])).unwrap();
    assert_eq!(
        binary::decode::<DeliveryBatch>(&bytes).unwrap_err().code(),
        ErrorCode::TooManyRecipients
    );
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let junk = vec![b'{'; HTTP_BODY_BYTES_MAX + 1];
    assert_eq!(
        json::decode::<AckRequest>(&junk),
        Err(CodecError::TooLarge {
            len: HTTP_BODY_BYTES_MAX + 1,
            max: HTTP_BODY_BYTES_MAX
        })
    );
    let junk = vec![1u8; FEDERATION_FRAME_BYTES_MAX + 1];
    assert_eq!(
        binary::decode::<Hello>(&junk).unwrap_err().code(),
        ErrorCode::PayloadTooLarge
    );
}

#[test]
fn codec_errors_map_to_stable_codes_and_short_messages() {
    assert_eq!(CodecError::Empty.code(), ErrorCode::Malformed);
    assert_eq!(
        CodecError::Malformed("x".into()).code(),
        ErrorCode::Malformed
    );
    assert_eq!(
        CodecError::UnsupportedVersion(9).code(),
        ErrorCode::UnsupportedVersion
    );
    assert_eq!(
        CodecError::Invalid(ErrorCode::MailboxFull).code(),
        ErrorCode::MailboxFull
    );
    let long = ApiError::from(CodecError::Malformed("é".repeat(2000)));
    assert_eq!(long.code, ErrorCode::Malformed);
    assert!(long.message.len() <= ERROR_MESSAGE_BYTES_MAX);
    assert_eq!(long.validate(), Ok(()));
}

#[test]
fn invalid_addresses_in_requests_are_malformed_with_the_reason() {
    let err = json::decode::<ChallengeRequest>(br#"{"username":"-bad-","device":1}"#).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Malformed);
    assert!(err.to_string().contains("username"), "{err}");
}
