//! `GET /org/{org}/provider`: the provider connections the caller may see — the organization's,
//! and their own — with each key's fingerprint and last four characters, never the key.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::ids::OrganizationId;
use schemas::policy::Action;
use schemas::provider::{ByokPolicy, ConnectionInfo};
use schemas::read::ConnectionList;

use crate::access;
use crate::page::{parse_id, parse_stored};
use crate::startup::AppState;

/// Most connections an organization holds (as the command side enforces).
const MAX_LISTED: i64 = 200;

pub async fn list(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
) -> Result<HttpResponse, Problem> {
    let db = state.reader(&req, &user).await?;
    let granted = access::organization(&db, &org, &user, Action::Read).await?;
    let rows = db
        .query(
            "SELECT connection_id, owner_id, kind, provider_id, name, base_url, headers, models, enabled, \
                    fingerprint, key_last4 FROM rm_connections \
             WHERE organization_id = $1 AND (owner_id IS NULL OR owner_id = $2) \
             ORDER BY connection_id LIMIT $3",
            &[&org.as_str(), &user.user_id.as_str(), &MAX_LISTED],
        )
        .await?;
    let stored = |e: serde_json::Error| Problem::internal(&format!("stored connection: {e}"));
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
                enabled: r.get(8),
                fingerprint: r.get(9),
                key_last4: r.get(10),
            })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    let byok = ByokPolicy {
        allowed: granted.row.get("byok_allowed"),
        providers: serde_json::from_value(granted.row.get("byok_providers")).map_err(stored)?,
    };
    Ok(HttpResponse::Ok().json(ConnectionList { items, byok }))
}
