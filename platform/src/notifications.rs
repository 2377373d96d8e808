//! An instance's one PostgreSQL LISTEN connection, outside the pool, and the in-process
//! signals it drives: the projector's progress per aggregate (`rm_progress`) and changes to a
//! user's access (`oc_access`); and the wait, bounded and holding no pooled connection, until the
//! read models reflect an aggregate up to a sequence (`wait_for_projection`). Whoever waits on a signal holds no pooled connection, and only
//! the waiters of that aggregate or user wake. Notifications can be lost while the connection is
//! down, so every (re)connect wakes every waiter to re-check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// Channel of `rm_positions` changes (migrations/0010…): payload = aggregate id.
pub const PROGRESS: &str = "rm_progress";
/// Channel of access changes: payload = the user whose access may have shrunk.
pub const ACCESS: &str = "oc_access";

/// Wake-ups by key, for the keys someone currently waits on.
#[derive(Default)]
pub struct Signals {
    waiting: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Signals {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // Nothing panics while holding the lock; recover from poisoning regardless.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start waiting on `key`: the interest wakes on every signal for it from now on.
    pub fn interest(self: &Arc<Self>, key: &str) -> Interest {
        let rx =
            self.lock().entry(key.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe();
        Interest { key: key.to_owned(), signals: self.clone(), rx: Some(rx) }
    }

    pub fn notify(&self, key: &str) {
        if let Some(tx) = self.lock().get(key) {
            tx.send_modify(|n| *n += 1);
        }
    }

    pub fn notify_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|n| *n += 1);
        }
    }
}

/// One waiter's interest in a key; forgotten when dropped.
pub struct Interest {
    key: String,
    signals: Arc<Signals>,
    rx: Option<watch::Receiver<u64>>,
}

impl Interest {
    /// Wait for the next signal on the key (or any wake-up since the last call).
    pub async fn changed(&mut self) {
        match self.rx.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // Cannot happen while we hold the entry; never spin if it does.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut waiting = self.signals.lock();
        if waiting.get(&self.key).is_some_and(|tx| tx.receiver_count() == 0) {
            waiting.remove(&self.key);
        }
    }
}

/// The listener: routes notifications to the progress and access signals.
pub struct Notifications {
    pub progress: Arc<Signals>,
    pub access: Arc<Signals>,
}

impl Notifications {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { progress: Signals::new(), access: Signals::new() })
    }

    /// Listen until shutdown, reconnecting after failures.
    pub async fn run(self: Arc<Self>, database_url: String, shutdown: CancellationToken) {
        crate::retry::until_stopped("database notifications", &shutdown, || {
            self.listen(&database_url, &shutdown)
        })
        .await;
    }

    async fn listen(&self, url: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let (messages_tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
        // The connection yields notifications only when polled for them.
        let driver = tokio::spawn(async move {
            let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = stream.next().await {
                if messages_tx.send(message).is_err() {
                    break;
                }
            }
        });
        let result = async {
            client.batch_execute(&format!("LISTEN {PROGRESS}; LISTEN {ACCESS}")).await?;
            // Whatever was signalled while we were not listening: everyone re-checks.
            self.progress.notify_all();
            self.access.notify_all();
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    m = messages.recv() => m,
                };
                match message {
                    Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
                        PROGRESS => self.progress.notify(n.payload()),
                        ACCESS => self.access.notify(n.payload()),
                        _ => {}
                    },
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("the notification connection closed"),
                }
            }
        }
        .await;
        driver.abort();
        result
    }
}

/// A waiter re-checks at least this often, in case a notification was lost.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the read models were not waited for to the end.
#[derive(Debug, PartialEq, Eq)]
pub enum ProjectionWait {
    /// No write of that aggregate was ever committed at that sequence.
    NeverCommitted,
    /// Not reached within the time allowed.
    TimedOut,
}

/// Wait until the read models reflect `aggregate_id` up to `sequence`, at most `max_wait`. The
/// position is checked with a connection given back at once; between checks the waiter sleeps
/// until the projector's notification for that aggregate (or a re-check now and then).
pub async fn wait_for_projection(
    pool: &deadpool_postgres::Pool,
    progress: &Arc<Signals>,
    aggregate_id: &str,
    sequence: i64,
    max_wait: std::time::Duration,
) -> Result<Result<(), ProjectionWait>, crate::problem::Problem> {
    // Interest first, then the check: a notification between the two is not missed.
    let mut woken = progress.interest(aggregate_id);
    let (mut at, committed) = positions(pool, aggregate_id).await?;
    if sequence > committed {
        return Ok(Err(ProjectionWait::NeverCommitted));
    }
    let deadline = tokio::time::Instant::now() + max_wait;
    while at < sequence {
        let wake = tokio::time::timeout(RECHECK, woken.changed());
        if tokio::time::timeout_at(deadline, wake).await.is_err() {
            return Ok(Err(ProjectionWait::TimedOut));
        }
        at = positions(pool, aggregate_id).await?.0;
    }
    Ok(Ok(()))
}

/// (projected, committed) sequences of an aggregate; the connection goes back at once.
async fn positions(
    pool: &deadpool_postgres::Pool,
    aggregate_id: &str,
) -> Result<(i64, i64), crate::problem::Problem> {
    let db = pool.get().await?;
    let stmt = db
        .prepare_cached(
            "SELECT coalesce((SELECT sequence FROM rm_positions WHERE aggregate_id = $1), 0), \
                    oc_committed_sequence($1)",
        )
        .await?;
    let row = db.query_one(&stmt, &[&aggregate_id]).await?;
    Ok((row.get(0), row.get(1)))
}
