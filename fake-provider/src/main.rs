//! A fake LLM provider for tests and demos: speaks the OpenAI chat-completions streaming format
//! (`POST /v1/chat/completions`, `stream: true`, SSE `data:` chunks, `[DONE]`).
//!
//! Behaviour is controlled per request by a directive anywhere in the last user message, e.g.
//! `[[fake tokens=50 ttft_ms=200 delay_ms=10 fault=cut:5]]`:
//! - `tokens=N`: how many tokens to stream (default `FAKE_TOKENS`, else 20); token i is `"t{i} "`;
//! - `text=word`: stream `word` N times instead;
//! - `ttft_ms=N`: wait before the first token; `delay_ms=N`: wait between tokens;
//! - `reasoning=N`: stream N reasoning tokens (`"r{i} "`) before the text;
//! - `cached=N`, `created=N`: report N cache-read (and, Anthropic, cache-write) input tokens;
//! - `fail_first=N`: answer the first N requests with this prompt 503 (`retry-after: 0`);
//! - `hold=name`: answer only once `POST /release/name` has been called (at most a minute
//!   later), so a test can hold a reply until its client is ready for it;
//! - `fault=http500|http401|http429|http529`: answer with that HTTP error;
//!   `fault=cut:N`: break the connection after N tokens (no end);
//!   `fault=hang`: send headers, then nothing;
//!   `fault=nostop`: end the stream without a finish (stop) reason;
//!   `fault=overloaded`: (Anthropic) an `overloaded_error` event right after `message_start`;
//!   `fault=nul`: (OpenAI) every token starts with U+0000, as a model's output can.
//!
//! It speaks OpenAI chat completions (`POST /v1/chat/completions`) and Anthropic Messages
//! (`POST /v1/messages`, `anthropic.rs`).
//!
//! `FAKE_ADDR` (default 127.0.0.1:8090) sets where it listens; it prints `listening on <addr>`.
//! `GET /stats` counts the completions requested, so tests can see regenerations; `GET /requests`
//! lists the last requests' credential and extra headers, model and prompt, so tests can see
//! which connection's key was used.

mod anthropic;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use bytes::Bytes;
use futures::{StreamExt, stream};
use serde::Deserialize;
use serde_json::json;

pub(crate) static REQUESTS: AtomicU64 = AtomicU64::new(0);

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Directive {
    tokens: usize,
    text: Option<String>,
    ttft_ms: u64,
    delay_ms: u64,
    fault: Option<String>,
    reasoning: usize,
    cached: u64,
    created: u64,
    fail_first: u32,
    hold: Option<String>,
}

pub(crate) fn directive(prompt: &str) -> Directive {
    let mut d = Directive {
        tokens: std::env::var("FAKE_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(20),
        ..Directive::default()
    };
    let Some(start) = prompt.find("[[fake") else {
        return d;
    };
    let body = &prompt[start + 6..];
    let body = &body[..body.find("]]").unwrap_or(body.len())];
    for kv in body.split_whitespace() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        match k {
            "tokens" => d.tokens = v.parse().unwrap_or(d.tokens),
            "text" => d.text = Some(v.to_owned()),
            "ttft_ms" => d.ttft_ms = v.parse().unwrap_or(0),
            "delay_ms" => d.delay_ms = v.parse().unwrap_or(0),
            "fault" => d.fault = Some(v.to_owned()),
            "reasoning" => d.reasoning = v.parse().unwrap_or(0),
            "cached" => d.cached = v.parse().unwrap_or(0),
            "created" => d.created = v.parse().unwrap_or(0),
            "fail_first" => d.fail_first = v.parse().unwrap_or(0),
            "hold" => d.hold = Some(v.to_owned()),
            _ => {}
        }
    }
    d
}

/// Names released by `POST /release/{name}`, for `hold` (the newest `RELEASES_KEPT`).
static RELEASED: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const RELEASES_KEPT: usize = 1_000;
static RELEASES: tokio::sync::Notify = tokio::sync::Notify::const_new();
/// Longest a held request waits for its release.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);

