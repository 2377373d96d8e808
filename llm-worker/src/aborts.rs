//! Abort requests: a core NATS subscription to `session.abort_requested` events cancels the
//! generation of the named message if this worker is running it. Aborts seen for messages not
//! (yet) running here are remembered briefly, in case the prompt arrives after its abort.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use moka::sync::Cache;
use schemas::envelope::Envelope;
use schemas::events::SessionEvent;
use schemas::ids::MessageId;
use schemas::subjects;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Aborts {
    running: Arc<Mutex<HashMap<MessageId, CancellationToken>>>,
    recent: Cache<MessageId, ()>,
}

impl Default for Aborts {
    fn default() -> Self {
        Self {
            running: Arc::default(),
            recent: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }
}

impl Aborts {
    /// Register a running generation; the token fires when an abort for it arrives.
    pub fn register(&self, message: &MessageId) -> CancellationToken {
        let token = CancellationToken::new();
        if self.recent.contains_key(message) {
            token.cancel();
        }
        self.lock().insert(message.clone(), token.clone());
        token
    }

    pub fn finish(&self, message: &MessageId) {
        self.lock().remove(message);
    }

    fn abort(&self, message: MessageId) {
        if let Some(token) = self.lock().get(&message) {
            token.cancel();
        }
        self.recent.insert(message, ());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, CancellationToken>> {
        // No code panics while holding the lock; recover from poisoning regardless.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listen for abort events until shutdown.
    pub async fn listen(
        self,
        nats: async_nats::Client,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut sub = nats.subscribe(subjects::ALL_ABORTS).await?;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = sub.next() => match m { Some(m) => m, None => return Ok(()) },
            };
            match serde_json::from_slice::<Envelope<SessionEvent>>(&msg.payload) {
                Ok(Envelope {
                    payload: SessionEvent::AbortRequested { message_id, .. }, ..
                }) => self.abort(message_id),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable abort event"),
            }
        }
    }
}
