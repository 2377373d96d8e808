//! A streaming client for OpenAI-compatible chat completions (`POST {base}/chat/completions`
//! with `stream: true`), with connect, first-token and idle timeouts.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use schemas::message::{CacheUsage, ErrorKind, MessageError, MessageErrorName, TokenUsage};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use crate::config::WorkerConfig;

/// One turn of the conversation sent to the provider.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

/// What the provider stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    Text(String),
    /// The provider's finish reason (`stop`, `length`, …).
    Finish(String),
    Usage(TokenUsage),
}

/// A provider failure. `Display` is for the worker's log only (it may hold the provider's error
/// text or an internal URL); what users see is `classify`.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider unreachable: {0}")]
    Connect(String),
    #[error("provider answered HTTP {status} (request {request_id:?}): {body}")]
    Status { status: u16, request_id: Option<String>, body: String },
    #[error("no first token within {0:?}")]
    FirstTokenTimeout(Duration),
    #[error("stream idle for {0:?}")]
    IdleTimeout(Duration),
    #[error("stream broken: {0}")]
    Stream(String),
}

impl ProviderError {
    /// What users may see of this failure: a class, our wording, the HTTP status and the
    /// provider's request id; never the provider's own text.
    pub fn classify(&self) -> MessageError {
        let (name, kind, message) = match self {
            ProviderError::Status { status: status @ (401 | 403), .. } => (
                MessageErrorName::ProviderAuthError,
                ErrorKind::Auth,
                format!("the provider refused the credentials (HTTP {status})"),
            ),
            ProviderError::Status { status: 429, .. } => (
                MessageErrorName::ApiError,
                ErrorKind::RateLimited,
                "the provider is limiting requests (HTTP 429); try again later".into(),
            ),
            ProviderError::Status { status, .. } if *status >= 500 => (
                MessageErrorName::ApiError,
                ErrorKind::ProviderFailed,
                format!("the provider failed (HTTP {status})"),
            ),
            ProviderError::Status { status, .. } => (
                MessageErrorName::ApiError,
                ErrorKind::Rejected,
                format!("the provider rejected the request (HTTP {status})"),
            ),
            ProviderError::Connect(_) => (
                MessageErrorName::ApiError,
                ErrorKind::Unreachable,
                "the provider could not be reached".into(),
            ),
            ProviderError::FirstTokenTimeout(d) => (
                MessageErrorName::ApiError,
                ErrorKind::Timeout,
                format!("the provider sent no first token within {d:?}"),
            ),
            ProviderError::IdleTimeout(d) => (
                MessageErrorName::ApiError,
                ErrorKind::Timeout,
                format!("the provider's stream was idle for {d:?}"),
            ),
            ProviderError::Stream(_) => (
                MessageErrorName::ApiError,
                ErrorKind::StreamBroken,
                "the provider's stream broke off".into(),
            ),
        };
        let mut error = MessageError::new(name, kind, message);
        if let ProviderError::Status { status, request_id, .. } = self {
            error.status_code = Some(*status);
            error.request_id = request_id.clone();
        }
        error
    }
}

/// The provider's id for a request: OpenAI's `x-request-id`, Anthropic's `request-id`.
fn request_id(headers: &reqwest::header::HeaderMap) -> Option<String> {
    ["x-request-id", "request-id"]
        .iter()
        .find_map(|h| headers.get(*h)?.to_str().ok())
        .filter(|id| id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned)
}

