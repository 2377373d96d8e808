//! Live events: published by the LLM worker straight to JetStream while a reply streams, never
//! stored in the event store. The final text arrives as the `message.completed` domain event.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, PartId, SessionId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "properties")]
pub enum LiveEvent {
    /// A worker began (or, after a worker died, began again) generating this reply. Clients
    /// discard any partial text they hold for the message when `attempt` changes.
    #[serde(rename = "message.started")]
    MessageStarted {
        #[serde(rename = "sessionID")]
        session_id: SessionId,
        #[serde(rename = "messageID")]
        message_id: MessageId,
        #[serde(rename = "partID")]
        part_id: PartId,
        attempt: u32,
        time: i64,
    },
    /// Text to append to `part[field]` (OpenCode's `message.part.delta`).
    #[serde(rename = "message.part.delta")]
    PartDelta {
        #[serde(rename = "sessionID")]
        session_id: SessionId,
        #[serde(rename = "messageID")]
        message_id: MessageId,
        #[serde(rename = "partID")]
        part_id: PartId,
        field: String,
        delta: String,
        attempt: u32,
    },
}

impl crate::events::EventName for LiveEvent {
    fn event_type(&self) -> &'static str {
        match self {
            LiveEvent::MessageStarted { .. } => "message.started",
            LiveEvent::PartDelta { .. } => "message.part.delta",
        }
    }
}
