//! What the benchmarks share: the system a latency benchmark runs, latencies in milliseconds
//! and their percentiles.

use std::time::Duration;

use crate::{System, SystemOptions};

/// How many sessions prompt at once in the latency benchmarks (`OC_BENCH_SESSIONS`, 50).
pub fn sessions() -> usize {
    std::env::var("OC_BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(50)
}

/// The system for `sessions` sessions of one user prompting at once: the services' default
/// database pool (not the tests' small one), worker slots and stream leases for all of them.
pub async fn system(sessions: usize) -> System {
    System::start_with(SystemOptions {
        worker_env: vec![("OC_WORKER_CONCURRENCY", (sessions * 2).to_string())],
        service_env: vec![
            ("OC_DATABASE_POOL_SIZE", "16".into()),
            ("OC_SSE_STREAMS_PER_USER", (sessions * 4).to_string()),
        ],
        ..Default::default()
    })
    .await
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (0–1) of `samples` (nearest rank); 0 when there are none.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[((n as f64 * q) as usize).min(n - 1)],
    }
}

/// "p50 … / p90 … / p99 … ms".
pub fn percentiles(samples: &[f64]) -> String {
    let at = |q| quantile(samples, q);
    format!("p50 {:.2} / p90 {:.2} / p99 {:.2} ms", at(0.5), at(0.9), at(0.99))
}
