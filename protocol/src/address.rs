//! Addresses: `user@relay.name`.
//!
//! Rules (also in `docs/protocol.md`):
//! - Both parts are case-folded to ASCII lowercase before validation, so
//!   `Alice@Relay-A.Example` and `alice@relay-a.example` are the same address.
//! - A username is 1..=[`USERNAME_BYTES_MAX`] characters from `a-z 0-9 . _ -`,
//!   starting and ending with a letter or digit.
//! - A relay name is a DNS host name: 1..=[`RELAY_NAME_BYTES_MAX`] characters,
//!   dot-separated labels of 1..=63 characters from `a-z 0-9 -`, no label
//!   starting or ending with `-`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{RELAY_NAME_BYTES_MAX, USERNAME_BYTES_MAX};

/// Why a username, relay name or address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The username is empty or longer than [`USERNAME_BYTES_MAX`].
    #[error("username must be 1 to {USERNAME_BYTES_MAX} characters")]
    UsernameLength,
    /// The username contains a character outside `a-z 0-9 . _ -`, or does
    /// not start and end with a letter or digit.
    #[error(
        "username may contain only a-z, 0-9, '.', '_', '-' and must start and end with a letter or digit"
    )]
    UsernameCharacters,
    /// The relay name is empty or longer than [`RELAY_NAME_BYTES_MAX`].
    #[error("relay name must be 1 to {RELAY_NAME_BYTES_MAX} characters")]
    RelayNameLength,
    /// A label of the relay name is empty, too long or has a bad character.
    #[error("relay name must be a DNS host name (labels of a-z, 0-9, '-')")]
    RelayNameLabel,
    /// The text has no `@`, or more than one.
    #[error("address must look like user@relay.name")]
    MissingSeparator,
}

/// A validated, case-folded username (the part before `@`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Username(String);

impl Username {
    /// Parses and case-folds a username.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let folded = text.to_ascii_lowercase();
        if folded.is_empty() || folded.len() > USERNAME_BYTES_MAX {
            return Err(AddressError::UsernameLength);
        }
        let b = folded.as_bytes();
        let edge_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let inner_ok = |c: u8| edge_ok(c) || matches!(c, b'.' | b'_' | b'-');
        let first_last_ok =
            b.first().is_some_and(|&c| edge_ok(c)) && b.last().is_some_and(|&c| edge_ok(c));
        if !first_last_ok || !b.iter().all(|&c| inner_ok(c)) {
            return Err(AddressError::UsernameCharacters);
        }
        Ok(Username(folded))
    }

    /// The username text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated, case-folded relay name (a DNS host name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelayName(String);

impl RelayName {
    /// Parses and case-folds a relay name.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let folded = text.to_ascii_lowercase();
        if folded.is_empty() || folded.len() > RELAY_NAME_BYTES_MAX {
            return Err(AddressError::RelayNameLength);
        }
        for label in folded.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && b.first() != Some(&b'-')
                && b.last() != Some(&b'-');
            if !ok {
                return Err(AddressError::RelayNameLabel);
            }
        }
        Ok(RelayName(folded))
    }

    /// The relay name text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user's address, `user@relay.name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    /// The username on its home relay.
    pub user: Username,
    /// The home relay's name.
    pub relay: RelayName,
}

impl Address {
    /// Builds an address from its validated parts.
    pub fn new(user: Username, relay: RelayName) -> Self {
        Address { user, relay }
    }

    /// Parses `user@relay.name`.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let (user, relay) = text.split_once('@').ok_or(AddressError::MissingSeparator)?;
        if relay.contains('@') {
            return Err(AddressError::MissingSeparator);
        }
        Ok(Address {
            user: Username::parse(user)?,
            relay: RelayName::parse(relay)?,
        })
    }
}

macro_rules! text_type {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.to_string_inner(f)
            }
        }
        impl FromStr for $t {
            type Err = AddressError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::parse(s)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // Borrowed first (JSON), owned as fallback (escaped JSON, binary codecs).
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                <$t>::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

impl Username {
    fn to_string_inner(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl RelayName {
    fn to_string_inner(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl Address {
    fn to_string_inner(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user.0, self.relay.0)
    }
}

text_type!(Username);
text_type!(RelayName);
text_type!(Address);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_case_folds() {
        let a: Address = "Alice.B@Relay-A.Example".parse().unwrap();
        assert_eq!(a.to_string(), "alice.b@relay-a.example");
        assert_eq!(a.user.as_str(), "alice.b");
        assert_eq!(a.relay.as_str(), "relay-a.example");
        assert_eq!(
            "localhost".parse::<RelayName>().unwrap().as_str(),
            "localhost"
        );
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "",
            "alice",
            "@relay",
            "alice@",
            "a@b@c",
            ".alice@r",
            "alice-@r",
            "al ice@r",
            "alice@-relay",
            "alice@relay..x",
            "alice@relay_x",
            "älice@r",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        let long_user = "a".repeat(USERNAME_BYTES_MAX + 1);
        assert_eq!(
            Username::parse(&long_user),
            Err(AddressError::UsernameLength)
        );
        let long_label = "a".repeat(64);
        assert_eq!(
            RelayName::parse(&long_label),
            Err(AddressError::RelayNameLabel)
        );
    }

    #[test]
    fn serde_validates() {
        let a: Address = serde_json::from_str("\"Bob@r.example\"").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"bob@r.example\"");
        assert!(serde_json::from_str::<Address>("\"bob@\"").is_err());
    }
}
