//! The end-to-end harness: starts the real system as processes, isolated per test, and drives
//! it over HTTP and SSE as a client would.
//!
//! Each test gets its own NATS server (JetStream, temporary store, free port), its own
//! PostgreSQL database (dropped afterwards), its own OpenID provider (npm `oidc-provider`) and
//! fake LLM provider, and its own service processes built by `cargo build --workspace --bins`.
//! PostgreSQL is the machine's (`OC_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `nats-server` must be 2.10+ on PATH (or
//! `OC_TEST_NATS_SERVER`). A test that restarts PostgreSQL gets a server of its own
//! (`SystemOptions::own_postgres`).
#![forbid(unsafe_code)]

pub mod api;
pub mod bench;
pub mod browser;
pub mod front;
pub mod http2;
pub mod nats;
pub mod opencode;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod sse;
pub mod system;
pub mod tmux;

pub use system::{System, SystemOptions};

use std::time::{Duration, Instant};

/// Poll `check` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match within(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out waiting for {what}"),
    }
}

/// Poll `check` (backing off from 10 to 250 ms between polls) until it returns `Some`, or give
/// `None` once `timeout` has passed.
pub async fn within<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// The text the fake provider streams for `tokens` tokens: `"t0 t1 … "`.
pub fn fake_text(tokens: usize) -> String {
    (0..tokens).map(|i| format!("t{i} ")).collect()
}
