//! Request and response bodies of the REST API and of internal commands.
//!
//! Request bodies deny unknown fields: a typo in a field name is an error, not a silent default.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::{Role, WorkspaceRole};
use crate::ids::{
    ApiKeyId, ConnectionId, MessageId, OrganizationId, PartId, ProjectId, SessionId, UserId,
    WorkspaceId,
};
use crate::message::{FinishReason, MessageError, ModelRef, TokenUsage};

/// Longest name or title accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Most parts in one prompt.
pub const MAX_PROMPT_PARTS: usize = 64;
/// Most prompts one session holds; a longer conversation starts a new session.
pub const MAX_SESSION_TURNS: u32 = 1_000;
/// Most text one session holds, prompts and replies together, in bytes (UTF-8).
pub const MAX_SESSION_BYTES: u64 = 8 * 1024 * 1024;
/// How far ahead of the server's clock the time in a client-chosen id may be (clock skew).
pub const MAX_CLIENT_ID_SKEW_MS: u64 = 60_000;
/// Largest event the event store accepts, serialised as stored: it must fit the bus's payload
/// limit (NATS' default 1 MiB) with its envelope, whatever JSON escaping does to the text.
pub const MAX_EVENT_BYTES: usize = 768 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Who to add: their user id, or the email they signed in with (exactly one of the two).
    #[serde(rename = "userID")]
    pub user_id: Option<UserId>,
    pub email: Option<String>,
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameOrganization {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferOwnership {
    #[serde(rename = "userID")]
    pub user_id: UserId,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub title: Option<String>,
    /// The workspace's Git project the session works on.
    #[serde(rename = "projectID")]
    pub project_id: Option<ProjectId>,
}

/// OpenCode's session creation body (`POST /session`). Its clients also send `permission` rules
/// (for tools, which do not run on this service), and newer ones `agent`, `model` or
/// `workspaceID`: accepted and not used, so that every client version can create sessions.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct OpenCodeCreateSession {
    pub title: Option<String>,
    /// A parent session: child sessions are not supported (400).
    #[serde(rename = "parentID")]
    pub parent_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameWorkspace {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetWorkspaceMember {
    pub role: WorkspaceRole,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProject {
    #[serde(rename = "repositoryURL")]
    pub repository_url: String,
    #[serde(rename = "defaultBranch")]
    pub default_branch: Option<String>,
}

/// A part of a prompt, as OpenCode's `TextPartInput` (ids are optional and assigned if absent).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PartInput {
    Text { id: Option<PartId>, text: String },
}

/// OpenCode's `PromptInput`, reduced to what this service does today.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptInput {
    #[serde(rename = "messageID")]
    pub message_id: Option<MessageId>,
    pub model: Option<ModelRef>,
    pub parts: Vec<PartInput>,
    /// The agent to answer: only this service's one, `build` (what OpenCode's clients send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// A model variant (OpenCode's reasoning-effort presets): accepted and not used, as the
    /// organization's models here have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The one agent this service runs (OpenCode's default agent's name).
pub const AGENT: &str = "build";

/// Longest lifetime of a personal API key, in days.
pub const MAX_API_KEY_DAYS: u32 = 365;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    /// Days until the key stops working (1 to 365, default 90).
    #[serde(rename = "expiresInDays")]
    pub expires_in_days: Option<u32>,
    /// The key's default workspace (of its organization, and one its owner may work in): where
    /// OpenCode's own clients create and list sessions unless their directory names another.
    #[serde(rename = "workspaceID", default)]
    pub workspace_id: Option<WorkspaceId>,
}

/// The new key. `key` is shown this once: only its hash is kept.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct ApiKeyCreated {
    pub id: ApiKeyId,
    pub key: String,
    #[serde(rename = "expiresAt")]
    pub expires_at: i64,
    #[serde(rename = "consistencyToken")]
    pub consistency_token: String,
}

/// Every error answer (RFC 9457 `application/problem+json`), as `platform::problem` writes it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct ProblemDetails {
    /// `about:blank`, or `urn:oc:problem:<limit>` for a limit reached.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a limit: the limit that was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// Returned by every command: what was created and a token for read-your-writes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Accepted {
    pub id: String,
    /// Pass as `X-Consistency-Token` (or `?consistency=`) to a read to see this write.
    #[serde(rename = "consistencyToken")]
    pub consistency_token: String,
}

/// Returned by a prompt.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct PromptAccepted {
    #[serde(rename = "sessionID")]
    pub session_id: SessionId,
    #[serde(rename = "userMessageID")]
    pub user_message_id: MessageId,
    #[serde(rename = "assistantMessageID")]
    pub assistant_message_id: MessageId,
    #[serde(rename = "consistencyToken")]
    pub consistency_token: String,
}

