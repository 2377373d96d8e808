//! Limits that hold across every instance of a service, kept in PostgreSQL (limits kept per
//! process would multiply with the number of replicas): request rates as a generic cell rate
//! algorithm (`rate_limit_take`, migrations/0014…) and leases on concurrent things
//! (`stream_lease_take`). In-process limiters such as `governor` implement the same algorithm
//! but keep their state in memory, which is exactly what must not happen here.
//!
//! A rate takes a `count` per request, so the same call carries token-per-minute limits later.
//! Going over answers 429 problem+json with `Retry-After`, a type per limit, and the limit.

use std::time::Duration;

use crate::batching::{BatchLimits, Batcher, in_key_order};
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

/// A take that did not fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refused {
    /// How long until it would.
    pub wait: Duration,
    /// What the window holds now (requests or tokens taken and not yet refilled).
    pub used: u64,
}

/// Takes of `rate_limit_take`, of every request arriving at once, in one statement
/// (`crate::batching`): under a burst the request rates cost a few statements instead of one per
/// request, and one user's burst queues on its row once per batch instead of once per request.
/// A batch takes its keys in key order (so two batches running at once cannot deadlock) and each
/// key's takes in the order they were asked.
#[derive(Clone)]
pub struct RateTakes {
    batcher: Batcher<Take, Result<Option<Refused>, Problem>>,
}

/// One request's take.
struct Take {
    key: String,
    cost: f64,
    window: f64,
    interval: f64,
}

/// Four statements at once (of the pool's connections), 256 takes in one at most, 4,096
/// waiting, 32 of one key's at once; beyond, a take waits for its turn and room as long as for a
/// connection (then 503).
const TAKES: BatchLimits = BatchLimits {
    in_flight: 4,
    max_batch: 256,
    queue: 4096,
    per_key: 32,
    queue_wait: Duration::from_secs(3),
};

/// Each take's wait (NULL: taken), in the order given.
const TAKE_ALL: &str = "SELECT extract(epoch FROM rate_limit_take(w.key, make_interval(secs => w.cost), \
        make_interval(secs => w.burst_window)))::float8 \
     FROM unnest($1::text[], $2::float8[], $3::float8[]) WITH ORDINALITY AS w(key, cost, burst_window, n) \
     ORDER BY w.n";

impl RateTakes {
    /// Take on `db`; the batching task ends when the last handle is dropped.
    pub fn start(db: deadpool_postgres::Pool) -> Self {
        Self { batcher: Batcher::start(TAKES, move |takes| take_all(db.clone(), takes)) }
    }

    /// Take `count` from `key`'s allowance at `rate`: `Ok(None)` if taken, `Ok(Some(refused))`
    /// if not.
    pub async fn take(
        &self,
        key: String,
        rate: Rate,
        count: u32,
    ) -> Result<Option<Refused>, Problem> {
        let interval = rate.interval_secs();
        let caller = key.clone();
        let take =
            Take { key, cost: interval * f64::from(count), window: rate.window_secs(), interval };
        self.batcher.ask(&caller, take).await.map_err(|e| Problem::unavailable(e.to_string()))?
    }
}

/// One statement for `takes`, answered in their order (taken in key order).
async fn take_all(
    db: deadpool_postgres::Pool,
    takes: Vec<Take>,
) -> Vec<Result<Option<Refused>, Problem>> {
    let waits = in_key_order(
        &takes,
        |t| t.key.as_str(),
        |sorted| async move {
            let keys: Vec<&str> = sorted.iter().map(|t| t.key.as_str()).collect();
            let costs: Vec<f64> = sorted.iter().map(|t| t.cost).collect();
            let windows: Vec<f64> = sorted.iter().map(|t| t.window).collect();
            let db = db.get().await?;
            let stmt = db.prepare_cached(TAKE_ALL).await?;
            let rows = db.query(&stmt, &[&keys, &costs, &windows]).await?;
            Ok(rows.iter().map(|r| r.get::<_, Option<f64>>(0)).collect())
        },
    )
    .await;
    waits.into_iter().zip(&takes).map(|(wait, take)| Ok(wait?.map(|s| refused(take, s)))).collect()
}

/// A take refused with `wait` seconds to go. Refused when the theoretical arrival time, moved
/// by the take's cost, lies `wait` past the window: what the window holds now is
/// (wait + window - cost) worth of intervals.
fn refused(take: &Take, wait: f64) -> Refused {
    Refused {
        wait: Duration::from_secs_f64(wait.max(0.001)),
        used: ((wait + take.window - take.cost) / take.interval).round().max(0.0) as u64,
    }
}