fn released(name: &str) -> bool {
    RELEASED.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|n| n == name)
}

/// Wait until the request's `hold` name is released (or a minute has passed).
pub(crate) async fn hold(d: &Directive) {
    let Some(name) = &d.hold else { return };
    let wait = async {
        loop {
            let release = RELEASES.notified();
            tokio::pin!(release);
            // Registered before looking, so a release in between is not missed.
            release.as_mut().enable();
            if released(name) {
                return;
            }
            release.await;
        }
    };
    let _ = tokio::time::timeout(HOLD_AT_MOST, wait).await;
}

async fn release(name: web::Path<String>) -> HttpResponse {
    let mut released = RELEASED.lock().unwrap_or_else(|p| p.into_inner());
    released.push_back(name.into_inner());
    if released.len() > RELEASES_KEPT {
        released.pop_front();
    }
    drop(released);
    RELEASES.notify_waiters();
    HttpResponse::NoContent().finish()
}

/// Requests seen per prompt, for `fail_first`.
static ATTEMPTS: std::sync::Mutex<Option<std::collections::HashMap<String, u32>>> =
    std::sync::Mutex::new(None);

/// Whether this request should fail to test retries: the first `fail_first` with this prompt.
fn fail_now(d: &Directive, prompt: &str) -> bool {
    if d.fail_first == 0 {
        return false;
    }
    let mut attempts = ATTEMPTS.lock().unwrap_or_else(|p| p.into_inner());
    let n = attempts.get_or_insert_with(Default::default).entry(prompt.to_owned()).or_insert(0);
    *n += 1;
    *n <= d.fail_first
}

/// The answer to a faulted or flaky request, if it is one.
pub(crate) fn http_fault(d: &Directive, prompt: &str) -> Option<HttpResponse> {
    if fail_now(d, prompt) {
        return Some(
            HttpResponse::ServiceUnavailable()
                .insert_header(("retry-after", "0"))
                .json(json!({"error": {"message": "try again"}})),
        );
    }
    match d.fault.as_deref() {
        Some("http500") => Some(
            HttpResponse::InternalServerError()
                .insert_header(("x-request-id", "req_fake500"))
                .json(json!({"error": {"message": "fake failure at http://10.0.0.7:8000/internal"}})),
        ),
        // As OpenAI does: the body echoes part of the key it was given.
        Some("http401") => Some(
            HttpResponse::Unauthorized()
                .insert_header(("x-request-id", "req_fake401"))
                .json(json!({"error": {"message": "Incorrect API key provided: sk-fa***********key"}})),
        ),
        Some("http429") => {
            Some(HttpResponse::TooManyRequests().json(json!({"error": {"message": "slow down"}})))
        }
        Some("http529") => Some(
            HttpResponse::build(actix_web::http::StatusCode::from_u16(529).expect("a status"))
                .insert_header(("request-id", "req_fake529"))
                .json(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        ),
        _ => None,
    }
}

fn chunk(model: &str, content: Option<&str>, finish: Option<&str>) -> Bytes {
    let delta = content.map_or(json!({}), |c| json!({ "content": c }));
    let body = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    });
    Bytes::from(format!("data: {body}\n\n"))
}

/// The last requests seen, newest last (bounded).
static SEEN: std::sync::Mutex<std::collections::VecDeque<serde_json::Value>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

pub(crate) fn remember(http: &actix_web::HttpRequest, model: &str, prompt: &str) {
    let header =
        |name: &str| http.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let extra: serde_json::Map<String, serde_json::Value> = http
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-") || n.as_str() == "http-referer")
        .map(|(n, v)| (n.to_string(), json!(v.to_str().unwrap_or_default())))
        .collect();
    let entry = json!({
        "authorization": header("authorization"), "headers": extra, "model": model, "prompt": prompt,
    });
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    seen.push_back(entry);
    if seen.len() > 200 {
        seen.pop_front();
    }
}

