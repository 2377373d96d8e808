//! Signing in: browsers with the authorization code flow (`browser.rs`), command lines with the
//! device authorization grant (`device.rs`). Mounted by the query service with `routes`.

pub mod browser;
pub mod device;

pub use browser::SignIn;

use actix_web::web;

/// `GET /auth/login`, `GET /auth/callback`, `POST /auth/logout`, `POST /auth/device`,
/// `POST /auth/device/token`; the app must hold a `web::Data<SignIn>`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/login", web::get().to(browser::start))
        .route("/auth/callback", web::get().to(browser::callback))
        .route("/auth/logout", web::post().to(browser::logout))
        .route("/auth/device", web::post().to(device::start))
        .route("/auth/device/token", web::post().to(device::token));
}