/// Where one call goes: the provider's URL, its key (opened for this call only), extra headers
/// and the model.
pub struct Target {
    pub base_url: String,
    pub api_key: secrecy::SecretString,
    pub headers: std::collections::BTreeMap<String, String>,
    pub model: String,
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<ProviderEvent, ProviderError>> + Send>>;

#[derive(Clone)]
pub struct Provider {
    http: reqwest::Client,
    cfg: WorkerConfig,
}

impl Provider {
    pub fn new(cfg: WorkerConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.provider_connect_timeout_ms))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { http, cfg })
    }

    /// The deployment's default provider (`OC_PROVIDER_*`), for prompts that name no connection.
    pub fn default_target(&self) -> Target {
        Target {
            base_url: self.cfg.provider_base_url.clone(),
            api_key: self.cfg.provider_api_key.clone(),
            headers: Default::default(),
            model: self.cfg.provider_model.clone(),
        }
    }

    /// Start a streamed completion. The first-token timeout covers the response headers too.
    pub async fn stream(
        &self,
        target: &Target,
        messages: Vec<ChatMessage>,
    ) -> Result<EventStream, ProviderError> {
        let url = format!("{}/chat/completions", target.base_url.trim_end_matches('/'));
        let body = json!({
            "model": target.model,
            "messages": messages,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        let mut req = self.http.post(url).json(&body);
        for (name, value) in &target.headers {
            req = req.header(name, value);
        }
        let key = target.api_key.expose_secret();
        if !key.is_empty() {
            req = req.bearer_auth(key);
        }
        let first = Duration::from_millis(self.cfg.provider_first_token_timeout_ms);
        let idle = Duration::from_millis(self.cfg.provider_idle_timeout_ms);
        let res = tokio::time::timeout(first, req.send())
            .await
            .map_err(|_| ProviderError::FirstTokenTimeout(first))?
            .map_err(|e| ProviderError::Connect(e.to_string()))?;
        if !res.status().is_success() {
            let status = res.status().as_u16();
            let request_id = request_id(res.headers());
            let body = res.text().await.unwrap_or_default().chars().take(500).collect();
            return Err(ProviderError::Status { status, request_id, body });
        }
        let sse = res.bytes_stream().eventsource();
        // Unfold rather than a task: dropping the stream (an abort) drops the HTTP response at
        // once, which closes the connection and stops the provider generating (and billing).
        let state = (sse, false, VecDeque::new(), false);
        let stream =
            futures::stream::unfold(state, move |(mut sse, started, mut queue, done)| async move {
                loop {
                    if let Some(item) = queue.pop_front() {
                        return Some((item, (sse, true, queue, done)));
                    }
                    if done {
                        return None;
                    }
                    let (limit, timed_out) = if started {
                        (idle, ProviderError::IdleTimeout(idle))
                    } else {
                        (first, ProviderError::FirstTokenTimeout(first))
                    };
                    let event = match tokio::time::timeout(limit, sse.next()).await {
                        Err(_) => Err(timed_out),
                        Ok(None) => Err(ProviderError::Stream("ended without [DONE]".into())),
                        Ok(Some(Err(e))) => Err(ProviderError::Stream(e.to_string())),
                        Ok(Some(Ok(event))) => Ok(event),
                    };
                    match event {
                        Err(e) => return Some((Err(e), (sse, started, queue, true))),
                        Ok(e) if e.data.trim() == "[DONE]" => return None,
                        Ok(e) => queue.extend(parse_chunk(&e.data)),
                    }
                }
            });
        Ok(Box::pin(stream))
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: u64,
}

/// The events in one `data:` payload of the OpenAI stream.
fn parse_chunk(data: &str) -> Vec<Result<ProviderEvent, ProviderError>> {
    let chunk: Chunk = match serde_json::from_str(data) {
        Ok(c) => c,
        Err(e) => return vec![Err(ProviderError::Stream(format!("bad chunk: {e}")))],
    };
    let mut out = Vec::new();
    for choice in chunk.choices {
        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
            out.push(Ok(ProviderEvent::Text(text)));
        }
        if let Some(reason) = choice.finish_reason {
            out.push(Ok(ProviderEvent::Finish(reason)));
        }
    }
    if let Some(u) = chunk.usage {
        let cached = u.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
        let reasoning = u.completion_tokens_details.map_or(0, |d| d.reasoning_tokens);
        // As OpenCode: `input` excludes cached tokens for OpenAI-style usage.
        out.push(Ok(ProviderEvent::Usage(TokenUsage {
            input: u.prompt_tokens.saturating_sub(cached),
            output: u.completion_tokens,
            reasoning,
            cache: CacheUsage { read: cached, write: 0 },
        })));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_finish_and_usage() {
        let text = parse_chunk(
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
        );
        assert_eq!(
            text.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![ProviderEvent::Text("Hel".into())]
        );
        let fin = parse_chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
        assert_eq!(fin[0].as_ref().unwrap(), &ProviderEvent::Finish("stop".into()));
        let usage = parse_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        );
        let ProviderEvent::Usage(u) = usage[0].as_ref().unwrap() else { panic!("usage expected") };
        assert_eq!((u.input, u.output, u.cache.read), (6, 5, 4));
    }

    #[test]
    fn garbage_is_a_stream_error() {
        assert!(matches!(parse_chunk("{oops")[0], Err(ProviderError::Stream(_))));
    }
}
