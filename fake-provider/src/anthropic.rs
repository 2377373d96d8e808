//! The fake's Anthropic Messages endpoint (`POST /v1/messages`, `stream: true`): `message_start`
//! with input and cache usage, a `ping`, a thinking block (`reasoning=N`), a text block,
//! `message_delta` with the stop reason and cumulative usage, `message_stop`. Same directives as
//! the OpenAI endpoint; `fault=overloaded` sends an `overloaded_error` event mid-stream.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures::{StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{REQUESTS, directive, hold, http_fault, remember};

#[derive(Deserialize)]
pub struct MessagesRequest {
    model: String,
    messages: Vec<Value>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u64>,
}

fn frame(event: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => {
            blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

pub async fn messages(http: HttpRequest, req: web::Json<MessagesRequest>) -> HttpResponse {
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prompt =
        req.messages.iter().rev().find(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    remember(&http, &req.model, &prompt);
    let d = directive(&prompt);
    if let Some(fault) = http_fault(&d, &prompt) {
        return fault;
    }
    hold(&d).await;
    let versioned = http.headers().get("anthropic-version").is_some();
    if !req.stream || req.max_tokens.is_none() || !versioned {
        return HttpResponse::BadRequest().json(json!({"type": "error", "error": {
            "type": "invalid_request_error", "message": "stream, max_tokens and anthropic-version are required" }}));
    }
    let input =
        req.messages.iter().map(|m| text_of(m).split_whitespace().count() as u64).sum::<u64>();
    let mut frames = vec![frame(
        "message_start",
        json!({ "type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "content": [], "model": req.model,
        "stop_reason": null, "usage": { "input_tokens": input, "output_tokens": 1,
            "cache_read_input_tokens": d.cached, "cache_creation_input_tokens": d.created } } }),
    )];
    frames.push(frame("ping", json!({ "type": "ping" })));
    if d.fault.as_deref() == Some("overloaded") {
        frames.push(frame("error", json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } })));
    }
    let mut index = 0;
    if d.reasoning > 0 {
        frames.push(frame(
            "content_block_start",
            json!({ "type": "content_block_start", "index": index,
            "content_block": { "type": "thinking", "thinking": "" } }),
        ));
        for i in 0..d.reasoning {
            frames.push(frame(
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": index,
                "delta": { "type": "thinking_delta", "thinking": format!("r{i} ") } }),
            ));
        }
        frames.push(frame(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index,
            "delta": { "type": "signature_delta", "signature": "c2ln" } }),
        ));
        frames.push(frame(
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": index }),
        ));
        index += 1;
    }
    frames.push(frame(
        "content_block_start",
        json!({ "type": "content_block_start", "index": index,
        "content_block": { "type": "text", "text": "" } }),
    ));
    for i in 0..d.tokens {
        let text = d.text.clone().unwrap_or_else(|| format!("t{i} "));
        frames.push(frame(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index,
            "delta": { "type": "text_delta", "text": text } }),
        ));
    }
    frames
        .push(frame("content_block_stop", json!({ "type": "content_block_stop", "index": index })));
    let output = (d.reasoning + d.tokens) as u64;
    let stop = if d.fault.as_deref() == Some("nostop") { Value::Null } else { json!("end_turn") };
    frames.push(frame("message_delta", json!({ "type": "message_delta",
        "delta": { "stop_reason": stop, "stop_sequence": null }, "usage": { "output_tokens": output } })));
    frames.push(frame("message_stop", json!({ "type": "message_stop" })));
    let cut_after = d
        .fault
        .as_deref()
        .and_then(|f| f.strip_prefix("cut:"))
        .and_then(|n| n.parse::<usize>().ok());
    let body = stream::iter(frames.into_iter().enumerate()).then(move |(i, bytes)| {
        let wait = if i == 2 {
            d.ttft_ms
        } else if i > 2 {
            d.delay_ms
        } else {
            0
        };
        async move {
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            if cut_after.is_some_and(|n| i >= n + 3) {
                return Err(std::io::Error::other("fake cut"));
            }
            Ok::<_, std::io::Error>(bytes)
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("request-id", "req_fake_stream"))
        .streaming(body.boxed_local())
}
