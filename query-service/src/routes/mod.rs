//! The REST read API and the session event stream.

mod api_keys;
mod audit;
mod events;
mod organizations;
mod sessions;
mod workspaces;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/login", web::get().to(crate::login::start))
        .route("/auth/callback", web::get().to(crate::login::callback))
        .route("/auth/logout", web::post().to(crate::login::logout))
        .route("/auth/device", web::post().to(crate::device::start))
        .route("/auth/device/token", web::post().to(crate::device::token))
        .route("/me", web::get().to(organizations::me))
        .route("/me/api-key", web::get().to(api_keys::mine))
        .route("/org", web::get().to(organizations::list))
        .route("/org/{org}/workspace", web::get().to(organizations::workspaces))
        .route("/org/{org}/member", web::get().to(organizations::members))
        .route("/org/{org}/audit", web::get().to(audit::list))
        .route("/workspace/{ws}", web::get().to(workspaces::get))
        .route("/workspace/{ws}/session", web::get().to(sessions::list))
        .route("/session/{id}", web::get().to(sessions::get))
        .route("/session/{id}/message", web::get().to(sessions::messages))
        .route("/session/{id}/event", web::get().to(events::stream));
}
