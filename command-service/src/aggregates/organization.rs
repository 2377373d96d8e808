//! The organization (tenant): its name and members, and the rules that keep it governable —
//! what each role may change (`schemas::policy`), and that the last owner can neither leave, be
//! removed nor be demoted. Its provider connections are in `connections.rs`.

use std::collections::HashMap;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemas::budget::SetBudget;
use schemas::envelope::aggregate;
use schemas::events::{OrganizationEvent, Role};
use schemas::ids::{BudgetId, ConnectionId, OrganizationId, UserId};
use schemas::message::ModelRef;
use schemas::policy::{Action, Decision, decide};
use schemas::provider::{ByokPolicy, SetPromptLimits};
use serde::{Deserialize, Serialize};

use super::budgets::{AlertReport, Budgets};
use super::connections::{ConnectionChange, ConnectionSpec, Connections};
use super::{Scope, Scoped, valid_name};
use crate::directory::Services;
use crate::error::DomainError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Organization {
    pub(super) id: Option<OrganizationId>,
    members: HashMap<UserId, Role>,
    /// Provider connections and the bring-your-own-key policy (`connections.rs`).
    #[serde(default)]
    pub(super) connections: Connections,
    /// Spend budgets and the alerts raised in their current periods (`budgets.rs`).
    #[serde(default)]
    pub(super) budgets: Budgets,
}

#[derive(Debug, Clone)]
pub enum OrganizationCommand {
    Create {
        id: OrganizationId,
        name: String,
        actor: UserId,
    },
    Rename {
        name: String,
        actor: UserId,
    },
    AddMember {
        user: UserId,
        role: Role,
        actor: UserId,
    },
    ChangeRole {
        user: UserId,
        role: Role,
        actor: UserId,
    },
    RemoveMember {
        user: UserId,
        actor: UserId,
    },
    TransferOwnership {
        to: UserId,
        actor: UserId,
    },
    AddConnection {
        id: ConnectionId,
        spec: ConnectionSpec,
        fingerprint: (String, String),
        actor: UserId,
    },
    ChangeConnection {
        id: ConnectionId,
        change: ConnectionChange,
        actor: UserId,
    },
    RemoveConnection {
        id: ConnectionId,
        actor: UserId,
    },
    SetByokPolicy {
        policy: ByokPolicy,
        actor: UserId,
    },
    SetDefaultModel {
        model: ModelRef,
        actor: UserId,
    },
    SetPromptLimits {
        limits: SetPromptLimits,
        actor: UserId,
    },
    /// Create (`create`) or replace a spend budget.
    SetBudget {
        id: BudgetId,
        spec: SetBudget,
        create: bool,
        actor: UserId,
    },
    RemoveBudget {
        id: BudgetId,
        actor: UserId,
    },
    /// Raised by the service itself (a threshold crossed, a prompt refused), once per period.
    RaiseBudgetAlert {
        report: AlertReport,
    },
}

impl Organization {
    pub fn role_of(&self, user: &UserId) -> Option<Role> {
        self.members.get(user).copied()
    }

    /// The organization's id, if `actor` may take `action` in it.
    pub(super) fn authorize(
        &self,
        actor: &UserId,
        action: Action,
    ) -> Result<OrganizationId, DomainError> {
        let id = self.id.clone().ok_or(DomainError::NotFound)?;
        match decide(self.role_of(actor), action) {
            Decision::Allowed => Ok(id),
            Decision::Forbidden => {
                Err(DomainError::Forbidden(format!("your role does not allow {action:?}")))
            }
            Decision::NotFound => Err(DomainError::NotFound),
        }
    }

    /// What changing `target`'s membership needs: owners are managed only by owners.
    fn management_action(current: Role, new: Option<Role>) -> Action {
        if current == Role::Owner || new == Some(Role::Owner) {
            Action::ManageOwners
        } else {
            Action::ManageMembers
        }
    }

    fn is_last_owner(&self, user: &UserId) -> bool {
        self.role_of(user) == Some(Role::Owner)
            && self.members.values().filter(|r| **r == Role::Owner).count() == 1
    }

