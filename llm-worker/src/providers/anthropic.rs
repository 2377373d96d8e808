//! Anthropic Messages (`POST {base}/messages`, `stream: true`; `x-api-key` and
//! `anthropic-version`): `message_start` (input and cache usage), content blocks whose deltas are
//! `text_delta` or `thinking_delta`, `message_delta` (stop reason, cumulative usage),
//! `message_stop`; `ping` at any time; a mid-stream `error` event (`overloaded_error` is the
//! HTTP 529 of a stream already started).

use schemas::message::{CacheUsage, TokenUsage};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::{ChatMessage, ProviderError, ProviderEvent, Target, WireFormat};

pub const VERSION: &str = "2023-06-01";
/// `max_tokens` is required; used when the catalog gives no output limit.
const DEFAULT_MAX_TOKENS: u64 = 8192;

pub struct Anthropic;

impl WireFormat for Anthropic {
    fn request(
        &self,
        http: &reqwest::Client,
        target: &Target,
        messages: &[ChatMessage],
    ) -> reqwest::RequestBuilder {
        let url = format!("{}/messages", target.base_url.trim_end_matches('/'));
        let body = json!({
            "model": target.model,
            "max_tokens": if target.limit.output > 0 { target.limit.output } else { DEFAULT_MAX_TOKENS },
            "messages": messages,
            "stream": true,
        });
        http.post(url)
            .header("x-api-key", target.api_key.expose_secret())
            .header("anthropic-version", VERSION)
            .json(&body)
    }

    fn parser(&self) -> Box<dyn super::Parser> {
        Box::new(Events::default())
    }
}

/// What one stream has said so far.
#[derive(Default)]
struct Events {
    usage: TokenUsage,
    stopped: bool,
}

fn count(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

impl Events {
    /// Fold a usage object in: `message_delta`'s is cumulative, so its values replace.
    fn usage(&mut self, u: &Value) {
        if let Some(n) = count(u, "input_tokens") {
            self.usage.input = n;
        }
        if let Some(n) = count(u, "output_tokens") {
            self.usage.output = n;
        }
        if let Some(n) = count(u, "cache_read_input_tokens") {
            self.usage.cache = CacheUsage { read: n, ..self.usage.cache };
        }
        if let Some(n) = count(u, "cache_creation_input_tokens") {
            self.usage.cache = CacheUsage { write: n, ..self.usage.cache };
        }
    }
}

impl super::Parser for Events {
    fn feed(
        &mut self,
        event: &str,
        data: &str,
    ) -> (Vec<Result<ProviderEvent, ProviderError>>, bool) {
        let data: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => return (vec![Err(ProviderError::Stream(format!("bad event: {e}")))], true),
        };
        let kind = if event.is_empty() { data["type"].as_str().unwrap_or_default() } else { event };
        match kind {
            "message_start" => {
                self.usage(&data["message"]["usage"]);
                (vec![], false)
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                let text =
                    |key: &str| delta[key].as_str().filter(|t| !t.is_empty()).map(str::to_owned);
                let out = match delta["type"].as_str() {
                    Some("text_delta") => text("text").map(ProviderEvent::Text),
                    Some("thinking_delta") => text("thinking").map(ProviderEvent::Reasoning),
                    _ => None, // signatures, tool input, citations: not used yet
                };
                (out.into_iter().map(Ok).collect(), false)
            }
            "message_delta" => {
                self.usage(&data["usage"]);
                let mut out = vec![Ok(ProviderEvent::Usage(self.usage))];
                if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                    self.stopped = true;
                    let finish = if reason == "max_tokens" { "length" } else { "stop" };
                    out.push(Ok(ProviderEvent::Finish(finish.into())));
                }
                (out, false)
            }
            "message_stop" => {
                let end = if self.stopped {
                    vec![]
                } else {
                    vec![Err(ProviderError::Stream("ended without a stop reason".into()))]
                };
                (end, true)
            }
            "error" => {
                let error = data["error"]["type"].as_str().unwrap_or("error").to_owned();
                let failure = if error == "overloaded_error" {
                    ProviderError::Status { status: 529, request_id: None, body: error }
                } else {
                    ProviderError::Stream(format!("error event: {error}"))
                };
                (vec![Err(failure)], true)
            }
            _ => (vec![], false), // ping, content_block_start/stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Parser;
    use super::*;

    fn run(frames: &[(&str, &str)]) -> Vec<Result<ProviderEvent, ProviderError>> {
        let mut p = Events::default();
        let mut out = Vec::new();
        for (event, data) in frames {
            let (events, end) = p.feed(event, data);
            out.extend(events);
            if end {
                break;
            }
        }
        out
    }

    #[test]
    fn text_thinking_and_cumulative_usage() {
        let out = run(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1,"cache_read_input_tokens":7,"cache_creation_input_tokens":3}}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"let me see"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        let events: Vec<ProviderEvent> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(events[0], ProviderEvent::Reasoning("let me see".into()));
        assert_eq!(events[1], ProviderEvent::Text("Hi".into()));
        let ProviderEvent::Usage(u) = &events[2] else { panic!("usage") };
        assert_eq!((u.input, u.output, u.cache.read, u.cache.write), (10, 15, 7, 3));
        assert_eq!(events[3], ProviderEvent::Finish("stop".into()));
    }

    #[test]
    fn overload_and_a_missing_stop_are_errors() {
        let out = run(&[(
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )]);
        assert!(matches!(out[0], Err(ProviderError::Status { status: 529, .. })));
        let out = run(&[("message_stop", r#"{"type":"message_stop"}"#)]);
        assert!(matches!(out[0], Err(ProviderError::Stream(_))));
    }
}
