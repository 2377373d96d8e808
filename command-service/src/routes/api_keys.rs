//! `POST /org/{org}/api-key` (create; the key is shown once) and `DELETE /api-key/{id}` (revoke).
//!
//! The credential row is the source of truth for authentication, so it is written first on
//! create (and removed again if the event cannot be recorded) and revoked first on revoke (so a
//! revocation holds even if recording its event must be retried).

use actix_web::{HttpResponse, web};
use identity::{AuthUser, api_keys};
use platform::http::RequestId;
use platform::problem::Problem;
use schemas::api::{Accepted, ApiKeyCreated, CreateApiKey, MAX_API_KEY_DAYS};
use schemas::ids::{ApiKeyId, OrganizationId};

use super::context;
use crate::aggregates::ApiKeyCommand;
use crate::error::{CommandError, DomainError};
use crate::startup::AppState;

const DEFAULT_DAYS: u32 = 90;

/// Keys cannot mint or revoke keys: a leaked key must not be able to outlive its revocation.
fn require_interactive(user: &AuthUser) -> Result<(), Problem> {
    match user.scope {
        Some(_) => Err(Problem::forbidden("API keys cannot manage API keys; sign in instead")),
        None => Ok(()),
    }
}

pub async fn create(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<CreateApiKey>,
) -> Result<HttpResponse, Problem> {
    require_interactive(&user)?;
    let body = body.into_inner();
    let days = body.expires_in_days.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_API_KEY_DAYS).contains(&days) {
        return Err(Problem::bad_request(format!(
            "expiresInDays must be between 1 and {MAX_API_KEY_DAYS}"
        )));
    }
    let expires_at = schemas::now_ms() + i64::from(days) * 24 * 3600 * 1000;
    let id = ApiKeyId::new();
    let key = api_keys::generate(&id);
    let db = state.db.get().await?;
    let workspace = body.workspace_id;
    api_keys::store(&db, &id, &user.user_id, &org, workspace.as_ref(), &key, expires_at).await?;
    let command = ApiKeyCommand::Create {
        id: id.clone(),
        organization: org.into_inner(),
        workspace,
        name: body.name,
        expires_at,
        actor: user.user_id.clone(),
    };
    match state.api_keys.execute(id.as_str(), command, &context(&user, &request)).await {
        Ok(token) => Ok(HttpResponse::Created().json(ApiKeyCreated {
            id,
            key: key.text,
            expires_at,
            consistency_token: token.encode(),
        })),
        Err(e) => {
            // Not recorded: the key must not work.
            api_keys::discard(&db, &id).await?;
            Err(e.into())
        }
    }
}

pub async fn revoke(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    id: web::Path<ApiKeyId>,
) -> Result<HttpResponse, Problem> {
    require_interactive(&user)?;
    let db = state.db.get().await?;
    if !api_keys::revoke(&db, &id, &user.user_id).await? {
        return Err(Problem::not_found());
    }
    let command = ApiKeyCommand::Revoke { actor: user.user_id.clone() };
    let token = match state.api_keys.execute(id.as_str(), command, &context(&user, &request)).await
    {
        Ok(token) => token.encode(),
        Err(CommandError::Domain(DomainError::AlreadyDone)) => String::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(HttpResponse::Ok().json(Accepted { id: id.to_string(), consistency_token: token }))
}
