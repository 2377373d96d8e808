//! The OpenAPI 3.1 documents of the command and query services, generated from the request and
//! response types (schemars) and one table of operations per service. Checked in as
//! `schemas/openapi/*.json` (the test below fails when they drift; regenerate with
//! `UPDATE_SCHEMAS=1 cargo test -p schemas`), served by each service at `/openapi.json`, and
//! fuzzed end to end (`tests/tests/e2e/api_fuzz.rs`).

use schemars::generate::{Contract, SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use crate::api::{
    Accepted, AddMember, AddProject, ApiKeyCreated, ChangeRole, CreateApiKey, CreateOrganization,
    CreateSession, CreateWorkspace, OpenCodeCreateSession, ProblemDetails, PromptAccepted,
    PromptInput, RenameOrganization, RenameWorkspace, SetWorkspaceMember, TransferOwnership,
};
use crate::budget::{BudgetList, SetBudget};
use crate::ids::{
    ApiKeyId, BudgetId, ConnectionId, OrganizationId, SessionId, UserId, WorkspaceId,
};
use crate::opencode;
use crate::provider::{
    ConnectionSaved, CreateConnection, ImportCatalog, RotateKey, SetByokPolicy, SetDefaultModel,
    SetPromptLimits, UpdateConnection,
};
use crate::read::{
    ApiKeyView, AuditEntry, ConnectionList, Me, Member, MessageView, ModelCatalog, OpenCodeConfig,
    OpenCodePath, OrganizationSummary, Page, SessionView, UsageReport, WorkspaceDetail,
    WorkspaceSummary,
};

/// A schema made by a generator.
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What a successful call answers with.
#[derive(Clone, Copy)]
pub enum Success {
    Json(u16, SchemaFn),
    Empty(u16),
    EventStream,
}

/// One operation of a service.
#[derive(Clone, Copy)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub request: Option<SchemaFn>,
    pub success: Success,
    /// Takes `?limit=` and `?cursor=`.
    pub paged: bool,
    /// Takes `?from=`, `?to=` and `?groupBy=`.
    pub usage: bool,
}

const fn op(method: &'static str, path: &'static str, summary: &'static str) -> Operation {
    Operation {
        method,
        path,
        summary,
        request: None,
        success: Success::Empty(204),
        paged: false,
        usage: false,
    }
}

impl Operation {
    const fn body(mut self, request: SchemaFn) -> Self {
        self.request = Some(request);
        self
    }
    const fn answers(mut self, status: u16, response: SchemaFn) -> Self {
        self.success = Success::Json(status, response);
        self
    }
    const fn paged(mut self) -> Self {
        self.paged = true;
        self
    }
    const fn usage(mut self) -> Self {
        self.usage = true;
        self
    }
    const fn streams(mut self) -> Self {
        self.success = Success::EventStream;
        self
    }
}

