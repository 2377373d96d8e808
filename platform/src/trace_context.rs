//! W3C trace context across the boundaries a prompt crosses: HTTP requests, NATS messages
//! (`traceparent` header) and the event store (a `traceparent` metadata key, which the outbox
//! relay turns back into a header). With trace export off every function here returns at once.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::tracing_on;

/// The W3C header (and event metadata key) carrying a span's trace and id.
pub const TRACEPARENT: &str = "traceparent";

struct NatsWrite<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsWrite<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsRead<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsRead<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

struct HttpRead<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for HttpRead<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Add `span`'s context to a NATS message's headers.
fn inject_nats(span: &Span, headers: &mut async_nats::HeaderMap) {
    if !tracing_on() {
        return;
    }
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut NatsWrite(headers))
    });
}

/// `span`'s context as NATS headers, or `None` when there is none to send (export off).
pub fn nats_headers(span: &Span) -> Option<async_nats::HeaderMap> {
    if !tracing_on() {
        return None;
    }
    let mut headers = async_nats::HeaderMap::new();
    inject_nats(span, &mut headers);
    (!headers.is_empty()).then_some(headers)
}

/// Make `span` a child of the context a NATS message carries, if any.
pub fn follow_nats(span: &Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(headers) = headers.filter(|h| tracing_on() && h.get(TRACEPARENT).is_some()) {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&NatsRead(headers)));
        let _ = span.set_parent(cx);
    }
}

/// Make `span` a child of the context an HTTP request carries, if any.
pub fn follow_http(span: &Span, headers: &actix_web::http::header::HeaderMap) {
    if tracing_on() && headers.contains_key(TRACEPARENT) {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpRead(headers)));
        let _ = span.set_parent(cx);
    }
}

/// `span`'s `traceparent`, to store with the events it commits; `None` with export off.
pub fn traceparent(span: &Span) -> Option<String> {
    if !tracing_on() {
        return None;
    }
    let cx = span.context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove(TRACEPARENT)
}

/// Make `span` a child of a stored `traceparent`, if any.
pub fn follow_traceparent(span: &Span, traceparent: Option<&str>) {
    if let Some(value) = traceparent.filter(|_| tracing_on()) {
        let carrier = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        let _ = span.set_parent(cx);
    }
}
