//! `GET /workspace/{ws}`: a workspace with its members and Git projects.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::ids::WorkspaceId;
use schemas::policy::Action;
use serde_json::json;

use crate::access;
use crate::startup::AppState;

/// Members and projects are listed whole: a workspace has tens of them, not thousands.
const MAX_LISTED: i64 = 1000;

pub async fn get(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    ws: web::Path<WorkspaceId>,
) -> Result<HttpResponse, Problem> {
    let db = state.reader(&req, &user).await?;
    let w = access::workspace(&db, &ws, &user, Action::Read).await?;
    let members = db
        .query(
            "SELECT user_id, role FROM rm_workspace_members WHERE workspace_id = $1 ORDER BY user_id LIMIT $2",
            &[&ws.as_str(), &MAX_LISTED],
        )
        .await?;
    let projects = db
        .query(
            "SELECT project_id, repository_url, default_branch, created_at FROM rm_projects \
             WHERE workspace_id = $1 ORDER BY project_id LIMIT $2",
            &[&ws.as_str(), &MAX_LISTED],
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": ws.as_str(),
        "organizationID": w.organization_id,
        "name": w.row.get::<_, String>("name"),
        "archived": w.row.get::<_, bool>("archived"),
        "createdBy": w.row.get::<_, String>("created_by"),
        "time": { "created": w.row.get::<_, i64>("created_at") },
        "members": members.iter().map(|r| json!({ "userID": r.get::<_, String>(0), "role": r.get::<_, String>(1) })).collect::<Vec<_>>(),
        "projects": projects.iter().map(|r| json!({
            "id": r.get::<_, String>(0), "repositoryURL": r.get::<_, String>(1),
            "defaultBranch": r.get::<_, String>(2), "time": { "created": r.get::<_, i64>(3) },
        })).collect::<Vec<_>>(),
    })))
}
