//! WebSocket frames on `/v1/ws`.
//!
//! In JSON (the WebSocket text frames) a frame is an object whose `type`
//! field names the variant, e.g. `{"type":"ack","seqs":[1,2]}`. The binary
//! codec cannot read internally tagged enums (postcard is not
//! self-describing), so there a frame is encoded like any other enum:
//! variant index then fields. Ping and pong are WebSocket control frames.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::OutgoingMessage;
use crate::api::{Envelope, SendResponse, validate_seqs};
use crate::validate::Validate;
use crate::{ApiError, ErrorCode};

/// Declares a frame enum with struct variants whose JSON form is internally
/// tagged by `type` (snake_case) and whose binary form is externally tagged.
/// `field: Type => "path"` decodes that field with `deserialize_with = "path"`.
macro_rules! frame_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident [$($json_attr:tt)*] {
            $(
                $(#[$vmeta:meta])*
                $variant:ident { $( $(#[$fmeta:meta])* $field:ident : $ty:ty $(=> $de:literal)? ),+ $(,)? }
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant { $( $(#[$fmeta])* $field: $ty ),+ },
            )+
        }

        const _: () = {
            // The OpenAPI schema of the JSON form, derived from the same
            // variants and docs; the serde attribute is read by `ToSchema`
            // alone (the serde impls are the ones below).
            #[cfg(feature = "openapi")]
            #[allow(dead_code)]
            $(#[$meta])*
            #[derive(utoipa::ToSchema)]
            #[serde(tag = "type", rename_all = "snake_case")]
            enum Schema {
                $( $(#[$vmeta])* $variant { $( $(#[$fmeta])* $field: $ty ),+ }, )+
            }

            #[cfg(feature = "openapi")]
            impl utoipa::PartialSchema for $name {
                fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                    let schema = <Schema as utoipa::PartialSchema>::schema();
                    // utoipa drops `deny_unknown_fields` on tagged enums.
                    let deny = stringify!($($json_attr)*).contains("deny_unknown_fields");
                    crate::openapi::variants_closed(schema, deny)
                }
            }

            #[cfg(feature = "openapi")]
            impl utoipa::ToSchema for $name {
                fn name() -> std::borrow::Cow<'static, str> {
                    std::borrow::Cow::Borrowed(stringify!($name))
                }
                fn schemas(
                    schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>,
                ) {
                    <Schema as utoipa::ToSchema>::schemas(schemas)
                }
            }

            #[derive(Serialize)]
            #[serde(tag = "type", rename_all = "snake_case")]
            enum JsonRef<'a> { $( $variant { $( $field: &'a $ty ),+ }, )+ }

            #[derive(Deserialize)]
            #[serde(tag = "type", rename_all = "snake_case" $($json_attr)*)]
            enum JsonOwned {
                $( $variant { $( $(#[serde(deserialize_with = $de)])? $field: $ty ),+ }, )+
            }

            #[derive(Serialize)]
            enum BinRef<'a> { $( $variant { $( $field: &'a $ty ),+ }, )+ }

            #[derive(Deserialize)]
            enum BinOwned {
                $( $variant { $( $(#[serde(deserialize_with = $de)])? $field: $ty ),+ }, )+
            }

            impl Serialize for $name {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    if s.is_human_readable() {
                        match self {
                            $( $name::$variant { $($field),+ } => JsonRef::$variant { $($field),+ }.serialize(s), )+
                        }
                    } else {
                        match self {
                            $( $name::$variant { $($field),+ } => BinRef::$variant { $($field),+ }.serialize(s), )+
                        }
                    }
                }
            }

            impl<'de> Deserialize<'de> for $name {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    if d.is_human_readable() {
                        Ok(match JsonOwned::deserialize(d)? {
                            $( JsonOwned::$variant { $($field),+ } => $name::$variant { $($field),+ }, )+
                        })
                    } else {
                        Ok(match BinOwned::deserialize(d)? {
                            $( BinOwned::$variant { $($field),+ } => $name::$variant { $($field),+ }, )+
                        })
                    }
                }
            }
        };
    };
}

frame_enum! {
    /// A frame the relay sends to a connected device.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ServerFrame [] {
        /// A new or still-unacknowledged envelope, pushed in sequence order.
        Envelope {
            /// The envelope.
            envelope: Envelope,
        },
        /// The device's one-time prekey pool is low; upload more.
        PrekeysLow {
            /// One-time prekeys remaining.
            remaining: u32,
        },
        /// Something the device sent was refused; the connection stays open
        /// unless the code is `unauthenticated` or `token_expired`.
        Error {
            /// What went wrong.
            error: ApiError,
        },
        /// The answer to [`ClientFrame::Send`] `request`: the message is
        /// stored durably, exactly like a 200/201 to `POST /v1/messages`.
        Sent {
            /// The client's `request` number, echoed.
            request: u64,
            /// What `POST /v1/messages` would have answered.
            response: SendResponse,
        },
        /// [`ClientFrame::Send`] `request` was refused and nothing was
        /// stored; `error` carries the code `POST /v1/messages` would have
        /// answered with. The connection stays open.
        Refused {
            /// The client's `request` number, echoed.
            request: u64,
            /// Why.
            error: ApiError,
        },
    }
}

impl Validate for ServerFrame {
    fn validate(&self) -> Result<(), ErrorCode> {
        match self {
            ServerFrame::Envelope { envelope } => envelope.validate(),
            ServerFrame::PrekeysLow { .. } => Ok(()),
            ServerFrame::Error { error } | ServerFrame::Refused { error, .. } => error.validate(),
            ServerFrame::Sent { response, .. } => response.validate(),
        }
    }
}

frame_enum! {
    /// A frame a device sends to its relay.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ClientFrame [, deny_unknown_fields] {
        /// Deletes delivered envelopes, like `POST /v1/messages/ack`.
        Ack {
            /// 1..=[`crate::limits::ACK_SEQS_MAX`] sequence numbers.
            seqs: Vec<u64> => "crate::validate::capped::<_, _, { crate::limits::ACK_SEQS_MAX }>",
        },
        /// Sends a message, like `POST /v1/messages` but without a request
        /// per message: the relay answers [`ServerFrame::Sent`] or
        /// [`ServerFrame::Refused`] with the same `request`, possibly out of
        /// order with other sends (a client may have several in flight).
        /// Messages whose frame would exceed
        /// [`crate::limits::WS_FRAME_BYTES_MAX`] go over HTTP.
        Send {
            /// Chosen by the client to match the answer; not interpreted.
            request: u64,
            /// The message, exactly as `POST /v1/messages` takes it.
            message: OutgoingMessage,
        },
    }
}

impl Validate for ClientFrame {
    fn validate(&self) -> Result<(), ErrorCode> {
        match self {
            ClientFrame::Ack { seqs } => validate_seqs(seqs),
            ClientFrame::Send { message, .. } => message.validate(),
        }
    }
}
