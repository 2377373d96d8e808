//! Tenant scoping and the read policy: every read starts by finding the resource *through the
//! caller's membership*, then asks `schemas::policy` whether the caller's role may read it.
//! Another organization's resource and a missing one are both "not found".

use platform::auth::AuthUser;
use platform::problem::Problem;
use schemas::events::Role;
use schemas::ids::{OrganizationId, SessionId, WorkspaceId};
use schemas::policy::{Action, Decision, decide};

/// A resource the caller may read: its organization and its row.
pub struct Granted {
    pub organization_id: OrganizationId,
    pub row: tokio_postgres::Row,
}

fn role_of(row: Option<&tokio_postgres::Row>) -> Option<Role> {
    let role: Option<String> = row?.get("caller_role");
    serde_json::from_value(serde_json::Value::String(role?)).ok()
}

/// Apply the policy to a row found with the caller's role (`caller_role`, NULL if not a member).
fn check(
    row: Option<tokio_postgres::Row>,
    action: Action,
    user: &AuthUser,
) -> Result<Granted, Problem> {
    match decide(role_of(row.as_ref()), action) {
        Decision::Allowed => {}
        Decision::Forbidden => {
            return Err(Problem::forbidden(format!("your role does not allow {action:?}")));
        }
        Decision::NotFound => return Err(Problem::not_found()),
    }
    let row = row.ok_or_else(Problem::not_found)?;
    let org: String = row.get("organization_id");
    let organization_id: OrganizationId = org.parse().map_err(|e| Problem::internal(&e))?;
    // An API key reaches only its own organization; the rest is as if it did not exist.
    if !user.reaches(&organization_id) {
        return Err(Problem::not_found());
    }
    Ok(Granted { organization_id, row })
}

pub async fn organization(
    db: &deadpool_postgres::Client,
    org: &OrganizationId,
    user: &AuthUser,
    action: Action,
) -> Result<Granted, Problem> {
    let stmt = db
        .prepare_cached(
            "SELECT o.*, m.role AS caller_role FROM rm_organizations o \
             JOIN rm_members m ON m.organization_id = o.organization_id AND m.user_id = $2 \
             WHERE o.organization_id = $1",
        )
        .await?;
    check(db.query_opt(&stmt, &[&org.as_str(), &user.user_id.as_str()]).await?, action, user)
}

pub async fn workspace(
    db: &deadpool_postgres::Client,
    ws: &WorkspaceId,
    user: &AuthUser,
    action: Action,
) -> Result<Granted, Problem> {
    let stmt = db
        .prepare_cached(
            "SELECT w.*, m.role AS caller_role FROM rm_workspaces w \
             JOIN rm_members m ON m.organization_id = w.organization_id AND m.user_id = $2 \
             WHERE w.workspace_id = $1",
        )
        .await?;
    check(db.query_opt(&stmt, &[&ws.as_str(), &user.user_id.as_str()]).await?, action, user)
}

pub async fn session(
    db: &deadpool_postgres::Client,
    session: &SessionId,
    user: &AuthUser,
    action: Action,
) -> Result<Granted, Problem> {
    let stmt = db
        .prepare_cached(
            "SELECT s.*, m.role AS caller_role FROM rm_sessions s \
             JOIN rm_members m ON m.organization_id = s.organization_id AND m.user_id = $2 \
             WHERE s.session_id = $1",
        )
        .await?;
    check(db.query_opt(&stmt, &[&session.as_str(), &user.user_id.as_str()]).await?, action, user)
}
