//! A row of the event store turned into its bus envelope and subject. Shared by the outbox relay
//! (which publishes it) and the projector's rebuild (which replays it), so both see one shape.

use schemas::envelope::{Envelope, event_id, metadata};
use schemas::ids::{OrganizationId, SessionId, WorkspaceId};
use schemas::subjects;
use serde_json::Value;

/// The columns of an `events` row that the envelope needs.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at_ms: i64,
}

impl StoredEvent {
    /// A metadata value the command side stored with the event.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// The envelope and the subject it is published on. Fails only for an event stored without
    /// the organization metadata the command side always writes.
    pub fn to_envelope(&self) -> anyhow::Result<(String, Envelope<Value>)> {
        let org: OrganizationId = self
            .meta(metadata::ORGANIZATION_ID)
            .ok_or_else(|| {
                anyhow::anyhow!("event {}:{} has no organization", self.aggregate_id, self.sequence)
            })?
            .parse()?;
        let workspace =
            self.meta(metadata::WORKSPACE_ID).map(str::parse::<WorkspaceId>).transpose()?;
        let session = self.meta(metadata::SESSION_ID).map(str::parse::<SessionId>).transpose()?;
        let subject =
            subjects::domain_event(&org, workspace.as_ref(), session.as_ref(), &self.event_type);
        let sequence = u64::try_from(self.sequence)?;
        let envelope = Envelope {
            id: event_id(&self.aggregate_id, sequence),
            organization_id: org,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: Some(sequence),
            event_type: self.event_type.clone(),
            event_version: self.event_version.clone(),
            time: self.recorded_at_ms,
            actor: self.meta(metadata::ACTOR).map(str::to_owned),
            correlation_id: self.meta(metadata::CORRELATION_ID).map(str::to_owned),
            causation_id: self.meta(metadata::CAUSATION_ID).map(str::to_owned),
            payload: self.payload.clone(),
        };
        Ok((subject, envelope))
    }
}