/// The command service's operations (command-service/src/routes/mod.rs).
pub fn command_operations() -> Vec<Operation> {
    let accepted = schema::<Accepted> as SchemaFn;
    vec![
        op("delete", "/me", "Erase your account: personal data deleted, credentials refused"),
        op("post", "/org", "Create an organization; you become its owner")
            .body(schema::<CreateOrganization>)
            .answers(201, accepted),
        op("patch", "/org/{org}", "Rename an organization")
            .body(schema::<RenameOrganization>)
            .answers(200, accepted),
        op("post", "/org/{org}/member", "Add a member by user id or verified email")
            .body(schema::<AddMember>)
            .answers(201, accepted),
        op("put", "/org/{org}/member/{user}", "Change a member's role")
            .body(schema::<ChangeRole>)
            .answers(200, accepted),
        op("delete", "/org/{org}/member/{user}", "Remove a member (or leave)")
            .answers(200, accepted),
        op("post", "/org/{org}/transfer", "Transfer ownership")
            .body(schema::<TransferOwnership>)
            .answers(200, accepted),
        op("post", "/org/{org}/api-key", "Create a personal API key (shown once)")
            .body(schema::<CreateApiKey>)
            .answers(201, schema::<ApiKeyCreated>),
        op("delete", "/api-key/{id}", "Revoke one of your API keys").answers(200, accepted),
        op("post", "/org/{org}/workspace", "Create a workspace")
            .body(schema::<CreateWorkspace>)
            .answers(201, accepted),
        op("patch", "/workspace/{ws}", "Rename a workspace")
            .body(schema::<RenameWorkspace>)
            .answers(200, accepted),
        op("post", "/workspace/{ws}/archive", "Archive a workspace (read-only from then on)")
            .answers(200, accepted),
        op("put", "/workspace/{ws}/member/{user}", "Set a member's workspace role")
            .body(schema::<SetWorkspaceMember>)
            .answers(200, accepted),
        op("delete", "/workspace/{ws}/member/{user}", "Remove a workspace role")
            .answers(200, accepted),
        op("post", "/workspace/{ws}/project", "Add a Git project")
            .body(schema::<AddProject>)
            .answers(201, accepted),
        op("post", "/session", "OpenCode's session creation: in the workspace the directory names (x-opencode-directory or ?directory=/<workspace id>), else in the API key's default workspace; answers OpenCode's Session")
            .body(schema::<OpenCodeCreateSession>)
            .answers(200, schema::<SessionView>),
        op("post", "/session/{id}/message", "OpenCode's synchronous prompt: accepted as prompt_async is, answered with the completed reply ({info, parts}); 504 after OC_SYNC_PROMPT_WAIT_SECS (the reply goes on); at most 8 waiting per user and instance (429)")
            .body(schema::<PromptInput>)
            .answers(200, schema::<MessageView>),
        op("post", "/workspace/{ws}/session", "Start a session")
            .body(schema::<CreateSession>)
            .answers(201, accepted),
        op(
            "post",
            "/session/{id}/prompt_async",
            "Prompt; the reply streams on the session's events",
        )
        .body(schema::<PromptInput>)
        .answers(202, schema::<PromptAccepted>),
        op("post", "/session/{id}/abort", "Stop the running reply").answers(202, accepted),
        op(
            "post",
            "/org/{org}/provider",
            "Add a provider connection (the organization's, or your own)",
        )
        .body(schema::<CreateConnection>)
        .answers(201, schema::<ConnectionSaved>),
        op("patch", "/org/{org}/provider/{id}", "Change a provider connection")
            .body(schema::<UpdateConnection>)
            .answers(200, accepted),
        op(
            "delete",
            "/org/{org}/provider/{id}",
            "Delete a provider connection and destroy its key",
        )
        .answers(200, accepted),
        op("put", "/org/{org}/provider/{id}/key", "Give a provider connection a new key")
            .body(schema::<RotateKey>)
            .answers(200, schema::<ConnectionSaved>),
        op("put", "/org/{org}/byok", "Whether members may bring their own provider keys")
            .body(schema::<SetByokPolicy>)
            .answers(200, accepted),
        op(
            "put",
            "/org/{org}/provider/{id}/catalog",
            "Describe and offer models (models.dev's shape)",
        )
        .body(schema::<ImportCatalog>)
        .answers(200, accepted),
        op("put", "/org/{org}/default-model", "The organization's default model")
            .body(schema::<SetDefaultModel>)
            .answers(200, accepted),
        op("put", "/org/{org}/limits", "How fast members, and the organization, may prompt")
            .body(schema::<SetPromptLimits>)
            .answers(200, accepted),
        op("put", "/workspace/{ws}/default-model", "The workspace's default model")
            .body(schema::<SetDefaultModel>)
            .answers(200, accepted),
        op("post", "/org/{org}/budget", "Set a spend budget (owners and admins)")
            .body(schema::<SetBudget>)
            .answers(201, accepted),
        op("put", "/org/{org}/budget/{id}", "Change a spend budget")
            .body(schema::<SetBudget>)
            .answers(200, accepted),
        op("delete", "/org/{org}/budget/{id}", "Remove a spend budget").answers(200, accepted),
    ]
}

