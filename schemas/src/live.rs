//! Live events: published by the LLM worker straight to JetStream while a reply streams, never
//! stored in the event store. The final text arrives as the `message.completed` domain event.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, PartId, SessionId, UserId};
use crate::message::Part;

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
    /// A part began (OpenCode's `message.part.updated`): announces a reasoning part before its
    /// deltas, so clients know its kind.
    #[serde(rename = "message.part.updated")]
    PartUpdated {
        #[serde(rename = "sessionID")]
        session_id: SessionId,
        #[serde(rename = "messageID")]
        message_id: MessageId,
        part: Part,
        attempt: u32,
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

impl LiveEvent {
    /// The session the event is about.
    pub fn session_id(&self) -> &SessionId {
        match self {
            LiveEvent::MessageStarted { session_id, .. }
            | LiveEvent::PartUpdated { session_id, .. }
            | LiveEvent::PartDelta { session_id, .. } => session_id,
        }
    }
}

impl crate::events::EventName for LiveEvent {
    fn event_type(&self) -> &'static str {
        match self {
            LiveEvent::MessageStarted { .. } => "message.started",
            LiveEvent::PartUpdated { .. } => "message.part.updated",
            LiveEvent::PartDelta { .. } => "message.part.delta",
        }
    }
}

/// What an OpenCode event stream (query service) says about a session it follows, on
/// `subjects::stream_receipts`: once when it begins to follow it, and again each time it has been
/// sent one of its replies. `opencode run` exits as soon as its synchronous prompt is answered,
/// printing only what its stream brought by then, so the answer waits for its user's streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReceipt {
    /// The stream, unique while it lives.
    pub stream: String,
    /// Whose stream it is.
    pub user: UserId,
    /// The reply it has been sent (its completion), if this is not the first word.
    pub sent: Option<MessageId>,
}
