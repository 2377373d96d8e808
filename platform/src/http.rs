//! HTTP plumbing shared by the services: body and path limits that answer with problem+json,
//! the operational endpoints, and request metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::problem::Problem;

/// Largest JSON body accepted (prompts included).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// JSON, path and query extractors that reject bad input with problem+json.
pub fn extractor_config(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .content_type_required(true)
            .error_handler(|err, _| Problem::from_json_error(&err).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _| Problem::bad_request(format!("invalid path: {err}")).into()),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|err, _| Problem::bad_request(format!("invalid query: {err}")).into()),
    );
}

/// Serves an OpenAPI document (rendered once) at `/openapi.json`, to anyone.
pub fn openapi_route(cfg: &mut web::ServiceConfig, document: fn() -> serde_json::Value) {
    let body = web::Data::new(document().to_string());
    cfg.route(
        "/openapi.json",
        web::get().to(move || {
            let body = body.clone();
            async move {
                HttpResponse::Ok().content_type("application/json").body(body.get_ref().clone())
            }
        }),
    );
}

/// Answers 404 problem+json for any route that does not exist.
pub async fn not_found() -> Result<HttpResponse, Problem> {
    Err(Problem::not_found())
}

/// A readiness probe: resolves to `Err(reason)` when a dependency is unreachable.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Readiness of PostgreSQL (a `SELECT 1` through the pool) and NATS (connected).
pub fn readiness(db: deadpool_postgres::Pool, nats: async_nats::Client) -> ReadinessCheck {
    Arc::new(move || {
        let (db, nats) = (db.clone(), nats.clone());
        Box::pin(async move {
            if !crate::bus::is_connected(&nats) {
                return Err("nats is not connected".into());
            }
            let client = db.get().await.map_err(|e| format!("postgres: {e}"))?;
            client.simple_query("SELECT 1").await.map_err(|e| format!("postgres: {e}"))?;
            Ok(())
        })
    })
}

/// `/healthz` (the process runs), `/readyz` (its dependencies answer), `/metrics`.
pub fn ops_routes(cfg: &mut web::ServiceConfig, metrics: PrometheusHandle, ready: ReadinessCheck) {
    cfg.app_data(web::Data::new(metrics))
        .app_data(web::Data::new(ready))
        .route("/healthz", web::get().to(|| async { HttpResponse::Ok().body("ok") }))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_endpoint));
}

async fn readyz(check: web::Data<ReadinessCheck>) -> Result<HttpResponse, Problem> {
    match (check.get_ref())().await {
        Ok(()) => Ok(HttpResponse::Ok().body("ready")),
        Err(reason) => {
            // The reason (a database error, say) is for the log, not for whoever probes.
            tracing::warn!(%reason, "not ready");
            Err(Problem::unavailable("a dependency is unavailable"))
        }
    }
}

async fn metrics_endpoint(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(handle.render())
}

/// The id of the request being handled: the caller's `X-Request-Id` if it is a sane token,
/// otherwise a fresh `req_…`. Echoed in the response, logged on every line of the request, and
/// recorded as the correlation id of the events the request causes.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    fn from_header(req: &ServiceRequest) -> Self {
        let given = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64)
            .filter(|v| v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        RequestId(given.map_or_else(|| schemas::ids::RequestId::new().to_string(), str::to_owned))
    }
}

impl actix_web::FromRequest for RequestId {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        use actix_web::HttpMessage;
        let id = req.extensions().get::<RequestId>().cloned();
        std::future::ready(Ok(
            id.unwrap_or_else(|| RequestId(schemas::ids::RequestId::new().to_string()))
        ))
    }
}

/// Middleware (use with `wrap_fn`): gives each request an id and a tracing span, and records
/// `http_request_duration_seconds` by route and status.
pub fn record_request<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + use<S, B>
where
    S: actix_web::dev::Service<
            ServiceRequest,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: MessageBody,
{
    use actix_web::HttpMessage;
    use tracing::Instrument;
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let id = RequestId::from_header(&req);
    let span = tracing::info_span!("request", %method, %route, request_id = %id.0);
    // The root of a prompt's trace (or a child of the caller's, given a `traceparent`).
    let trace = tracing::info_span!(
        target: crate::telemetry::TRACE_TARGET,
        "http request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
    );
    crate::trace_context::follow_http(&trace, req.headers());
    req.extensions_mut().insert(id.clone());
    let fut = srv.call(req).instrument(trace).instrument(span);
    async move {
        let mut res = fut.await?;
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&id.0) {
            res.headers_mut()
                .insert(actix_web::http::header::HeaderName::from_static("x-request-id"), value);
        }
        metrics::histogram!(
            "http_request_duration_seconds",
            "method" => method,
            "route" => route,
            "status" => res.status().as_u16().to_string(),
        )
        .record(start.elapsed().as_secs_f64());
        Ok(res)
    }
}