async fn requests() -> HttpResponse {
    let seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    HttpResponse::Ok().json(seen.iter().collect::<Vec<_>>())
}

async fn completions(http: actix_web::HttpRequest, req: web::Json<ChatRequest>) -> HttpResponse {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let prompt =
        req.messages.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
    remember(&http, &req.model, prompt);
    let d = directive(prompt);
    if let Some(fault) = http_fault(&d, prompt) {
        return fault;
    }
    hold(&d).await;
    if !req.stream {
        return HttpResponse::BadRequest()
            .json(json!({"error": {"message": "only streaming is faked"}}));
    }
    let cut_after = d
        .fault
        .as_deref()
        .and_then(|f| f.strip_prefix("cut:"))
        .and_then(|n| n.parse::<usize>().ok());
    let hang = d.fault.as_deref() == Some("hang");
    let prompt_tokens =
        req.messages.iter().map(|m| m.content.split_whitespace().count()).sum::<usize>();
    let model = req.model.clone();
    let (reasoning, tokens) = (d.reasoning, d.reasoning + d.tokens);
    let body = stream::unfold(0_usize, move |i| {
        let (d, model) = (d.clone(), model.clone());
        async move {
            if hang {
                futures::future::pending::<()>().await;
            }
            let wait = if i == 0 { d.ttft_ms } else { d.delay_ms };
            if wait > 0 && i <= tokens {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            if cut_after == Some(i) {
                return Some((Err(std::io::Error::other("fake cut")), i + 1));
            }
            let bytes = if i < reasoning {
                let body = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                    "choices": [{ "index": 0, "delta": { "reasoning_content": format!("r{i} ") }, "finish_reason": null }] });
                Bytes::from(format!("data: {body}\n\n"))
            } else if i < tokens {
                let mut text = d.text.clone().unwrap_or_else(|| format!("t{} ", i - reasoning));
                if d.fault.as_deref() == Some("nul") {
                    text.insert(0, '\0');
                }
                chunk(&model, Some(&text), None)
            } else if i == tokens {
                let finish = (d.fault.as_deref() != Some("nostop")).then_some("stop");
                let mut b = chunk(&model, None, finish).to_vec();
                let cached = d.cached as usize;
                let usage = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [],
                    "usage": { "prompt_tokens": prompt_tokens + cached, "completion_tokens": tokens, "total_tokens": prompt_tokens + cached + tokens,
                               "prompt_tokens_details": { "cached_tokens": cached },
                               "completion_tokens_details": { "reasoning_tokens": reasoning } } });
                b.extend_from_slice(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes());
                Bytes::from(b)
            } else {
                return None;
            };
            Some((Ok(bytes), i + 1))
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body.boxed_local())
}

async fn stats() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "requests": REQUESTS.load(Ordering::Relaxed) }))
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("FAKE_ADDR").unwrap_or_else(|_| "127.0.0.1:8090".into());
    let listener = std::net::TcpListener::bind(&addr)?;
    println!("listening on {}", listener.local_addr()?);
    HttpServer::new(|| {
        App::new()
            .app_data(web::JsonConfig::default().limit(16 * 1024 * 1024))
            .route("/v1/chat/completions", web::post().to(completions))
            .route("/v1/messages", web::post().to(anthropic::messages))
            .route("/stats", web::get().to(stats))
            .route("/requests", web::get().to(requests))
            .route("/release/{name}", web::post().to(release))
            .route("/healthz", web::get().to(|| async { "ok" }))
    })
    .listen(listener)?
    .workers(2)
    .run()
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_parsed() {
        let d = directive("hello [[fake tokens=3 ttft_ms=5 fault=cut:2]] bye");
        assert_eq!((d.tokens, d.ttft_ms, d.fault.as_deref()), (3, 5, Some("cut:2")));
        assert_eq!(directive("plain").fault, None);
    }
}
