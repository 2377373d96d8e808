//! Who may do what: the one place a reader audits. Every command, query and event stream asks
//! `allows(role, action)` for the caller's role in the resource's organization; a caller with no
//! role there is answered "not found", one whose role does not allow the action "forbidden".

use crate::events::Role;

/// Everything a caller can ask to do, by the resource it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// See the organization, its members, workspaces, sessions, messages and event streams.
    Read,
    /// Rename the organization.
    RenameOrganization,
    /// Add, remove or change the role of members who are not owners.
    ManageMembers,
    /// Make or unmake owners, and transfer ownership.
    ManageOwners,
    /// Create a workspace.
    CreateWorkspace,
    /// Rename or archive a workspace, manage its members and projects.
    ManageWorkspace,
    /// Start a session in a workspace.
    CreateSession,
    /// Prompt in a session, and abort its reply.
    Prompt,
    /// Read the organization's audit trail.
    ReadAudit,
    /// Add, change and delete the organization's provider connections; set whether members may
    /// bring their own keys.
    ManageProviders,
    /// Keep a provider connection with one's own key (where the organization allows it).
    BringOwnKey,
    /// See what the organization spends, by person, workspace, model and day.
    ReadUsage,
    /// Set, change and remove spend budgets.
    ManageBudgets,
}

use Action::*;
use Role::*;

/// The policy: each action and the roles allowed to take it.
pub const POLICY: &[(Action, &[Role])] = &[
    (Read, &[Owner, Admin, Member, Viewer]),
    (RenameOrganization, &[Owner, Admin]),
    (ManageMembers, &[Owner, Admin]),
    (ManageOwners, &[Owner]),
    (CreateWorkspace, &[Owner, Admin, Member]),
    (ManageWorkspace, &[Owner, Admin]),
    (CreateSession, &[Owner, Admin, Member]),
    (Prompt, &[Owner, Admin, Member]),
    (ReadAudit, &[Owner, Admin]),
    (ManageProviders, &[Owner, Admin]),
    (BringOwnKey, &[Owner, Admin, Member]),
    (ReadUsage, &[Owner, Admin]),
    (ManageBudgets, &[Owner, Admin]),
];

/// Whether `role` may take `action`. Actions missing from the table are allowed to nobody.
pub fn allows(role: Role, action: Action) -> bool {
    POLICY.iter().find(|(a, _)| *a == action).is_some_and(|(_, roles)| roles.contains(&role))
}

/// A caller's role inside a workspace: organization owners and admins keep theirs everywhere;
/// a member acts with their workspace role (admin, member, or viewer if they have none); a
/// viewer stays a viewer.
pub fn effective_role(
    org_role: Role,
    workspace_role: Option<crate::events::WorkspaceRole>,
) -> Role {
    use crate::events::WorkspaceRole;
    match (org_role, workspace_role) {
        (Owner | Admin | Viewer, _) => org_role,
        (Member, Some(WorkspaceRole::Admin)) => Admin,
        (Member, Some(WorkspaceRole::Member)) => Member,
        (Member, Some(WorkspaceRole::Viewer) | None) => Viewer,
    }
}

/// The outcome of asking the policy about a caller who may or may not be a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// A member whose role does not allow the action: 403.
    Forbidden,
    /// Not a member of the organization (or it does not exist): 404, indistinguishable.
    NotFound,
}

pub fn decide(role: Option<Role>, action: Action) -> Decision {
    match role {
        None => Decision::NotFound,
        Some(r) if allows(r, action) => Decision::Allowed,
        Some(_) => Decision::Forbidden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_in_the_table_once() {
        let all = [
            Read,
            RenameOrganization,
            ManageMembers,
            ManageOwners,
            CreateWorkspace,
            ManageWorkspace,
            CreateSession,
            Prompt,
            ReadAudit,
            ManageProviders,
            BringOwnKey,
            ReadUsage,
            ManageBudgets,
        ];
        for action in all {
            assert_eq!(POLICY.iter().filter(|(a, _)| *a == action).count(), 1, "{action:?}");
        }
    }

    #[test]
    fn roles_are_ordered_by_power() {
        // Anything a weaker role may do, every stronger role may do too.
        let order = [Viewer, Member, Admin, Owner];
        for (action, _) in POLICY {
            for w in order.windows(2) {
                assert!(
                    !allows(w[0], *action) || allows(w[1], *action),
                    "{action:?}: {:?} < {:?}",
                    w[0],
                    w[1]
                );
            }
        }
    }

    #[test]
    fn strangers_are_not_found_and_viewers_only_read() {
        assert_eq!(decide(None, Read), Decision::NotFound);
        assert_eq!(decide(Some(Viewer), Read), Decision::Allowed);
        assert_eq!(decide(Some(Viewer), Prompt), Decision::Forbidden);
        assert_eq!(decide(Some(Admin), ManageOwners), Decision::Forbidden);
    }
}
