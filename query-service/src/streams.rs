//! A cap on the event streams one user holds open, across every query instance: each open
//! stream holds a lease in `stream_leases` (migrations/0014…), taken under a per-user lock,
//! renewed by this instance while the stream lives, and given back when it ends. A crashed
//! instance's leases lapse after `LEASE_TTL`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// This instance's live leases, to renew.
    live: Mutex<HashSet<String>>,
}

/// One open stream's lease; given back when dropped.
pub struct Lease {
    id: String,
    leases: Arc<StreamLeases>,
}

impl StreamLeases {
    pub fn new(db: deadpool_postgres::Pool, cap: u32) -> Arc<Self> {
        Arc::new(Self { db, cap, live: Mutex::default() })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Nothing panics while holding the lock; recover from poisoning regardless.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lease for one more stream of `user`, or 429 if they hold the most already.
    pub async fn take(self: &Arc<Self>, user: &UserId) -> Result<Lease, Problem> {
        let id = schemas::ids::RequestId::new().to_string();
        let db = self.db.get().await?;
        let stmt = db
            .prepare_cached("SELECT stream_lease_take($1, $2, $3, make_interval(secs => $4))")
            .await?;
        let cap = i32::try_from(self.cap).unwrap_or(i32::MAX);
        let ttl = LEASE_TTL.as_secs_f64();
        let taken: bool = db.query_one(&stmt, &[&id, &user.as_str(), &cap, &ttl]).await?.get(0);
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
