//! `POST /org/{org}/workspace`.

use actix_web::{HttpResponse, web};
use platform::auth::AuthUser;
use platform::http::RequestId;
use platform::problem::Problem;
use schemas::api::{Accepted, CreateWorkspace};
use schemas::ids::{OrganizationId, WorkspaceId};

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
