//! Streaming replies from LLM providers: one HTTP client, a wire format per connection kind
//! (`openai.rs`, `anthropic.rs`), connect, first-token and idle timeouts, retries of failures
//! before the first byte, and errors classified for users (`ProviderError::classify`).

mod anthropic;
mod openai;

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use schemas::message::{ErrorKind, MessageError, MessageErrorName, TokenUsage};
use schemas::provider::ConnectionKind;

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
    /// Reasoning ("thinking") text, streamed as a part of its own.
    Reasoning(String),
    /// The provider's finish reason (`stop`, `length`, …).
    Finish(String),
    Usage(TokenUsage),
    /// The cost the provider reported itself, in micro-dollars (OpenRouter's `usage.cost`).
    Cost(u64),
}

/// Text as it can be stored: PostgreSQL's JSON cannot hold U+0000, and an event carrying it is
/// refused (its reply could never complete), so a model's U+0000 is shown as U+FFFD, in its
/// deltas and its stored text alike.
fn storable(event: ProviderEvent) -> ProviderEvent {
    let clean = |t: String| if t.contains('\0') { t.replace('\0', "\u{fffd}") } else { t };
    match event {
        ProviderEvent::Text(t) => ProviderEvent::Text(clean(t)),
        ProviderEvent::Reasoning(t) => ProviderEvent::Reasoning(clean(t)),
        other => other,
    }
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

/// Where one call goes: the wire format, the provider's URL, its key (opened for this call only),
/// extra headers and the model.
pub struct Target {
    pub kind: ConnectionKind,
    pub base_url: String,
    pub api_key: secrecy::SecretString,
    pub headers: std::collections::BTreeMap<String, String>,
    pub model: String,
    /// The model's context and output limits in tokens (0: unknown).
    pub limit: schemas::provider::ModelLimit,
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<ProviderEvent, ProviderError>> + Send>>;

/// How one wire format is asked and read.
pub trait WireFormat: Sync {
    /// The streaming request (URL, authentication, body); the caller adds the extra headers.
    fn request(
        &self,
        http: &reqwest::Client,
        target: &Target,
        messages: &[ChatMessage],
    ) -> reqwest::RequestBuilder;
    /// A fresh reader of one response's server-sent events.
    fn parser(&self) -> Box<dyn Parser>;
}

/// Reads one stream: each SSE event (its `event:` name and `data:`) becomes provider events;
/// `true` when the stream is complete.
pub trait Parser: Send {
    fn feed(
        &mut self,
        event: &str,
        data: &str,
    ) -> (Vec<Result<ProviderEvent, ProviderError>>, bool);
}

/// Attempts at a request that failed before any answer (429, 5xx, 529, no connection).
const MAX_ATTEMPTS: u32 = 4;
/// The longest a `retry-after` may make us wait.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Provider {
    http: reqwest::Client,
    cfg: WorkerConfig,
}

impl Provider {
    pub fn new(cfg: WorkerConfig) -> anyhow::Result<Self> {
        // One HTTP client for every provider and wire format.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.provider_connect_timeout_ms))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { http, cfg })
    }

    /// The deployment's default provider (`OC_PROVIDER_*`), for prompts that name no connection.
    pub fn default_target(&self) -> Target {
        Target {
            kind: ConnectionKind::OpenaiCompatible,
            base_url: self.cfg.provider_base_url.clone(),
            api_key: self.cfg.provider_api_key.clone(),
            headers: Default::default(),
            model: self.cfg.provider_model.clone(),
            limit: Default::default(),
        }
    }

    /// Start a streamed reply. Failures before any answer that a retry may cure (429, 5xx,
    /// Anthropic's 529, no connection) are retried with backoff, honouring `retry-after`, within
    /// the first-token timeout, which also covers the response headers.
    pub async fn stream(
        &self,
        target: &Target,
        messages: Vec<ChatMessage>,
    ) -> Result<EventStream, ProviderError> {
        let wire: &dyn WireFormat = match target.kind {
            ConnectionKind::OpenaiCompatible => &openai::OpenAi,
            ConnectionKind::Anthropic => &anthropic::Anthropic,
        };
        let first = Duration::from_millis(self.cfg.provider_first_token_timeout_ms);
        let idle = Duration::from_millis(self.cfg.provider_idle_timeout_ms);
        let deadline = tokio::time::Instant::now() + first;
        let mut attempt = 0;
        let res = loop {
            attempt += 1;
            let mut req = wire.request(&self.http, target, &messages);
            for (name, value) in &target.headers {
                req = req.header(name, value);
            }
            let outcome = match tokio::time::timeout_at(deadline, req.send()).await {
                Err(_) => return Err(ProviderError::FirstTokenTimeout(first)),
                Ok(Err(e)) => Err((ProviderError::Connect(e.to_string()), None)),
                Ok(Ok(res)) if res.status().is_success() => Ok(res),
                Ok(Ok(res)) => {
                    let status = res.status().as_u16();
                    let wait = retry_after(res.headers());
                    let request_id = request_id(res.headers());
                    let body = res.text().await.unwrap_or_default().chars().take(500).collect();
                    Err((ProviderError::Status { status, request_id, body }, wait))
                }
            };
            let (error, wait) = match outcome {
                Ok(res) => break res,
                Err(e) => e,
            };
            let retryable = match &error {
                ProviderError::Connect(_) => true,
                ProviderError::Status { status, .. } => *status == 429 || *status >= 500,
                _ => false,
            };
            let wait = wait.unwrap_or(Duration::from_millis(250 << attempt)).min(MAX_RETRY_AFTER);
            if !retryable
                || attempt >= MAX_ATTEMPTS
                || tokio::time::Instant::now() + wait >= deadline
            {
                return Err(error);
            }
            metrics::counter!("provider_retries_total").increment(1);
            tracing::debug!(%error, ?wait, attempt, "provider failed before answering; retrying");
            tokio::time::sleep(wait).await;
        };
        let sse = res.bytes_stream().eventsource();
        let parser = wire.parser();
        // Unfold rather than a task: dropping the stream (an abort) drops the HTTP response at
        // once, which closes the connection and stops the provider generating (and billing).
        let state = (sse, parser, false, VecDeque::new(), false);
        let stream = futures::stream::unfold(
            state,
            move |(mut sse, mut parser, started, mut queue, done)| async move {
                loop {
                    if let Some(item) = queue.pop_front() {
                        return Some((item, (sse, parser, true, queue, done)));
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
                        Ok(None) => {
                            Err(ProviderError::Stream("ended before it was complete".into()))
                        }
                        Ok(Some(Err(e))) => Err(ProviderError::Stream(e.to_string())),
                        Ok(Some(Ok(event))) => Ok(event),
                    };
                    match event {
                        Err(e) => return Some((Err(e), (sse, parser, started, queue, true))),
                        Ok(e) => {
                            let (events, end) = parser.feed(&e.event, &e.data);
                            queue.extend(events.into_iter().map(|e| e.map(storable)));
                            if end {
                                return queue
                                    .pop_front()
                                    .map(|item| (item, (sse, parser, true, queue, true)));
                            }
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }
}

/// How long the provider asks us to wait (`retry-after` in seconds).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: f64 = headers.get("retry-after")?.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}