/// The query service's operations (query-service/src/routes/mod.rs), sign-in excepted.
pub fn query_operations() -> Vec<Operation> {
    vec![
        op("get", "/me", "Who you are").answers(200, schema::<Me>),
        op("get", "/me/api-key", "Your API keys, newest first")
            .answers(200, schema::<Page<ApiKeyView>>)
            .paged(),
        op("get", "/org", "Your organizations")
            .answers(200, schema::<Page<OrganizationSummary>>)
            .paged(),
        op("get", "/org/{org}/workspace", "An organization's workspaces")
            .answers(200, schema::<Page<WorkspaceSummary>>)
            .paged(),
        op("get", "/org/{org}/member", "An organization's members")
            .answers(200, schema::<Page<Member>>)
            .paged(),
        op("get", "/org/{org}/audit", "An organization's audit trail, newest first")
            .answers(200, schema::<Page<AuditEntry>>)
            .paged(),
        op("get", "/workspace/{ws}", "A workspace with its members and projects")
            .answers(200, schema::<WorkspaceDetail>),
        op("get", "/workspace/{ws}/session", "A workspace's sessions, newest first")
            .answers(200, schema::<Page<SessionView>>)
            .paged(),
        op("get", "/org/{org}/provider", "The provider connections you may use, without keys")
            .answers(200, schema::<ConnectionList>),
        op(
            "get",
            "/org/{org}/model",
            "The models you may prompt, as OpenCode's /provider lists them",
        )
        .answers(200, schema::<ModelCatalog>),
        op("get", "/org/{org}/usage", "What the organization spent (owners and admins); CSV too")
            .answers(200, schema::<UsageReport>)
            .usage(),
        op("get", "/workspace/{ws}/usage", "What the workspace spent (its admins)")
            .answers(200, schema::<UsageReport>)
            .usage(),
        op("get", "/org/{org}/budget", "The spend budgets and what each has used this period")
            .answers(200, schema::<BudgetList>),
        op("get", "/me/usage", "What you spent, across organizations")
            .answers(200, schema::<UsageReport>)
            .usage(),
        op("get", "/session", "OpenCode's session list: the sessions of the workspace the directory names (x-opencode-directory or ?directory=/<workspace id>), else of the API key's default workspace; newest first, ?limit= up to 1000")
            .answers(200, schema::<Vec<SessionView>>),
        op("get", "/path", "OpenCode's paths: every one is the workspace the directory means (/<workspace id>)")
            .answers(200, schema::<OpenCodePath>),
        op("get", "/config", "OpenCode's configuration, as far as the service sets it (sharing disabled)")
            .answers(200, schema::<OpenCodeConfig>),
        op("get", "/config/providers", "OpenCode's providers: the models you may prompt in the workspace's organization, and the default model by provider")
            .answers(200, schema::<opencode::ConfiguredProviders>),
        op("get", "/provider", "OpenCode's provider list: the same, with the providers connected")
            .answers(200, schema::<opencode::ProviderList>),
        op("get", "/agent", "OpenCode's agents: the one this service runs (it answers prompts and runs no tools)")
            .answers(200, schema::<Vec<opencode::Agent>>),
        op("get", "/session/status", "OpenCode's busy sessions of the workspace, by session id")
            .answers(200, schema::<std::collections::BTreeMap<String, opencode::SessionStatus>>),
        op("get", "/project/current", "The workspace, as OpenCode's project")
            .answers(200, schema::<opencode::Project>),
        op("get", "/command", "OpenCode's commands: none run on the service (empty list)")
            .answers(200, schema::<Vec<serde_json::Value>>),
        op("get", "/lsp", "OpenCode's language servers: none (empty list)")
            .answers(200, schema::<Vec<serde_json::Value>>),
        op("get", "/formatter", "OpenCode's formatters: none (empty list)")
            .answers(200, schema::<Vec<serde_json::Value>>),
        op("get", "/mcp", "OpenCode's MCP servers: none (empty map)")
            .answers(200, schema::<serde_json::Map<String, serde_json::Value>>),
        op("get", "/experimental/resource", "OpenCode's MCP resources: none (empty map)")
            .answers(200, schema::<serde_json::Map<String, serde_json::Value>>),
        op("get", "/provider/auth", "OpenCode's provider sign-in methods: none, the organization configures providers (empty map)")
            .answers(200, schema::<serde_json::Map<String, serde_json::Value>>),
        op("get", "/vcs", "OpenCode's version-control state: none (empty map)")
            .answers(200, schema::<serde_json::Map<String, serde_json::Value>>),
        op("get", "/experimental/workspace", "The workspace the directory means, as OpenCode's workspace (sessions name it in workspaceID)")
            .answers(200, schema::<Vec<opencode::Workspace>>),
        op("get", "/experimental/workspace/status", "The workspace is reachable (connected)")
            .answers(200, schema::<Vec<opencode::WorkspaceStatus>>),
        op("get", "/event", "OpenCode's event stream of the workspace the directory means: every session's events in OpenCode's shapes, server.connected first, server.heartbeat every 10 s; not resumable")
            .streams(),
        op("get", "/global/event", "The same, each event as {directory, payload}").streams(),
        op("get", "/session/{id}", "A session").answers(200, schema::<SessionView>),
        op("get", "/session/{id}/message", "A session's messages with their parts, as OpenCode answers them: oldest first, the newest ?limit= (or, with ?cursor=, those before it); a Link header (rel=\"next\") names the older page")
            .answers(200, schema::<Vec<MessageView>>)
            .paged(),
        op("get", "/session/{id}/event", "The session's events, live and resumable (SSE)")
            .streams(),
    ]
}

