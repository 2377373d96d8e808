//! The reads OpenCode's terminal UI and SDK make as they start (docs/opencode-clients.md), for
//! the workspace the request's directory means: the models the caller may prompt, in OpenCode's
//! shapes (`/config/providers`, `/provider`), the one agent this service runs (`/agent`), the
//! busy sessions (`/session/status`), the workspace as OpenCode's project (`/project/current`),
//! and empty answers for the tooling it has no counterpart of (commands, language servers,
//! formatters, MCP servers, provider sign-in methods, version control): never a 404 that makes a
//! client give up.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use identity::directory::of_workspace;
use platform::problem::Problem;
use schemas::opencode::{
    Agent, ConfiguredProviders, Model, Project, ProjectTime, Provider, ProviderList, SessionStatus,
    Workspace, WorkspaceStatus,
};
use schemas::read::ModelCatalog;
use serde_json::json;

use super::opencode::{DirectoryQuery, workspace_of, workspace_row};
use crate::startup::AppState;

/// Busy sessions listed at most (a workspace runs far fewer at once).
const MAX_BUSY_LISTED: i64 = 1000;

/// The catalog of the organization the directory's workspace belongs to, in OpenCode's form.
async fn providers(
    req: &HttpRequest,
    state: &AppState,
    user: &AuthUser,
    directory: Option<&str>,
) -> Result<(Vec<Provider>, ModelCatalog), Problem> {
    let (_, org, db) = workspace_of(req, state, user, directory).await?;
    drop(db);
    let catalog = super::providers::catalog(req, state, &org, user).await?;
    let providers = catalog
        .all
        .iter()
        .map(|p| Provider {
            id: p.id.clone(),
            name: p.name.clone(),
            source: "api".into(),
            env: Vec::new(),
            options: Default::default(),
            models: p
                .models
                .iter()
                .map(|(id, m)| (id.clone(), Model::of(&p.id, id, &m.info)))
                .collect(),
        })
        .collect();
    Ok((providers, catalog))
}

/// `GET /config/providers`.
pub async fn configured_providers(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let (providers, catalog) =
        self::providers(&req, &state, &user, query.directory.as_deref()).await?;
    Ok(HttpResponse::Ok().json(ConfiguredProviders { providers, default: catalog.default }))
}

/// `GET /provider`.
pub async fn provider_list(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let (all, catalog) = providers(&req, &state, &user, query.directory.as_deref()).await?;
    Ok(HttpResponse::Ok().json(ProviderList {
        all,
        default: catalog.default,
        connected: catalog.connected,
    }))
}

/// `GET /agent`.
pub async fn agents(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let _checked = workspace_of(&req, &state, &user, query.directory.as_deref()).await?;
    Ok(HttpResponse::Ok().json([Agent::build()]))
}

/// `GET /session/status`: the workspace's busy sessions (OpenCode lists only those).
pub async fn session_status(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let (ws, org, db) = workspace_of(&req, &state, &user, query.directory.as_deref()).await?;
    let rows = db
        .query(
            "SELECT session_id FROM rm_sessions \
             WHERE organization_id = $1 AND workspace_id = $2 AND status = 'busy' \
             ORDER BY session_id DESC LIMIT $3",
            &[&org.as_str(), &ws.as_str(), &MAX_BUSY_LISTED],
        )
        .await?;
    let busy: BTreeMap<String, SessionStatus> =
        rows.iter().map(|r| (r.get(0), SessionStatus { kind: "busy".into() })).collect();
    Ok(HttpResponse::Ok().json(busy))
}

/// `GET /project/current`: the workspace.
pub async fn current_project(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let (ws, granted, _db) = workspace_row(&req, &state, &user, query.directory.as_deref()).await?;
    let created: i64 = granted.row.get("created_at");
    Ok(HttpResponse::Ok().json(Project {
        id: ws.to_string(),
        worktree: of_workspace(&ws),
        name: granted.row.get("name"),
        time: ProjectTime { created, updated: created },
        sandboxes: Vec::new(),
    }))
}

/// `GET /experimental/workspace`: the workspace, as OpenCode's (sessions name it in their
/// `workspaceID`, and OpenCode's terminal UI sends a prompt only to a workspace it lists).
pub async fn workspaces(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let (ws, granted, _db) = workspace_row(&req, &state, &user, query.directory.as_deref()).await?;
    Ok(HttpResponse::Ok().json([Workspace {
        id: ws.to_string(),
        kind: "service".into(),
        name: granted.row.get("name"),
        directory: of_workspace(&ws),
        project_id: ws.to_string(),
        time_used: granted.row.get("created_at"),
    }]))
}

/// `GET /experimental/workspace/status`: the workspace is reachable (through the service).
pub async fn workspace_status(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let (ws, ..) = workspace_of(&req, &state, &user, query.directory.as_deref()).await?;
    let status = "connected".to_owned();
    Ok(HttpResponse::Ok().json([WorkspaceStatus { workspace_id: ws.to_string(), status }]))
}

/// `GET /command`, `/lsp`, `/formatter`: nothing of the kind runs on the service (the directory
/// is checked all the same).
pub async fn empty_list(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let _checked = workspace_of(&req, &state, &user, query.directory.as_deref()).await?;
    Ok(HttpResponse::Ok().json(json!([])))
}

/// `GET /mcp`, `/experimental/resource`, `/provider/auth`, `/vcs`: likewise, as maps.
pub async fn empty_map(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let _checked = workspace_of(&req, &state, &user, query.directory.as_deref()).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}
