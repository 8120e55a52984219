//! Identifiers: random UUIDs for things vendbox creates, validated slugs for catalog entries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .format(Some(utoipa::openapi::schema::SchemaFormat::KnownFormat(
                        utoipa::openapi::schema::KnownFormat::Uuid,
                    )))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

uuid_id!(
    /// Identifies a [`crate::Quote`].
    QuoteId
);
uuid_id!(
    /// Identifies a [`crate::Payment`].
    PaymentId
);
uuid_id!(
    /// Identifies a [`crate::Lease`].
    LeaseId
);

/// Identifies an [`crate::Offer`] in the catalog: lowercase letters, digits, `-` and `_`,
/// 1 to 64 characters, starting with a letter or digit (`h3retik-micro`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
pub struct OfferId(String);

/// Why a string is not an offer id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offer id `{0}` must be 1-64 lowercase letters, digits, `-` or `_`, starting with a letter or digit")]
pub struct InvalidOfferId(pub String);

impl OfferId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OfferId {
    type Err = InvalidOfferId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_';
        let valid = (1..=64).contains(&bytes.len())
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes.iter().all(allowed);
        if valid { Ok(Self(s.to_owned())) } else { Err(InvalidOfferId(s.to_owned())) }
    }
}

impl<'de> Deserialize<'de> for OfferId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_ids_are_slugs() {
        assert!("h3retik-micro".parse::<OfferId>().is_ok());
        assert!("vpsagent_sandbox_1h".parse::<OfferId>().is_ok());
        for bad in ["", "-x", "Upper", "has space", "a/b", &"x".repeat(65)] {
            assert!(bad.parse::<OfferId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uuid_ids_round_trip() {
        let id = LeaseId::new_random();
        assert_eq!(id.to_string().parse::<LeaseId>().unwrap(), id);
        assert_ne!(LeaseId::new_random(), id);
    }
}
