//! OpenAI chat completions (`POST {base}/chat/completions`, `stream: true`), as OpenAI and every
//! compatible server speaks it: text in `delta.content`, reasoning in `delta.reasoning_content`
//! (DeepSeek, older vLLM) or `delta.reasoning` (newer vLLM, OpenRouter), usage in a last chunk
//! (`stream_options.include_usage`), `data: [DONE]` at the end, and OpenRouter's mid-stream
//! `{"error": …}` under HTTP 200.

use schemas::message::{CacheUsage, TokenUsage};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::{ChatMessage, ProviderError, ProviderEvent, Target, WireFormat};

pub struct OpenAi;

impl WireFormat for OpenAi {
    fn request(
        &self,
        http: &reqwest::Client,
        target: &Target,
        messages: &[ChatMessage],
    ) -> reqwest::RequestBuilder {
        let url = format!("{}/chat/completions", target.base_url.trim_end_matches('/'));
        let body = json!({
            "model": target.model,
            "messages": messages,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        let mut req = http.post(url).json(&body);
        let key = target.api_key.expose_secret();
        if !key.is_empty() {
            req = req.bearer_auth(key);
        }
        req
    }

    fn parser(&self) -> Box<dyn super::Parser> {
        Box::new(Chunks::default())
    }
}

/// The chunks of one stream.
#[derive(Default)]
struct Chunks {
    finished: bool,
}

impl super::Parser for Chunks {
    fn feed(
        &mut self,
        _event: &str,
        data: &str,
    ) -> (Vec<Result<ProviderEvent, ProviderError>>, bool) {
        if data.trim() == "[DONE]" {
            let end = if self.finished {
                vec![]
            } else {
                vec![Err(ProviderError::Stream("ended without a finish reason".into()))]
            };
            return (end, true);
        }
        let events = parse_chunk(data);
        if events.iter().any(|e| matches!(e, Ok(ProviderEvent::Finish(_)))) {
            self.finished = true;
        }
        (events, false)
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<serde_json::Value>,
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
    reasoning_content: Option<String>,
    reasoning: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
    /// Dollars, where the provider reports what it charged (OpenRouter).
    cost: Option<f64>,
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

/// The events in one `data:` payload.
pub(super) fn parse_chunk(data: &str) -> Vec<Result<ProviderEvent, ProviderError>> {
    let chunk: Chunk = match serde_json::from_str(data) {
        Ok(c) => c,
        Err(e) => return vec![Err(ProviderError::Stream(format!("bad chunk: {e}")))],
    };
    if let Some(error) = chunk.error {
        return vec![Err(ProviderError::Stream(format!("error in the stream: {error}")))];
    }
    let mut out = Vec::new();
    for choice in chunk.choices {
        let reasoning = choice.delta.reasoning_content.or(choice.delta.reasoning);
        if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
            out.push(Ok(ProviderEvent::Reasoning(text)));
        }
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
        if let Some(dollars) = u.cost.filter(|c| c.is_finite() && *c >= 0.0) {
            // Reported to a few decimals: rounding to a micro-dollar keeps it exact.
            out.push(Ok(ProviderEvent::Cost((dollars * 1e6).round() as u64)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_reasoning_finish_and_usage() {
        let text = parse_chunk(
            r#"{"choices":[{"index":0,"delta":{"content":"Hel","reasoning_content":"hmm"},"finish_reason":null}]}"#,
        );
        assert_eq!(
            text.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![ProviderEvent::Reasoning("hmm".into()), ProviderEvent::Text("Hel".into())]
        );
        let fin = parse_chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
        assert_eq!(fin[0].as_ref().unwrap(), &ProviderEvent::Finish("stop".into()));
        let usage = parse_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#,
        );
        let ProviderEvent::Usage(u) = usage[0].as_ref().unwrap() else { panic!("usage expected") };
        assert_eq!((u.input, u.output, u.reasoning, u.cache.read), (6, 5, 2, 4));
    }

    #[test]
    fn garbage_and_mid_stream_errors_are_stream_errors() {
        assert!(matches!(parse_chunk("{oops")[0], Err(ProviderError::Stream(_))));
        let e = parse_chunk(r#"{"error":{"message":"upstream died"}}"#);
        assert!(matches!(e[0], Err(ProviderError::Stream(_))));
    }

    #[test]
    fn done_without_a_finish_reason_is_an_error() {
        use super::super::Parser;
        let mut p = Chunks::default();
        p.feed("", r#"{"choices":[{"delta":{"content":"x"}}]}"#);
        let (events, end) = p.feed("", "[DONE]");
        assert!(end && matches!(events[0], Err(ProviderError::Stream(_))));
    }
}
