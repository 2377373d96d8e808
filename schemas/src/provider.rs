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
    /// What is known of them (limits, capabilities, prices), by model id, in models.dev's shape.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub catalog: BTreeMap<String, ModelInfo>,
    pub enabled: bool,
    /// `sha256:` and 16 hex digits of the key's hash.
    pub fingerprint: String,
    #[serde(rename = "keyLast4")]
    pub key_last4: String,
}

/// A model as models.dev's `api.json` describes one (the fields we use; others are ignored),
/// so a catalog from there imports as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Takes attachments (images, files).
    #[serde(default)]
    pub attachment: bool,
    /// Reasons ("thinks") before answering.
    #[serde(default)]
    pub reasoning: bool,
    #[serde(default)]
    pub tool_call: bool,
    #[serde(default)]
    pub limit: ModelLimit,
    /// Dollars per million tokens; absent for models nobody priced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<ModelCost>,
}

/// Tokens a model takes in (context) and gives out (output); 0 when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelLimit {
    #[serde(default)]
    pub context: u64,
    #[serde(default)]
    pub output: u64,
}

/// Prices per million tokens, as models.dev lists them (dollars, written as JSON numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelCost {
    #[serde(default)]
    pub input: Price,
    #[serde(default)]
    pub output: Price,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<Price>,
}

/// A price per million tokens, held exactly as an integer number of micro-dollars (no floats
/// in money); read and written as dollars, the way models.dev writes them ($0.075 is 75,000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Price {
    pub micro_dollars: u64,
}

impl Serialize for Price {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.micro_dollars as f64 / 1e6)
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let dollars = f64::deserialize(d)?;
        crate::budget::micro_dollars(dollars, "a price is dollars per million tokens, 0 to 1e9")
            .map(|micro_dollars| Price { micro_dollars })
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Price {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Price".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "number", "minimum": 0, "maximum": 1e9,
            "description": "Dollars per million tokens",
        })
    }
}

impl ModelCost {
    /// The cost of `tokens` at these prices, in micro-dollars, rounded up to a whole one.
    /// Output includes reasoning (as providers report it); reasoning is charged at its own price
    /// where the catalog has one, else at the output price.
    pub fn charge(&self, tokens: &crate::message::TokenUsage) -> u64 {
        let per = |n: u64, p: Price| u128::from(n) * u128::from(p.micro_dollars);
        let reasoning = tokens.reasoning.min(tokens.output);
        let total = per(tokens.input, self.input)
            + per(tokens.output - reasoning, self.output)
            + per(reasoning, self.reasoning.unwrap_or(self.output))
            + per(tokens.cache.read, self.cache_read.unwrap_or(self.input))
            + per(tokens.cache.write, self.cache_write.unwrap_or(self.input));
        // Prices are per million tokens.
        u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// The most a reply of at most `input` tokens in and `output` out can cost: every input
    /// token at the dearest of the input and cache prices, every output token at the dearer of
    /// the output and reasoning prices.
    pub fn at_most(&self, input: u64, output: u64) -> u64 {
        let dearest_in = [self.cache_read, self.cache_write].into_iter().flatten().max();
        let dearest_out = self.reasoning.into_iter().max();
        let per_in = dearest_in.map_or(self.input, |p| p.max(self.input));
        let per_out = dearest_out.map_or(self.output, |p| p.max(self.output));
        let total = u128::from(input) * u128::from(per_in.micro_dollars)
            + u128::from(output) * u128::from(per_out.micro_dollars);
        u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// `PUT /org/{org}/provider/{id}/catalog`: models.dev's provider entry (`{"models": {id: …}}`)
/// or an admin's own; listed models are offered and described, overriding what was there.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ImportCatalog {
    pub models: BTreeMap<String, ModelInfo>,
}

/// `PUT /org/{org}/default-model`, `PUT /workspace/{ws}/default-model`: the model prompts use
/// when they name none and their session has not used one yet.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDefaultModel {
    pub model: crate::message::ModelRef,
}

/// How fast prompts may come: requests and tokens (input and output of the replies) per minute;
/// 0 is no limit. Counted across every command-service instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PromptLimits {
    #[serde(rename = "requestsPerMinute", default)]
    pub requests_per_minute: u32,
    #[serde(rename = "tokensPerMinute", default)]
    pub tokens_per_minute: u64,
}

/// `PUT /org/{org}/limits`: the limits of each member, and of the organization as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPromptLimits {
    #[serde(default)]
    pub member: PromptLimits,
    #[serde(default)]
    pub organization: PromptLimits,
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
    /// The model's limits, when the catalog knows them: the history sent is trimmed to the
    /// context, and the reply asks for at most the output.
    #[serde(default)]
    pub limit: ModelLimit,
    /// A member's own key (bring your own key), not the organization's.
    #[serde(rename = "ownKey", default, skip_serializing_if = "std::ops::Not::not")]
    pub own_key: bool,
}

impl ConnectionRef {
    pub fn for_model(c: &ConnectionInfo, model: &str) -> Self {
        Self {
            id: c.id.clone(),
            kind: c.kind,
            base_url: c.base_url.clone(),
            headers: c.headers.clone(),
            limit: c.catalog.get(model).map(|m| m.limit).unwrap_or_default(),
            own_key: c.owner_id.is_some(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{CacheUsage, TokenUsage};

    fn price(dollars: f64) -> Price {
        serde_json::from_value(serde_json::json!(dollars)).unwrap()
    }

    #[test]
    fn a_reply_costs_exactly_its_tokens_at_the_prices() {
        let cost = ModelCost {
            input: price(3.0),
            output: price(15.0),
            reasoning: None,
            cache_read: Some(price(0.3)),
            cache_write: Some(price(3.75)),
        };
        let tokens = TokenUsage {
            input: 1_000,
            output: 500,
            reasoning: 200,
            cache: CacheUsage { read: 10_000, write: 2_000 },
        };
        // Input 1,000 × $3 + output 300 × $15 + reasoning 200 × $15 (the output price) + cache
        // reads 10,000 × $0.30 + cache writes 2,000 × $3.75, per million tokens:
        // 3,000 + 4,500 + 3,000 + 3,000 + 7,500 = 21,000 micro-dollars.
        assert_eq!(cost.charge(&tokens), 21_000);
        assert_eq!(price(0.075).micro_dollars, 75_000, "decimal prices are exact");
        // One token at $0.075 per million is 0.075 µ$: rounded up to 1.
        let one = TokenUsage { input: 1, ..Default::default() };
        assert_eq!(ModelCost { input: price(0.075), ..Default::default() }.charge(&one), 1);
    }
}
