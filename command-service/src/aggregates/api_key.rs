//! A personal API key: created by a member for one organization, revoked by its owner. The
//! secret never enters the aggregate or its events (see `platform::api_keys`).

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemas::envelope::aggregate;
use schemas::events::ApiKeyEvent;
use schemas::ids::{ApiKeyId, OrganizationId, UserId, WorkspaceId};
use schemas::policy::Action;
use serde::{Deserialize, Serialize};

use super::{Scope, Scoped, valid_name};
use crate::directory::Services;
use crate::error::DomainError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApiKey {
    id: Option<ApiKeyId>,
    organization_id: Option<OrganizationId>,
    owner: Option<UserId>,
    revoked: bool,
}

#[derive(Debug, Clone)]
pub enum ApiKeyCommand {
    Create {
        id: ApiKeyId,
        organization: OrganizationId,
        /// The key's default workspace: one of the organization's, where its owner may work.
        workspace: Option<WorkspaceId>,
        name: String,
        expires_at: i64,
        actor: UserId,
    },
    Revoke {
        actor: UserId,
    },
}

impl ApiKey {
    /// The organization the key acts in, unless it is revoked or does not exist.
    pub fn live_organization(&self) -> Option<&OrganizationId> {
        self.organization_id.as_ref().filter(|_| !self.revoked)
    }
}

impl Aggregate for ApiKey {
    const TYPE: &'static str = aggregate::API_KEY;
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = DomainError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), DomainError> {
        let time = schemas::now_ms();
        let event = match command {
            ApiKeyCommand::Create { id, organization, workspace, name, expires_at, actor } => {
                if self.id.is_some() {
                    return Err(DomainError::WrongState("the key already exists".into()));
                }
                // Any member may have keys; a key acts with its owner's role at the time of use.
                super::authorize(services, &organization, &actor, Action::Read).await?;
                if let Some(workspace) = &workspace {
                    // Another organization's workspace, or one its owner may not work in, is as
                    // invisible as a missing one.
                    let view = services.directory.workspace(workspace).await?;
                    let view = view
                        .filter(|v| v.organization_id == organization)
                        .ok_or(DomainError::NotFound)?;
                    super::authorize_in_workspace(services, &view, &actor, Action::CreateSession)
                        .await?;
                }
                let name = valid_name("name", &name)?;
                ApiKeyEvent::Created {
                    key_id: id,
                    organization_id: organization,
                    user_id: actor,
                    name,
                    expires_at,
                    time,
                    workspace_id: workspace,
                }
            }
            ApiKeyCommand::Revoke { actor } => {
                // Someone else's key is as invisible as a missing one.
                let (Some(id), Some(org)) = (self.id.clone(), self.organization_id.clone()) else {
                    return Err(DomainError::NotFound);
                };
                if self.owner.as_ref() != Some(&actor) {
                    return Err(DomainError::NotFound);
                }
                if self.revoked {
                    return Err(DomainError::AlreadyDone);
                }
                ApiKeyEvent::Revoked { key_id: id, organization_id: org, time }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ApiKeyEvent::Created { key_id, organization_id, user_id, .. } => {
                self.id = Some(key_id);
                self.organization_id = Some(organization_id);
                self.owner = Some(user_id);
            }
            ApiKeyEvent::Revoked { .. } => self.revoked = true,
        }
    }
}

impl Scoped for ApiKey {
    fn scope(&self) -> Scope {
        Scope { organization: self.organization_id.clone(), ..Scope::default() }
    }
}
