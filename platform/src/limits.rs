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
    pub fn interval_secs(&self) -> f64 {
        60.0 / f64::from(self.per_minute.max(1))
    }

    /// How far ahead of now the allowance may run: the burst.
    pub fn window_secs(&self) -> f64 {
        self.interval_secs() * f64::from(self.burst.max(1))
    }
}

/// A limit was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// Which limit (the problem type names it too).
    pub limit: &'static str,
    /// The limit itself, for the caller to see.
    pub allowed: String,
    /// When the request would fit again.
    pub retry_after: Duration,
    /// How much of the limit is in use (requests or tokens in the current window, or open
    /// streams), where known.
    pub used: Option<u64>,
}

impl From<Exceeded> for Problem {
    fn from(e: Exceeded) -> Self {
        let secs = e.retry_after.as_secs_f64().ceil().max(1.0) as u32;
        let problem = Problem::too_many_requests(
            e.limit,
            format!("over the {} limit of {}; retry in {secs} s", e.limit, e.allowed),
            secs,
        )
        .with("limit", e.allowed.into());
        match e.used {
            Some(used) => problem.with("used", used.into()),
            None => problem,
        }
    }
}

impl Exceeded {
    /// A request rate exceeded: how long until it fits again, and how much is in use.
    pub fn rate(limit: &'static str, rate: Rate, refused: Refused) -> Self {
        Exceeded {
            limit,
            allowed: format!("{} requests per minute (bursts of {})", rate.per_minute, rate.burst),
            retry_after: refused.wait,
            used: Some(refused.used),
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

/// A take that did not fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refused {
    /// How long until it would.
    pub wait: Duration,
    /// What the window holds now (requests or tokens taken and not yet refilled).
    pub used: u64,
}

/// Take `count` from `key`'s allowance at `rate`: `Ok(None)` if taken, `Ok(Some(refused))` if
/// not.
pub async fn take(
    db: &deadpool_postgres::Client,
    key: &str,
    rate: Rate,
    count: u32,
) -> Result<Option<Refused>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "SELECT extract(epoch FROM rate_limit_take($1, make_interval(secs => $2), make_interval(secs => $3)))::float8",
        )
        .await?;
    let interval = rate.interval_secs();
    let cost = interval * f64::from(count);
    let window = rate.window_secs();
    let wait: Option<f64> = db.query_one(&stmt, &[&key, &cost, &window]).await?.get(0);
    // Refused when the theoretical arrival time, moved by `cost`, lies `wait` past the window:
    // what the window holds now is (wait + window - cost) worth of intervals.
    Ok(wait.map(|s| Refused {
        wait: Duration::from_secs_f64(s.max(0.001)),
        used: ((s + window - cost) / interval).round().max(0.0) as u64,
    }))
}