/// Connections the kernel queues for an API listener while its accept loop is busy: actix-web's
/// own default (the kernel caps it at `net.core.somaxconn`). `TcpListener::bind` queues 128, and
/// past that the kernel drops new connections' SYNs, which their clients resend only after a
/// second, then three: a reconnect storm (an instance's streams coming back after it stopped)
/// would wait seconds instead of queueing.
pub const ACCEPT_BACKLOG: i32 = 1024;

/// Bind an API listener on `addr` as `TcpListener::bind` does, then give it `ACCEPT_BACKLOG`
/// (listening again on a listening socket only sets its queue's length).
pub fn api_listener(addr: &str) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    socket2::SockRef::from(&listener).listen(ACCEPT_BACKLOG)?;
    Ok(listener)
}

/// What every service's HTTP server shares: operational endpoints, request ids and metrics,
/// problem+json for bad input and unknown routes, no signal handling of its own (the process's
/// shutdown token stops it), and a bounded graceful shutdown.
pub struct ServerSpec {
    pub listener: std::net::TcpListener,
    /// Where `/healthz`, `/readyz` and `/metrics` are served, apart from the API (loopback by
    /// default, so they are not public); `None` for services whose only listener is for
    /// operations (the projector, the worker).
    pub ops_listener: Option<std::net::TcpListener>,
    pub metrics: PrometheusHandle,
    pub ready: ReadinessCheck,
    pub shutdown_grace_secs: u64,
    /// Worker threads; `None` uses one per core.
    pub workers: Option<usize>,
    /// Whether the API listener also takes cleartext HTTP/2 with prior knowledge (told apart from
    /// HTTP/1.1 by a connection's first bytes). A front that multiplexes upstream (Envoy,
    /// HAProxy, Caddy) then carries thousands of event streams over a few connections instead of
    /// a socket each.
    pub http2_cleartext: bool,
    /// The process's shutdown signal: the server stops taking requests and finishes those in
    /// hand (up to `shutdown_grace_secs`) when it fires.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Start serving `routes` (the service's own API; nothing for ops-only services).
pub fn serve<F>(spec: ServerSpec, routes: F) -> std::io::Result<actix_web::dev::Server>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let ServerSpec {
        listener,
        ops_listener,
        metrics,
        ready,
        shutdown_grace_secs,
        workers,
        http2_cleartext,
        shutdown,
    } = spec;
    let ops_apart = ops_listener.is_some();
    if let Some(ops) = ops_listener {
        let (metrics, ready) = (metrics.clone(), ready.clone());
        let ops_server = actix_web::HttpServer::new(move || {
            let (metrics, ready) = (metrics.clone(), ready.clone());
            actix_web::App::new()
                .configure(move |c| ops_routes(c, metrics, ready))
                .default_service(web::to(not_found))
        })
        .listen(ops)?
        .disable_signals()
        .workers(1)
        .run();
        stop_on(&shutdown, &ops_server);
        tokio::spawn(ops_server);
    }
    let server = actix_web::HttpServer::new(move || {
        let (metrics, ready) = (metrics.clone(), ready.clone());
        actix_web::App::new()
            .wrap_fn(record_request)
            .configure(extractor_config)
            .configure(move |c| {
                if !ops_apart {
                    ops_routes(c, metrics, ready);
                }
            })
            .configure(routes.clone())
            .default_service(web::to(not_found))
    });
    let mut server = if http2_cleartext {
        server.listen_auto_h2c(listener)?
    } else {
        server.listen(listener)?
    }
    .disable_signals()
    .shutdown_timeout(shutdown_grace_secs);
    if let Some(n) = workers {
        server = server.workers(n);
    }
    let server = server.run();
    stop_on(&shutdown, &server);
    Ok(server)
}

/// Stop `server` gracefully when `shutdown` fires.
fn stop_on(shutdown: &tokio_util::sync::CancellationToken, server: &actix_web::dev::Server) {
    let (shutdown, handle) = (shutdown.clone(), server.handle());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
}
