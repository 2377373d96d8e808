//! `GET /workspace/{ws}`: a workspace with its members and Git projects.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::ids::WorkspaceId;
use schemas::policy::Action;
use schemas::read::{Created, ProjectView, WorkspaceDetail, WorkspaceMember, WorkspaceSummary};

use crate::access;
use crate::page::{parse_id, parse_stored};
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
    let members = members
        .iter()
        .map(|r| {
            Ok(WorkspaceMember { user_id: parse_id(r.get(0))?, role: parse_stored(r.get(1))? })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    let projects = projects
        .iter()
        .map(|r| {
            Ok(ProjectView {
                id: parse_id(r.get(0))?,
                repository_url: r.get(1),
                default_branch: r.get(2),
                time: Created { created: r.get(3) },
            })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(HttpResponse::Ok().json(WorkspaceDetail {
        workspace: WorkspaceSummary {
            id: ws.into_inner(),
            organization_id: w.organization_id,
            name: w.row.get("name"),
            archived: w.row.get("archived"),
            created_by: parse_id(w.row.get("created_by"))?,
            time: Created { created: w.row.get("created_at") },
        },
        members,
        projects,
    }))
}
