//! The two encodings: JSON for clients, version byte + postcard for
//! federation.
//!
//! Every decoder checks the input size before parsing, maps every failure to
//! a [`CodecError`] (never a panic) and runs [`Validate`] on the result, so a
//! decoded value is always within the limits of [`crate::limits`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ErrorCode;
use crate::validate::Validate;

/// Why encoding or decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input is longer than the decoder's limit; nothing was parsed.
    #[error("input is {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Input length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A binary frame without even a version byte.
    #[error("empty frame")]
    Empty,
    /// A binary frame whose version byte this build does not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The bytes are not a valid encoding of the expected type (syntax,
    /// wrong types, unknown fields, truncation, trailing bytes, bad
    /// base64url, invalid address, …).
    #[error("malformed: {0}")]
    Malformed(String),
    /// The value decoded but breaks a limit or rule.
    #[error("invalid: {0}")]
    Invalid(ErrorCode),
    /// The value could not be encoded (a bug in a `Serialize` impl).
    #[error("cannot encode: {0}")]
    Encode(String),
}

impl CodecError {
    /// The error code to answer the sender with.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            CodecError::Empty | CodecError::Malformed(_) => ErrorCode::Malformed,
            CodecError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            CodecError::Invalid(code) => *code,
            CodecError::Encode(_) => ErrorCode::Internal,
        }
    }
}

impl From<CodecError> for crate::ApiError {
    fn from(e: CodecError) -> Self {
        let mut message = e.to_string();
        crate::validate::truncate_message(&mut message);
        crate::ApiError::with_message(e.code(), message)
    }
}

fn check_size(bytes: &[u8], max: usize) -> Result<(), CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(())
}

/// JSON with base64url binary fields: HTTP bodies, WebSocket frames.
pub mod json {
    use super::*;
    use crate::limits::HTTP_BODY_BYTES_MAX;

    /// Encodes a value as compact JSON.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))
    }

    /// Decodes and validates at most [`HTTP_BODY_BYTES_MAX`] bytes of JSON.
    pub fn decode<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, CodecError> {
        decode_with_limit(bytes, HTTP_BODY_BYTES_MAX)
    }

    /// Decodes and validates at most `bytes_max` bytes of JSON (e.g.
    /// [`crate::limits::WS_FRAME_BYTES_MAX`] for WebSocket frames,
    /// [`crate::limits::FETCH_RESPONSE_BYTES_MAX`] for fetch responses).
    pub fn decode_with_limit<T: DeserializeOwned + Validate>(
        bytes: &[u8],
        bytes_max: usize,
    ) -> Result<T, CodecError> {
        check_size(bytes, bytes_max)?;
        let value: T =
            serde_json::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
        value.validate().map_err(CodecError::Invalid)?;
        Ok(value)
    }
}

/// Federation frames: one version byte, then the postcard encoding.
pub mod binary {
    use super::*;
    use crate::limits::FEDERATION_FRAME_BYTES_MAX;

    /// The wire version this build writes.
    pub const VERSION: u8 = 1;
    /// Every wire version this build reads.
    pub const SUPPORTED_VERSIONS: &[u8] = &[1];

    /// Encodes a value as `VERSION || postcard(value)`.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        postcard::to_extend(value, vec![VERSION]).map_err(|e| CodecError::Encode(e.to_string()))
    }

    /// The version byte of a frame, checked against
    /// [`SUPPORTED_VERSIONS`].
    pub fn peek_version(bytes: &[u8]) -> Result<u8, CodecError> {
        let &version = bytes.first().ok_or(CodecError::Empty)?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(CodecError::UnsupportedVersion(version));
        }
        Ok(version)
    }

    /// Decodes and validates a frame of at most
    /// [`FEDERATION_FRAME_BYTES_MAX`] bytes.
    pub fn decode<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, CodecError> {
        decode_with_limit(bytes, FEDERATION_FRAME_BYTES_MAX)
    }

    /// Decodes and validates a frame of at most `bytes_max` bytes (e.g.
    /// [`crate::limits::BATCH_BYTES_MAX`] for delivery batches). Trailing
    /// bytes after the value are an error, so every value has one encoding
    /// a receiver accepts.
    pub fn decode_with_limit<T: DeserializeOwned + Validate>(
        bytes: &[u8],
        bytes_max: usize,
    ) -> Result<T, CodecError> {
        check_size(bytes, bytes_max)?;
        peek_version(bytes)?;
        let (value, rest): (T, &[u8]) = postcard::take_from_bytes(&bytes[1..])
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CodecError::Malformed(format!(
                "{} trailing bytes after the message",
                rest.len()
            )));
        }
        value.validate().map_err(CodecError::Invalid)?;
        Ok(value)
    }
}
