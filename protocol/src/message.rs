//! A multi-recipient message: one shared ciphertext body plus a small header
//! per recipient device. Direct and group messages have the same shape; a
//! group message simply names every member device.

use serde::{Deserialize, Serialize};

use crate::limits::{BODY_BYTES_MAX, HEADER_BYTES_MAX, MESSAGE_TTL_SECS_MAX, RECIPIENTS_MAX};
use crate::{Address, Bytes, DeviceId, EnvelopeId, ErrorCode};

/// One recipient device of a message and the header only it can open
/// (typically the sealed-sender envelope carrying the message key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RecipientEntry {
    /// The recipient's address.
    pub to: Address,
    /// The recipient device.
    pub device: DeviceId,
    /// Per-recipient header, at most [`HEADER_BYTES_MAX`] bytes.
    pub header: Bytes,
}

impl crate::Validate for RecipientEntry {
    fn validate(&self) -> Result<(), ErrorCode> {
        if self.header.len() > HEADER_BYTES_MAX {
            return Err(ErrorCode::PayloadTooLarge);
        }
        Ok(())
    }
}

/// A message as a client submits it to its home relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OutgoingMessage {
    /// Chosen by the sender; a retry with the same id is a no-op.
    pub id: EnvelopeId,
    /// Shared ciphertext, stored once, at most [`BODY_BYTES_MAX`] bytes.
    pub body: Bytes,
    /// The recipient devices, 1..=[`RECIPIENTS_MAX`], no device twice.
    #[serde(
        deserialize_with = "crate::validate::capped::<_, _, { crate::limits::RECIPIENTS_MAX }>"
    )]
    pub recipients: Vec<RecipientEntry>,
    /// Seconds the relays keep the message while undelivered,
    /// 1..=[`MESSAGE_TTL_SECS_MAX`].
    pub ttl_secs: u64,
}

impl OutgoingMessage {
    /// Checks every limit. Relays call this before accepting a message.
    pub fn validate(&self) -> Result<(), ErrorCode> {
        if self.body.len() > BODY_BYTES_MAX {
            return Err(ErrorCode::PayloadTooLarge);
        }
        if self.recipients.is_empty() {
            return Err(ErrorCode::BadRequest);
        }
        if self.recipients.len() > RECIPIENTS_MAX {
            return Err(ErrorCode::TooManyRecipients);
        }
        if self
            .recipients
            .iter()
            .any(|r| r.header.len() > HEADER_BYTES_MAX)
        {
            return Err(ErrorCode::PayloadTooLarge);
        }
        if self.ttl_secs == 0 || self.ttl_secs > MESSAGE_TTL_SECS_MAX {
            return Err(ErrorCode::BadRequest);
        }
        let mut seen: Vec<(&Address, DeviceId)> =
            self.recipients.iter().map(|r| (&r.to, r.device)).collect();
        seen.sort();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(ErrorCode::BadRequest);
        }
        Ok(())
    }
}