/// The schema of a path parameter, by its name and where it appears.
fn path_parameter(g: &mut SchemaGenerator, path: &str, name: &str) -> Schema {
    match name {
        "org" => schema::<OrganizationId>(g),
        "ws" => schema::<WorkspaceId>(g),
        "user" => schema::<UserId>(g),
        "id" if path.starts_with("/api-key") => schema::<ApiKeyId>(g),
        "id" if path.contains("/provider/") => schema::<ConnectionId>(g),
        "id" if path.contains("/budget/") => schema::<BudgetId>(g),
        "id" => schema::<SessionId>(g),
        other => panic!("no schema for path parameter {other} of {path}"),
    }
}

/// The errors every operation may answer with, all `application/problem+json`.
const PROBLEMS: [(u16, &str); 10] = [
    (400, "Malformed input: body, path, query, consistency token"),
    (401, "No valid credential"),
    (403, "Your role does not allow it"),
    (404, "Missing, or another organization's (the two look the same)"),
    (409, "Not in the resource's current state, or modified concurrently"),
    (413, "Body, session or event over its documented size"),
    (415, "The body must be application/json"),
    (422, "Well-formed, but refers to something unusable"),
    (429, "A rate, concurrency or spend limit; see Retry-After"),
    (503, "A dependency is unavailable; see Retry-After"),
];

fn generator(contract: Contract) -> SchemaGenerator {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    settings.contract = contract;
    settings.into_generator()
}

