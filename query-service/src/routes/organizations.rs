//! `GET /me`, `GET /org`, `GET /org/{org}/workspace`.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::ids::OrganizationId;
use schemas::read::{Added, Created, Me, Member, OrganizationSummary, WorkspaceSummary};

use crate::access;
use crate::page::{PageQuery, page, parse_id, parse_stored};
use crate::startup::AppState;
use schemas::policy::Action;

/// The caller: their id and the profile their identity provider last told us.
pub async fn me(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let db = state.reader(&req, &user).await?;
    let profile = db
        .query_opt(
            "SELECT email, display_name FROM user_profiles WHERE user_id = $1",
            &[&user.user_id.as_str()],
        )
        .await?;
    let (email, display_name): (Option<String>, Option<String>) =
        profile.map_or((None, None), |r| (r.get(0), r.get(1)));
    Ok(HttpResponse::Ok().json(Me { user_id: user.user_id, email, display_name }))
}

/// The organizations the caller belongs to, with their role.
pub async fn list(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let (limit, after) = (query.limit()?, query.after()?);
    let db = state.reader(&req, &user).await?;
    let rows = db
        .query(
            "SELECT o.organization_id, o.name, o.owner_id, o.created_at, m.role \
             FROM rm_members m JOIN rm_organizations o USING (organization_id) \
             WHERE m.user_id = $1 AND o.organization_id > $2 \
             ORDER BY o.organization_id LIMIT $3",
            &[&user.user_id.as_str(), &after, &(limit + 1)],
        )
        .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(OrganizationSummary {
                id: parse_id(r.get(0))?,
                name: r.get(1),
                owner_id: parse_id(r.get(2))?,
                time: Created { created: r.get(3) },
                role: parse_stored(r.get(4))?,
            })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(HttpResponse::Ok().json(page(items, limit, |o| o.id.to_string())))
}

/// The organization's members and their roles.
pub async fn members(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let (limit, after) = (query.limit()?, query.after()?);
    let db = state.reader(&req, &user).await?;
    access::organization(&db, &org, &user, Action::Read).await?;
    let rows = db
        .query(
            "SELECT m.user_id, m.role, m.added_at, p.email, p.display_name \
             FROM rm_members m LEFT JOIN user_profiles p USING (user_id) \
             WHERE m.organization_id = $1 AND m.user_id > $2 ORDER BY m.user_id LIMIT $3",
            &[&org.as_str(), &after, &(limit + 1)],
        )
        .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(Member {
                user_id: parse_id(r.get(0))?,
                role: parse_stored(r.get(1))?,
                time: Added { added: r.get(2) },
                email: r.get(3),
                display_name: r.get(4),
            })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(HttpResponse::Ok().json(page(items, limit, |m| m.user_id.to_string())))
}

pub async fn workspaces(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let (limit, after) = (query.limit()?, query.after()?);
    let db = state.reader(&req, &user).await?;
    access::organization(&db, &org, &user, Action::Read).await?;
    let rows = db
        .query(
            "SELECT workspace_id, name, created_by, created_at, archived FROM rm_workspaces \
             WHERE organization_id = $1 AND workspace_id > $2 ORDER BY workspace_id LIMIT $3",
            &[&org.as_str(), &after, &(limit + 1)],
        )
        .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(WorkspaceSummary {
                id: parse_id(r.get(0))?,
                organization_id: org.clone(),
                name: r.get(1),
                archived: r.get(4),
                created_by: parse_id(r.get(2))?,
                time: Created { created: r.get(3) },
            })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(HttpResponse::Ok().json(page(items, limit, |w| w.id.to_string())))
}
