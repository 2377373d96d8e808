//! Provider connections: `POST /org/{org}/provider`, `PATCH /org/{org}/provider/{id}`,
//! `PUT /org/{org}/provider/{id}/key`, `DELETE /org/{org}/provider/{id}`, and
//! `PUT /org/{org}/byok` (whether members may bring their own keys).
//!
//! The key is sealed (`identity::credentials`) into `provider_secrets`, never into an event:
//! written before a new connection's event (its id is fresh, so nothing can use it before), and
//! for an existing connection only after the caller was found to manage it. A deleted
//! connection's key is shredded first, so the deletion holds even if recording it is retried.

use actix_web::{HttpResponse, web};
use identity::AuthUser;
use identity::credentials::{self, CredentialError};
use platform::http::RequestId;
use platform::problem::Problem;
use schemas::api::Accepted;
use schemas::ids::{ConnectionId, OrganizationId};
use schemas::provider::{
    ByokPolicy, ConnectionSaved, CreateConnection, ImportCatalog, RotateKey, SetByokPolicy,
    SetDefaultModel, SetPromptLimits, UpdateConnection,
};

use super::context;
use crate::aggregates::{ConnectionChange, ConnectionSpec, OrganizationCommand};
use crate::error::CommandError;
use crate::startup::AppState;

/// API keys cannot manage provider keys: a leaked API key must not be able to swap them.
fn require_interactive(user: &AuthUser) -> Result<(), Problem> {
    match user.scope {
        Some(_) => Err(Problem::forbidden("API keys cannot manage provider connections; sign in")),
        None => Ok(()),
    }
}

/// Refuse a base URL on loopback, private or link-local addresses (unless the deployment allows
/// them): the worker would call it with people's prompts. Names are checked as written; a name
/// that resolves inside the network is the deployment's egress policy to stop.
fn check_reachable(state: &AppState, base_url: Option<&str>) -> Result<(), Problem> {
    let Some(raw) = base_url else { return Ok(()) };
    if state.allow_private_urls {
        return Ok(());
    }
    let private =
        match url::Url::parse(raw.trim()).ok().and_then(|u| u.host().map(|h| h.to_owned())) {
            Some(url::Host::Ipv4(ip)) => {
                ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
            }
            Some(url::Host::Ipv6(ip)) => {
                ip.is_loopback()
                    || ip.is_unspecified()
                    || (ip.segments()[0] & 0xfe00) == 0xfc00
                    || (ip.segments()[0] & 0xffc0) == 0xfe80
            }
            Some(url::Host::Domain(name)) => {
                let name = name.to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost") || name.ends_with(".internal")
            }
            None => false,
        };
    if private {
        return Err(Problem::unprocessable("baseURL points into a private network"));
    }
    Ok(())
}

fn sealing_failed(e: CredentialError) -> Problem {
    match e {
        CredentialError::NoKek | CredentialError::UnknownKek(_) => {
            tracing::error!(error = %e, "provider keys cannot be sealed");
            Problem::unavailable("provider keys cannot be stored now (no key-encryption key)")
        }
        other => Problem::internal(&other),
    }
}

pub async fn create(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<CreateConnection>,
) -> Result<HttpResponse, Problem> {
    require_interactive(&user)?;
    let body = body.into_inner();
    check_reachable(&state, body.base_url.as_deref())?;
    let (org, id) = (org.into_inner(), ConnectionId::new());
    let sealed =
        credentials::seal(&state.keks, &org, &id, &body.api_key.0).map_err(sealing_failed)?;
    let fingerprint = credentials::fingerprint(&body.api_key.0);
    drop(body.api_key);
    let spec = ConnectionSpec {
        kind: body.kind,
        provider_id: body.provider_id,
        name: body.name,
        base_url: body.base_url,
        headers: body.headers,
        models: body.models,
        personal: body.personal,
    };
    let db = state.db.get().await?;
    credentials::store::put(&db, &org, &id, &sealed).await?;
    let command = OrganizationCommand::AddConnection {
        id: id.clone(),
        spec,
        fingerprint: fingerprint.clone(),
        actor: user.user_id.clone(),
    };
    match state.organizations.execute(org.as_str(), command, &context(&user, &request)).await {
        Ok(token) => Ok(HttpResponse::Created().json(ConnectionSaved {
            id,
            fingerprint: fingerprint.0,
            key_last4: fingerprint.1,
            consistency_token: token.encode(),
        })),
        Err(e) => {
            // Not recorded: the key must not linger.
            credentials::store::shred(&db, &id).await?;
            Err(e.into())
        }
    }
}

