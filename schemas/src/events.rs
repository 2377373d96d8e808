//! Domain events, one enum per aggregate, versioned.
//!
//! Serialised as OpenCode frames its bus events, `{"type": "...", "properties": {...}}`, so the
//! payload stored in the event store, carried on the bus and written to SSE is one shape.
//! `event_type()` and `event_version()` are what the event store records; a change that is not
//! backwards compatible gets a new version and an upcaster in the command service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{
    ApiKeyId, BudgetId, ConnectionId, MessageId, OrganizationId, ProjectId, SessionId, UserId,
    WorkspaceId,
};
use crate::message::{FinishReason, MessageError, ModelRef, Part, SessionStatus, TokenUsage};
use crate::provider::{ByokPolicy, ConnectionInfo, ConnectionRef};

/// The version every event type currently has.
pub const V1: &str = "1.0";

/// Roles in an organization; what each may do is `policy::POLICY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "properties")]
pub enum OrganizationEvent {
    #[serde(rename = "organization.created")]
    Created {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        name: String,
        #[serde(rename = "ownerID")]
        owner_id: UserId,
        time: i64,
    },
    #[serde(rename = "organization.member_added")]
    MemberAdded {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "userID")]
        user_id: UserId,
        role: Role,
        time: i64,
    },
    #[serde(rename = "organization.renamed")]
    Renamed {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        name: String,
        time: i64,
    },
    #[serde(rename = "organization.member_role_changed")]
    MemberRoleChanged {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "userID")]
        user_id: UserId,
        role: Role,
        time: i64,
    },
    #[serde(rename = "organization.member_removed")]
    MemberRemoved {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "userID")]
        user_id: UserId,
        time: i64,
    },
    /// A provider connection was added, or changed (the whole new state; a new key shows as a
    /// new fingerprint).
    #[serde(rename = "organization.connection_set")]
    ConnectionSet {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        /// Boxed: far larger than the other events (serialised the same).
        connection: Box<ConnectionInfo>,
        #[serde(rename = "actorID")]
        actor_id: UserId,
        time: i64,
    },
    /// A provider connection was deleted, and its key destroyed.
    #[serde(rename = "organization.connection_removed")]
    ConnectionRemoved {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "connectionID")]
        connection_id: ConnectionId,
        time: i64,
    },
    /// The model prompts use when they name none (and their session and workspace have none).
    #[serde(rename = "organization.default_model_set")]
    DefaultModelSet {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        model: ModelRef,
        time: i64,
    },
    /// How fast members, and the organization, may prompt.
    #[serde(rename = "organization.prompt_limits_set")]
    PromptLimitsSet {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        limits: crate::provider::SetPromptLimits,
        time: i64,
    },
    /// A spend budget was set (created or changed).
    #[serde(rename = "organization.budget_set")]
    BudgetSet {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        budget: crate::budget::Budget,
        #[serde(rename = "actorID")]
        actor_id: UserId,
        time: i64,
    },
    #[serde(rename = "organization.budget_removed")]
    BudgetRemoved {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "budgetID")]
        budget_id: BudgetId,
        #[serde(rename = "actorID")]
        actor_id: UserId,
        time: i64,
    },
    /// A budget reached a soft threshold, or refused a prompt; at most once per period each.
    #[serde(rename = "organization.budget_alert")]
    BudgetAlert {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "budgetID")]
        budget_id: BudgetId,
        alert: crate::budget::BudgetAlert,
        scope: crate::budget::BudgetScope,
        /// Used (spent and held for running replies) and the amount, in micro-dollars.
        #[serde(rename = "usedMicroDollars")]
        used_micro_dollars: u64,
        #[serde(rename = "amountMicroDollars")]
        amount_micro_dollars: u64,
        /// Until when (ms since the epoch) this alert is not raised again: the period's end.
        until: i64,
        time: i64,
    },
    /// Whether members may bring their own provider keys.
    #[serde(rename = "organization.byok_policy_set")]
    ByokPolicySet {
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        policy: ByokPolicy,
        time: i64,
    },
}

