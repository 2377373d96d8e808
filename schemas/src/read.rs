//! Response bodies of the query service's REST reads, typed like the request bodies so the
//! published OpenAPI document (`openapi.rs`) is generated from what the code really sends.
//! Field names follow OpenCode's casing (`sessionID`, `time.created`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::{Role, WorkspaceRole};
use crate::ids::{
    ApiKeyId, ConnectionId, MessageId, OrganizationId, ProjectId, SessionId, UserId, WorkspaceId,
};
use crate::message::{FinishReason, MessageError, ModelRef, Part, SessionStatus, TokenUsage};

/// One page of a listing. Pass `cursor.next` as `?cursor=` for the next page; `null` at the end.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "PageOf{T}")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub cursor: Cursor,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Cursor {
    pub next: Option<String>,
}

/// When something was created (milliseconds since the Unix epoch, as everywhere).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub struct Created {
    pub created: i64,
}

/// `GET /me`: the caller.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Me {
    #[serde(rename = "userID")]
    pub user_id: UserId,
    pub email: Option<String>,
    #[serde(rename = "displayName")]
    pub display_name: Option<String>,
}

/// An organization the caller belongs to, with their role in it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OrganizationSummary {
    pub id: OrganizationId,
    pub name: String,
    #[serde(rename = "ownerID")]
    pub owner_id: UserId,
    pub time: Created,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub struct Added {
    pub added: i64,
}

/// A member of an organization.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    #[serde(rename = "userID")]
    pub user_id: UserId,
    pub role: Role,
    pub time: Added,
    /// Erased accounts and people who never shared one have none.
    pub email: Option<String>,
    #[serde(rename = "displayName")]
    pub display_name: Option<String>,
}

/// A workspace in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceSummary {
    pub id: WorkspaceId,
    #[serde(rename = "organizationID")]
    pub organization_id: OrganizationId,
    pub name: String,
    /// Read-only: no new sessions or prompts.
    pub archived: bool,
    #[serde(rename = "createdBy")]
    pub created_by: UserId,
    pub time: Created,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceMember {
    #[serde(rename = "userID")]
    pub user_id: UserId,
    pub role: WorkspaceRole,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProjectView {
    pub id: ProjectId,
    #[serde(rename = "repositoryURL")]
    pub repository_url: String,
    #[serde(rename = "defaultBranch")]
    pub default_branch: String,
    pub time: Created,
}

/// `GET /workspace/{ws}`: a workspace with its members and projects.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceDetail {
    #[serde(flatten)]
    pub workspace: WorkspaceSummary,
    pub members: Vec<WorkspaceMember>,
    pub projects: Vec<ProjectView>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub struct SessionTimes {
    pub created: i64,
    pub updated: i64,
}

/// OpenCode's `GET /config`, as far as this service has settings for its clients: sessions are
/// not shared to a public page, and the service does not update itself from the client.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OpenCodeConfig {
    /// `"disabled"`: OpenCode's share links would publish a session outside the organization.
    pub share: String,
    pub autoupdate: bool,
}

/// OpenCode's `GET /path`: where a client works. Here every path is the workspace's
/// (`/<workspace id>`): there is no file system of the user's on the service.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OpenCodePath {
    pub home: String,
    pub state: String,
    pub config: String,
    pub worktree: String,
    pub directory: String,
}

/// A session (OpenCode's `Session.Info`, with our tenancy fields).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionView {
    pub id: SessionId,
    #[serde(rename = "organizationID")]
    pub organization_id: OrganizationId,
    #[serde(rename = "workspaceID")]
    pub workspace_id: WorkspaceId,
    #[serde(rename = "projectID")]
    pub project_id: Option<ProjectId>,
    pub title: String,
    /// OpenCode's directory of the session: `/<workspace id>`, which OpenCode's own clients send
    /// back to stay in the session's workspace (docs/opencode-clients.md).
    pub directory: String,
    /// OpenCode's short name of the session: its id here.
    pub slug: String,
    /// The service version that serves the session (OpenCode's `version`).
    pub version: String,
    pub status: SessionStatus,
    #[serde(rename = "createdBy")]
    pub created_by: UserId,
    pub time: SessionTimes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    User,
    Assistant,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema)]
pub struct MessageTime {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<i64>,
}

/// OpenCode's message info: a user message, or an assistant reply (whose outcome fields appear
/// once it completed).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessageInfo {
    pub id: MessageId,
    #[serde(rename = "sessionID")]
    pub session_id: SessionId,
    pub role: MessageRole,
    #[serde(default)]
    pub time: MessageTime,
    /// Who wrote a user message.
    #[serde(rename = "userID", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The model a user message asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    /// The prompt an assistant reply answers.
    #[serde(rename = "parentID", default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<MessageId>,
    #[serde(rename = "providerID", default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(rename = "modelID", default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<MessageError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenUsage>,
    /// In dollars, as OpenCode reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// The exact cost, in micro-dollars, where the model is priced.
    #[serde(rename = "costMicroDollars", default, skip_serializing_if = "Option::is_none")]
    pub cost_micro_dollars: Option<u64>,
    /// Which delivery of the prompt produced the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The provider connection that answered and paid (none: the default provider).
    #[serde(rename = "connectionID", default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<ConnectionId>,
    #[serde(rename = "abortRequested", default, skip_serializing_if = "Option::is_none")]
    pub abort_requested: Option<bool>,
    /// OpenCode's agent (and mode) of the message: this service's one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Where a reply was made, as OpenCode's clients show it: the workspace's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<MessagePath>,
}

