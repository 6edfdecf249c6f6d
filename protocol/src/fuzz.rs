//! Entry points shared by the fuzz targets (`protocol/fuzz/`) and the
//! corpus test (`protocol/tests/corpus.rs`), so both exercise exactly the
//! decoders relays and clients call.
//!
//! Each function feeds untrusted bytes to every decoder of its group and
//! returns how many accepted them. It panics only if the codec itself is
//! inconsistent: a value that decoded must encode, decode again to the same
//! value, and encode to the same bytes the second time. Decoder errors are
//! the expected outcome and are not panics.

use std::fmt::Debug;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::*;
use crate::codec::{binary, json};
use crate::federation::*;
use crate::limits::{FETCH_RESPONSE_BYTES_MAX, WS_FRAME_BYTES_MAX};
use crate::validate::Validate;
use crate::ws::{ClientFrame, ServerFrame};
use crate::{
    Address, Bytes, EnvelopeId, ErrorBody, ErrorCode, OutgoingMessage, RelayName, Username,
};

/// A fuzz target: its name (the directory under `protocol/fuzz/corpus/`)
/// and its entry function.
pub type Target = (&'static str, fn(&[u8]) -> usize);

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    ("json_request", decode_any_json_request),
    ("json_response", decode_any_json_response),
    ("ws_frame", decode_any_ws_frame),
    ("fed_hello", decode_any_fed_hello),
    ("fed_bundle_request", decode_any_fed_bundle_request),
    ("fed_bundle_response", decode_any_fed_bundle_response),
    ("fed_delivery_batch", decode_any_fed_delivery_batch),
    ("fed_delivery_acks", decode_any_fed_delivery_acks),
    ("text", decode_any_text),
];

/// A decoded value survives re-encoding: decode(encode(v)) == v and the
/// encoding is stable.
fn check_stable<T>(value: &T, encode: fn(&T) -> Vec<u8>, decode: fn(&[u8]) -> Option<T>)
where
    T: PartialEq + Debug,
{
    let first = encode(value);
    let again = decode(&first);
    assert_eq!(again.as_ref(), Some(value), "re-decoding changed the value");
    if let Some(again) = again {
        assert_eq!(encode(&again), first, "re-encoding changed the bytes");
    }
}

fn json_one<T>(data: &[u8], limit: usize) -> usize
where
    T: Serialize + DeserializeOwned + Validate + PartialEq + Debug,
{
    let Ok(value) = json::decode_with_limit::<T>(data, limit) else {
        return 0;
    };
    check_stable(
        &value,
        |v| json::encode(v).unwrap_or_default(),
        |b| json::decode_with_limit(b, usize::MAX).ok(),
    );
    // What relays relay, clients may also hold in binary (stores, caches).
    check_stable(
        &value,
        |v| binary::encode(v).unwrap_or_default(),
        |b| binary::decode_with_limit(b, usize::MAX).ok(),
    );
    1
}

fn binary_one<T>(data: &[u8]) -> usize
where
    T: Serialize + DeserializeOwned + Validate + PartialEq + Debug,
{
    let Ok(value) = binary::decode::<T>(data) else {
        return 0;
    };
    check_stable(
        &value,
        |v| binary::encode(v).unwrap_or_default(),
        |b| binary::decode_with_limit(b, usize::MAX).ok(),
    );
    check_stable(
        &value,
        |v| json::encode(v).unwrap_or_default(),
        |b| json::decode_with_limit(b, usize::MAX).ok(),
    );
    1
}

/// Every JSON body a relay decodes from clients.
pub fn decode_any_json_request(data: &[u8]) -> usize {
    json_one::<RegisterRequest>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<ChallengeRequest>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<LoginRequest>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<RefreshRequest>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<LinkRequest>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<ApproveLinkRequest>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<LinkStatusQuery>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<SignedPreKey>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<UploadOneTimePreKeys>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<KeyBundleQuery>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<OutgoingMessage>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<FetchQuery>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<AckRequest>(data, crate::limits::HTTP_BODY_BYTES_MAX)
}

/// Every JSON body a client decodes from its relay.
pub fn decode_any_json_response(data: &[u8]) -> usize {
    json_one::<RegisterResponse>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<ChallengeResponse>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<TokenResponse>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<SignedDeviceList>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<LinkResponse>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<LinkInfo>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<ApproveLinkResponse>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<LinkStatus>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<PreKeyCount>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<KeyBundleResponse>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<SendResponse>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<FetchResponse>(data, FETCH_RESPONSE_BYTES_MAX)
        + json_one::<AckResponse>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<DeliveryFailureNotice>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<ErrorBody>(data, crate::limits::HTTP_BODY_BYTES_MAX)
}

/// WebSocket frames in both directions.
pub fn decode_any_ws_frame(data: &[u8]) -> usize {
    json_one::<ServerFrame>(data, WS_FRAME_BYTES_MAX)
        + json_one::<ClientFrame>(data, WS_FRAME_BYTES_MAX)
}

/// `/courier/fed/1/hello`.
pub fn decode_any_fed_hello(data: &[u8]) -> usize {
    binary_one::<Hello>(data)
}

/// `/courier/fed/1/bundle` requests.
pub fn decode_any_fed_bundle_request(data: &[u8]) -> usize {
    binary_one::<BundleRequest>(data)
}

/// `/courier/fed/1/bundle` responses.
pub fn decode_any_fed_bundle_response(data: &[u8]) -> usize {
    binary_one::<BundleResponse>(data)
}

/// `/courier/fed/1/deliver` requests.
pub fn decode_any_fed_delivery_batch(data: &[u8]) -> usize {
    binary_one::<DeliveryBatch>(data)
}

/// `/courier/fed/1/deliver` responses.
pub fn decode_any_fed_delivery_acks(data: &[u8]) -> usize {
    binary_one::<DeliveryAcks>(data)
}

/// Text parsers used on path and query parameters: addresses, usernames,
/// relay names, envelope ids, base64url, error codes.
pub fn decode_any_text(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    fn parse<T: FromStr + ToString>(text: &str) -> usize {
        let Ok(value) = text.parse::<T>() else {
            return 0;
        };
        let printed = value.to_string();
        let again = printed.parse::<T>().ok().map(|v| v.to_string());
        assert_eq!(
            again.as_deref(),
            Some(printed.as_str()),
            "text form is unstable"
        );
        1
    }
    let base64 = match Bytes::from_base64url(text) {
        Ok(b) => {
            assert_eq!(b.to_base64url(), text, "base64url is not canonical");
            1
        }
        Err(_) => 0,
    };
    parse::<Address>(text)
        + parse::<Username>(text)
        + parse::<RelayName>(text)
        + parse::<EnvelopeId>(text)
        + base64
        + usize::from(ErrorCode::parse(text).is_some())
}
