//! A stand-in for an OpenTelemetry collector: receives the services' spans over OTLP/HTTP
//! (protobuf) and keeps them, so a test can look at a prompt's whole trace.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One received span, reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's root.
    pub parent_span_id: String,
    /// Nanoseconds since the Unix epoch (every process here shares the machine's clock).
    pub start_ns: u64,
    pub end_ns: u64,
}

/// The receiver; it stops with the test's runtime.
pub struct OtlpReceiver {
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(export) => {
                                    store.lock().unwrap().extend(spans_of(export));
                                    200
                                }
                                Err(_) => 400,
                            };
                            let mut res = hyper::Response::new(Full::new(Bytes::new()));
                            *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, hyper::Error>(res)
                        }
                    });
                    let _ =
                        http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        Self { endpoint, spans }
    }

    /// The environment that points a service's trace export here, exporting every 100 ms.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ]
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Every received trace whose root span (no parent) is `root` of `service`, by trace id.
    pub fn traces_rooted_at(&self, service: &str, root: &str) -> Vec<Vec<ReceivedSpan>> {
        let mut by_trace = std::collections::BTreeMap::<String, Vec<ReceivedSpan>>::new();
        for span in self.spans() {
            by_trace.entry(span.trace_id.clone()).or_default().push(span);
        }
        by_trace
            .into_values()
            .filter(|t| {
                t.iter()
                    .any(|s| s.service == service && s.name == root && s.parent_span_id.is_empty())
            })
            .collect()
    }

    /// Forget what was received so far.
    pub fn clear(&self) {
        self.spans.lock().unwrap().clear();
    }

    /// Every span of the trace whose root span (no parent) is named `root`, if one came.
    pub fn trace_rooted_at(&self, service: &str, root: &str) -> Vec<ReceivedSpan> {
        let spans = self.spans();
        let Some(trace) = spans
            .iter()
            .find(|s| s.service == service && s.name == root && s.parent_span_id.is_empty())
            .map(|s| s.trace_id.clone())
        else {
            return Vec::new();
        };
        spans.into_iter().filter(|s| s.trace_id == trace).collect()
    }
}

/// Spans whose parent is not in `trace` (a trace is connected when only its root is one).
pub fn orphans(trace: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    trace
        .iter()
        .filter(|s| !s.parent_span_id.is_empty() && !ids.contains(s.parent_span_id.as_str()))
        .collect()
}

fn spans_of(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
            });
        }
    }
    out
}
