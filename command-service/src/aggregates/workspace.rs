//! A workspace inside an organization: its name, members with workspace roles, and Git
//! projects. Archived workspaces are read-only.

use std::collections::{HashMap, HashSet};

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemas::envelope::aggregate;
use schemas::events::{Project, WorkspaceEvent, WorkspaceRole};
use schemas::ids::{OrganizationId, ProjectId, UserId, WorkspaceId};
use schemas::message::ModelRef;
use schemas::policy::Action;
use serde::{Deserialize, Serialize};

use super::{Scope, Scoped, valid_name};
use crate::directory::{Services, WorkspaceView};
use crate::error::DomainError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Workspace {
    pub id: Option<WorkspaceId>,
    pub organization_id: Option<OrganizationId>,
    archived: bool,
    members: HashMap<UserId, WorkspaceRole>,
    /// Projects by repository URL, so a repository is added once.
    projects: HashMap<String, ProjectId>,
    /// The model prompts here use when they name none (before the organization's).
    #[serde(default)]
    default_model: Option<ModelRef>,
}

#[derive(Debug, Clone)]
pub enum WorkspaceCommand {
    Create { id: WorkspaceId, organization: OrganizationId, name: String, actor: UserId },
    Rename { name: String, actor: UserId },
    Archive { actor: UserId },
    SetMember { user: UserId, role: WorkspaceRole, actor: UserId },
    RemoveMember { user: UserId, actor: UserId },
    AddProject { id: ProjectId, repository_url: String, default_branch: String, actor: UserId },
    SetDefaultModel { model: ModelRef, actor: UserId },
}

impl Workspace {
    /// What other aggregates may know of this workspace.
    pub fn view(&self) -> Option<WorkspaceView> {
        Some(WorkspaceView {
            organization_id: self.organization_id.clone()?,
            archived: self.archived,
            members: self.members.clone(),
            projects: self.projects.values().cloned().collect::<HashSet<_>>(),
            default_model: self.default_model.clone(),
        })
    }

    /// The ids to put on a change, once `actor` is allowed to manage this (live) workspace.
    async fn manage(
        &self,
        services: &Services,
        actor: &UserId,
    ) -> Result<(WorkspaceId, OrganizationId), DomainError> {
        let view = self.view().ok_or(DomainError::NotFound)?;
        super::authorize_in_workspace(services, &view, actor, Action::ManageWorkspace).await?;
        if self.archived {
            return Err(DomainError::WrongState("the workspace is archived".into()));
        }
        Ok((self.id.clone().ok_or(DomainError::NotFound)?, view.organization_id))
    }
}

/// A repository URL we can clone: https, ssh, or scp-like `git@host:path`.
fn valid_repository(url: &str) -> Result<String, DomainError> {
    let url = url.trim();
    let scp_like = url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once(':'))
        .is_some_and(|(host, path)| !host.is_empty() && !path.is_empty() && !host.contains('/'));
    let ok = url.len() <= 2048
        && !url.chars().any(char::is_whitespace)
        && (url.starts_with("https://") || url.starts_with("ssh://") || scp_like);
    ok.then(|| url.to_owned()).ok_or_else(|| {
        DomainError::Invalid("repositoryURL must be an https, ssh or git@host:path URL".into())
    })
}

