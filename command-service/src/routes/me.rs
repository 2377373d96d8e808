//! `DELETE /me`: erase the caller's account — their personal data is deleted and their tokens
//! are refused from then on. The event log, which names them by id only, is untouched.

use actix_web::{HttpResponse, web};
use identity::{AuthUser, Authenticator};
use platform::problem::Problem;

use crate::startup::AppState;

pub async fn erase(
    user: AuthUser,
    state: web::Data<AppState>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, Problem> {
    if user.scope.is_some() {
        return Err(Problem::forbidden(
            "an API key cannot erase its owner's account; sign in instead",
        ));
    }
    let mut db = state.db.get().await?;
    identity::users::erase(&mut db, &user.user_id).await?;
    auth.forget(&user.user_id).await;
    tracing::info!(user = %user.user_id, "account erased");
    Ok(HttpResponse::NoContent().finish())
}
