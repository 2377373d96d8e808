//! OpenCode's own shapes for the reads its terminal UI and SDK make when they start
//! (`/config/providers`, `/provider`, `/agent`, `/session/status`, `/project/current`), as
//! opencode-ai's SDK types them. Only what this service has is filled in; the rest carries
//! OpenCode's neutral values (no tools, no environment variables, no options).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::provider::ModelInfo;

/// A provider and the models the caller may prompt through it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Provider {
    pub id: String,
    pub name: String,
    /// `"api"`: configured on the service, not from the client's environment.
    pub source: String,
    pub env: Vec<String>,
    pub options: serde_json::Map<String, serde_json::Value>,
    pub models: BTreeMap<String, Model>,
}

/// A model, as OpenCode describes one.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Model {
    pub id: String,
    #[serde(rename = "providerID")]
    pub provider_id: String,
    pub api: ModelApi,
    pub name: String,
    pub capabilities: Capabilities,
    pub cost: Cost,
    pub limit: Limit,
    /// `"active"`.
    pub status: String,
    pub options: serde_json::Map<String, serde_json::Value>,
    pub headers: BTreeMap<String, String>,
    pub release_date: String,
}

/// How OpenCode would call the model itself (it does not here: the service does).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ModelApi {
    pub id: String,
    pub url: String,
    pub npm: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Capabilities {
    pub temperature: bool,
    pub reasoning: bool,
    pub attachment: bool,
    pub toolcall: bool,
    pub input: Modalities,
    pub output: Modalities,
    pub interleaved: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Modalities {
    pub text: bool,
    pub audio: bool,
    pub image: bool,
    pub video: bool,
    pub pdf: bool,
}

impl Modalities {
    fn text(image: bool) -> Self {
        Modalities { text: true, audio: false, image, video: false, pdf: false }
    }
}

/// Dollars per million tokens.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Cost {
    pub input: f64,
    pub output: f64,
    pub cache: CacheCost,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CacheCost {
    pub read: f64,
    pub write: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Limit {
    pub context: u64,
    pub output: u64,
}

impl Model {
    /// OpenCode's form of a model of our catalog.
    pub fn of(provider_id: &str, id: &str, info: &ModelInfo) -> Self {
        let dollars = |p: crate::provider::Price| p.micro_dollars as f64 / 1e6;
        let cost = info.cost.as_ref();
        Model {
            id: id.to_owned(),
            provider_id: provider_id.to_owned(),
            api: ModelApi { id: id.to_owned(), url: String::new(), npm: String::new() },
            name: info.name.clone().unwrap_or_else(|| id.to_owned()),
            capabilities: Capabilities {
                temperature: true,
                reasoning: info.reasoning,
                attachment: info.attachment,
                toolcall: info.tool_call,
                input: Modalities::text(info.attachment),
                output: Modalities::text(false),
                interleaved: false,
            },
            cost: Cost {
                input: cost.map_or(0.0, |c| dollars(c.input)),
                output: cost.map_or(0.0, |c| dollars(c.output)),
                cache: CacheCost {
                    read: cost.and_then(|c| c.cache_read).map_or(0.0, dollars),
                    write: cost.and_then(|c| c.cache_write).map_or(0.0, dollars),
                },
            },
            limit: Limit { context: info.limit.context, output: info.limit.output },
            status: "active".into(),
            options: Default::default(),
            headers: BTreeMap::new(),
            release_date: String::new(),
        }
    }
}

/// `GET /config/providers`: the providers, and the default model by provider.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ConfiguredProviders {
    pub providers: Vec<Provider>,
    pub default: BTreeMap<String, String>,
}

/// `GET /provider`: every provider, the default model by provider, the providers connected.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProviderList {
    pub all: Vec<Provider>,
    pub default: BTreeMap<String, String>,
    pub connected: Vec<String>,
}

/// An agent (`GET /agent`). The service runs one: it answers prompts, and runs no tools.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Agent {
    pub name: String,
    pub description: String,
    /// `"primary"`: one the user talks to.
    pub mode: String,
    pub native: bool,
    /// OpenCode's permission rules; none apply, as no tool runs here.
    pub permission: Vec<serde_json::Value>,
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl Agent {
    /// The one agent of this service, named as OpenCode's default agent is.
    pub fn build() -> Self {
        Agent {
            name: crate::api::AGENT.into(),
            description: "Answers prompts with the organization's models".into(),
            mode: "primary".into(),
            native: true,
            permission: Vec::new(),
            options: Default::default(),
        }
    }
}

/// A session's state in `GET /session/status` (keyed by session id; sessions not listed are
/// idle).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionStatus {
    /// `"busy"`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `GET /project/current`: the workspace, as OpenCode's project.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Project {
    pub id: String,
    pub worktree: String,
    pub name: String,
    pub time: ProjectTime,
    pub sandboxes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProjectTime {
    pub created: i64,
    pub updated: i64,
}

/// One of OpenCode's workspaces (`GET /experimental/workspace`): ours, which sessions name in
/// their `workspaceID`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Workspace {
    pub id: String,
    /// `"service"`: a workspace of this service, not one OpenCode made.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub directory: String,
    #[serde(rename = "projectID")]
    pub project_id: String,
    #[serde(rename = "timeUsed")]
    pub time_used: i64,
}

/// Whether OpenCode's clients can reach a workspace (`GET /experimental/workspace/status`): ours
/// always are, through the service.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceStatus {
    #[serde(rename = "workspaceID")]
    pub workspace_id: String,
    /// `"connected"`.
    pub status: String,
}
