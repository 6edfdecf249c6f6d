//! Codec properties for every wire type: round trips through both codecs,
//! and every malformed, truncated, oversized or wrong-version input is an
//! error (never a panic).

use std::fmt::Debug;

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::*;
use crate::codec::{CodecError, binary, json};
use crate::federation::*;
use crate::strategies as s;
use crate::validate::Validate;
use crate::ws::{ClientFrame, ServerFrame};
use crate::*;

/// How a type's JSON object treats fields it does not know.
#[derive(Clone, Copy, PartialEq)]
enum Unknown {
    /// Request types: an unknown field is an error.
    Deny,
    /// Response types: an unknown field is ignored (a newer relay may add it).
    Ignore,
    /// Not a JSON object.
    NotObject,
}

fn check_codecs<T>(value: &T, unknown: Unknown)
where
    T: Serialize + DeserializeOwned + Validate + PartialEq + Debug,
{
    assert_eq!(value.validate(), Ok(()), "strategy made an invalid value");

    // Round trips.
    let j = json::encode(value).unwrap();
    assert_eq!(
        &json::decode_with_limit::<T>(&j, usize::MAX).unwrap(),
        value
    );
    let b = binary::encode(value).unwrap();
    assert_eq!(b[0], binary::VERSION);
    assert_eq!(
        &binary::decode_with_limit::<T>(&b, usize::MAX).unwrap(),
        value
    );

    // Oversized: one byte over the limit is refused before parsing.
    assert_eq!(
        json::decode_with_limit::<T>(&j, j.len() - 1),
        Err(CodecError::TooLarge {
            len: j.len(),
            max: j.len() - 1
        })
    );
    assert_eq!(
        binary::decode_with_limit::<T>(&b, b.len() - 1),
        Err(CodecError::TooLarge {
            len: b.len(),
            max: b.len() - 1
        })
    );

    // Wrong version, empty frame, trailing bytes.
    for version in [0u8, 2, 0x7f, 0xff] {
        let mut other = b.clone();
        other[0] = version;
        assert_eq!(
            binary::decode::<T>(&other),
            Err(CodecError::UnsupportedVersion(version))
        );
        assert_eq!(
            binary::decode::<T>(&other).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
    }
    assert_eq!(binary::decode::<T>(&[]), Err(CodecError::Empty));
    let mut trailing = b.clone();
    trailing.push(0);
    assert!(matches!(
        binary::decode::<T>(&trailing),
        Err(CodecError::Malformed(_))
    ));
    let mut trailing = j.clone();
    trailing.extend_from_slice(b" x");
    assert!(matches!(
        json::decode::<T>(&trailing),
        Err(CodecError::Malformed(_))
    ));

    // Malformed: not JSON at all; a version byte with nothing after it; an
    // overlong varint where the first field starts.
    for junk in [&b"not json"[..], b"[1", b"\xff\xfe", b"{\"a\":"] {
        assert!(
            matches!(json::decode::<T>(junk), Err(CodecError::Malformed(_))),
            "{junk:?}"
        );
    }
    let mut overlong = vec![binary::VERSION];
    overlong.extend_from_slice(&[0xff; 10]);
    overlong.push(0x7f);
    for junk in [&[binary::VERSION][..], &overlong] {
        assert!(
            matches!(binary::decode::<T>(junk), Err(CodecError::Malformed(_))),
            "{junk:?}"
        );
    }

    // Truncated: no strict prefix of a binary frame decodes, because the
    // decoder consumes exactly the bytes of one value.
    for cut in prefix_lengths(b.len()) {
        let r = binary::decode::<T>(&b[..cut]);
        assert!(r.is_err(), "binary prefix of {cut} bytes decoded: {r:?}");
    }

    if unknown != Unknown::NotObject {
        for cut in prefix_lengths(j.len()) {
            let r = json::decode::<T>(&j[..cut]);
            assert!(
                matches!(r, Err(CodecError::Malformed(_))),
                "JSON prefix of {cut} bytes: {r:?}"
            );
        }
        // A field this version does not know, appended to the object.
        let mut extended = j[..j.len() - 1].to_vec();
        if extended.len() > 1 {
            extended.push(b',');
        }
        extended.extend_from_slice(br#""zz_added_later":[1,{"a":null}]}"#);
        let r = json::decode::<T>(&extended);
        match unknown {
            Unknown::Deny => assert!(matches!(r, Err(CodecError::Malformed(_))), "{r:?}"),
            Unknown::Ignore => assert_eq!(r.as_ref(), Ok(value)),
            Unknown::NotObject => {}
        }
    }
}

/// Every length up to 64, then a spread of longer ones and the last 8, so
/// large values stay fast to check.
fn prefix_lengths(len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..len.min(64)).collect();
    cuts.extend((64..len).step_by(len / 32 + 1));
    cuts.extend(len.saturating_sub(8)..len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Flips bytes of a valid frame: the decoder may accept or refuse, never
/// panic, and anything it accepts is stable under re-encoding.
fn check_mutations<T>(value: &T, flips: &[(usize, u8)])
where
    T: Serialize + DeserializeOwned + Validate + PartialEq + Debug,
{
    for encoded in [binary::encode(value).unwrap(), json::encode(value).unwrap()] {
        let mut mutated = encoded.clone();
        for &(at, x) in flips {
            let i = at % mutated.len();
            mutated[i] ^= x;
        }
        if let Ok(v) = binary::decode::<T>(&mutated) {
            let again = binary::encode(&v).unwrap();
            assert_eq!(binary::decode::<T>(&again).unwrap(), v);
        }
        if let Ok(v) = json::decode::<T>(&mutated) {
            let again = json::encode(&v).unwrap();
            assert_eq!(json::decode::<T>(&again).unwrap(), v);
        }
    }
}

macro_rules! wire_types {
    ($($name:ident: $ty:ty = $strategy:expr, $unknown:ident;)*) => {
        $(
            mod $name {
                use super::*;

                proptest! {
                    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

                    #[test]
                    fn round_trips_and_rejects_bad_input(value in $strategy) {
                        check_codecs::<$ty>(&value, Unknown::$unknown);
                    }

                    #[test]
                    fn mutated_input_never_panics(
                        value in $strategy,
                        flips in proptest::collection::vec((any::<usize>(), 1u8..), 1..4),
                    ) {
                        check_mutations::<$ty>(&value, &flips);
                    }
                }
            }
        )*

        /// The list above names every type the crate puts on the wire.
        const WIRE_TYPE_NAMES: &[&str] = &[$(stringify!($ty)),*];
    };
}

wire_types! {
    address: Address = s::address(), NotObject;
    username: Username = s::username(), NotObject;
    relay_name: RelayName = s::relay_name(), NotObject;
    device_id: DeviceId = s::device_id(), NotObject;
    envelope_id: EnvelopeId = s::envelope_id(), NotObject;
    bytes: Bytes = s::bytes(64), NotObject;
    error_code: ErrorCode = s::error_code(), NotObject;
    api_error: ApiError = s::api_error(), Ignore;
    error_body: ErrorBody = s::error_body(), Ignore;
    recipient_entry: RecipientEntry = s::recipient_entry(), Deny;
    outgoing_message: OutgoingMessage = s::outgoing_message(), Deny;
    device_keys: DeviceKeys = s::device_keys(), Deny;
    signed_prekey: SignedPreKey = s::signed_prekey(), Deny;
    one_time_prekey: OneTimePreKey = s::one_time_prekey(), Deny;
    device_list_entry: DeviceListEntry = s::device_list_entry(), Deny;
    device_list: DeviceList = s::device_list(), Deny;
    signed_device_list: SignedDeviceList = s::signed_device_list(), Deny;
    registration_policy: RegistrationPolicy = s::registration_policy(), NotObject;
    relay_info: RelayInfo = s::relay_info(), Ignore;
    register_request: RegisterRequest = s::register_request(), Deny;
    register_response: RegisterResponse = s::register_response(), Ignore;
    challenge_request: ChallengeRequest = s::challenge_request(), Deny;
    challenge_response: ChallengeResponse = s::challenge_response(), Ignore;
    login_request: LoginRequest = s::login_request(), Deny;
    token_response: TokenResponse = s::token_response(), Ignore;
    refresh_request: RefreshRequest = s::refresh_request(), Deny;
    link_request: LinkRequest = s::link_request(), Deny;
    link_response: LinkResponse = s::link_response(), Ignore;
    link_info: LinkInfo = s::link_info(), Ignore;
    approve_link_request: ApproveLinkRequest = s::approve_link_request(), Deny;
    approve_link_response: ApproveLinkResponse = s::approve_link_response(), Ignore;
    link_status_query: LinkStatusQuery = s::link_status_query(), Deny;
    link_status: LinkStatus = s::link_status(), Ignore;
    upload_one_time_prekeys: UploadOneTimePreKeys = s::upload_one_time_prekeys(), Deny;
    prekey_count: PreKeyCount = s::prekey_count(), Ignore;
    key_bundle_query: KeyBundleQuery = s::key_bundle_query(), Deny;
    device_bundle: DeviceBundle = s::device_bundle(), Ignore;
    key_bundle_response: KeyBundleResponse = s::key_bundle_response(), Ignore;
    send_response: SendResponse = s::send_response(), Ignore;
    fetch_query: FetchQuery = s::fetch_query(), Deny;
    envelope_kind: EnvelopeKind = s::envelope_kind(), NotObject;
    envelope: Envelope = s::envelope(), Ignore;
    failed_recipient: FailedRecipient = s::failed_recipient(), Ignore;
    delivery_failure_notice: DeliveryFailureNotice = s::delivery_failure_notice(), Ignore;
    fetch_response: FetchResponse = s::fetch_response(), Ignore;
    ack_request: AckRequest = s::ack_request(), Deny;
    ack_response: AckResponse = s::ack_response(), Ignore;
    server_frame: ServerFrame = s::server_frame(), Ignore;
    client_frame: ClientFrame = s::client_frame(), Deny;
    relay_descriptor: RelayDescriptor = s::relay_descriptor(), Deny;
    signed_descriptor: SignedDescriptor = s::signed_descriptor(), Deny;
    hello: Hello = s::hello(), Deny;
    bundle_request: BundleRequest = s::bundle_request(), Deny;
    bundle_response: BundleResponse = s::bundle_response(), NotObject;
    fed_recipient: FedRecipient = s::fed_recipient(), Deny;
    fed_envelope: FedEnvelope = s::fed_envelope(), Deny;
    delivery_batch: DeliveryBatch = s::delivery_batch(), Deny;
    ack_status: AckStatus = s::ack_status(), NotObject;
    envelope_ack: EnvelopeAck = s::envelope_ack(), Deny;
    delivery_acks: DeliveryAcks = s::delivery_acks(), Deny;
}

#[test]
fn every_public_wire_type_is_covered() {
    // Every `pub struct`, `pub enum` and `pub type` in the wire modules must
    // have a line in `wire_types!`, so a new type cannot skip these checks.
    let sources = [
        include_str!("address.rs"),
        include_str!("api.rs"),
        include_str!("bytes.rs"),
        include_str!("error.rs"),
        include_str!("federation.rs"),
        include_str!("ids.rs"),
        include_str!("message.rs"),
        include_str!("ws.rs"),
    ];
    let not_on_wire = ["AddressError", "EnvelopeIdError"];
    let mut declared = Vec::new();
    for source in sources {
        for line in source.lines() {
            let line = line.trim_start();
            for keyword in ["pub struct ", "pub enum ", "pub type "] {
                if let Some(rest) = line.strip_prefix(keyword) {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && !not_on_wire.contains(&name.as_str()) {
                        declared.push(name);
                    }
                }
            }
        }
    }
    assert!(declared.len() > 50, "parsed only {declared:?}");
    for name in &declared {
        assert!(
            WIRE_TYPE_NAMES.contains(&name.as_str()),
            "{name} has no codec property test"
        );
    }
}
