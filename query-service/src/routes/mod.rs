//! The REST read API and the session event stream.

mod api_keys;
mod audit;
mod budgets;
mod events;
mod opencode;
mod opencode_bootstrap;
mod organizations;
mod providers;
mod sessions;
mod usage;
mod workspaces;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    platform::http::openapi_route(cfg, schemas::openapi::query_document);
    cfg.configure(identity::sign_in::routes)
        .route("/me", web::get().to(organizations::me))
        .route("/me/api-key", web::get().to(api_keys::mine))
        .route("/org", web::get().to(organizations::list))
        .route("/org/{org}/workspace", web::get().to(organizations::workspaces))
        .route("/org/{org}/member", web::get().to(organizations::members))
        .route("/org/{org}/audit", web::get().to(audit::list))
        .route("/org/{org}/provider", web::get().to(providers::list))
        .route("/org/{org}/model", web::get().to(providers::models))
        .route("/org/{org}/usage", web::get().to(usage::organization))
        .route("/org/{org}/budget", web::get().to(budgets::list))
        .route("/workspace/{ws}/usage", web::get().to(usage::workspace))
        .route("/me/usage", web::get().to(usage::mine))
        .route("/workspace/{ws}", web::get().to(workspaces::get))
        .route("/workspace/{ws}/session", web::get().to(sessions::list))
        .route("/session", web::get().to(opencode::sessions))
        .route("/path", web::get().to(opencode::path))
        .route("/config", web::get().to(opencode::config))
        .route("/config/providers", web::get().to(opencode_bootstrap::configured_providers))
        .route("/provider", web::get().to(opencode_bootstrap::provider_list))
        .route("/agent", web::get().to(opencode_bootstrap::agents))
        .route("/session/status", web::get().to(opencode_bootstrap::session_status))
        .route("/project/current", web::get().to(opencode_bootstrap::current_project))
        .route("/command", web::get().to(opencode_bootstrap::empty_list))
        .route("/lsp", web::get().to(opencode_bootstrap::empty_list))
        .route("/formatter", web::get().to(opencode_bootstrap::empty_list))
        .route("/mcp", web::get().to(opencode_bootstrap::empty_map))
        .route("/experimental/resource", web::get().to(opencode_bootstrap::empty_map))
        .route("/provider/auth", web::get().to(opencode_bootstrap::empty_map))
        .route("/vcs", web::get().to(opencode_bootstrap::empty_map))
        .route("/experimental/workspace", web::get().to(opencode_bootstrap::workspaces))
        .route(
            "/experimental/workspace/status",
            web::get().to(opencode_bootstrap::workspace_status),
        )
        .route("/event", web::get().to(opencode::events))
        .route("/global/event", web::get().to(opencode::global_events))
        .route("/session/{id}", web::get().to(sessions::get))
        .route("/session/{id}/message", web::get().to(sessions::messages))
        .route("/session/{id}/event", web::get().to(events::stream));
}