    fn target_role(&self, user: &UserId) -> Result<Role, DomainError> {
        self.role_of(user).ok_or_else(|| DomainError::Invalid("that user is not a member".into()))
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
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), DomainError> {
        let time = schemas::now_ms();
        let events = match command {
            OrganizationCommand::Create { id, name, actor } => {
                if self.id.is_some() {
                    return Err(DomainError::WrongState("the organization already exists".into()));
                }
                let name = valid_name("name", &name)?;
                vec![
                    OrganizationEvent::Created {
                        organization_id: id.clone(),
                        name,
                        owner_id: actor.clone(),
                        time,
                    },
                    OrganizationEvent::MemberAdded {
                        organization_id: id,
                        user_id: actor,
                        role: Role::Owner,
                        time,
                    },
                ]
            }
            OrganizationCommand::Rename { name, actor } => {
                let id = self.authorize(&actor, Action::RenameOrganization)?;
                vec![OrganizationEvent::Renamed {
                    organization_id: id,
                    name: valid_name("name", &name)?,
                    time,
                }]
            }
            OrganizationCommand::AddMember { user, role, actor } => {
                let id =
                    self.authorize(&actor, Self::management_action(Role::Member, Some(role)))?;
                if self.members.contains_key(&user) {
                    return Err(DomainError::WrongState("already a member".into()));
                }
                vec![OrganizationEvent::MemberAdded {
                    organization_id: id,
                    user_id: user,
                    role,
                    time,
                }]
            }
            OrganizationCommand::ChangeRole { user, role, actor } => {
                self.authorize(&actor, Action::Read)?;
                let current = self.target_role(&user)?;
                let id = self.authorize(&actor, Self::management_action(current, Some(role)))?;
                if current == role {
                    return Ok(());
                }
                if self.is_last_owner(&user) {
                    return Err(DomainError::WrongState(
                        "the last owner cannot be demoted; make another owner first".into(),
                    ));
                }
                vec![OrganizationEvent::MemberRoleChanged {
                    organization_id: id,
                    user_id: user,
                    role,
                    time,
                }]
            }
            OrganizationCommand::RemoveMember { user, actor } => {
                self.authorize(&actor, Action::Read)?;
                let current = self.target_role(&user)?;
                // Anyone may leave; removing someone else takes the managing role.
                let action = if user == actor {
                    Action::Read
                } else {
                    Self::management_action(current, None)
                };
                let id = self.authorize(&actor, action)?;
                if self.is_last_owner(&user) {
                    return Err(DomainError::WrongState(
                        "the last owner cannot leave or be removed".into(),
                    ));
                }
                vec![OrganizationEvent::MemberRemoved { organization_id: id, user_id: user, time }]
            }
            OrganizationCommand::AddConnection { id, spec, fingerprint, actor } => {
                self.add_connection(id, spec, fingerprint, actor, time)?
            }
            OrganizationCommand::ChangeConnection { id, change, actor } => {
                self.change_connection(&id, change, actor, time)?
            }
            OrganizationCommand::RemoveConnection { id, actor } => {
                self.remove_connection(&id, &actor, time)?
            }
            OrganizationCommand::SetByokPolicy { policy, actor } => {
                self.set_byok(policy, &actor, time)?
            }
            OrganizationCommand::SetDefaultModel { model, actor } => {
                self.set_default_model(model, &actor, time)?
            }
            OrganizationCommand::SetPromptLimits { limits, actor } => {
                self.set_prompt_limits(limits, &actor, time)?
            }
            OrganizationCommand::SetBudget { id, spec, create, actor } => {
                self.set_budget(id, spec, create, actor, services, time).await?
            }
            OrganizationCommand::RemoveBudget { id, actor } => {
                self.remove_budget(id, actor, time)?
            }
            OrganizationCommand::RaiseBudgetAlert { report } => {
                self.raise_budget_alert(report, time)?
            }
            OrganizationCommand::TransferOwnership { to, actor } => {
                let id = self.authorize(&actor, Action::ManageOwners)?;
                self.target_role(&to)?;
                if to == actor {
                    return Err(DomainError::Invalid("you already own the organization".into()));
                }
                vec![
                    OrganizationEvent::MemberRoleChanged {
                        organization_id: id.clone(),
                        user_id: to,
                        role: Role::Owner,
                        time,
                    },
                    OrganizationEvent::MemberRoleChanged {
                        organization_id: id,
                        user_id: actor,
                        role: Role::Admin,
                        time,
                    },
                ]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            OrganizationEvent::Created { organization_id, .. } => self.id = Some(organization_id),
            OrganizationEvent::MemberAdded { user_id, role, .. }
            | OrganizationEvent::MemberRoleChanged { user_id, role, .. } => {
                self.members.insert(user_id, role);
            }
            OrganizationEvent::MemberRemoved { user_id, .. } => {
                self.members.remove(&user_id);
            }
            OrganizationEvent::Renamed { .. } => {}
            OrganizationEvent::ConnectionSet { .. }
            | OrganizationEvent::ConnectionRemoved { .. }
            | OrganizationEvent::ByokPolicySet { .. }
            | OrganizationEvent::DefaultModelSet { .. }
            | OrganizationEvent::PromptLimitsSet { .. } => self.apply_connection(&event),
            OrganizationEvent::BudgetSet { .. }
            | OrganizationEvent::BudgetRemoved { .. }
            | OrganizationEvent::BudgetAlert { .. } => self.apply_budget(event),
        }
    }
}

impl Scoped for Organization {
    fn scope(&self) -> Scope {
        Scope { organization: self.id.clone(), ..Scope::default() }
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
            spend: Arc::new(crate::spend::NoBudgets),
        }
    }

