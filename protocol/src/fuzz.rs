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
    json_one::<RelayInfo>(data, crate::limits::HTTP_BODY_BYTES_MAX)
        + json_one::<RegisterResponse>(data, crate::limits::HTTP_BODY_BYTES_MAX)
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

/// Writes the committed seed corpus: `valid-*` files that the target's
/// decoders must accept and `junk-*` files they must refuse
/// (`protocol/tests/fuzz_corpus.rs` checks both). Run with
/// `cargo test -p courier-protocol --lib regenerate_seed_corpus -- --ignored`.
#[cfg(test)]
mod seed_corpus {
    use std::path::PathBuf;

    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    use super::*;
    use crate::strategies as s;

    struct Seeds {
        dir: PathBuf,
        runner: TestRunner,
    }

    impl Seeds {
        fn new(target: &str) -> Self {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("valid-") || name.starts_with("junk-") {
                    std::fs::remove_file(path).unwrap();
                }
            }
            Seeds {
                dir,
                runner: TestRunner::deterministic(),
            }
        }

        fn write(&self, name: &str, bytes: &[u8]) {
            std::fs::write(self.dir.join(name), bytes).unwrap();
        }

        /// Two generated values, written with `encode`; returns the first
        /// encoding for deriving junk from it.
        fn values<T: Serialize>(
            &mut self,
            name: &str,
            strategy: impl Strategy<Value = T>,
            encode: fn(&T) -> Result<Vec<u8>, crate::CodecError>,
        ) -> Vec<u8> {
            let mut first = Vec::new();
            for n in 0..2 {
                let value = strategy.new_tree(&mut self.runner).unwrap().current();
                let bytes = encode(&value).unwrap();
                self.write(&format!("valid-{name}-{n}"), &bytes);
                if n == 0 {
                    first = bytes;
                }
            }
            first
        }
    }

    fn json_junk(seeds: &Seeds, sample: &[u8]) {
        seeds.write("junk-truncated", &sample[..sample.len() / 2]);
        seeds.write("junk-empty", b"");
        seeds.write("valid-empty-query", b"{}");
        seeds.write("junk-null", b"null");
        seeds.write("junk-array", b"[1,2,3]");
        seeds.write("junk-not-utf8", b"{\"a\":\"\xff\xfe\"}");
        seeds.write("junk-deep-nesting", &[b'['; 4096]);
        seeds.write("junk-huge-number", b"{\"seqs\":[1e999999]}");
        let mut trailing = sample.to_vec();
        trailing.extend_from_slice(b"{}");
        seeds.write("junk-trailing", &trailing);
        let mut unknown = sample[..sample.len() - 1].to_vec();
        unknown.extend_from_slice(b",\"zz_unknown\":1}");
        seeds.write("junk-unknown-field", &unknown);
    }

    fn binary_junk(seeds: &Seeds, sample: &[u8]) {
        seeds.write("junk-empty", b"");
        seeds.write("junk-version-only", &[1]);
        seeds.write("junk-truncated", &sample[..sample.len() / 2]);
        seeds.write("junk-last-byte-missing", &sample[..sample.len() - 1]);
        let mut other = sample.to_vec();
        other[0] = 2;
        seeds.write("junk-version-2", &other);
        other[0] = 0;
        seeds.write("junk-version-0", &other);
        let mut trailing = sample.to_vec();
        trailing.push(0);
        seeds.write("junk-trailing-byte", &trailing);
        seeds.write(
            "junk-huge-length",
            &[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        );
        seeds.write("junk-json", b"{\"type\":\"ack\"}");
    }

    #[test]
    #[ignore = "rewrites protocol/fuzz/corpus"]
    fn regenerate_seed_corpus() {
        let mut seeds = Seeds::new("json_request");
        let sample = seeds.values("register", s::register_request(), json::encode);
        seeds.values("challenge", s::challenge_request(), json::encode);
        seeds.values("login", s::login_request(), json::encode);
        seeds.values("refresh", s::refresh_request(), json::encode);
        seeds.values("link", s::link_request(), json::encode);
        seeds.values("approve-link", s::approve_link_request(), json::encode);
        seeds.values("link-status-query", s::link_status_query(), json::encode);
        seeds.values("signed-prekey", s::signed_prekey(), json::encode);
        seeds.values(
            "one-time-prekeys",
            s::upload_one_time_prekeys(),
            json::encode,
        );
        seeds.values("key-bundle-query", s::key_bundle_query(), json::encode);
        seeds.values("message", s::outgoing_message(), json::encode);
        seeds.values("fetch-query", s::fetch_query(), json::encode);
        seeds.values("ack", s::ack_request(), json::encode);
        json_junk(&seeds, &sample);

        let mut seeds = Seeds::new("json_response");
        let sample = seeds.values("register", s::register_response(), json::encode);
        seeds.values("challenge", s::challenge_response(), json::encode);
        seeds.values("token", s::token_response(), json::encode);
        seeds.values("device-list", s::signed_device_list(), json::encode);
        seeds.values("link", s::link_response(), json::encode);
        seeds.values("link-info", s::link_info(), json::encode);
        seeds.values("approve-link", s::approve_link_response(), json::encode);
        seeds.values("link-status", s::link_status(), json::encode);
        seeds.values("prekey-count", s::prekey_count(), json::encode);
        seeds.values("key-bundle", s::key_bundle_response(), json::encode);
        seeds.values("send", s::send_response(), json::encode);
        seeds.values("fetch", s::fetch_response(), json::encode);
        seeds.values("ack", s::ack_response(), json::encode);
        seeds.values(
            "delivery-failure",
            s::delivery_failure_notice(),
            json::encode,
        );
        seeds.values("error", s::error_body(), json::encode);
        // Requests whose JSON happens to be valid as some response type are
        // not junk; keep junk that no response type accepts.
        seeds.write("junk-truncated", &sample[..sample.len() / 2]);
        seeds.write("junk-empty", b"");
        seeds.write("junk-not-utf8", b"{\"a\":\"\xff\xfe\"}");
        seeds.write("junk-deep-nesting", &[b'{'; 4096]);
        seeds.write("junk-bad-base64", b"{\"seq\":1,\"id\":\"00000000000000000000000000000000\",\"origin\":\"r\",\"header\":\"AA==\",\"body\":\"\",\"received_ms\":0,\"expires_ms\":0}");

        let mut seeds = Seeds::new("ws_frame");
        let sample = seeds.values("server", s::server_frame(), json::encode);
        seeds.values("server-b", s::server_frame(), json::encode);
        seeds.values("client", s::client_frame(), json::encode);
        seeds.write("junk-unknown-type", b"{\"type\":\"nope\"}");
        seeds.write("junk-missing-type", b"{\"seqs\":[1]}");
        seeds.write("junk-missing-field", b"{\"type\":\"ack\"}");
        seeds.write("junk-empty-ack", b"{\"type\":\"ack\",\"seqs\":[]}");
        seeds.write(
            "junk-client-extra-field",
            b"{\"type\":\"ack\",\"seqs\":[1],\"x\":2}",
        );
        seeds.write("junk-truncated", &sample[..sample.len() / 2]);
        seeds.write("junk-empty", b"");

        let mut seeds = Seeds::new("fed_hello");
        let sample = seeds.values("hello", s::hello(), binary::encode);
        binary_junk(&seeds, &sample);

        let mut seeds = Seeds::new("fed_bundle_request");
        let sample = seeds.values("request", s::bundle_request(), binary::encode);
        binary_junk(&seeds, &sample);

        let mut seeds = Seeds::new("fed_bundle_response");
        let sample = seeds.values(
            "ok",
            s::key_bundle_response().prop_map(Ok::<_, crate::ApiError>),
            binary::encode,
        );
        seeds.values(
            "err",
            s::api_error().prop_map(Err::<KeyBundleResponse, _>),
            binary::encode,
        );
        binary_junk(&seeds, &sample);

        let mut seeds = Seeds::new("fed_delivery_batch");
        let sample = seeds.values("batch", s::delivery_batch(), binary::encode);
        binary_junk(&seeds, &sample);
        // A batch over BATCH_ENVELOPES_MAX, cut short: decodes nothing.
        let mut many = vec![1, 1, b'r'];
        many.extend_from_slice(&[0x81, 0x02]);
        seeds.write("junk-envelope-count-over-limit", &many);

        let mut seeds = Seeds::new("fed_delivery_acks");
        let sample = seeds.values("acks", s::delivery_acks(), binary::encode);
        binary_junk(&seeds, &sample);

        let seeds = Seeds::new("text");
        for (name, text) in [
            ("valid-address", "alice@relay-a.example"),
            ("valid-mixed-case-address", "Alice.B@Relay-A.Example"),
            ("valid-envelope-id", "0123456789abcdef0123456789abcdef"),
            ("valid-base64url", "-_8B"),
            ("valid-error-code", "mailbox_full"),
            ("valid-empty-is-empty-base64url", ""),
            ("junk-two-ats", "a@b@c"),
            ("junk-padded-base64", "AA=="),
            ("junk-dash", "-"),
            ("junk-space", " "),
            ("junk-nul", "\0"),
        ] {
            seeds.write(name, text.as_bytes());
        }
        seeds.write("junk-not-utf8", b"\xff\xfe");
    }
}
