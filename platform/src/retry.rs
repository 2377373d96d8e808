//! Retrying work that depends on PostgreSQL or NATS until it succeeds or the process stops:
//! one backoff policy for every service, so an outage is ridden out the same way everywhere.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

/// Longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// 100 ms doubling to at most 2 s between attempts, with jitter so instances do not retry in
/// step after a shared outage.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_DELAY)
        .with_jitter()
}

/// Run `work` until it returns `Ok`, retrying with backoff after each error (logged with
/// `what`). Shutdown stops the retrying, never an attempt in progress (which may be finishing
/// work in hand): `None` if `shutdown` fired before an attempt succeeded.
pub async fn until_stopped<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut work: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut delays = backoff().without_max_times().build();
    loop {
        let error = match work().await {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        if shutdown.is_cancelled() {
            return None;
        }
        let wait = delays.next().unwrap_or(MAX_DELAY);
        tracing::warn!(error = %error, ?wait, "{what} failed; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Run `work` up to `attempts` times with backoff; the last error if none succeeded.
pub async fn times<T, E, F, Fut>(what: &str, attempts: usize, work: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    work.retry(backoff().with_max_times(attempts))
        .notify(
            |e: &E, wait: Duration| tracing::warn!(error = %e, ?wait, "{what} failed; retrying"),
        )
        .await
}

/// Run `work` until it returns `Ok`, retrying with backoff for at most `patience` of waiting in
/// all (a NATS restart, a leader election); the last error after that.
pub async fn within<T, E, F, Fut>(what: &str, patience: Duration, work: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    work.retry(backoff().without_max_times().with_total_delay(Some(patience)))
        .notify(
            |e: &E, wait: Duration| tracing::warn!(error = %e, ?wait, "{what} failed; retrying"),
        )
        .await
}
