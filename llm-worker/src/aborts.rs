//! Abort requests: a core NATS subscription to `session.abort_requested` events cancels the
//! generation of the named message if this worker is running it. Aborts seen for messages not
//! (yet) running here are remembered briefly, in case the prompt arrives after its abort.
//!
//! A prompt committed after this worker began hearing aborts (and after its connection to NATS
//! was last made) has every abort of it heard here: an abort is published after its prompt was
//! committed. Only for an older prompt must the worker look for an abort in the event store.
//!
//! A reply taken over by a later attempt (`message.retried`: this worker was presumed dead) is
//! cancelled the same way: its report would be refused anyway, and the provider need not be
//! paid for the rest of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Statistics;

use futures::StreamExt;
use moka::sync::Cache;
use schemas::envelope::Envelope;
use schemas::events::SessionEvent;
use schemas::ids::MessageId;
use schemas::subjects;
use tokio_util::sync::CancellationToken;

/// How much later than this worker began hearing aborts a prompt must have been committed to
/// be sure its aborts are heard: the command service's clock may be ahead of this one.
const CLOCK_MARGIN_MS: i64 = 5_000;
/// Aborts of messages not running here, remembered for so long and at most so many.
const RECENT_TTL: Duration = Duration::from_secs(600);
const RECENT_CAPACITY: u64 = 10_000;

#[derive(Clone)]
pub struct Aborts {
    /// Running generations: their attempt, and the token that stops them.
    running: Arc<Mutex<HashMap<MessageId, (u32, CancellationToken)>>>,
    recent: Cache<MessageId, ()>,
    /// When `recent` last dropped an abort for room (ms since the epoch; 0 never).
    crowded_ms: Arc<AtomicI64>,
    /// Since when every abort is heard here; none before the subscriptions are made.
    hearing: Arc<Mutex<Option<Hearing>>>,
}

/// When the abort subscriptions were last known to be complete, and the connection then.
struct Hearing {
    since_ms: i64,
    /// The client's count of connections made then: a reconnection since may have lost aborts.
    connects: u64,
    statistics: Arc<Statistics>,
}

impl Hearing {
    fn now(statistics: Arc<Statistics>) -> Self {
        let connects = statistics.connects.load(Ordering::Relaxed);
        Self { since_ms: schemas::now_ms(), connects, statistics }
    }
}

impl Default for Aborts {
    fn default() -> Self {
        let crowded_ms = Arc::new(AtomicI64::new(0));
        let crowded = crowded_ms.clone();
        Self {
            running: Arc::default(),
            // Least recently used out first, and every abort let in (the default admission
            // could turn a new one away when full).
            recent: Cache::builder()
                .max_capacity(RECENT_CAPACITY)
                .time_to_live(RECENT_TTL)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .eviction_listener(move |_, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        crowded.store(schemas::now_ms(), Ordering::Release);
                    }
                })
                .build(),
            crowded_ms,
            hearing: Arc::default(),
        }
    }
}

impl Aborts {
    /// Register a running generation (`attempt` of `message`); the token fires when an abort
    /// for it arrives, or a later attempt takes it over.
    pub fn register(&self, message: &MessageId, attempt: u32) -> CancellationToken {
        let token = CancellationToken::new();
        // Running first, then the recent aborts (`abort` does the reverse): an abort arriving
        // meanwhile is seen by one of the two.
        self.lock().insert(message.clone(), (attempt, token.clone()));
        if self.recent.contains_key(message) {
            token.cancel();
        }
        token
    }

    /// Whether every abort of a prompt committed at `committed_ms` reaches this worker live and
    /// is still remembered: heard since before the prompt was committed, and none dropped
    /// since, for room or for age.
    pub fn hears_every_abort_of(&self, committed_ms: i64) -> bool {
        let remembered = self.crowded_ms.load(Ordering::Acquire) < committed_ms - CLOCK_MARGIN_MS
            && schemas::now_ms() - committed_ms < RECENT_TTL.as_millis() as i64 / 2;
        let hearing = self.hearing.lock().unwrap_or_else(|p| p.into_inner());
        remembered
            && hearing.as_ref().is_some_and(|h| {
                h.connects == h.statistics.connects.load(Ordering::Relaxed)
                    && committed_ms > h.since_ms + CLOCK_MARGIN_MS
            })
    }

    fn hear_from_now(&self, statistics: Arc<Statistics>) {
        *self.hearing.lock().unwrap_or_else(|p| p.into_inner()) = Some(Hearing::now(statistics));
    }

    pub fn finish(&self, message: &MessageId, attempt: u32) {
        let mut running = self.lock();
        if running.get(message).is_some_and(|(a, _)| *a == attempt) {
            running.remove(message);
        }
    }

    fn abort(&self, message: MessageId) {
        self.recent.insert(message.clone(), ());
        if let Some((_, token)) = self.lock().get(&message) {
            token.cancel();
        }
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
        mut losses: platform::bus::DeliveryLosses,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let aborts = nats.subscribe(subjects::ALL_ABORTS).await?;
        let retries = nats.subscribe(subjects::ALL_RETRIES).await?;
        let mut sub = futures::stream::select(aborts, retries);
        // Once the server has the subscriptions, every abort published from then on is heard.
        losses.mark_unchanged();
        nats.flush().await?;
        self.hear_from_now(nats.statistics());
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = losses.changed() => {
                    if changed.is_err() {
                        return Ok(()); // the client is gone: the worker is stopping
                    }
                    // A reconnection (subscriptions made again) or a slow consumer: aborts
                    // published before now may not have been heard.
                    self.hear_from_now(nats.statistics());
                    continue;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hearing_for_a_minute(aborts: &Aborts) -> Arc<Statistics> {
        let statistics = Arc::new(Statistics::default());
        let since_ms = schemas::now_ms() - 60_000;
        let hearing = Hearing { since_ms, connects: 0, statistics: statistics.clone() };
        *aborts.hearing.lock().unwrap() = Some(hearing);
        statistics
    }

    #[test]
    fn an_abort_heard_before_its_reply_runs_cancels_it_when_it_does() {
        let aborts = Aborts::default();
        let message = MessageId::new();
        aborts.abort(message.clone());
        assert!(aborts.register(&message, 1).is_cancelled());
        assert!(!aborts.register(&MessageId::new(), 1).is_cancelled());
    }

    #[test]
    fn a_prompt_is_heard_only_if_committed_after_hearing_began_and_nothing_was_lost_since() {
        let aborts = Aborts::default();
        let committed = schemas::now_ms() - 1_000;
        assert!(!aborts.hears_every_abort_of(committed), "not hearing yet");
        let statistics = hearing_for_a_minute(&aborts);
        assert!(aborts.hears_every_abort_of(committed));
        assert!(!aborts.hears_every_abort_of(schemas::now_ms() - 58_000), "within the margin");
        assert!(!aborts.hears_every_abort_of(schemas::now_ms() - 400_000), "too old to remember");

        // A reconnection since may have lost aborts.
        statistics.connects.fetch_add(1, Ordering::Relaxed);
        assert!(!aborts.hears_every_abort_of(committed));
    }

    #[test]
    fn a_prompt_is_not_heard_once_remembered_aborts_were_dropped_for_room() {
        let aborts = Aborts::default();
        hearing_for_a_minute(&aborts);
        let committed = schemas::now_ms() - 1_000;
        assert!(aborts.hears_every_abort_of(committed));
        for _ in 0..RECENT_CAPACITY + 10 {
            aborts.abort(MessageId::new());
        }
        aborts.recent.run_pending_tasks();
        assert!(!aborts.hears_every_abort_of(committed));
    }
}
