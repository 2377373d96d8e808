//! OpenCode's own read API, as its stock clients call it (docs/opencode-clients.md): `GET /session`
//! and `GET /path`, scoped by the directory the client sends.
//!
//! The directory means a workspace (`identity::directory`); a workspace the caller may not read
//! is as missing as one that does not exist, so no directory reaches another tenant.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use identity::directory::{directory_of, of_workspace, workspace_meant};
use platform::problem::Problem;
use schemas::policy::Action;
use schemas::read::{OpenCodePath, SessionView};
use serde::Deserialize;

use crate::access;
use crate::startup::AppState;

/// OpenCode's `GET /session` has no paging: the newest this many.
const MAX_LISTED: i64 = 1000;
const DEFAULT_LISTED: i64 = 100;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    directory: Option<String>,
    limit: Option<i64>,
}

/// `GET /session`: the sessions of the workspace the directory means, newest first.
pub async fn sessions(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_LISTED);
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(Problem::bad_request(format!("limit must be between 1 and {MAX_LISTED}")));
    }
    let directory = directory_of(&req, query.directory.as_deref());
    let ws = workspace_meant(directory.as_deref(), &user)?;
    let db = state.reader(&req, &user).await?;
    let workspace = access::workspace(&db, &ws, &user, Action::Read).await?;
    let rows = db
        .query(
            "SELECT * FROM rm_sessions WHERE organization_id = $1 AND workspace_id = $2 \
             ORDER BY session_id DESC LIMIT $3",
            &[&workspace.organization_id.as_str(), &ws.as_str(), &limit],
        )
        .await?;
    let sessions = rows
        .iter()
        .map(super::sessions::session_view)
        .collect::<Result<Vec<SessionView>, Problem>>()?;
    Ok(HttpResponse::Ok().json(sessions))
}

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    directory: Option<String>,
}

/// `GET /path`: where a client of the workspace the directory means works (`/<workspace id>`).
pub async fn path(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<PathQuery>,
) -> Result<HttpResponse, Problem> {
    let directory = directory_of(&req, query.directory.as_deref());
    let ws = workspace_meant(directory.as_deref(), &user)?;
    let db = state.reader(&req, &user).await?;
    access::workspace(&db, &ws, &user, Action::Read).await?;
    let root = of_workspace(&ws);
    Ok(HttpResponse::Ok().json(OpenCodePath {
        home: root.clone(),
        state: root.clone(),
        config: root.clone(),
        worktree: root.clone(),
        directory: root,
    }))
}
