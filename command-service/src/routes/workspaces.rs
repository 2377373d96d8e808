//! `POST /org/{org}/workspace`, `PATCH /workspace/{ws}`, `POST /workspace/{ws}/archive`,
//! `PUT|DELETE /workspace/{ws}/member/{user}`, `POST /workspace/{ws}/project`.

use actix_web::{HttpResponse, web};
use identity::AuthUser;
use platform::http::RequestId;
use platform::problem::Problem;
use schemas::api::{Accepted, AddProject, CreateWorkspace, RenameWorkspace, SetWorkspaceMember};
use schemas::ids::{OrganizationId, ProjectId, UserId, WorkspaceId};

use super::context;
use crate::aggregates::WorkspaceCommand;
use crate::startup::AppState;

pub async fn create(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<CreateWorkspace>,
) -> Result<HttpResponse, Problem> {
    let id = WorkspaceId::new();
    let command = WorkspaceCommand::Create {
        id: id.clone(),
        organization: org.into_inner(),
        name: body.into_inner().name,
        actor: user.user_id.clone(),
    };
    let token = state.workspaces.execute(id.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Created()
        .json(Accepted { id: id.to_string(), consistency_token: token.encode() }))
}

/// Run a workspace command and answer 200 with the consistency token.
async fn run(
    state: &AppState,
    ws: &WorkspaceId,
    command: WorkspaceCommand,
    user: &AuthUser,
    request: &RequestId,
) -> Result<HttpResponse, Problem> {
    let token = state.workspaces.execute(ws.as_str(), command, &context(user, request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: ws.to_string(), consistency_token: token.encode() }))
}

pub async fn rename(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    ws: web::Path<WorkspaceId>,
    body: web::Json<RenameWorkspace>,
) -> Result<HttpResponse, Problem> {
    let command =
        WorkspaceCommand::Rename { name: body.into_inner().name, actor: user.user_id.clone() };
    run(&state, &ws, command, &user, &request).await
}

pub async fn archive(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    ws: web::Path<WorkspaceId>,
) -> Result<HttpResponse, Problem> {
    let command = WorkspaceCommand::Archive { actor: user.user_id.clone() };
    run(&state, &ws, command, &user, &request).await
}

pub async fn set_member(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(WorkspaceId, UserId)>,
    body: web::Json<SetWorkspaceMember>,
) -> Result<HttpResponse, Problem> {
    let (ws, member) = path.into_inner();
    let command = WorkspaceCommand::SetMember {
        user: member,
        role: body.into_inner().role,
        actor: user.user_id.clone(),
    };
    run(&state, &ws, command, &user, &request).await
}

pub async fn remove_member(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(WorkspaceId, UserId)>,
) -> Result<HttpResponse, Problem> {
    let (ws, member) = path.into_inner();
    let command = WorkspaceCommand::RemoveMember { user: member, actor: user.user_id.clone() };
    run(&state, &ws, command, &user, &request).await
}

pub async fn add_project(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    ws: web::Path<WorkspaceId>,
    body: web::Json<AddProject>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let id = ProjectId::new();
    let command = WorkspaceCommand::AddProject {
        id: id.clone(),
        repository_url: body.repository_url,
        default_branch: body.default_branch.unwrap_or_else(|| "main".into()),
        actor: user.user_id.clone(),
    };
    let token = state.workspaces.execute(ws.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Created()
        .json(Accepted { id: id.to_string(), consistency_token: token.encode() }))
}

/// The workspace's default model (before the organization's).
pub async fn set_default_model(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    ws: web::Path<WorkspaceId>,
    body: web::Json<schemas::provider::SetDefaultModel>,
) -> Result<HttpResponse, Problem> {
    let command = WorkspaceCommand::SetDefaultModel {
        model: body.into_inner().model,
        actor: user.user_id.clone(),
    };
    let token = state.workspaces.execute(ws.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: ws.to_string(), consistency_token: token.encode() }))
}
