//! `GET /workspace/{ws}/session`, `GET /session/{id}`, `GET /session/{id}/message`.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::ids::{SessionId, WorkspaceId};
use schemas::message::SessionStatus;
use schemas::read::{MessageInfo, MessageView, SessionTimes, SessionView};
use serde_json::Value;

use crate::access;
use crate::page::{PageQuery, page, parse_id};
use crate::startup::AppState;
use schemas::policy::Action;

/// OpenCode's `Session` shape, from an `rm_sessions` row.
pub(crate) fn session_view(r: &tokio_postgres::Row) -> Result<SessionView, Problem> {
    let project: Option<&str> = r.get("project_id");
    let id: SessionId = parse_id(r.get("session_id"))?;
    let workspace: WorkspaceId = parse_id(r.get("workspace_id"))?;
    Ok(SessionView {
        slug: id.to_string(),
        id,
        organization_id: parse_id(r.get("organization_id"))?,
        directory: identity::directory::of_workspace(&workspace),
        workspace_id: workspace,
        project_id: project.map(parse_id).transpose()?,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        title: r.get("title"),
        status: parse_tagged(r.get("status"))?,
        created_by: parse_id(r.get("created_by"))?,
        time: SessionTimes { created: r.get("created_at"), updated: r.get("updated_at") },
    })
}

/// A stored status (`idle`) as its tagged type (`{"type": "idle"}`).
fn parse_tagged(status: &str) -> Result<SessionStatus, Problem> {
    serde_json::from_value(serde_json::json!({ "type": status }))
        .map_err(|e| Problem::internal(&format!("stored status {status:?}: {e}")))
}

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
    let items = rows.iter().map(session_view).collect::<Result<Vec<_>, Problem>>()?;
    Ok(HttpResponse::Ok().json(page(items, limit, |s| s.id.to_string())))
}

pub async fn get(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<SessionId>,
) -> Result<HttpResponse, Problem> {
    let (id, caller) = (id.into_inner(), user.clone());
    let (_db, session) = state
        .reader_then(&req, &user, move |db| {
            Box::pin(async move { access::session(db, &id, &caller, Action::Read).await })
        })
        .await?;
    Ok(HttpResponse::Ok().json(session_view(&session.row)?))
}

/// A session's messages as OpenCode answers them: `{info, parts}[]`, oldest first — the newest
/// `limit`, or with `cursor` the `limit` before it. When older ones remain, the `Link` header
/// names the next page (`rel="next"`).
pub async fn messages(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<SessionId>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let (limit, before) = (query.limit()?, query.after()?);
    let (session_id, caller) = (id.clone(), user.clone());
    let (db, session) = state
        .reader_then(&req, &user, move |db| {
            Box::pin(async move { access::session(db, &session_id, &caller, Action::Read).await })
        })
        .await?;
    let workspace: WorkspaceId = crate::page::parse_id(session.row.get("workspace_id"))?;
    let directory = identity::directory::of_workspace(&workspace);
    let rows = db
        .query(
            "SELECT message_id, info, parts FROM rm_messages \
             WHERE organization_id = $1 AND session_id = $2 AND ($3 = '' OR message_id < $3) \
             ORDER BY message_id DESC LIMIT $4",
            &[&session.organization_id.as_str(), &id.as_str(), &before, &(limit + 1)],
        )
        .await?;
    let mut items = rows
        .iter()
        .map(|r| {
            let (info, parts): (Value, Value) = (r.get(1), r.get(2));
            let view = serde_json::from_value(info).and_then(|info: MessageInfo| {
                let info = info.for_opencode(&directory);
                Ok(MessageView { info, parts: serde_json::from_value(parts)? })
            });
            view.map_err(|e| Problem::internal(&format!("stored message: {e}")))
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    let older = page(std::mem::take(&mut items), limit, |m| m.info.id.to_string());
    let (mut items, next) = (older.items, older.cursor.next);
    items.reverse();
    let mut answer = HttpResponse::Ok();
    if let Some(next) = next {
        let link = format!("</session/{id}/message?limit={limit}&cursor={next}>; rel=\"next\"");
        answer.insert_header((actix_web::http::header::LINK, link));
    }
    Ok(answer.json(items))
}
