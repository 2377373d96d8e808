//! What the benchmarks share: latencies in milliseconds and their percentiles.

use std::time::Duration;

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
