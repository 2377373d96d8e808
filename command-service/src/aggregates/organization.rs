//! The organization (tenant): its name and members.

use std::collections::HashMap;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemas::envelope::aggregate;
use schemas::events::{OrganizationEvent, Role};
use schemas::ids::{OrganizationId, UserId};
use serde::{Deserialize, Serialize};

use super::{Scope, Scoped, valid_name};
use crate::directory::Services;
use crate::error::DomainError;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Organization {
    id: Option<OrganizationId>,
    members: HashMap<UserId, Role>,
}

#[derive(Debug, Clone)]
pub enum OrganizationCommand {
    Create {
        id: OrganizationId,
        name: String,
        actor: UserId,
    },
    AddMember {
        user: UserId,
        role: Role,
        actor: UserId,
    },
}

impl Organization {
    pub fn role_of(&self, user: &UserId) -> Option<Role> {
        self.members.get(user).copied()
    }
}

impl Aggregate for Organization {
    const TYPE: &'static str = aggregate::ORGANIZATION;
    type Command = OrganizationCommand;
    type Event = OrganizationEvent;
    type Error = DomainError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), DomainError> {
        match command {
            OrganizationCommand::Create { id, name, actor } => {
                if self.id.is_some() {
                    return Err(DomainError::WrongState(
                        "the organization already exists".into(),
                    ));
                }
                let name = valid_name("name", &name)?;
                let time = schemas::now_ms();
                let created = OrganizationEvent::Created {
                    organization_id: id.clone(),
                    name,
                    owner_id: actor.clone(),
                    time,
                };
                sink.write(created, self).await;
                let owner = OrganizationEvent::MemberAdded {
                    organization_id: id,
                    user_id: actor,
                    role: Role::Owner,
                    time,
                };
                sink.write(owner, self).await;
            }
            OrganizationCommand::AddMember { user, role, actor } => {
                let id = self.id.clone().ok_or(DomainError::NotFound)?;
                match self.role_of(&actor) {
                    None => return Err(DomainError::NotFound),
                    Some(Role::Owner | Role::Admin) => {}
                    Some(_) => {
                        return Err(DomainError::Forbidden(
                            "only owners and admins add members".into(),
                        ));
                    }
                }
                if self.members.contains_key(&user) {
                    return Err(DomainError::WrongState("already a member".into()));
                }
                let event = OrganizationEvent::MemberAdded {
                    organization_id: id,
                    user_id: user,
                    role,
                    time: schemas::now_ms(),
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            OrganizationEvent::Created {
                organization_id, ..
            } => self.id = Some(organization_id),
            OrganizationEvent::MemberAdded { user_id, role, .. } => {
                self.members.insert(user_id, role);
            }
        }
    }
}

impl Scoped for Organization {
    fn scope(&self) -> Scope {
        Scope {
            organization: self.id.clone(),
            ..Scope::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::directory::fake::FakeDirectory;

    fn services() -> Services {
        Services {
            directory: Arc::new(FakeDirectory::default()),
        }
    }

    #[test]
    fn creating_makes_the_creator_owner() {
        let (id, alice) = (OrganizationId::new(), UserId::new());
        let events = TestFramework::<Organization>::with(services())
            .given_no_previous_events()
            .when(OrganizationCommand::Create {
                id: id.clone(),
                name: " Acme ".into(),
                actor: alice.clone(),
            })
            .inspect_result()
            .unwrap();
        assert!(matches!(&events[0], OrganizationEvent::Created { name, .. } if name == "Acme"));
        assert!(
            matches!(&events[1], OrganizationEvent::MemberAdded { user_id, role: Role::Owner, .. } if *user_id == alice)
        );
    }

    #[test]
    fn a_non_member_cannot_add_members_and_cannot_tell_the_org_exists() {
        let (id, alice, mallory) = (OrganizationId::new(), UserId::new(), UserId::new());
        TestFramework::<Organization>::with(services())
            .given(vec![
                OrganizationEvent::Created {
                    organization_id: id.clone(),
                    name: "Acme".into(),
                    owner_id: alice.clone(),
                    time: 0,
                },
                OrganizationEvent::MemberAdded {
                    organization_id: id,
                    user_id: alice,
                    role: Role::Owner,
                    time: 0,
                },
            ])
            .when(OrganizationCommand::AddMember {
                user: mallory.clone(),
                role: Role::Member,
                actor: mallory,
            })
            .then_expect_error(DomainError::NotFound);
    }

    #[test]
    fn empty_names_are_rejected() {
        TestFramework::<Organization>::with(services())
            .given_no_previous_events()
            .when(OrganizationCommand::Create {
                id: OrganizationId::new(),
                name: "  ".into(),
                actor: UserId::new(),
            })
            .then_expect_error(DomainError::Invalid("name must not be empty".into()));
    }
}