/// The OpenAPI document of `operations`.
pub fn document(title: &str, description: &str, operations: &[Operation]) -> Value {
    // What clients send is described as we read it, what we answer as we write it.
    let (mut requests, mut responses) =
        (generator(Contract::Deserialize), generator(Contract::Serialize));
    let problem = Value::from(schema::<ProblemDetails>(&mut responses));
    let mut paths = Map::new();
    for operation in operations {
        let mut parameters: Vec<Value> = operation
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                let schema = path_parameter(&mut requests, operation.path, name);
                json!({ "name": name, "in": "path", "required": true, "schema": schema })
            })
            .collect();
        if operation.method == "get" {
            parameters.push(json!({
                "name": "X-Consistency-Token", "in": "header", "required": false,
                "description": "A command's consistencyToken: wait until the read reflects it",
                "schema": { "type": "string", "maxLength": 100 },
            }));
        }
        if operation.paged {
            parameters.push(json!({
                "name": "limit", "in": "query", "required": false,
                "schema": { "type": "integer", "minimum": 1, "maximum": 200 },
            }));
            parameters.push(json!({
                "name": "cursor", "in": "query", "required": false,
                "description": "cursor.next of the previous page", "schema": { "type": "string" },
            }));
        }
        if operation.usage {
            for (name, description) in
                [("from", "First UTC day, YYYY-MM-DD"), ("to", "Last UTC day, YYYY-MM-DD")]
            {
                parameters.push(json!({
                    "name": name, "in": "query", "required": false, "description": description,
                    "schema": { "type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$" },
                }));
            }
            parameters.push(json!({
                "name": "groupBy", "in": "query", "required": false,
                "description": "Comma separated: user, workspace, model, day, connection, organization",
                "schema": { "type": "string" },
            }));
        }
        if matches!(operation.success, Success::EventStream) {
            parameters.push(json!({
                "name": "Last-Event-ID", "in": "header", "required": false,
                "description": "Resume after this event id", "schema": { "type": "string", "pattern": "^[0-9]+$" },
            }));
        }
        let mut answers = Map::new();
        match operation.success {
            Success::Json(status, response) => {
                let body = Value::from(response(&mut responses));
                answers.insert(
                    status.to_string(),
                    json!({ "description": "Done", "content": { "application/json": { "schema": body } } }),
                );
            }
            Success::Empty(status) => {
                answers.insert(status.to_string(), json!({ "description": "Done" }));
            }
            Success::EventStream => {
                answers.insert(
                    "200".into(),
                    json!({ "description": "Server-Sent Events: `id:` is the stream position, `event:` the event type",
                            "content": { "text/event-stream": { "schema": { "type": "string" } } } }),
                );
            }
        }
        for (status, why) in PROBLEMS {
            answers.insert(
                status.to_string(),
                json!({ "description": why, "content": { "application/problem+json": { "schema": problem } } }),
            );
        }
        let mut entry = json!({
            "summary": operation.summary,
            "operationId": format!("{} {}", operation.method, operation.path),
            "parameters": parameters,
            "responses": answers,
        });
        if let Some(request) = operation.request {
            let body = Value::from(request(&mut requests));
            entry["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": body } } });
        }
        let item = paths.entry(operation.path).or_insert_with(|| json!({}));
        item[operation.method] = entry;
    }
    let mut components = requests.take_definitions(true);
    for (name, response) in responses.take_definitions(true) {
        match components.get(&name) {
            Some(request) if request != &response => {
                panic!("{name} differs between what is read and what is written; rename one")
            }
            _ => {
                components.insert(name, response);
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": env!("CARGO_PKG_VERSION"), "description": description },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer",
                            "description": "An access token from the organization's OpenID provider, or a personal API key (ock_…)" },
                "basic": { "type": "http", "scheme": "basic",
                           "description": "A personal API key (ock_…) as the password, any user name: what OpenCode's own clients send" },
                "session": { "type": "apiKey", "in": "cookie", "name": "oc_session",
                             "description": "A browser login session (writes also need X-CSRF-Token)" },
            },
        },
        "security": [{ "bearer": [] }, { "basic": [] }, { "session": [] }],
    })
}

/// The command service's document.
pub fn command_document() -> Value {
    document(
        "OpenCode service: commands",
        "Writes. Each answers once its events are committed, with a consistencyToken for reads.",
        &command_operations(),
    )
}

/// The query service's document.
pub fn query_document() -> Value {
    document(
        "OpenCode service: queries",
        "Reads from the read models, and each session's events as a resumable stream.",
        &query_operations(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn checked_in_openapi_documents_match_the_types() {
        for (name, document) in [
            ("command-service.json", super::command_document()),
            ("query-service.json", super::query_document()),
        ] {
            let mut generated = serde_json::to_string_pretty(&document).unwrap();
            generated.push('\n');
            crate::json_schema::check_in("openapi", name, &generated);
        }
    }
}