    struct Org {
        owner: UserId,
        admin: UserId,
        member: UserId,
        history: Vec<OrganizationEvent>,
    }

    fn org() -> Org {
        let (id, owner, admin, member) =
            (OrganizationId::new(), UserId::new(), UserId::new(), UserId::new());
        let added = |u: &UserId, role| OrganizationEvent::MemberAdded {
            organization_id: id.clone(),
            user_id: u.clone(),
            role,
            time: 0,
        };
        let history = vec![
            OrganizationEvent::Created {
                organization_id: id.clone(),
                name: "Acme".into(),
                owner_id: owner.clone(),
                time: 0,
            },
            added(&owner, Role::Owner),
            added(&admin, Role::Admin),
            added(&member, Role::Member),
        ];
        Org { owner, admin, member, history }
    }

    fn when(o: &Org, command: OrganizationCommand) -> Result<Vec<OrganizationEvent>, DomainError> {
        TestFramework::<Organization>::with(services())
            .given(o.history.clone())
            .when(command)
            .inspect_result()
    }

    #[test]
    fn creating_makes_the_creator_owner() {
        let (id, alice) = (OrganizationId::new(), UserId::new());
        let events = TestFramework::<Organization>::with(services())
            .given_no_previous_events()
            .when(OrganizationCommand::Create { id, name: " Acme ".into(), actor: alice.clone() })
            .inspect_result()
            .unwrap();
        assert!(matches!(&events[0], OrganizationEvent::Created { name, .. } if name == "Acme"));
        assert!(
            matches!(&events[1], OrganizationEvent::MemberAdded { user_id, role: Role::Owner, .. } if *user_id == alice)
        );
    }

    #[test]
    fn strangers_cannot_tell_the_organization_exists() {
        let o = org();
        let mallory = UserId::new();
        let r = when(
            &o,
            OrganizationCommand::AddMember {
                user: mallory.clone(),
                role: Role::Member,
                actor: mallory,
            },
        );
        assert_eq!(r, Err(DomainError::NotFound));
    }

    #[test]
    fn admins_manage_members_but_not_owners() {
        let o = org();
        let newcomer = UserId::new();
        assert!(
            when(
                &o,
                OrganizationCommand::AddMember {
                    user: newcomer.clone(),
                    role: Role::Viewer,
                    actor: o.admin.clone()
                }
            )
            .is_ok()
        );
        let r = when(
            &o,
            OrganizationCommand::AddMember {
                user: newcomer,
                role: Role::Owner,
                actor: o.admin.clone(),
            },
        );
        assert!(matches!(r, Err(DomainError::Forbidden(_))));
        let r = when(
            &o,
            OrganizationCommand::RemoveMember { user: o.owner.clone(), actor: o.admin.clone() },
        );
        assert!(matches!(r, Err(DomainError::Forbidden(_))));
        let r = when(
            &o,
            OrganizationCommand::ChangeRole {
                user: o.admin.clone(),
                role: Role::Admin,
                actor: o.member.clone(),
            },
        );
        assert!(matches!(r, Err(DomainError::Forbidden(_))));
    }

    #[test]
    fn the_last_owner_stays() {
        let o = org();
        for command in [
            OrganizationCommand::RemoveMember { user: o.owner.clone(), actor: o.owner.clone() },
            OrganizationCommand::ChangeRole {
                user: o.owner.clone(),
                role: Role::Admin,
                actor: o.owner.clone(),
            },
        ] {
            assert!(matches!(when(&o, command), Err(DomainError::WrongState(_))));
        }
        // After a transfer the old owner is an admin and may leave.
        let transfer = when(
            &o,
            OrganizationCommand::TransferOwnership { to: o.member.clone(), actor: o.owner.clone() },
        )
        .unwrap();
        let mut history = o.history.clone();
        history.extend(transfer);
        let r = TestFramework::<Organization>::with(services())
            .given(history)
            .when(OrganizationCommand::RemoveMember {
                user: o.owner.clone(),
                actor: o.owner.clone(),
            })
            .inspect_result();
        assert!(r.is_ok());
    }

    #[test]
    fn members_may_leave() {
        let o = org();
        assert!(
            when(
                &o,
                OrganizationCommand::RemoveMember {
                    user: o.member.clone(),
                    actor: o.member.clone()
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn empty_names_are_rejected() {
        let o = org();
        let r = when(&o, OrganizationCommand::Rename { name: "  ".into(), actor: o.owner.clone() });
        assert_eq!(r, Err(DomainError::Invalid("name must not be empty".into())));
    }
}
