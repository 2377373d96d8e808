//! `GET /org/{org}/provider`: the provider connections the caller may see — the organization's,
//! and their own — with each key's fingerprint and last four characters, never the key; and
//! `GET /org/{org}/model`: the models the caller may prompt, as OpenCode's `/provider` lists them.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::ids::OrganizationId;
use schemas::policy::Action;
use schemas::provider::{ByokPolicy, ConnectionInfo};
use std::collections::BTreeMap;

use schemas::message::ModelRef;
use schemas::read::{ConnectionList, ModelCatalog, ModelEntry, ProviderEntry};

use crate::access;
use crate::page::{parse_id, parse_stored};
use crate::startup::AppState;

/// Most connections an organization holds (as the command side enforces).
const MAX_LISTED: i64 = 200;

/// The connections `user` may see in `org` (the organization's and their own) and the
/// organization's row (policy, default model).
async fn visible(
    req: &HttpRequest,
    state: &AppState,
    org: &OrganizationId,
    user: &AuthUser,
) -> Result<(Vec<ConnectionInfo>, tokio_postgres::Row), Problem> {
    let db = state.reader(req, user).await?;
    let granted = access::organization(&db, org, user, Action::Read).await?;
    let rows = db
        .query(
            "SELECT connection_id, owner_id, kind, provider_id, name, base_url, headers, models, enabled, \
                    fingerprint, key_last4, catalog FROM rm_connections \
             WHERE organization_id = $1 AND (owner_id IS NULL OR owner_id = $2) \
             ORDER BY connection_id LIMIT $3",
            &[&org.as_str(), &user.user_id.as_str(), &MAX_LISTED],
        )
        .await?;
    let items = rows
        .iter()
        .map(|r| {
            let owner: Option<&str> = r.get(1);
            Ok(ConnectionInfo {
                id: parse_id(r.get(0))?,
                owner_id: owner.map(parse_id).transpose()?,
                kind: parse_stored(r.get(2))?,
                provider_id: r.get(3),
                name: r.get(4),
                base_url: r.get(5),
                headers: serde_json::from_value(r.get(6)).map_err(stored)?,
                models: serde_json::from_value(r.get(7)).map_err(stored)?,
                catalog: serde_json::from_value(r.get(11)).map_err(stored)?,
                enabled: r.get(8),
                fingerprint: r.get(9),
                key_last4: r.get(10),
            })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok((items, granted.row))
}

fn stored(e: serde_json::Error) -> Problem {
    Problem::internal(&format!("stored connection: {e}"))
}

fn byok(row: &tokio_postgres::Row) -> Result<ByokPolicy, Problem> {
    Ok(ByokPolicy {
        allowed: row.get("byok_allowed"),
        providers: serde_json::from_value(row.get("byok_providers")).map_err(stored)?,
    })
}

pub async fn list(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
) -> Result<HttpResponse, Problem> {
    let (items, row) = visible(&req, &state, &org, &user).await?;
    Ok(HttpResponse::Ok().json(ConnectionList { items, byok: byok(&row)? }))
}

/// `GET /org/{org}/model`: the models the caller may prompt, by provider (their own connection
/// for a provider where the organization allows it, else the organization's), OpenCode-style.
pub async fn models(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
) -> Result<HttpResponse, Problem> {
    Ok(HttpResponse::Ok().json(catalog(&req, &state, &org, &user).await?))
}

/// The models `user` may prompt in `org`, by provider.
pub async fn catalog(
    req: &HttpRequest,
    state: &AppState,
    org: &OrganizationId,
    user: &AuthUser,
) -> Result<ModelCatalog, Problem> {
    let (connections, row) = visible(req, state, org, user).await?;
    let policy = byok(&row)?;
    let mut usable: BTreeMap<String, &ConnectionInfo> = BTreeMap::new();
    for c in connections.iter().filter(|c| c.enabled) {
        let own = c.owner_id.is_some();
        if own && !policy.allows(&c.provider_id) {
            continue;
        }
        // A member's own connection wins over the organization's, as prompts resolve.
        if own || !usable.contains_key(&c.provider_id) {
            usable.insert(c.provider_id.clone(), c);
        }
    }
    let all: Vec<ProviderEntry> = usable
        .values()
        .map(|c| ProviderEntry {
            id: c.provider_id.clone(),
            name: c.name.clone(),
            models: c
                .models
                .iter()
                .map(|m| {
                    let info = c.catalog.get(m).cloned().unwrap_or_default();
                    (m.clone(), ModelEntry { id: m.clone(), info })
                })
                .collect(),
        })
        .collect();
    let default_model: Option<ModelRef> = row
        .get::<_, Option<serde_json::Value>>("default_model")
        .map(serde_json::from_value)
        .transpose()
        .map_err(stored)?;
    let default = default_model.into_iter().map(|m| (m.provider_id, m.model_id)).collect();
    let connected = all.iter().map(|p| p.id.clone()).collect();
    Ok(ModelCatalog { all, default, connected })
}