/// When a reply was created, as OpenCode's clients are told everywhere (its live events, the
/// synchronous answer, the message list): the time in its id, made as the prompt was accepted.
/// OpenCode's clients key messages by creation time and id, so every report of one reply must
/// give the same time.
pub fn reply_created(reply: &MessageId) -> i64 {
    i64::try_from(reply.timestamp_ms()).unwrap_or(i64::MAX)
}

/// OpenCode's working and root directory of a reply.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessagePath {
    pub cwd: String,
    pub root: String,
}

/// A message with its parts (OpenCode's `{info, parts}`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessageView {
    pub info: MessageInfo,
    pub parts: Vec<Part>,
}

impl MessageInfo {
    /// The fields OpenCode's clients read of every message, which the read models leave out:
    /// the agent, and for a reply its path (`directory`, the workspace's), its creation time
    /// (`reply_created`) and, while it runs, zero tokens and cost.
    pub fn for_opencode(mut self, directory: &str) -> Self {
        self.agent.get_or_insert_with(|| crate::api::AGENT.into());
        self.mode.get_or_insert_with(|| crate::api::AGENT.into());
        if self.role == MessageRole::Assistant {
            self.time.created = Some(reply_created(&self.id));
            self.tokens.get_or_insert_with(TokenUsage::default);
            self.cost.get_or_insert(0.0);
            let path = || MessagePath { cwd: directory.into(), root: directory.into() };
            self.path.get_or_insert_with(path);
        }
        self
    }

    /// A completed reply's info, as the read models hold it (without `time.created`, which the
    /// prompt's acceptance set) and OpenCode's synchronous prompt answers it.
    pub fn of_completion(session: &SessionId, reply: &crate::events::AssistantCompletion) -> Self {
        MessageInfo {
            id: reply.id.clone(),
            session_id: session.clone(),
            role: MessageRole::Assistant,
            time: MessageTime { created: None, completed: Some(reply.time) },
            user_id: None,
            model: None,
            parent_id: Some(reply.parent_id.clone()),
            provider_id: Some(reply.model.provider_id.clone()),
            model_id: Some(reply.model.model_id.clone()),
            finish: Some(reply.finish),
            error: reply.error.clone(),
            tokens: Some(reply.tokens),
            // OpenCode's `cost` is dollars; the exact figure is micro-dollars.
            cost: Some(reply.cost.map_or(0.0, |c| c.micro_dollars as f64 / 1e6)),
            cost_micro_dollars: reply.cost.map(|c| c.micro_dollars),
            attempt: Some(reply.attempt),
            connection_id: reply.connection_id.clone(),
            abort_requested: None,
            agent: None,
            mode: None,
            path: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub struct KeyTimes {
    pub created: i64,
    pub expires: i64,
    pub revoked: Option<i64>,
}

/// One of the caller's API keys (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    #[serde(rename = "organizationID")]
    pub organization_id: OrganizationId,
    pub name: String,
    /// The key's default workspace, if it has one.
    #[serde(rename = "workspaceID", default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<WorkspaceId>,
    pub time: KeyTimes,
    /// Neither revoked nor expired.
    pub active: bool,
}

/// One entry of an organization's audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// The event's id, `<aggregateID>:<sequence>`.
    pub id: String,
    pub time: i64,
    /// `usr_…` or `service:<name>`.
    pub actor: Option<String>,
    /// The event type, e.g. `organization.member_added`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's properties.
    pub details: serde_json::Value,
}

/// A provider connection as its readers see it: never its key, only the key's fingerprint and
/// last four characters.
pub type ConnectionView = crate::provider::ConnectionInfo;

/// `GET /org/{org}/provider`: the connections the caller may see (the organization's, and their
/// own), and whether members may bring their own keys.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionList {
    pub items: Vec<ConnectionView>,
    pub byok: crate::provider::ByokPolicy,
}

/// A model the caller may prompt, as OpenCode's `/provider` lists models.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ModelEntry {
    pub id: String,
    #[serde(flatten)]
    pub info: crate::provider::ModelInfo,
}

/// A provider with the models the caller may prompt through it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProviderEntry {
    pub id: String,
    pub name: String,
    pub models: std::collections::BTreeMap<String, ModelEntry>,
}

/// `GET /org/{org}/model`: what the caller may prompt in the organization, in the shape of
/// OpenCode's `GET /provider`: every usable provider with its models, the default model by
/// provider, and the providers connected.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ModelCatalog {
    pub all: Vec<ProviderEntry>,
    pub default: std::collections::BTreeMap<String, String>,
    pub connected: Vec<String>,
}

/// Tokens, as usage reports add them up.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema)]
pub struct UsageTokens {
    pub input: u64,
    pub output: u64,
    pub reasoning: u64,
    pub cache: crate::message::CacheUsage,
}

/// One group of a usage report: the dimensions grouped by, and the sums.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct UsageRow {
    /// `YYYY-MM-DD` (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(rename = "organizationID", default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    #[serde(rename = "userID", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(rename = "workspaceID", default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    #[serde(rename = "providerID", default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(rename = "modelID", default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(rename = "connectionID", default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// Paid with a member's own key.
    #[serde(rename = "ownKey", default, skip_serializing_if = "Option::is_none")]
    pub own_key: Option<bool>,
    pub requests: u64,
    pub tokens: UsageTokens,
    #[serde(rename = "costMicroDollars")]
    pub cost_micro_dollars: u64,
    /// The same in dollars, for display.
    pub cost: f64,
}

/// `GET /org/{org}/usage`, `GET /workspace/{ws}/usage`, `GET /me/usage`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    #[serde(rename = "groupBy")]
    pub group_by: Vec<String>,
    pub items: Vec<UsageRow>,
    pub total: UsageRow,
}
