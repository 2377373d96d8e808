//! The instance's one PostgreSQL LISTEN connection, outside the pool, and the in-process
//! signals it drives: the projector's progress per aggregate (`rm_progress`) and changes to a
//! user's access (`oc_access`). Whoever waits on a signal holds no pooled connection, and only
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
        platform::retry::until_stopped("database notifications", &shutdown, || {
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