/// Roles in a workspace, for organization members and viewers (owners and admins of the
/// organization administer every workspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceRole {
    Admin,
    Member,
    Viewer,
}

impl WorkspaceRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkspaceRole::Admin => "admin",
            WorkspaceRole::Member => "member",
            WorkspaceRole::Viewer => "viewer",
        }
    }
}

/// A Git project: projects are identified by their repositories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Project {
    pub id: ProjectId,
    #[serde(rename = "repositoryURL")]
    pub repository_url: String,
    #[serde(rename = "defaultBranch")]
    pub default_branch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "properties")]
pub enum WorkspaceEvent {
    #[serde(rename = "workspace.created")]
    Created {
        #[serde(rename = "workspaceID")]
        workspace_id: WorkspaceId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        name: String,
        #[serde(rename = "createdBy")]
        created_by: UserId,
        time: i64,
    },
    #[serde(rename = "workspace.renamed")]
    Renamed {
        #[serde(rename = "workspaceID")]
        workspace_id: WorkspaceId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        name: String,
        time: i64,
    },
    /// Read-only from now on: no new sessions or prompts.
    #[serde(rename = "workspace.archived")]
    Archived {
        #[serde(rename = "workspaceID")]
        workspace_id: WorkspaceId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        time: i64,
    },
    /// A user's workspace role, set or changed.
    #[serde(rename = "workspace.member_set")]
    MemberSet {
        #[serde(rename = "workspaceID")]
        workspace_id: WorkspaceId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "userID")]
        user_id: UserId,
        role: WorkspaceRole,
        time: i64,
    },
    #[serde(rename = "workspace.member_removed")]
    MemberRemoved {
        #[serde(rename = "workspaceID")]
        workspace_id: WorkspaceId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "userID")]
        user_id: UserId,
        time: i64,
    },
    #[serde(rename = "workspace.project_added")]
    ProjectAdded {
        #[serde(rename = "workspaceID")]
        workspace_id: WorkspaceId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        project: Project,
        time: i64,
    },
    /// The model prompts in this workspace use when they name none (before the organization's).
    #[serde(rename = "workspace.default_model_set")]
    DefaultModelSet {
        #[serde(rename = "workspaceID")]
        workspace_id: WorkspaceId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        model: ModelRef,
        time: i64,
    },
}

/// A personal API key's life. No secret and no hash: those live only in the credential table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "properties")]
pub enum ApiKeyEvent {
    #[serde(rename = "api_key.created")]
    Created {
        #[serde(rename = "keyID")]
        key_id: ApiKeyId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "userID")]
        user_id: UserId,
        name: String,
        #[serde(rename = "expiresAt")]
        expires_at: i64,
        time: i64,
        /// The key's default workspace, if its owner chose one.
        #[serde(rename = "workspaceID", default, skip_serializing_if = "Option::is_none")]
        workspace_id: Option<WorkspaceId>,
    },
    #[serde(rename = "api_key.revoked")]
    Revoked {
        #[serde(rename = "keyID")]
        key_id: ApiKeyId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        time: i64,
    },
}

impl EventName for ApiKeyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ApiKeyEvent::Created { .. } => "api_key.created",
            ApiKeyEvent::Revoked { .. } => "api_key.revoked",
        }
    }
}

/// The user's side of a prompt, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserMessage {
    pub id: MessageId,
    #[serde(rename = "userID")]
    pub user_id: UserId,
    pub parts: Vec<Part>,
    pub model: ModelRef,
    pub time: i64,
}

