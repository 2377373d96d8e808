//! A cap on the event streams one user holds open, across every query instance: each open
//! stream holds a lease in `stream_leases` (migrations/0014…), taken under a per-user lock,
//! renewed by this instance while the stream lives, and given back when it ends. A crashed
//! instance's leases lapse after `LEASE_TTL`.
//!
//! The takes of streams opened together go out as one statement (`platform::batching`). Taken
//! one by one, each take held a pooled connection while it waited for its user's lock, which is
//! held through the commit of the take before it: a user opening many streams at once queued
//! them one commit at a time and filled the pool that every user's requests share. Batched,
//! one user's takes wait at their own gate holding nothing, and a burst is a few commits.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::batching::{BatchLimits, Batcher, in_key_order};
use platform::limits::Exceeded;
use platform::problem::Problem;
use schemas::ids::UserId;
use tokio_util::sync::CancellationToken;

/// How long a lease lives without renewal.
const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often this instance renews its leases.
const RENEW_EVERY: Duration = Duration::from_secs(20);

pub struct StreamLeases {
    db: deadpool_postgres::Pool,
    /// Streams one user may hold open at once.
    cap: u32,
    takes: Batcher<Take, Result<bool, Problem>>,
    /// This instance's live leases, to renew.
    live: Mutex<HashSet<String>>,
}

/// One stream's take: its lease's id, and whose it is.
struct Take {
    lease: String,
    owner: String,
}

/// Two statements at once (of the pool's connections), 256 takes in one at most, 4,096
/// waiting, 16 of one user's at once; beyond, a take waits for its turn and room as long as for
/// a connection (then 503).
const TAKES: BatchLimits = BatchLimits {
    in_flight: 2,
    max_batch: 256,
    queue: 4096,
    per_key: 16,
    queue_wait: Duration::from_secs(3),
};

/// Each take's answer, in the order given. The takes come sorted by user, so two batches
/// running at once (on any instances) take the users' locks in the same order and cannot
/// deadlock; a user's later take in a batch counts the leases its earlier ones inserted.
const TAKE_ALL: &str = "SELECT stream_lease_take(t.lease, t.owner, $3, make_interval(secs => $4)) \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(lease, owner, n) ORDER BY t.n";

/// One open stream's lease; given back when dropped.
pub struct Lease {
    id: String,
    leases: Arc<StreamLeases>,
}

impl StreamLeases {
    /// Leases on `db`, at most `cap` per user; starts the batching task (which ends when the
    /// last handle is dropped).
    pub fn new(db: deadpool_postgres::Pool, cap: u32) -> Arc<Self> {
        let pool = db.clone();
        let takes = Batcher::start(TAKES, move |takes| take_all(pool.clone(), cap, takes));
        Arc::new(Self { db, cap, takes, live: Mutex::default() })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Nothing panics while holding the lock; recover from poisoning regardless.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lease for one more stream of `user`, or 429 if they hold the most already.
    pub async fn take(self: &Arc<Self>, user: &UserId) -> Result<Lease, Problem> {
        let id = schemas::ids::RequestId::new().to_string();
        let take = Take { lease: id.clone(), owner: user.to_string() };
        let taken = self
            .takes
            .ask(user.as_str(), take)
            .await
            .map_err(|e| Problem::unavailable(e.to_string()))??;
        if !taken {
            return Err(Exceeded {
                limit: "concurrent-streams",
                allowed: format!("{} open event streams per user", self.cap),
                retry_after: Duration::from_secs(1),
                used: Some(self.cap as u64),
            }
            .into());
        }
        self.live().insert(id.clone());
        Ok(Lease { id, leases: self.clone() })
    }

    /// Renew this instance's leases until shutdown.
    pub async fn renew(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RENEW_EVERY) => {}
            }
            let ids: Vec<String> = self.live().iter().cloned().collect();
            if ids.is_empty() {
                continue;
            }
            let renewed = async {
                let db = self.db.get().await?;
                db.execute(
                    "UPDATE stream_leases SET expires_at = clock_timestamp() + make_interval(secs => $2) \
                     WHERE lease_id = ANY($1)",
                    &[&ids, &LEASE_TTL.as_secs_f64()],
                )
                .await?;
                anyhow::Ok(())
            };
            if let Err(e) = renewed.await {
                tracing::warn!(error = %e, "cannot renew stream leases; will retry");
            }
        }
    }
}

/// One statement for `takes`, answered in their order (taken by user: see [`TAKE_ALL`]).
async fn take_all(
    db: deadpool_postgres::Pool,
    cap: u32,
    takes: Vec<Take>,
) -> Vec<Result<bool, Problem>> {
    let cap = i32::try_from(cap).unwrap_or(i32::MAX);
    in_key_order(
        &takes,
        |t| t.owner.as_str(),
        |sorted| async move {
            let leases: Vec<&str> = sorted.iter().map(|t| t.lease.as_str()).collect();
            let owners: Vec<&str> = sorted.iter().map(|t| t.owner.as_str()).collect();
            let db = db.get().await?;
            let stmt = db.prepare_cached(TAKE_ALL).await?;
            let rows = db.query(&stmt, &[&leases, &owners, &cap, &LEASE_TTL.as_secs_f64()]).await?;
            Ok(rows.iter().map(|r| r.get::<_, bool>(0)).collect())
        },
    )
    .await
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.live().remove(&self.id);
        let (db, id) = (self.leases.db.clone(), std::mem::take(&mut self.id));
        // Give it back now; if this fails the lease lapses by itself.
        tokio::spawn(async move {
            if let Ok(db) = db.get().await {
                let _ = db.execute("DELETE FROM stream_leases WHERE lease_id = $1", &[&id]).await;
            }
        });
    }
}