fn valid_branch(branch: &str) -> Result<String, DomainError> {
    let b = branch.trim();
    let ok = !b.is_empty()
        && b.len() <= 255
        && !b.starts_with('-')
        && !b.contains("..")
        && !b.chars().any(|c| c.is_whitespace() || "~^:?*[\\".contains(c));
    ok.then(|| b.to_owned())
        .ok_or_else(|| DomainError::Invalid("defaultBranch is not a valid branch name".into()))
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
        let time = schemas::now_ms();
        let events = match command {
            WorkspaceCommand::Create { id, organization, name, actor } => {
                if self.id.is_some() {
                    return Err(DomainError::WrongState("the workspace already exists".into()));
                }
                super::authorize(services, &organization, &actor, Action::CreateWorkspace).await?;
                let name = valid_name("name", &name)?;
                vec![
                    WorkspaceEvent::Created {
                        workspace_id: id.clone(),
                        organization_id: organization.clone(),
                        name,
                        created_by: actor.clone(),
                        time,
                    },
                    // Whoever creates a workspace administers it.
                    WorkspaceEvent::MemberSet {
                        workspace_id: id,
                        organization_id: organization,
                        user_id: actor,
                        role: WorkspaceRole::Admin,
                        time,
                    },
                ]
            }
            WorkspaceCommand::Rename { name, actor } => {
                let (workspace_id, organization_id) = self.manage(services, &actor).await?;
                vec![WorkspaceEvent::Renamed {
                    workspace_id,
                    organization_id,
                    name: valid_name("name", &name)?,
                    time,
                }]
            }
            WorkspaceCommand::Archive { actor } => {
                // Authorize before any state check: to a stranger it does not exist.
                let (workspace_id, organization_id) = self.manage(services, &actor).await?;
                if self.archived {
                    return Err(DomainError::AlreadyDone);
                }
                vec![WorkspaceEvent::Archived { workspace_id, organization_id, time }]
            }
            WorkspaceCommand::SetMember { user, role, actor } => {
                let (workspace_id, organization_id) = self.manage(services, &actor).await?;
                if services.directory.role_in(&organization_id, &user).await?.is_none() {
                    return Err(DomainError::Invalid(
                        "that user is not a member of the organization".into(),
                    ));
                }
                if self.members.get(&user) == Some(&role) {
                    return Ok(());
                }
                vec![WorkspaceEvent::MemberSet {
                    workspace_id,
                    organization_id,
                    user_id: user,
                    role,
                    time,
                }]
            }
            WorkspaceCommand::RemoveMember { user, actor } => {
                let (workspace_id, organization_id) = self.manage(services, &actor).await?;
                if !self.members.contains_key(&user) {
                    return Err(DomainError::Invalid(
                        "that user is not a member of the workspace".into(),
                    ));
                }
                vec![WorkspaceEvent::MemberRemoved {
                    workspace_id,
                    organization_id,
                    user_id: user,
                    time,
                }]
            }
            WorkspaceCommand::SetDefaultModel { model, actor } => {
                let (workspace_id, organization_id) = self.manage(services, &actor).await?;
                // Refused now if nobody could prompt with it (the organization decides).
                let payer = crate::directory::PromptPayer {
                    workspace: workspace_id.clone(),
                    user: actor.clone(),
                    api_key: None,
                };
                services
                    .directory
                    .prompt_terms(&organization_id, payer, Some(model.clone()))
                    .await?;
                vec![WorkspaceEvent::DefaultModelSet { workspace_id, organization_id, model, time }]
            }
            WorkspaceCommand::AddProject { id, repository_url, default_branch, actor } => {
                let (workspace_id, organization_id) = self.manage(services, &actor).await?;
                let repository_url = valid_repository(&repository_url)?;
                if self.projects.contains_key(&repository_url) {
                    return Err(DomainError::WrongState(
                        "that repository is already a project here".into(),
                    ));
                }
                let project =
                    Project { id, repository_url, default_branch: valid_branch(&default_branch)? };
                vec![WorkspaceEvent::ProjectAdded { workspace_id, organization_id, project, time }]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            WorkspaceEvent::Created { workspace_id, organization_id, .. } => {
                self.id = Some(workspace_id);
                self.organization_id = Some(organization_id);
            }
            WorkspaceEvent::Renamed { .. } => {}
            WorkspaceEvent::Archived { .. } => self.archived = true,
            WorkspaceEvent::MemberSet { user_id, role, .. } => {
                self.members.insert(user_id, role);
            }
            WorkspaceEvent::MemberRemoved { user_id, .. } => {
                self.members.remove(&user_id);
            }
            WorkspaceEvent::ProjectAdded { project, .. } => {
                self.projects.insert(project.repository_url, project.id);
            }
            WorkspaceEvent::DefaultModelSet { model, .. } => self.default_model = Some(model),
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
        let services =
            Services { directory: Arc::new(directory), spend: Arc::new(crate::spend::NoBudgets) };
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
        assert_eq!(
            ok.inspect_result().unwrap().len(),
            2,
            "created, and the creator administers it"
        );
    }

    #[test]
    fn org_members_manage_only_workspaces_they_administer() {
        let (org, owner, member) = (OrganizationId::new(), UserId::new(), UserId::new());
        let directory = FakeDirectory::default();
        directory.roles.lock().unwrap().insert((org.clone(), owner.clone()), Role::Owner);
        directory.roles.lock().unwrap().insert((org.clone(), member.clone()), Role::Member);
        let services =
            Services { directory: Arc::new(directory), spend: Arc::new(crate::spend::NoBudgets) };
        let id = WorkspaceId::new();
        let history = vec![WorkspaceEvent::Created {
            workspace_id: id.clone(),
            organization_id: org.clone(),
            name: "w".into(),
            created_by: owner.clone(),
            time: 0,
        }];
        let rename =
            |actor: &UserId| WorkspaceCommand::Rename { name: "x".into(), actor: actor.clone() };
        let r = TestFramework::<Workspace>::with(services.clone())
            .given(history.clone())
            .when(rename(&member))
            .inspect_result();
        assert!(matches!(r, Err(DomainError::Forbidden(_))));
        let mut promoted = history.clone();
        promoted.push(WorkspaceEvent::MemberSet {
            workspace_id: id,
            organization_id: org,
            user_id: member.clone(),
            role: WorkspaceRole::Admin,
            time: 0,
        });
        let r = TestFramework::<Workspace>::with(services)
            .given(promoted)
            .when(rename(&member))
            .inspect_result();
        assert!(r.is_ok());
    }

    #[test]
    fn repositories_and_branches_are_validated() {
        assert!(valid_repository("https://github.com/anomalyco/opencode.git").is_ok());
        assert!(valid_repository("git@github.com:anomalyco/opencode.git").is_ok());
        assert!(valid_repository("ssh://git@host/repo").is_ok());
        for bad in ["", "file:///etc/passwd", "http://x y", "ftp://host/repo", "git@:path"] {
            assert!(valid_repository(bad).is_err(), "{bad}");
        }
        assert!(valid_branch("main").is_ok());
        for bad in ["", "-x", "a..b", "a b", "a:b"] {
            assert!(valid_branch(bad).is_err(), "{bad}");
        }
    }
}