/// The final state of an assistant reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AssistantCompletion {
    pub id: MessageId,
    #[serde(rename = "parentID")]
    pub parent_id: MessageId,
    pub parts: Vec<Part>,
    pub finish: FinishReason,
    pub error: Option<MessageError>,
    pub tokens: TokenUsage,
    pub model: ModelRef,
    /// The provider connection that answered and paid; none for the default provider.
    #[serde(rename = "connectionID", default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<ConnectionId>,
    /// Who prompted, and where: what usage is attributed to.
    #[serde(rename = "userID", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    #[serde(rename = "workspaceID", default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<WorkspaceId>,
    /// What the reply cost, and the prices it was computed with (those in force when it
    /// completed); none when nothing prices the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<ReplyCost>,
    /// Paid with the prompting member's own key (not the organization's).
    #[serde(rename = "ownKey", default, skip_serializing_if = "std::ops::Not::not")]
    pub own_key: bool,
    /// The API key the prompt was sent with, if any.
    #[serde(rename = "apiKeyID", default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<ApiKeyId>,
    /// Which delivery of the prompt produced this reply (1 unless a worker died).
    pub attempt: u32,
    pub time: i64,
}

/// A reply's cost, exactly, in micro-dollars (no floats in money).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyCost {
    #[serde(rename = "microDollars")]
    pub micro_dollars: u64,
    /// The catalog prices used; none when the provider reported the cost itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<crate::provider::ModelCost>,
}

/// How many events the commit that accepts a prompt holds: `session.status{busy}`, then
/// `session.prompted` (last, because it starts a worker). A prompt's sequence minus this is the
/// session's last event before the prompt.
pub const PROMPT_COMMIT_EVENTS: u64 = 2;

/// How many events the commit that completes a reply holds: `message.completed` (whose text is
/// the worker's report), then `session.status{idle}`. A worker told where such a commit ended
/// knows where its reply is.
pub const COMPLETE_COMMIT_EVENTS: u64 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "properties")]
pub enum SessionEvent {
    #[serde(rename = "session.created")]
    Created {
        #[serde(rename = "sessionID")]
        session_id: SessionId,
        #[serde(rename = "organizationID")]
        organization_id: OrganizationId,
        #[serde(rename = "workspaceID")]
        workspace_id: WorkspaceId,
        /// The Git project the session works on, if any (optional, so older events still read).
        #[serde(rename = "projectID", default, skip_serializing_if = "Option::is_none")]
        project_id: Option<ProjectId>,
        title: String,
        #[serde(rename = "createdBy")]
        created_by: UserId,
        time: i64,
    },
    /// A user prompted; an assistant reply with `assistantMessageID` is now owed.
    #[serde(rename = "session.prompted")]
    Prompted {
        #[serde(rename = "sessionID")]
        session_id: SessionId,
        message: UserMessage,
        #[serde(rename = "assistantMessageID")]
        assistant_message_id: MessageId,
        /// The connection that answers (and pays); none for the deployment's default provider.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection: Option<ConnectionRef>,
        /// The API key the prompt was sent with, if any (its budget pays too).
        #[serde(rename = "apiKeyID", default, skip_serializing_if = "Option::is_none")]
        api_key_id: Option<ApiKeyId>,
    },
    #[serde(rename = "session.status")]
    StatusChanged {
        #[serde(rename = "sessionID")]
        session_id: SessionId,
        status: SessionStatus,
    },
    /// A user asked to stop the reply in progress; the worker ends it as aborted.
    #[serde(rename = "session.abort_requested")]
    AbortRequested {
        #[serde(rename = "sessionID")]
        session_id: SessionId,
        #[serde(rename = "messageID")]
        message_id: MessageId,
        #[serde(rename = "requestedBy")]
        requested_by: UserId,
        time: i64,
    },
    /// A worker regenerates the reply as a new attempt (its prompt was delivered again); only
    /// this attempt or a later one may complete it.
    #[serde(rename = "message.retried")]
    MessageRetried {
        #[serde(rename = "sessionID")]
        session_id: SessionId,
        #[serde(rename = "messageID")]
        message_id: MessageId,
        attempt: u32,
        time: i64,
    },
    #[serde(rename = "message.completed")]
    MessageCompleted {
        #[serde(rename = "sessionID")]
        session_id: SessionId,
        message: AssistantCompletion,
    },
}

