//! Logs (tracing), traces (OpenTelemetry over OTLP, only when configured) and metrics
//! (Prometheus) for a service process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// The tracing target of the spans a prompt's trace is made of (see `trace_context`). Only the
/// OTLP layer listens to it, so with export off nothing records these spans: their call sites
/// are disabled and cost a branch.
pub const TRACE_TARGET: &str = "oc_trace";

/// Counts something in the gauge `name` while it lives (a request waiting or being served):
/// incremented when made, decremented when dropped, so a caller that goes away is uncounted too.
pub struct InProgress(&'static str);

impl InProgress {
    pub fn new(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// A step of a prompt's trace, exported as `name` (a child of the current span). Free when
/// export is off, as every span of [`TRACE_TARGET`].
pub fn trace_step(name: &'static str) -> tracing::Span {
    tracing::info_span!(target: TRACE_TARGET, "step", otel.name = name)
}

/// Whether trace export was installed: the propagation helpers (`trace_context`) do nothing,
/// not even allocate, when it was not.
static TRACING_ON: AtomicBool = AtomicBool::new(false);

pub(crate) fn tracing_on() -> bool {
    TRACING_ON.load(Ordering::Relaxed)
}

/// Latency buckets in seconds: fine below 25 ms, where the pipeline's targets are.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Flushes the spans not yet exported when the process ends (dropped at the end of `main`).
#[must_use = "dropping the guard at once stops the trace export"]
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(2));
        }
    }
}

/// Whether trace export is configured: the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or its
/// traces-only variant) names a collector's OTLP/HTTP endpoint.
fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// Install the tracing subscriber. `RUST_LOG` filters the logs (default `info`); `format` is
/// `json` or anything else for human-readable lines. When an OTLP endpoint is configured, the
/// spans of a prompt's path are exported to it (OTLP/HTTP, protobuf; batches, a bounded queue
/// that drops rather than grows; the standard `OTEL_*` variables tune sampling and batching) and
/// W3C trace context crosses HTTP and NATS. Safe to call twice (the second call does nothing).
pub fn init_tracing(format: &str, service: &'static str) -> TelemetryGuard {
    let logs = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(format!("{TRACE_TARGET}=off").parse().expect("a valid directive"));
    let fmt_layer = if format == "json" {
        fmt::layer().json().with_current_span(true).with_filter(logs).boxed()
    } else {
        fmt::layer().compact().with_filter(logs).boxed()
    };
    let provider = otlp_configured().then(|| tracer_provider(service)).flatten();
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(Targets::new().with_target(TRACE_TARGET, LevelFilter::INFO))
    });
    if tracing_subscriber::registry().with(fmt_layer).with(otel_layer).try_init().is_ok()
        && provider.is_some()
    {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        TRACING_ON.store(true, Ordering::Relaxed);
    }
    TelemetryGuard(provider)
}

fn tracer_provider(service: &'static str) -> Option<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .inspect_err(|e| eprintln!("trace export is configured but cannot start: {e}"))
        .ok()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Install the Prometheus recorder labelled with the service name, and keep its histograms
/// trimmed. The returned handle renders `/metrics`.
pub fn init_metrics(service: &'static str) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .add_global_label("service", service)
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
