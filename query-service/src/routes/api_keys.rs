//! `GET /me/api-key`: the caller's own API keys (never their secrets), newest first.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::read::{ApiKeyView, KeyTimes};

use crate::page::{PageQuery, page, parse_id};
use crate::startup::AppState;

pub async fn mine(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let (limit, after) = (query.limit()?, query.after()?);
    let db = state.reader(&req, &user).await?;
    let rows = db
        .query(
            "SELECT key_id, organization_id, name, created_at, expires_at, revoked_at, workspace_id FROM rm_api_keys \
             WHERE user_id = $1 AND ($2 = '' OR key_id < $2) ORDER BY key_id DESC LIMIT $3",
            &[&user.user_id.as_str(), &after, &(limit + 1)],
        )
        .await?;
    let now = schemas::now_ms();
    let items = rows
        .iter()
        .map(|r| {
            let (expires, revoked): (i64, Option<i64>) = (r.get(4), r.get(5));
            Ok(ApiKeyView {
                id: parse_id(r.get(0))?,
                organization_id: parse_id(r.get(1))?,
                name: r.get(2),
                workspace_id: r.get::<_, Option<&str>>(6).map(parse_id).transpose()?,
                time: KeyTimes { created: r.get(3), expires, revoked },
                active: revoked.is_none() && expires > now,
            })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(HttpResponse::Ok().json(page(items, limit, |k| k.id.to_string())))
}
