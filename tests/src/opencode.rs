//! OpenCode's own clients in the tests (npm `opencode-ai` and `@opencode-ai/sdk`, pinned in
//! tests/opencode): an organization set up the way its people would use them — an API key with
//! a default workspace, and a provider connection to the fake provider — and where the clients
//! live.

use std::path::PathBuf;

use serde_json::json;

use crate::System;
use crate::api::Created;
use crate::process::repo_root;

/// How long the read models may take to show what was just set up.
const READABLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The provider and model the organization's connection offers.
pub const PROVIDER: &str = "acme-llm";
pub const MODEL: &str = "fast";

/// An organization whose member uses OpenCode's clients.
pub struct OpenCodeUser {
    /// The member's bearer token (for checks through our own API).
    pub bearer: String,
    pub org: Created,
    pub workspace: Created,
    /// The API key the clients send as their Basic password, and its id.
    pub key: String,
    pub key_id: String,
    /// The organization's connection to the fake provider, if it has one.
    pub connection: Option<String>,
    /// A home directory of the clients' own (their state and logs), removed on drop.
    pub home: PathBuf,
}

impl OpenCodeUser {
    /// `user` creates an organization, a workspace, an API key defaulting to it, and (if
    /// `connection`) a connection to the fake provider offering `PROVIDER/MODEL`, made the
    /// organization's default model.
    pub async fn start(system: &System, user: &str, connection: bool) -> OpenCodeUser {
        let bearer = system.token(user).await;
        let org = system.create_org(&bearer, &format!("{user}'s org")).await;
        let workspace = system.create_workspace(&bearer, &org.id, "main").await;
        let mut connection_id = None;
        if connection {
            let body = json!({
                "kind": "openai-compatible", "providerID": PROVIDER, "name": "Acme LLM",
                "baseURL": format!("{}/v1", system.provider_url), "apiKey": "sk-test-org",
                "models": [MODEL],
            });
            let created = system.post(&bearer, &format!("/org/{}/provider", org.id), body).await;
            assert_eq!(created.status, 201, "{created:?}");
            connection_id = created.body["id"].as_str().map(str::to_owned);
            let default = json!({ "model": { "providerID": PROVIDER, "modelID": MODEL } });
            let url = format!("{}/org/{}/default-model", system.command_url(), org.id);
            let set = system.http.put(url).bearer_auth(&bearer).json(&default).send().await;
            assert_eq!(set.unwrap().status(), 200);
        }
        let created = system
            .post(
                &bearer,
                &format!("/org/{}/api-key", org.id),
                json!({ "name": "opencode", "workspaceID": workspace.id }),
            )
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        let key = created.body["key"].as_str().unwrap().to_owned();
        let key_id = created.body["id"].as_str().unwrap().to_owned();
        // (the read models know the workspace, and its models, before a client looks)
        crate::eventually("the workspace and its models readable", READABLE, || async {
            let a = system.get_as_opencode(&key, "/config/providers", None).await;
            let models = a.body["providers"].as_array().map_or(0, |p| p.len());
            (a.status == 200 && (models > 0 || !connection)).then_some(())
        })
        .await;
        let home = std::env::temp_dir().join(format!("oc-e2e-opencode-home-{}", org.id));
        std::fs::create_dir_all(&home).unwrap();
        OpenCodeUser { bearer, org, workspace, key, key_id, connection: connection_id, home }
    }
}

impl Drop for OpenCodeUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Where the pinned clients are installed.
pub fn clients_dir() -> PathBuf {
    repo_root().join("tests/opencode")
}

/// The `opencode` command (`OC_TEST_OPENCODE` overrides it).
pub fn opencode_bin() -> String {
    std::env::var("OC_TEST_OPENCODE")
        .unwrap_or_else(|_| clients_dir().join("node_modules/.bin/opencode").display().to_string())
}

/// Terminal output without its colour and cursor sequences.
pub fn plain(text: &str) -> String {
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
}
