//! Message shapes shared by events and read models, named after OpenCode's (`message-v2.ts`):
//! parts, token usage, model references, session status and message errors.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, PartId};

/// A part of a message: text, or the model's reasoning (OpenCode's `reasoning` part); tool
/// calls come later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Part {
    Text {
        id: PartId,
        #[serde(rename = "messageID")]
        message_id: MessageId,
        text: String,
    },
    Reasoning {
        id: PartId,
        #[serde(rename = "messageID")]
        message_id: MessageId,
        text: String,
    },
}

impl Part {
    /// The text this part contributes to the conversation (reasoning contributes none).
    pub fn text(&self) -> &str {
        match self {
            Part::Text { text, .. } => text,
            Part::Reasoning { .. } => "",
        }
    }

    /// How much text the part holds, whatever its kind (for size limits).
    pub fn len(&self) -> usize {
        match self {
            Part::Text { text, .. } | Part::Reasoning { text, .. } => text.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn id(&self) -> &PartId {
        match self {
            Part::Text { id, .. } | Part::Reasoning { id, .. } => id,
        }
    }
}

/// Which model answers, as OpenCode names it: `{providerID, modelID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    #[serde(rename = "providerID")]
    pub provider_id: String,
    #[serde(rename = "modelID")]
    pub model_id: String,
}

/// Token counts of one reply, as OpenCode reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub reasoning: u64,
    pub cache: CacheUsage,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CacheUsage {
    pub read: u64,
    pub write: u64,
}

/// OpenCode's `SessionStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SessionStatus {
    Idle,
    Busy,
}

impl SessionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionStatus::Idle => "idle",
            SessionStatus::Busy => "busy",
        }
    }
}

/// Why an assistant message did not finish normally (OpenCode's `error.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MessageErrorName {
    MessageAbortedError,
    #[serde(rename = "APIError")]
    ApiError,
    ProviderAuthError,
    UnknownError,
}

/// What went wrong, classified: the detail (a provider's error body, an internal URL) stays in
/// the worker's log and never reaches events, read models or users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The provider refused the credentials (HTTP 401/403).
    Auth,
    /// The provider is limiting requests (HTTP 429).
    RateLimited,
    /// The provider is overloaded or failed (HTTP 5xx, Anthropic's 529).
    ProviderFailed,
    /// The provider rejected the request (other HTTP 4xx).
    Rejected,
    /// The provider could not be reached.
    Unreachable,
    /// The provider did not start, or stopped, answering in time.
    Timeout,
    /// The provider's stream broke off or was unreadable.
    StreamBroken,
    /// The user aborted the reply.
    Aborted,
    /// Our side failed (publishing, reading the conversation, no worker finished it).
    Internal,
}

/// OpenCode's message error, plus its classification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MessageError {
    pub name: MessageErrorName,
    /// Our wording of what happened, never the provider's text.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    /// The provider's HTTP status, if it answered with an error.
    #[serde(rename = "statusCode", default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// The provider's id for the failed request (to quote to its support).
    #[serde(rename = "requestID", default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl MessageError {
    pub fn new(name: MessageErrorName, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
            kind: Some(kind),
            status_code: None,
            request_id: None,
        }
    }
}

/// How an assistant reply ended, as reported by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model finished its answer.
    Stop,
    /// The model hit its output token limit.
    Length,
    /// A user aborted the reply.
    Aborted,
    /// The provider failed; see the message error.
    Error,
}