/// Name and version of an event, as the event store and the bus envelope record them.
pub trait EventName {
    fn event_type(&self) -> &'static str;
    fn event_version(&self) -> &'static str {
        V1
    }
}

impl EventName for OrganizationEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrganizationEvent::Created { .. } => "organization.created",
            OrganizationEvent::MemberAdded { .. } => "organization.member_added",
            OrganizationEvent::Renamed { .. } => "organization.renamed",
            OrganizationEvent::MemberRoleChanged { .. } => "organization.member_role_changed",
            OrganizationEvent::MemberRemoved { .. } => "organization.member_removed",
            OrganizationEvent::ConnectionSet { .. } => "organization.connection_set",
            OrganizationEvent::ConnectionRemoved { .. } => "organization.connection_removed",
            OrganizationEvent::ByokPolicySet { .. } => "organization.byok_policy_set",
            OrganizationEvent::DefaultModelSet { .. } => "organization.default_model_set",
            OrganizationEvent::PromptLimitsSet { .. } => "organization.prompt_limits_set",
            OrganizationEvent::BudgetSet { .. } => "organization.budget_set",
            OrganizationEvent::BudgetRemoved { .. } => "organization.budget_removed",
            OrganizationEvent::BudgetAlert { .. } => "organization.budget_alert",
        }
    }
}

impl EventName for WorkspaceEvent {
    fn event_type(&self) -> &'static str {
        match self {
            WorkspaceEvent::Created { .. } => "workspace.created",
            WorkspaceEvent::Renamed { .. } => "workspace.renamed",
            WorkspaceEvent::Archived { .. } => "workspace.archived",
            WorkspaceEvent::MemberSet { .. } => "workspace.member_set",
            WorkspaceEvent::MemberRemoved { .. } => "workspace.member_removed",
            WorkspaceEvent::ProjectAdded { .. } => "workspace.project_added",
            WorkspaceEvent::DefaultModelSet { .. } => "workspace.default_model_set",
        }
    }
}

impl SessionEvent {
    /// The session the event is about.
    pub fn session_id(&self) -> &SessionId {
        match self {
            SessionEvent::Created { session_id, .. }
            | SessionEvent::Prompted { session_id, .. }
            | SessionEvent::StatusChanged { session_id, .. }
            | SessionEvent::AbortRequested { session_id, .. }
            | SessionEvent::MessageRetried { session_id, .. }
            | SessionEvent::MessageCompleted { session_id, .. } => session_id,
        }
    }
}

impl EventName for SessionEvent {
    fn event_type(&self) -> &'static str {
        match self {
            SessionEvent::Created { .. } => "session.created",
            SessionEvent::Prompted { .. } => "session.prompted",
            SessionEvent::StatusChanged { .. } => "session.status",
            SessionEvent::AbortRequested { .. } => "session.abort_requested",
            SessionEvent::MessageRetried { .. } => "message.retried",
            SessionEvent::MessageCompleted { .. } => "message.completed",
        }
    }
}

#[cfg(feature = "cqrs")]
mod cqrs_impls {
    //! The cqrs-es trait, implemented here because of the orphan rule; only the command service
    //! turns the `cqrs` feature on.
    use super::*;

    macro_rules! domain_event {
        ($t:ty) => {
            impl cqrs_es::DomainEvent for $t {
                fn event_type(&self) -> String {
                    EventName::event_type(self).to_owned()
                }
                fn event_version(&self) -> String {
                    EventName::event_version(self).to_owned()
                }
            }
        };
    }
    domain_event!(OrganizationEvent);
    domain_event!(WorkspaceEvent);
    domain_event!(SessionEvent);
    domain_event!(ApiKeyEvent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_as_type_and_properties() {
        let e = SessionEvent::StatusChanged {
            session_id: SessionId::new(),
            status: SessionStatus::Idle,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], e.event_type());
        assert_eq!(v["properties"]["status"]["type"], "idle");
        assert_eq!(serde_json::from_value::<SessionEvent>(v).unwrap(), e);
    }
}
