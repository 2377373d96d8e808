//! The contract between the services and with outside consumers: ids, events, the bus envelope,
//! subject names, REST bodies, and the JSON Schemas generated from them (`schemas/json/`).
//!
//! No I/O here: everything is plain data, so every service and every test can depend on it.
#![forbid(unsafe_code)]

pub mod api;
pub mod budget;
pub mod envelope;
pub mod events;
pub mod ids;
pub mod json_schema;
pub mod live;
pub mod message;
pub mod openapi;
pub mod opencode;
pub mod policy;
pub mod provider;
pub mod read;
pub mod subjects;

/// Milliseconds since the Unix epoch, the time unit of every event (as in OpenCode).
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
