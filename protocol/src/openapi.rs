//! OpenAPI schemas (`utoipa::ToSchema`) of the types whose JSON form is
//! written by hand rather than derived: binary fields, envelope ids and the
//! validated text types. Their serde impls decide the JSON shape, so the
//! schemas here say it explicitly: a base64url string, 32 hex digits, a
//! user name or relay name with its character rules and length limit.
//!
//! Enabled by the `openapi` feature; the derived types (`api`, `ws`,
//! messages, errors) carry `#[cfg_attr(feature = "openapi", derive(ToSchema))]`
//! next to their serde derives, so the schema follows the type.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::limits::{ADDRESS_BYTES_MAX, RELAY_NAME_BYTES_MAX, USERNAME_BYTES_MAX};
use crate::{Address, Bytes, EnvelopeId, RelayName, Username};

/// Unpadded base64url, the JSON form of [`Bytes`].
const BASE64URL_PATTERN: &str = "^[A-Za-z0-9_-]*$";
/// The text form of an [`EnvelopeId`].
const ENVELOPE_ID_PATTERN: &str = "^[0-9a-f]{32}$";
// Letters of either case: the relay case-folds what it accepts and sends
// lowercase (`crate::address`).
const USERNAME: &str = "[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?";
const LABEL: &str = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";

fn string(description: &str, pattern: String, max_length: Option<usize>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .description(Some(description))
        .pattern(Some(pattern))
        .max_length(max_length)
        .into()
}

fn relay_name_pattern() -> String {
    format!("{LABEL}(\\.{LABEL})*")
}

impl PartialSchema for Bytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some("Bytes as unpadded base64url."))
            .pattern(Some(BASE64URL_PATTERN))
            .content_encoding("base64url")
            .into()
    }
}

impl ToSchema for Bytes {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Bytes")
    }
}

impl PartialSchema for EnvelopeId {
    fn schema() -> RefOr<Schema> {
        string(
            "A 128-bit envelope id, sortable by creation time, as 32 lowercase hex digits.",
            ENVELOPE_ID_PATTERN.to_owned(),
            None,
        )
    }
}

impl ToSchema for EnvelopeId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("EnvelopeId")
    }
}

impl PartialSchema for Username {
    fn schema() -> RefOr<Schema> {
        string(
            "A username: a-z, 0-9, '.', '_', '-', starting and ending with a letter or digit; \
             case-folded to lowercase.",
            format!("^{USERNAME}$"),
            Some(USERNAME_BYTES_MAX),
        )
    }
}

impl ToSchema for Username {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Username")
    }
}

impl PartialSchema for RelayName {
    fn schema() -> RefOr<Schema> {
        string(
            "A relay name: a DNS host name (labels of a-z, 0-9, '-'); case-folded to lowercase.",
            format!("^{}$", relay_name_pattern()),
            Some(RELAY_NAME_BYTES_MAX),
        )
    }
}

impl ToSchema for RelayName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RelayName")
    }
}

impl PartialSchema for Address {
    fn schema() -> RefOr<Schema> {
        string(
            "A user's address, `user@relay.name`; case-folded to lowercase.",
            format!("^{USERNAME}@{}$", relay_name_pattern()),
            Some(ADDRESS_BYTES_MAX),
        )
    }
}

impl ToSchema for Address {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Address")
    }
}

/// `schema` (a `oneOf` of the variants of an internally tagged enum) with
/// every variant refusing fields it does not name when `deny` is set, as
/// serde's `deny_unknown_fields` does.
pub(crate) fn variants_closed(schema: RefOr<Schema>, deny: bool) -> RefOr<Schema> {
    let RefOr::T(Schema::OneOf(mut one_of)) = schema else {
        return schema;
    };
    if deny {
        for variant in &mut one_of.items {
            if let RefOr::T(Schema::Object(object)) = variant {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
    RefOr::T(Schema::OneOf(one_of))
}
