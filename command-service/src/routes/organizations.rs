//! `POST /org`, `POST /org/{org}/member`.

use actix_web::{HttpResponse, web};
use identity::AuthUser;
use platform::http::RequestId;
use platform::problem::Problem;
use schemas::api::{
    Accepted, AddMember, ChangeRole, CreateOrganization, RenameOrganization, TransferOwnership,
};
use schemas::ids::{OrganizationId, UserId};

use identity::users::EmailMatch;
use schemas::policy::{Action, Decision, decide};

use super::context;
use crate::aggregates::OrganizationCommand;
use crate::error::CommandError;
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
    let token =
        state.organizations.execute(id.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Created()
        .json(Accepted { id: id.to_string(), consistency_token: token.encode() }))
}

pub async fn add_member(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<AddMember>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let member = match (body.user_id, body.email) {
        (Some(id), None) => id,
        (None, Some(email)) => {
            // Authorize before looking the email up: to anyone who may not add members here,
            // every email gets the same answer.
            may_manage_members(&state, &org, &user).await?;
            let db = state.db.get().await?;
            match identity::users::by_verified_email(&db, email.trim()).await? {
                EmailMatch::One(id) => id,
                EmailMatch::Nobody => {
                    return Err(Problem::unprocessable(
                        "no one has signed in with that email verified; ask them to sign in first, or add them by userID",
                    ));
                }
                EmailMatch::Several => {
                    return Err(Problem::conflict(
                        "several accounts have that email; add the person by userID",
                    ));
                }
            }
        }
        _ => return Err(Problem::bad_request("give exactly one of userID and email")),
    };
    let command = OrganizationCommand::AddMember {
        user: member.clone(),
        role: body.role,
        actor: user.user_id.clone(),
    };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Created()
        .json(Accepted { id: member.to_string(), consistency_token: token.encode() }))
}

/// Fail as the command would (404 for strangers and other organizations' keys, 403 for members
/// without the role) unless `user` may manage `org`'s members.
async fn may_manage_members(
    state: &AppState,
    org: &OrganizationId,
    user: &AuthUser,
) -> Result<(), Problem> {
    if !user.reaches(org) {
        return Err(Problem::not_found());
    }
    let role = state.directory.role_in(org, &user.user_id).await.map_err(CommandError::from)?;
    match decide(role, Action::ManageMembers) {
        Decision::Allowed => Ok(()),
        Decision::Forbidden => Err(Problem::forbidden("your role does not allow ManageMembers")),
        Decision::NotFound => Err(Problem::not_found()),
    }
}

/// Run an organization command and answer 200 with the consistency token.
async fn run(
    state: &AppState,
    org: &OrganizationId,
    command: OrganizationCommand,
    user: &AuthUser,
    request: &RequestId,
) -> Result<HttpResponse, Problem> {
    let token = state.organizations.execute(org.as_str(), command, &context(user, request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: org.to_string(), consistency_token: token.encode() }))
}

pub async fn rename(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<RenameOrganization>,
) -> Result<HttpResponse, Problem> {
    let command =
        OrganizationCommand::Rename { name: body.into_inner().name, actor: user.user_id.clone() };
    run(&state, &org, command, &user, &request).await
}

pub async fn change_role(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(OrganizationId, UserId)>,
    body: web::Json<ChangeRole>,
) -> Result<HttpResponse, Problem> {
    let (org, member) = path.into_inner();
    let command = OrganizationCommand::ChangeRole {
        user: member,
        role: body.into_inner().role,
        actor: user.user_id.clone(),
    };
    run(&state, &org, command, &user, &request).await
}

pub async fn remove_member(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(OrganizationId, UserId)>,
) -> Result<HttpResponse, Problem> {
    let (org, member) = path.into_inner();
    let command = OrganizationCommand::RemoveMember { user: member, actor: user.user_id.clone() };
    run(&state, &org, command, &user, &request).await
}

pub async fn transfer(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<TransferOwnership>,
) -> Result<HttpResponse, Problem> {
    let command = OrganizationCommand::TransferOwnership {
        to: body.into_inner().user_id,
        actor: user.user_id.clone(),
    };
    run(&state, &org, command, &user, &request).await
}
