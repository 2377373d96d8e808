//! `POST /org/{org}/budget`, `PUT /org/{org}/budget/{id}`, `DELETE /org/{org}/budget/{id}`:
//! spend budgets, set by owners and admins (`crate::aggregates::budgets`).

use actix_web::{HttpResponse, web};
use identity::AuthUser;
use platform::http::RequestId;
use platform::problem::Problem;
use schemas::api::Accepted;
use schemas::budget::SetBudget;
use schemas::ids::{BudgetId, OrganizationId};

use super::context;
use crate::aggregates::OrganizationCommand;
use crate::startup::AppState;

pub async fn create(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<SetBudget>,
) -> Result<HttpResponse, Problem> {
    let id = BudgetId::new();
    let command = OrganizationCommand::SetBudget {
        id: id.clone(),
        spec: body.into_inner(),
        create: true,
        actor: user.user_id.clone(),
    };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Created()
        .json(Accepted { id: id.to_string(), consistency_token: token.encode() }))
}

pub async fn replace(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(OrganizationId, BudgetId)>,
    body: web::Json<SetBudget>,
) -> Result<HttpResponse, Problem> {
    let (org, id) = path.into_inner();
    let command = OrganizationCommand::SetBudget {
        id: id.clone(),
        spec: body.into_inner(),
        create: false,
        actor: user.user_id.clone(),
    };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: id.to_string(), consistency_token: token.encode() }))
}

pub async fn remove(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(OrganizationId, BudgetId)>,
) -> Result<HttpResponse, Problem> {
    let (org, id) = path.into_inner();
    let command = OrganizationCommand::RemoveBudget { id: id.clone(), actor: user.user_id.clone() };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: id.to_string(), consistency_token: token.encode() }))
}
