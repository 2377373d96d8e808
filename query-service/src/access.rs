//! Tenant scoping: every read starts by finding the resource *through the caller's
//! memberships*, so another organization's resource and a missing one are both "not found".

use platform::problem::Problem;
use schemas::ids::{OrganizationId, SessionId, UserId, WorkspaceId};

/// A session the caller may read, with its organization.
pub struct SessionAccess {
    pub organization_id: OrganizationId,
    pub row: tokio_postgres::Row,
}

pub async fn organization(
    db: &deadpool_postgres::Client,
    org: &OrganizationId,
    user: &UserId,
) -> Result<(), Problem> {
    let stmt = db
        .prepare_cached("SELECT 1 FROM rm_members WHERE organization_id = $1 AND user_id = $2")
        .await?;
    db.query_opt(&stmt, &[&org.as_str(), &user.as_str()])
        .await?
        .map(|_| ())
        .ok_or_else(Problem::not_found)
}

pub async fn workspace(
    db: &deadpool_postgres::Client,
    ws: &WorkspaceId,
    user: &UserId,
) -> Result<tokio_postgres::Row, Problem> {
    let stmt = db
        .prepare_cached(
            "SELECT w.workspace_id, w.organization_id, w.name, w.created_by, w.created_at \
             FROM rm_workspaces w JOIN rm_members m \
               ON m.organization_id = w.organization_id AND m.user_id = $2 \
             WHERE w.workspace_id = $1",
        )
        .await?;
    db.query_opt(&stmt, &[&ws.as_str(), &user.as_str()])
        .await?
        .ok_or_else(Problem::not_found)
}

pub async fn session(
    db: &deadpool_postgres::Client,
    session: &SessionId,
    user: &UserId,
) -> Result<SessionAccess, Problem> {
    let stmt = db
        .prepare_cached(
            "SELECT s.session_id, s.organization_id, s.workspace_id, s.title, s.status, \
                    s.created_by, s.created_at, s.updated_at \
             FROM rm_sessions s JOIN rm_members m \
               ON m.organization_id = s.organization_id AND m.user_id = $2 \
             WHERE s.session_id = $1",
        )
        .await?;
    let row = db
        .query_opt(&stmt, &[&session.as_str(), &user.as_str()])
        .await?
        .ok_or_else(Problem::not_found)?;
    let org: String = row.get(1);
    let organization_id = org.parse().map_err(|e| Problem::internal(&e))?;
    Ok(SessionAccess {
        organization_id,
        row,
    })
}
