//! The envelope every message on the bus carries: who, what, where in which stream, and why.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::OrganizationId;

/// Aggregate types, as the event store names them.
pub mod aggregate {
    pub const ORGANIZATION: &str = "organization";
    pub const WORKSPACE: &str = "workspace";
    pub const SESSION: &str = "session";
    pub const API_KEY: &str = "api_key";
}

/// A bus message. `P` is the payload enum (`SessionEvent`, `LiveEvent`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<P> {
    /// Unique and stable across re-publication: `<aggregateID>:<sequence>` for domain events,
    /// `<messageID>:<attempt>:<n>` for live events. Also the `Nats-Msg-Id`.
    pub id: String,
    #[serde(rename = "organizationID")]
    pub organization_id: OrganizationId,
    #[serde(rename = "aggregateType")]
    pub aggregate_type: String,
    #[serde(rename = "aggregateID")]
    pub aggregate_id: String,
    /// The aggregate's sequence number; absent on live events, which are not stored.
    pub sequence: Option<u64>,
    #[serde(rename = "eventType")]
    pub event_type: String,
    #[serde(rename = "eventVersion")]
    pub event_version: String,
    /// Milliseconds since the Unix epoch when the event was recorded.
    pub time: i64,
    /// The user (`usr_…`) or service (`service:<name>`) that caused the event.
    pub actor: Option<String>,
    #[serde(rename = "correlationID")]
    pub correlation_id: Option<String>,
    #[serde(rename = "causationID")]
    pub causation_id: Option<String>,
    pub payload: P,
}

/// The envelope id of a stored event.
pub fn event_id(aggregate_id: &str, sequence: u64) -> String {
    format!("{aggregate_id}:{sequence}")
}

/// Metadata keys the command side attaches to every event it stores.
pub mod metadata {
    pub const ORGANIZATION_ID: &str = "organization_id";
    pub const WORKSPACE_ID: &str = "workspace_id";
    pub const SESSION_ID: &str = "session_id";
    pub const ACTOR: &str = "actor";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
    /// The W3C trace context of the command that stored the event (only with tracing on).
    pub const TRACEPARENT: &str = "traceparent";
}
