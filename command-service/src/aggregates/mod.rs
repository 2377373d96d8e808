//! The aggregates: the consistency boundaries commands run against.

mod api_key;
mod budgets;
mod connections;
mod organization;
mod session;
mod workspace;

pub use api_key::{ApiKey, ApiKeyCommand};
pub use budgets::{AlertReport, Payer};
pub use connections::{ConnectionChange, ConnectionSpec, DEFAULT_PROVIDER};
pub use organization::{Organization, OrganizationCommand};
pub use session::{Session, SessionCommand, default_title};
pub use workspace::{Workspace, WorkspaceCommand};

use schemas::ids::{OrganizationId, SessionId, WorkspaceId};

/// Where an aggregate's events belong; becomes event metadata and the bus subject.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub organization: Option<OrganizationId>,
    pub workspace: Option<WorkspaceId>,
    pub session: Option<SessionId>,
}

/// Implemented by every aggregate so the executor can label its events.
pub trait Scoped: cqrs_es::Aggregate {
    fn scope(&self) -> Scope;
    /// The organization and workspace `command` will ask the directory about, if this state
    /// already knows them: read at the same time as the aggregate (`crate::read_ahead`).
    fn directory_reads(&self, _command: &Self::Command) -> Option<(OrganizationId, WorkspaceId)> {
        None
    }
}

/// Fail unless `actor` may take `action` in `org`: NotFound for strangers (indistinguishable from
/// a missing resource), Forbidden for members whose role does not allow it.
pub(crate) async fn authorize(
    services: &crate::directory::Services,
    org: &OrganizationId,
    actor: &schemas::ids::UserId,
    action: schemas::policy::Action,
) -> Result<(), crate::error::DomainError> {
    use crate::error::DomainError;
    use schemas::policy::{Decision, decide};
    match decide(services.directory.role_in(org, actor).await?, action) {
        Decision::Allowed => Ok(()),
        Decision::Forbidden => {
            Err(DomainError::Forbidden(format!("your role does not allow {action:?}")))
        }
        Decision::NotFound => Err(DomainError::NotFound),
    }
}

/// Fail unless `actor` may take `action` in the workspace `view` (their organization role,
/// refined by their workspace role; see `schemas::policy::effective_role`).
pub(crate) async fn authorize_in_workspace(
    services: &crate::directory::Services,
    view: &crate::directory::WorkspaceView,
    actor: &schemas::ids::UserId,
    action: schemas::policy::Action,
) -> Result<(), crate::error::DomainError> {
    let org_role = services.directory.role_in(&view.organization_id, actor).await?;
    decide_in_workspace(view, org_role, actor, action)
}

/// `authorize_in_workspace`, given the actor's role in the workspace's organization.
pub(crate) fn decide_in_workspace(
    view: &crate::directory::WorkspaceView,
    org_role: Option<schemas::events::Role>,
    actor: &schemas::ids::UserId,
    action: schemas::policy::Action,
) -> Result<(), crate::error::DomainError> {
    use crate::error::DomainError;
    use schemas::policy::{Decision, decide, effective_role};
    let role = org_role.map(|r| effective_role(r, view.members.get(actor).copied()));
    match decide(role, action) {
        Decision::Allowed => Ok(()),
        Decision::Forbidden => Err(DomainError::Forbidden(format!(
            "your role in this workspace does not allow {action:?}"
        ))),
        Decision::NotFound => Err(DomainError::NotFound),
    }
}

/// Reject empty or over-long names.
pub(crate) fn valid_name(what: &str, name: &str) -> Result<String, crate::error::DomainError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(crate::error::DomainError::Invalid(format!("{what} must not be empty")));
    }
    if name.chars().count() > schemas::api::MAX_NAME_CHARS {
        return Err(crate::error::DomainError::Invalid(format!(
            "{what} is longer than {} characters",
            schemas::api::MAX_NAME_CHARS
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(crate::error::DomainError::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(name.to_owned())
}