/// Internal command from an LLM worker: a reply is finished (normally, aborted or failed).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteMessage {
    #[serde(rename = "organizationID")]
    pub organization_id: OrganizationId,
    #[serde(rename = "workspaceID")]
    pub workspace_id: WorkspaceId,
    #[serde(rename = "sessionID")]
    pub session_id: SessionId,
    #[serde(rename = "messageID")]
    pub message_id: MessageId,
    #[serde(rename = "partID")]
    pub part_id: PartId,
    pub text: String,
    /// The model's reasoning, if it streamed any: a part of its own, before the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<ReasoningReport>,
    pub finish: FinishReason,
    pub error: Option<MessageError>,
    pub tokens: TokenUsage,
    /// The model that actually answered.
    pub model: ModelRef,
    /// The provider connection that answered and paid; none for the default provider.
    #[serde(rename = "connectionID", default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<ConnectionId>,
    /// Who prompted (their token rate is charged with the reply's tokens).
    #[serde(rename = "userID", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The cost the provider reported itself (OpenRouter does), in micro-dollars; it wins over
    /// the catalog's prices.
    #[serde(rename = "providerCostMicroDollars", default, skip_serializing_if = "Option::is_none")]
    pub provider_cost_micro_dollars: Option<u64>,
    pub attempt: u32,
    /// The envelope id of the prompt event this answers.
    #[serde(rename = "causationID")]
    pub causation_id: String,
}

/// Internal command from an LLM worker about to regenerate a reply (its prompt was delivered
/// again: the earlier attempt's worker died, or went silent past its ack deadline). From then on
/// only this attempt, or a later one, may complete the reply: an earlier attempt's worker that
/// wakes up and reports is refused, so the reply clients follow (the newest attempt) is the one
/// stored.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryReply {
    #[serde(rename = "organizationID")]
    pub organization_id: OrganizationId,
    #[serde(rename = "sessionID")]
    pub session_id: SessionId,
    #[serde(rename = "messageID")]
    pub message_id: MessageId,
    pub attempt: u32,
    /// The envelope id of the prompt event the reply answers.
    #[serde(rename = "causationID")]
    pub causation_id: String,
}

/// The reasoning part of a reply.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasoningReport {
    #[serde(rename = "partID")]
    pub part_id: PartId,
    pub text: String,
}

/// The command service's answer to an internal command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommandReply {
    /// Recorded now.
    Done {
        /// The sequence of the last event the command committed, where it committed any (a
        /// worker that answered a session's prompt knows its conversation up to there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        through: Option<u64>,
    },
    /// Already recorded earlier (a retry); nothing changed.
    AlreadyDone,
    /// Rejected for good: retrying will not help.
    Rejected { reason: String },
    /// A later attempt of the reply has taken it over: this attempt stops, and leaves the
    /// prompt's delivery to the later one (no acknowledgement).
    Superseded,
    /// A transient failure: retry later.
    Unavailable { reason: String },
}

/// A read-your-writes position: "the read model reflects this aggregate up to this sequence".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub aggregate_id: String,
    pub sequence: u64,
}

impl ConsistencyToken {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.aggregate_id, self.sequence)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (id, seq) = s.rsplit_once('.')?;
        let valid_id = id.len() <= 64
            && id.split_once('_').is_some()
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        valid_id.then_some(())?;
        Some(Self { aggregate_id: id.to_owned(), sequence: seq.parse().ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_tokens_round_trip_and_reject_garbage() {
        let t = ConsistencyToken { aggregate_id: SessionId::new().to_string(), sequence: 7 };
        assert_eq!(ConsistencyToken::decode(&t.encode()), Some(t));
        assert_eq!(ConsistencyToken::decode("nonsense"), None);
        assert_eq!(ConsistencyToken::decode("ses_x.-1"), None);
        assert_eq!(ConsistencyToken::decode("a b.1"), None);
    }

    #[test]
    fn a_done_reply_reads_across_versions_of_either_side() {
        // A command service from before `through` answers a newer worker, and the reverse.
        let old: CommandReply = serde_json::from_str(r#"{"outcome":"done"}"#).unwrap();
        assert_eq!(old, CommandReply::Done { through: None });
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(tag = "outcome", rename_all = "snake_case")]
        enum Before {
            Done,
        }
        let new = serde_json::to_string(&CommandReply::Done { through: Some(9) }).unwrap();
        assert_eq!(serde_json::from_str::<Before>(&new).unwrap(), Before::Done);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r = serde_json::from_str::<CreateOrganization>(r#"{"name":"a","nmae":"b"}"#);
        assert!(r.is_err());
    }
}
