//! `GET /org/{org}/audit`: who changed what in the organization, newest first (owners and
//! admins only).

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use identity::AuthUser;
use platform::problem::Problem;
use schemas::ids::OrganizationId;
use schemas::policy::Action;
use schemas::read::{AuditEntry, Cursor, Page};

use crate::access;
use crate::page::PageQuery;
use crate::startup::AppState;

pub async fn list(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = query.limit()?;
    // The cursor is "<time>|<event id>" of the last entry seen: entries are ordered by both.
    let after = query.after()?;
    let (before_time, before_id) = match after.split_once('|') {
        None if after.is_empty() => (i64::MAX, String::new()),
        Some((t, id)) => {
            (t.parse().map_err(|_| Problem::bad_request("malformed cursor"))?, id.to_owned())
        }
        None => return Err(Problem::bad_request("malformed cursor")),
    };
    let db = state.reader(&req, &user).await?;
    access::organization(&db, &org, &user, Action::ReadAudit).await?;
    let rows = db
        .query(
            "SELECT event_id, time, actor, event_type, details FROM rm_audit \
             WHERE organization_id = $1 AND (time, event_id) < ($2, $3) \
             ORDER BY time DESC, event_id DESC LIMIT $4",
            &[&org.as_str(), &before_time, &before_id, &(limit + 1)],
        )
        .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<AuditEntry> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|r| AuditEntry {
            id: r.get(0),
            time: r.get(1),
            actor: r.get(2),
            event_type: r.get(3),
            details: r.get(4),
        })
        .collect();
    let next = items
        .last()
        .filter(|_| more)
        .map(|i| URL_SAFE_NO_PAD.encode(format!("{}|{}", i.time, i.id)));
    Ok(HttpResponse::Ok().json(Page { items, cursor: Cursor { next } }))
}
