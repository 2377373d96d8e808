//! `GET /workspace/{ws}/session`, `GET /session/{id}`, `GET /session/{id}/message`.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::ids::{SessionId, WorkspaceId};
use serde_json::{Value, json};

use crate::access;
use crate::page::{Page, PageQuery};
use crate::startup::AppState;
use schemas::policy::Action;

/// OpenCode's `Session` shape, from an `rm_sessions` row.
fn session_json(r: &tokio_postgres::Row) -> Value {
    json!({
        "id": r.get::<_, String>("session_id"),
        "organizationID": r.get::<_, String>("organization_id"),
        "workspaceID": r.get::<_, String>("workspace_id"),
        "projectID": r.get::<_, Option<String>>("project_id"),
        "title": r.get::<_, String>("title"),
        "status": { "type": r.get::<_, String>("status") },
        "createdBy": r.get::<_, String>("created_by"),
        "time": { "created": r.get::<_, i64>("created_at"), "updated": r.get::<_, i64>("updated_at") },
    })
}

/// A workspace's sessions, newest first.
pub async fn list(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    ws: web::Path<WorkspaceId>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let (limit, after) = (query.limit()?, query.after()?);
    let db = state.reader(&req, &user).await?;
    let workspace = access::workspace(&db, &ws, &user, Action::Read).await?;
    let org = workspace.organization_id.as_str();
    let rows = db
        .query(
            "SELECT * FROM rm_sessions WHERE organization_id = $1 AND workspace_id = $2 \
               AND ($3 = '' OR session_id < $3) ORDER BY session_id DESC LIMIT $4",
            &[&org, &ws.as_str(), &after, &(limit + 1)],
        )
        .await?;
    let items = rows.iter().map(session_json).collect();
    Ok(HttpResponse::Ok().json(Page::of(items, limit, "/id")))
}

pub async fn get(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<SessionId>,
) -> Result<HttpResponse, Problem> {
    let db = state.reader(&req, &user).await?;
    let session = access::session(&db, &id, &user, Action::Read).await?;
    Ok(HttpResponse::Ok().json(session_json(&session.row)))
}

/// A session's messages, oldest first, as OpenCode's `{info, parts}`.
pub async fn messages(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<SessionId>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let (limit, after) = (query.limit()?, query.after()?);
    let db = state.reader(&req, &user).await?;
    let session = access::session(&db, &id, &user, Action::Read).await?;
    let rows = db
        .query(
            "SELECT message_id, info, parts FROM rm_messages \
             WHERE organization_id = $1 AND session_id = $2 AND message_id > $3 \
             ORDER BY message_id LIMIT $4",
            &[&session.organization_id.as_str(), &id.as_str(), &after, &(limit + 1)],
        )
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| json!({ "info": r.get::<_, Value>(1), "parts": r.get::<_, Value>(2) }))
        .collect();
    Ok(HttpResponse::Ok().json(Page::of(items, limit, "/info/id")))
}
