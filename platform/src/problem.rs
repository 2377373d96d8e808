//! Errors as RFC 9457 `application/problem+json`, the one way every service answers a failure.
//!
//! Validation problems are 400/413/415, a missing (or another tenant's) resource 404, an
//! optimistic-concurrency conflict that outlived its retries 409, an infrastructure outage 503
//! with `Retry-After`. Anything else is an opaque 500 whose cause is logged, never sent.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError, error::JsonPayloadError};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip)]
    pub retry_after_secs: Option<u32>,
    /// Extension members (RFC 9457 §3.2): what a client needs to act on the problem.
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: Option<String>) -> Self {
        Self {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail,
            retry_after_secs: None,
            extensions: serde_json::Map::new(),
        }
    }

    /// Add an extension member.
    pub fn with(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    /// A limit was reached: the problem type names the limit (`urn:oc:problem:<limit>`).
    pub fn too_many_requests(limit: &'static str, detail: String, retry_after_secs: u32) -> Self {
        let mut p = Self::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests", Some(detail));
        p.kind = match limit {
            "request-rate" => "urn:oc:problem:request-rate",
            "api-key-request-rate" => "urn:oc:problem:api-key-request-rate",
            "concurrent-streams" => "urn:oc:problem:concurrent-streams",
            "member-request-rate" => "urn:oc:problem:member-request-rate",
            "organization-request-rate" => "urn:oc:problem:organization-request-rate",
            "member-token-rate" => "urn:oc:problem:member-token-rate",
            "organization-token-rate" => "urn:oc:problem:organization-token-rate",
            "organization-budget" => "urn:oc:problem:organization-budget",
            "workspace-budget" => "urn:oc:problem:workspace-budget",
            "member-budget" => "urn:oc:problem:member-budget",
            "api-key-budget" => "urn:oc:problem:api-key-budget",
            _ => "urn:oc:problem:limit",
        };
        p.retry_after_secs = Some(retry_after_secs);
        p
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", Some(detail.into()))
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", Some(detail.into()))
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", Some(detail.into()))
    }

    /// Also the answer for another tenant's resource, so the two cannot be told apart.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found", None)
    }

    /// Well-formed, but refers to something that cannot be used (an unknown email).
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Content", Some(detail.into()))
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", Some(detail.into()))
    }

    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large", Some(detail.into()))
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type", Some(detail.into()))
    }

    /// The deployment does not offer this (e.g. the identity provider lacks a feature).
    pub fn not_implemented(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "Not Implemented", Some(detail.into()))
    }

    /// A dependency (PostgreSQL, NATS, the identity provider) is unreachable: try again soon.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut p =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", Some(detail.into()));
        p.retry_after_secs = Some(1);
        p
    }

    /// What was asked goes on, but longer than this request may wait for it.
    pub fn timed_out(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout", Some(detail.into()))
    }

    /// Log the cause; tell the client nothing about it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", None)
    }

    /// Map a JSON body error: oversize 413, wrong content type 415, the rest 400 with the reason.
    pub fn from_json_error(err: &JsonPayloadError) -> Self {
        match err {
            JsonPayloadError::Overflow { limit }
            | JsonPayloadError::OverflowKnownLength { limit, .. } => {
                Self::payload_too_large(format!("the body is larger than {limit} bytes"))
            }
            JsonPayloadError::ContentType => {
                Self::unsupported_media_type("the body must be application/json")
            }
            JsonPayloadError::Deserialize(e) => {
                Self::bad_request(format!("invalid JSON body: {e}"))
            }
            other => Self::bad_request(format!("unreadable body: {other}")),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        res.content_type("application/problem+json");
        if let Some(secs) = self.retry_after_secs {
            res.insert_header(("Retry-After", secs.to_string()));
        }
        res.json(self)
    }
}

impl From<deadpool_postgres::PoolError> for Problem {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(error = %e, "database pool unavailable");
        Problem::unavailable("the database is unavailable")
    }
}

impl From<tokio_postgres::Error> for Problem {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() || e.as_db_error().is_none() {
            tracing::warn!(error = %e, "database unavailable");
            Problem::unavailable("the database is unavailable")
        } else {
            // The database's own message (constraint, permission, syntax) is in the source.
            let detail = e.as_db_error().map_or_else(|| e.to_string(), |d| d.to_string());
            Problem::internal(&detail)
        }
    }
}
