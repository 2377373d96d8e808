//! Typed, prefixed, time-sortable identifiers.
//!
//! Every id is `<prefix>_<ULID>`: the prefix says what it names (as OpenCode's `ses_…`, `msg_…`,
//! `prt_…` do), the ULID makes ids sortable by creation time and unique without coordination.
//! Ids are validated when parsed, so a handler that holds a `SessionId` holds a well-formed one.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not an id of the expected kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("expected an id starting with `{expected}_`")]
    WrongPrefix { expected: &'static str },
    #[error("the part after `{prefix}_` is not a valid ULID")]
    Malformed { prefix: &'static str },
}

/// One process-wide monotonic generator, so ids made within the same millisecond still sort in
/// creation order (messages and parts rely on that).
static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

fn next_ulid() -> ulid::Ulid {
    // The lock is never held across a panic, so poisoning cannot happen; recover anyway.
    let mut guard = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let generator = guard.get_or_insert_with(ulid::Generator::new);
    // Overflow needs 2^80 ids in one millisecond; fall back to a fresh random ULID if it happens.
    generator.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix before the underscore.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id, later than every id this process made before.
            pub fn new() -> Self {
                Self(format!("{}_{}", $prefix, next_ulid()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            fn ulid(&self) -> ulid::Ulid {
                // Only well-formed ids are ever constructed (new, or parsed by FromStr).
                ulid::Ulid::from_string(&self.0[$prefix.len() + 1..]).unwrap_or_default()
            }

            /// When the id was made, in milliseconds since the Unix epoch (its ULID's time part;
            /// for an id a client chose, whatever the client put there).
            pub fn timestamp_ms(&self) -> u64 {
                self.ulid().timestamp_ms()
            }

            /// The id right after this one in sort order (the same time, the next random part).
            pub fn successor(&self) -> Self {
                let next = self.ulid().increment().unwrap_or_else(ulid::Ulid::new);
                Self(format!("{}_{}", $prefix, next))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or(IdError::WrongPrefix { expected: $prefix })?;
                let ulid = ulid::Ulid::from_string(rest)
                    .map_err(|_| IdError::Malformed { prefix: $prefix })?;
                // Normalise to the canonical upper-case form so equal ids compare equal.
                Ok(Self(format!("{}_{}", $prefix, ulid)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": concat!("^", $prefix, "_[0-9A-HJKMNP-TV-Z]{26}$"),
                })
            }
        }
    };
}

prefixed_id!(
    /// An organization: the tenant boundary.
    OrganizationId, "org"
);
prefixed_id!(
    /// A workspace inside an organization.
    WorkspaceId, "wrk"
);
prefixed_id!(
    /// A session (conversation) inside a workspace.
    SessionId, "ses"
);
prefixed_id!(
    /// A user or assistant message inside a session.
    MessageId, "msg"
);
prefixed_id!(
    /// A part (text, reasoning, …) of a message.
    PartId, "prt"
);
prefixed_id!(
    /// A person known to the service. Personal data lives outside the event log, keyed by this.
    UserId, "usr"
);
prefixed_id!(
    /// A Git project in a workspace.
    ProjectId, "prj"
);
prefixed_id!(
    /// A personal API key (the id is public; the secret is shown once and stored hashed).
    ApiKeyId, "key"
);
prefixed_id!(
    /// A connection to an LLM provider: its kind, URL, models and (stored apart, encrypted) key.
    ConnectionId, "con"
);
prefixed_id!(
    /// A spend budget of an organization.
    BudgetId, "bdg"
);
prefixed_id!(
    /// A request that caused events; carried as correlation id across services.
    RequestId, "req"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_creation() {
        let a = SessionId::new();
        let b = SessionId::new();
        assert!(a < b, "later ids sort after earlier ones");
        assert_eq!(a.as_str().parse::<SessionId>().unwrap(), a);
        assert!(a.as_str().starts_with("ses_"));
    }

    #[test]
    fn wrong_prefix_and_garbage_are_rejected() {
        let m = MessageId::new();
        assert_eq!(m.as_str().parse::<SessionId>(), Err(IdError::WrongPrefix { expected: "ses" }));
        assert_eq!(
            "ses_not-a-ulid".parse::<SessionId>(),
            Err(IdError::Malformed { prefix: "ses" })
        );
        assert!(serde_json::from_str::<SessionId>("\"ses_\"").is_err());
    }

    #[test]
    fn a_successor_sorts_right_after_and_keeps_the_time() {
        let m = MessageId::new();
        let next = m.successor();
        assert!(next > m);
        assert_eq!(next.timestamp_ms(), m.timestamp_ms());
    }

    #[test]
    fn lower_case_input_is_normalised() {
        let s = SessionId::new();
        let lower = s.as_str().to_lowercase();
        assert_eq!(lower.parse::<SessionId>().unwrap(), s);
    }
}
