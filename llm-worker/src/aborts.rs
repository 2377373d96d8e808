//! Abort requests: a core NATS subscription to `session.abort_requested` events cancels the
//! generation of the named message if this worker is running it. Aborts seen for messages not
//! (yet) running here are remembered briefly, in case the prompt arrives after its abort.
//!
//! A reply taken over by a later attempt (`message.retried`: this worker was presumed dead) is
//! cancelled the same way: its report would be refused anyway, and the provider need not be
//! paid for the rest of it.

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
    /// Running generations: their attempt, and the token that stops them.
    running: Arc<Mutex<HashMap<MessageId, (u32, CancellationToken)>>>,
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
    /// Register a running generation (`attempt` of `message`); the token fires when an abort
    /// for it arrives, or a later attempt takes it over.
    pub fn register(&self, message: &MessageId, attempt: u32) -> CancellationToken {
        let token = CancellationToken::new();
        if self.recent.contains_key(message) {
            token.cancel();
        }
        self.lock().insert(message.clone(), (attempt, token.clone()));
        token
    }

    pub fn finish(&self, message: &MessageId, attempt: u32) {
        let mut running = self.lock();
        if running.get(message).is_some_and(|(a, _)| *a == attempt) {
            running.remove(message);
        }
    }

    fn abort(&self, message: MessageId) {
        if let Some((_, token)) = self.lock().get(&message) {
            token.cancel();
        }
        self.recent.insert(message, ());
    }

    /// `attempt` of `message` started elsewhere: stop any earlier attempt running here.
    fn superseded(&self, message: &MessageId, attempt: u32) {
        if let Some((running, token)) = self.lock().get(message)
            && *running < attempt
        {
            tracing::info!(%message, attempt, "a later attempt took the reply over; stopping");
            token.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, (u32, CancellationToken)>> {
        // No code panics while holding the lock; recover from poisoning regardless.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listen for abort and retry events until shutdown.
    pub async fn listen(
        self,
        nats: async_nats::Client,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let aborts = nats.subscribe(subjects::ALL_ABORTS).await?;
        let retries = nats.subscribe(subjects::ALL_RETRIES).await?;
        let mut sub = futures::stream::select(aborts, retries);
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = sub.next() => match m { Some(m) => m, None => return Ok(()) },
            };
            match serde_json::from_slice::<Envelope<SessionEvent>>(&msg.payload) {
                Ok(Envelope {
                    payload: SessionEvent::AbortRequested { message_id, .. }, ..
                }) => self.abort(message_id),
                Ok(Envelope {
                    payload: SessionEvent::MessageRetried { message_id, attempt, .. },
                    ..
                }) => self.superseded(&message_id, attempt),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable abort or retry event"),
            }
        }
    }
}
