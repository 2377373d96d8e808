//! `POST /org`, `POST /org/{org}/member`.

use actix_web::{HttpResponse, web};
use platform::auth::AuthUser;
use platform::http::RequestId;
use platform::problem::Problem;
use schemas::api::{Accepted, AddMember, CreateOrganization};
use schemas::ids::OrganizationId;

use super::context;
use crate::aggregates::OrganizationCommand;
use crate::startup::AppState;

pub async fn create(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    body: web::Json<CreateOrganization>,
) -> Result<HttpResponse, Problem> {
    let id = OrganizationId::new();
    let command = OrganizationCommand::Create {
        id: id.clone(),
        name: body.into_inner().name,
        actor: user.user_id.clone(),
    };
    let token = state
        .organizations
        .execute(id.as_str(), command, &context(&user, &request))
        .await?;
    Ok(HttpResponse::Created().json(Accepted {
        id: id.to_string(),
        consistency_token: token.encode(),
    }))
}

pub async fn add_member(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<AddMember>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let command = OrganizationCommand::AddMember {
        user: body.user_id.clone(),
        role: body.role,
        actor: user.user_id.clone(),
    };
    let token = state
        .organizations
        .execute(org.as_str(), command, &context(&user, &request))
        .await?;
    Ok(HttpResponse::Created().json(Accepted {
        id: body.user_id.to_string(),
        consistency_token: token.encode(),
    }))
}
