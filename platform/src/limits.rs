//! Limits that hold across every instance of a service, kept in PostgreSQL (limits kept per
//! process would multiply with the number of replicas): request rates as a generic cell rate
//! algorithm (`rate_limit_take`, migrations/0014…) and leases on concurrent things
//! (`stream_lease_take`). In-process limiters such as `governor` implement the same algorithm
//! but keep their state in memory, which is exactly what must not happen here.
//!
//! A rate takes a `count` per request, so the same call carries token-per-minute limits later.
//! Going over answers 429 problem+json with `Retry-After`, a type per limit, and the limit.

use std::time::Duration;

use crate::problem::Problem;

/// So many per minute, with bursts of up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    /// The emission interval: how often one more is allowed.
    fn interval_secs(&self) -> f64 {
        60.0 / f64::from(self.per_minute.max(1))
    }
}

/// A limit was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    /// Which limit (the problem type names it too).
    pub limit: &'static str,
    /// The limit itself, for the caller to see.
    pub allowed: String,
    /// When the request would fit again.
    pub retry_after: Duration,
}

impl From<Exceeded> for Problem {
    fn from(e: Exceeded) -> Self {
        let secs = e.retry_after.as_secs_f64().ceil().max(1.0) as u32;
        Problem::too_many_requests(
            e.limit,
            format!("over the {} limit of {}; retry in {secs} s", e.limit, e.allowed),
            secs,
        )
        .with("limit", e.allowed.into())
    }
}

impl Exceeded {
    /// A request rate exceeded: how long until it fits again.
    pub fn rate(limit: &'static str, rate: Rate, wait: Duration) -> Self {
        Exceeded {
            limit,
            allowed: format!("{} requests per minute (bursts of {})", rate.per_minute, rate.burst),
            retry_after: wait,
        }
    }
}

/// Charge `count` to `key` whatever its allowance (what a finished reply used): later takes
/// wait until it is paid off.
pub async fn charge(
    db: &deadpool_postgres::Client,
    key: &str,
    rate: Rate,
    count: u64,
) -> Result<(), tokio_postgres::Error> {
    let stmt = db.prepare_cached("SELECT rate_limit_charge($1, make_interval(secs => $2))").await?;
    let cost = rate.interval_secs() * count as f64;
    db.query_one(&stmt, &[&key, &cost]).await?;
    Ok(())
}

/// Take `count` from `key`'s allowance at `rate`: `Ok(None)` if taken, `Ok(Some(wait))` if not.
pub async fn take(
    db: &deadpool_postgres::Client,
    key: &str,
    rate: Rate,
    count: u32,
) -> Result<Option<Duration>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "SELECT extract(epoch FROM rate_limit_take($1, make_interval(secs => $2), make_interval(secs => $3)))::float8",
        )
        .await?;
    let interval = rate.interval_secs();
    let cost = interval * f64::from(count);
    let window = interval * f64::from(rate.burst.max(1));
    let wait: Option<f64> = db.query_one(&stmt, &[&key, &cost, &window]).await?.get(0);
    Ok(wait.map(|s| Duration::from_secs_f64(s.max(0.001))))
}
