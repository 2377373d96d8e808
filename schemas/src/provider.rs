//! LLM provider connections: how an organization (or one of its members, bringing their own
//! key) reaches a provider. The key itself never appears here: events and reads carry its
//! fingerprint and last four characters; the ciphertext lives in `provider_secrets`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{ConnectionId, UserId};

/// The wire format a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionKind {
    /// OpenAI chat completions, and every server that speaks it (vLLM, Ollama, OpenRouter,
    /// Azure OpenAI, a LiteLLM proxy).
    OpenaiCompatible,
    /// Anthropic Messages.
    Anthropic,
}

impl ConnectionKind {
    /// Where the provider is when the connection names no base URL.
    pub fn default_base_url(&self) -> &'static str {
        match self {
            ConnectionKind::OpenaiCompatible => "https://api.openai.com/v1",
            ConnectionKind::Anthropic => "https://api.anthropic.com/v1",
        }
    }
}

/// A connection as events and reads know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionInfo {
    pub id: ConnectionId,
    /// The member whose own key this is; none for the organization's connections.
    #[serde(rename = "ownerID")]
    pub owner_id: Option<UserId>,
    pub kind: ConnectionKind,
    /// The provider name prompts address models by (`{providerID, modelID}`), e.g. `openai`.
    #[serde(rename = "providerID")]
    pub provider_id: String,
    pub name: String,
    #[serde(rename = "baseURL")]
    pub base_url: String,
    /// Extra request headers (an Azure `api-version`, an OpenRouter referer); never credentials.
    pub headers: BTreeMap<String, String>,
    /// The models it offers.
    pub models: Vec<String>,
    pub enabled: bool,
    /// `sha256:` and 16 hex digits of the key's hash.
    pub fingerprint: String,
    #[serde(rename = "keyLast4")]
    pub key_last4: String,
}

/// Whether members may bring their own keys, and for which providers (all if empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ByokPolicy {
    pub allowed: bool,
    pub providers: Vec<String>,
}

impl ByokPolicy {
    pub fn allows(&self, provider: &str) -> bool {
        self.allowed && (self.providers.is_empty() || self.providers.iter().any(|p| p == provider))
    }
}

/// What a prompt's worker needs to call the provider: the connection, as it was when the prompt
/// was accepted (the key is read, and decrypted, by the worker at call time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionRef {
    pub id: ConnectionId,
    pub kind: ConnectionKind,
    #[serde(rename = "baseURL")]
    pub base_url: String,
    pub headers: BTreeMap<String, String>,
}

impl From<&ConnectionInfo> for ConnectionRef {
    fn from(c: &ConnectionInfo) -> Self {
        Self {
            id: c.id.clone(),
            kind: c.kind,
            base_url: c.base_url.clone(),
            headers: c.headers.clone(),
        }
    }
}

/// A provider API key as a request carries it: never serialised back, never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ProviderKey(pub secrecy::SecretString);

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderKey([REDACTED])")
    }
}

impl JsonSchema for ProviderKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ProviderKey".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string", "minLength": 1, "maxLength": 4096, "writeOnly": true,
            "description": "The provider's API key; stored encrypted, never shown again",
        })
    }
}

/// `POST /org/{org}/provider`: a connection, the organization's or (`personal`) your own.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConnection {
    pub kind: ConnectionKind,
    #[serde(rename = "providerID")]
    pub provider_id: String,
    pub name: String,
    /// Defaults to the kind's public API.
    #[serde(rename = "baseURL")]
    pub base_url: Option<String>,
    #[serde(rename = "apiKey")]
    pub api_key: ProviderKey,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub models: Vec<String>,
    /// Your own key (bring your own key), used for your prompts only.
    #[serde(default)]
    pub personal: bool,
}

/// `PATCH /org/{org}/provider/{id}`: what to change.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConnection {
    pub name: Option<String>,
    #[serde(rename = "baseURL")]
    pub base_url: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub models: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// `PUT /org/{org}/provider/{id}/key`: a new key; the next prompt uses it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    #[serde(rename = "apiKey")]
    pub api_key: ProviderKey,
}

/// `PUT /org/{org}/byok`: whether members may bring their own keys (for these providers, or
/// all if none are named).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetByokPolicy {
    pub allowed: bool,
    #[serde(default)]
    pub providers: Vec<String>,
}

/// The answer to a created connection or a new key: what identifies the key from now on.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionSaved {
    pub id: ConnectionId,
    pub fingerprint: String,
    #[serde(rename = "keyLast4")]
    pub key_last4: String,
    #[serde(rename = "consistencyToken")]
    pub consistency_token: String,
}
