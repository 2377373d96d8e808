//! The REST write API. Every route authenticates the caller (bearer JWT) and runs one command.

mod api_keys;
mod budgets;
mod me;
mod opencode;
mod organizations;
mod providers;
mod sessions;
mod workspaces;

use actix_web::web;
use identity::AuthUser;
use platform::http::RequestId;

use crate::executor::CommandContext;

pub fn configure(cfg: &mut web::ServiceConfig) {
    platform::http::openapi_route(cfg, schemas::openapi::command_document);
    cfg.route("/me", web::delete().to(me::erase))
        .route("/org", web::post().to(organizations::create))
        .route("/org/{org}", web::patch().to(organizations::rename))
        .route("/org/{org}/member", web::post().to(organizations::add_member))
        .route("/org/{org}/member/{user}", web::put().to(organizations::change_role))
        .route("/org/{org}/member/{user}", web::delete().to(organizations::remove_member))
        .route("/org/{org}/transfer", web::post().to(organizations::transfer))
        .route("/org/{org}/api-key", web::post().to(api_keys::create))
        .route("/api-key/{id}", web::delete().to(api_keys::revoke))
        .route("/org/{org}/provider", web::post().to(providers::create))
        .route("/org/{org}/provider/{id}", web::patch().to(providers::update))
        .route("/org/{org}/provider/{id}", web::delete().to(providers::delete))
        .route("/org/{org}/provider/{id}/key", web::put().to(providers::rotate))
        .route("/org/{org}/provider/{id}/catalog", web::put().to(providers::import_catalog))
        .route("/org/{org}/byok", web::put().to(providers::set_byok))
        .route("/org/{org}/default-model", web::put().to(providers::set_default_model))
        .route("/org/{org}/limits", web::put().to(providers::set_prompt_limits))
        .route("/org/{org}/budget", web::post().to(budgets::create))
        .route("/org/{org}/budget/{id}", web::put().to(budgets::replace))
        .route("/org/{org}/budget/{id}", web::delete().to(budgets::remove))
        .route("/workspace/{ws}/default-model", web::put().to(workspaces::set_default_model))
        .route("/org/{org}/workspace", web::post().to(workspaces::create))
        .route("/workspace/{ws}", web::patch().to(workspaces::rename))
        .route("/workspace/{ws}/archive", web::post().to(workspaces::archive))
        .route("/workspace/{ws}/member/{user}", web::put().to(workspaces::set_member))
        .route("/workspace/{ws}/member/{user}", web::delete().to(workspaces::remove_member))
        .route("/workspace/{ws}/project", web::post().to(workspaces::add_project))
        .route("/workspace/{ws}/session", web::post().to(sessions::create))
        .route("/session", web::post().to(opencode::create_session))
        .route("/session/{id}/message", web::post().to(opencode::prompt_and_wait))
        .route("/session/{id}/prompt_async", web::post().to(sessions::prompt))
        .route("/session/{id}/abort", web::post().to(sessions::abort));
}

/// The command context of a user request: the request id becomes the events' correlation id.
fn context(user: &AuthUser, request: &RequestId) -> CommandContext {
    CommandContext {
        actor: user.user_id.to_string(),
        correlation_id: request.0.clone(),
        causation_id: None,
        organization_scope: user.scope.clone(),
    }
}
