//! Live events: published by the LLM worker straight to JetStream while a reply streams, never
//! stored in the event store. The final text arrives as the `message.completed` domain event.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, PartId, SessionId, UserId, WorkspaceId};
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

/// What an OpenCode event stream (query service) says, so that a synchronous prompt's answer
/// waits for its asker's streams: `opencode run` exits as soon as its synchronous prompt is
/// answered, printing only what its stream brought by then. `Open` and `Closed` go on
/// `subjects::user_streams` (when the stream opens and ends, and whenever its user's roll is
/// called); `Sent` goes on `subjects::stream_receipts` of the reply's session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReceipt {
    /// The stream, unique while it lives.
    pub stream: String,
    /// Whose stream it is.
    pub user: UserId,
    pub said: StreamSaid,
}

/// What a stream says in one receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreamSaid {
    /// It is open, and is sent every event of this workspace's sessions.
    Open { workspace: WorkspaceId },
    /// It has been sent this reply's completion.
    Sent { reply: MessageId },
    /// It has ended.
    Closed,
}
