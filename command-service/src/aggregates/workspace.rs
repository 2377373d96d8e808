//! A workspace inside an organization.

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemas::envelope::aggregate;
use schemas::events::WorkspaceEvent;
use schemas::ids::{OrganizationId, UserId, WorkspaceId};
use schemas::policy::Action;
use serde::{Deserialize, Serialize};

use super::{Scope, Scoped, valid_name};
use crate::directory::Services;
use crate::error::DomainError;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Workspace {
    pub id: Option<WorkspaceId>,
    pub organization_id: Option<OrganizationId>,
}

#[derive(Debug, Clone)]
pub enum WorkspaceCommand {
    Create { id: WorkspaceId, organization: OrganizationId, name: String, actor: UserId },
}

impl Aggregate for Workspace {
    const TYPE: &'static str = aggregate::WORKSPACE;
    type Command = WorkspaceCommand;
    type Event = WorkspaceEvent;
    type Error = DomainError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), DomainError> {
        match command {
            WorkspaceCommand::Create { id, organization, name, actor } => {
                if self.id.is_some() {
                    return Err(DomainError::WrongState("the workspace already exists".into()));
                }
                super::authorize(services, &organization, &actor, Action::CreateWorkspace).await?;
                let name = valid_name("name", &name)?;
                let event = WorkspaceEvent::Created {
                    workspace_id: id,
                    organization_id: organization,
                    name,
                    created_by: actor,
                    time: schemas::now_ms(),
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            WorkspaceEvent::Created { workspace_id, organization_id, .. } => {
                self.id = Some(workspace_id);
                self.organization_id = Some(organization_id);
            }
        }
    }
}

impl Scoped for Workspace {
    fn scope(&self) -> Scope {
        Scope {
            organization: self.organization_id.clone(),
            workspace: self.id.clone(),
            session: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cqrs_es::test::TestFramework;
    use schemas::events::Role;

    use super::*;
    use crate::directory::fake::FakeDirectory;

    #[test]
    fn only_members_create_workspaces_and_strangers_see_not_found() {
        let (org, alice, mallory) = (OrganizationId::new(), UserId::new(), UserId::new());
        let directory = FakeDirectory::default();
        directory.roles.lock().unwrap().insert((org.clone(), alice.clone()), Role::Member);
        let services = Services { directory: Arc::new(directory) };
        let id = WorkspaceId::new();
        TestFramework::<Workspace>::with(services.clone())
            .given_no_previous_events()
            .when(WorkspaceCommand::Create {
                id: id.clone(),
                organization: org.clone(),
                name: "w".into(),
                actor: mallory,
            })
            .then_expect_error(DomainError::NotFound);
        let ok = TestFramework::<Workspace>::with(services).given_no_previous_events().when(
            WorkspaceCommand::Create { id, organization: org, name: "w".into(), actor: alice },
        );
        assert_eq!(ok.inspect_result().unwrap().len(), 1);
    }
}
