//! Tenant scoping and the read policy: every read starts by finding the resource *through the
//! caller's membership*, then asks `schemas::policy` whether the caller's role may read it.
//! Another organization's resource and a missing one are both "not found".

use identity::AuthUser;
use platform::problem::Problem;
use schemas::events::Role;
use schemas::ids::{ApiKeyId, OrganizationId, SessionId, WorkspaceId};
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
    // An API key reaches only its own organization; the rest is as if it did not exist, before
    // the policy could say "forbidden".
    let org_of = |row: &tokio_postgres::Row| -> Result<OrganizationId, Problem> {
        let org: String = row.get("organization_id");
        org.parse().map_err(|e| Problem::internal(&e))
    };
    if let Some(r) = &row
        && !user.reaches(&org_of(r)?)
    {
        return Err(Problem::not_found());
    }
    match decide(role_of(row.as_ref()), action) {
        Decision::Allowed => {}
        Decision::Forbidden => {
            return Err(Problem::forbidden(format!("your role does not allow {action:?}")));
        }
        Decision::NotFound => return Err(Problem::not_found()),
    }
    let row = row.ok_or_else(Problem::not_found)?;
    Ok(Granted { organization_id: org_of(&row)?, row })
}

/// Find `id` in `table` (keyed by `key`; a table or a subquery) together with the caller's role
/// in its organization, then apply the policy. `table` and `key` are constants of this module,
/// never user input.
async fn find(
    db: &deadpool_postgres::Client,
    table: &str,
    key: &str,
    id: &str,
    user: &AuthUser,
    action: Action,
) -> Result<Granted, Problem> {
    let sql = format!(
        "SELECT t.*, m.role AS caller_role FROM {table} t \
         JOIN rm_members m ON m.organization_id = t.organization_id AND m.user_id = $2 \
         WHERE t.{key} = $1"
    );
    let stmt = db.prepare_cached(&sql).await?;
    check(db.query_opt(&stmt, &[&id, &user.user_id.as_str()]).await?, action, user)
}

/// Whether the caller may read the aggregate `id` names (by its prefix): the check a consistency
/// token gets, so another tenant's token is "not found" like their resource.
pub async fn aggregate(
    db: &deadpool_postgres::Client,
    id: &str,
    user: &AuthUser,
) -> Result<(), Problem> {
    let prefix = id.split_once('_').map_or("", |(p, _)| p);
    match prefix {
        OrganizationId::PREFIX => {
            organization(db, &id.parse().map_err(|_| Problem::not_found())?, user, Action::Read)
                .await
                .map(drop)
        }
        WorkspaceId::PREFIX => {
            workspace(db, &id.parse().map_err(|_| Problem::not_found())?, user, Action::Read)
                .await
                .map(drop)
        }
        SessionId::PREFIX => {
            session(db, &id.parse().map_err(|_| Problem::not_found())?, user, Action::Read)
                .await
                .map(drop)
        }
        ApiKeyId::PREFIX => {
            let stmt = db
                .prepare_cached("SELECT 1 FROM rm_api_keys WHERE key_id = $1 AND user_id = $2")
                .await?;
            let own = db.query_opt(&stmt, &[&id, &user.user_id.as_str()]).await?;
            own.map(drop).ok_or_else(Problem::not_found)
        }
        _ => Err(Problem::not_found()),
    }
}

pub async fn organization(
    db: &deadpool_postgres::Client,
    org: &OrganizationId,
    user: &AuthUser,
    action: Action,
) -> Result<Granted, Problem> {
    find(db, "rm_organizations", "organization_id", org.as_str(), user, action).await
}

pub async fn workspace(
    db: &deadpool_postgres::Client,
    ws: &WorkspaceId,
    user: &AuthUser,
    action: Action,
) -> Result<Granted, Problem> {
    find(db, "rm_workspaces", "workspace_id", ws.as_str(), user, action).await
}

pub async fn session(
    db: &deadpool_postgres::Client,
    session: &SessionId,
    user: &AuthUser,
    action: Action,
) -> Result<Granted, Problem> {
    find(db, "rm_sessions", "session_id", session.as_str(), user, action).await
}

/// [`session`], for a session the read models may not show yet: one created a moment ago, maybe
/// in an organization created a moment ago. Its organization, and the caller's role in it, come
/// from the event store, and the policy decides as it does for a projected session. For an event
/// stream opened right after the session was created, so the stream does not wait for the
/// projector. On a connection of its own, bound to the caller with the read models' lookup in
/// the same round trip (`platform::db::bind_then`).
pub async fn session_as_committed(
    state: &crate::startup::AppState,
    session: &SessionId,
    user: &AuthUser,
    action: Action,
) -> Result<OrganizationId, Problem> {
    let (id, caller) = (session.clone(), user.clone());
    let (db, projected) = state
        .bind_then(user, move |db| {
            Box::pin(async move { Ok(self::session(db, &id, &caller, action).await) })
        })
        .await?;
    match projected {
        Err(p) if p.status == 404 => {}
        other => return other.map(|granted| granted.organization_id),
    }
    // The same check as `session`, with the event store's answers in place of the read models'
    // (the caller is `oc.user_id`, set when the connection was bound to the caller).
    let stmt = db
        .prepare_cached(
            "SELECT o.organization_id, oc_caller_role_as_committed(o.organization_id) AS caller_role \
             FROM (SELECT oc_session_organization($1) AS organization_id) o \
             WHERE o.organization_id IS NOT NULL",
        )
        .await?;
    let row = db.query_opt(&stmt, &[&session.as_str()]).await?;
    Ok(check(row, action, user)?.organization_id)
}

/// What an open event stream reads: one session, or every session of a workspace.
pub enum Readable<'a> {
    Session(&'a SessionId),
    Workspace(&'a WorkspaceId),
}

/// Why `user` may no longer read `what`, if so: `"credential"` (revoked, signed out, erased) or
/// `"access"` (no longer a member who may read it). A failed check (the database away) keeps the
/// stream: a later change or reconnect checks again.
pub async fn lost(
    state: &crate::startup::AppState,
    auth: &identity::Authenticator,
    user: &AuthUser,
    what: Readable<'_>,
) -> Option<&'static str> {
    match auth.still_valid(user).await {
        Ok(false) => return Some("credential"),
        Ok(true) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-check a stream's credential");
            return None;
        }
    }
    let found = match what {
        Readable::Session(s) => session_as_committed(state, s, user, Action::Read).await.map(drop),
        Readable::Workspace(w) => match state.bind(user).await {
            Ok(db) => workspace(&db, w, user, Action::Read).await.map(drop),
            Err(_) => return None,
        },
    };
    match found {
        Err(p) if p.status == 404 || p.status == 403 => Some("access"),
        _ => None,
    }
}