pub async fn update(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(OrganizationId, ConnectionId)>,
    body: web::Json<UpdateConnection>,
) -> Result<HttpResponse, Problem> {
    let (org, id) = path.into_inner();
    let body = body.into_inner();
    check_reachable(&state, body.base_url.as_deref())?;
    let change = ConnectionChange {
        name: body.name,
        base_url: body.base_url,
        headers: body.headers,
        models: body.models,
        enabled: body.enabled,
        key: None,
        catalog: None,
    };
    let command = OrganizationCommand::ChangeConnection { id, change, actor: user.user_id.clone() };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: org.to_string(), consistency_token: token.encode() }))
}

/// Fail as the command would unless `user` may manage connection `id` of `org`.
async fn may_manage(
    state: &AppState,
    org: &OrganizationId,
    id: &ConnectionId,
    user: &AuthUser,
) -> Result<(), Problem> {
    if !user.reaches(org) {
        return Err(Problem::not_found());
    }
    state
        .directory
        .may_manage_connection(org, &user.user_id, id)
        .await
        .map_err(|e| Problem::from(CommandError::from(e)))
}

pub async fn rotate(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(OrganizationId, ConnectionId)>,
    body: web::Json<RotateKey>,
) -> Result<HttpResponse, Problem> {
    require_interactive(&user)?;
    let (org, id) = path.into_inner();
    may_manage(&state, &org, &id, &user).await?;
    let key = body.into_inner().api_key;
    let sealed = credentials::seal(&state.keks, &org, &id, &key.0).map_err(sealing_failed)?;
    let fingerprint = credentials::fingerprint(&key.0);
    drop(key);
    credentials::store::put(&state.db.get().await?, &org, &id, &sealed).await?;
    let change = ConnectionChange { key: Some(fingerprint.clone()), ..Default::default() };
    let command = OrganizationCommand::ChangeConnection {
        id: id.clone(),
        change,
        actor: user.user_id.clone(),
    };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(ConnectionSaved {
        id,
        fingerprint: fingerprint.0,
        key_last4: fingerprint.1,
        consistency_token: token.encode(),
    }))
}

pub async fn delete(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(OrganizationId, ConnectionId)>,
) -> Result<HttpResponse, Problem> {
    require_interactive(&user)?;
    let (org, id) = path.into_inner();
    may_manage(&state, &org, &id, &user).await?;
    credentials::store::shred(&state.db.get().await?, &id).await?;
    let command = OrganizationCommand::RemoveConnection { id, actor: user.user_id.clone() };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: org.to_string(), consistency_token: token.encode() }))
}

pub async fn set_byok(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<SetByokPolicy>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let policy = ByokPolicy { allowed: body.allowed, providers: body.providers };
    let command = OrganizationCommand::SetByokPolicy { policy, actor: user.user_id.clone() };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: org.to_string(), consistency_token: token.encode() }))
}

/// Describe (and offer) models of a connection: models.dev's provider entry imports as it is.
pub async fn import_catalog(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    path: web::Path<(OrganizationId, ConnectionId)>,
    body: web::Json<ImportCatalog>,
) -> Result<HttpResponse, Problem> {
    let (org, id) = path.into_inner();
    let change = ConnectionChange { catalog: Some(body.into_inner().models), ..Default::default() };
    let command = OrganizationCommand::ChangeConnection { id, change, actor: user.user_id.clone() };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: org.to_string(), consistency_token: token.encode() }))
}

/// The organization's default model.
pub async fn set_default_model(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<SetDefaultModel>,
) -> Result<HttpResponse, Problem> {
    let model = body.into_inner().model;
    let command = OrganizationCommand::SetDefaultModel { model, actor: user.user_id.clone() };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: org.to_string(), consistency_token: token.encode() }))
}

/// How fast members, and the organization, may prompt.
pub async fn set_prompt_limits(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    body: web::Json<SetPromptLimits>,
) -> Result<HttpResponse, Problem> {
    let command = OrganizationCommand::SetPromptLimits {
        limits: body.into_inner(),
        actor: user.user_id.clone(),
    };
    let token =
        state.organizations.execute(org.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Ok().json(Accepted { id: org.to_string(), consistency_token: token.encode() }))
}
