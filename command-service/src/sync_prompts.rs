//! Synchronous prompts (OpenCode's `POST /session/{id}/message`): the request waits for the reply
//! to complete, and then (briefly) for the read models to show it: a client that lists the
//! session's messages right after has the reply, and one that follows `/event` has been sent its
//! text before the answer comes (`opencode run --attach` exits on the answer). The wait holds no
//! pooled connection: it listens on the bus for the session's completion (subscribed before the
//! prompt exists, so it cannot be missed), looks in the event store only every few seconds in
//! case the bus lost it, and sleeps on the projector's notifications. Each user may hold a few
//! such waits per instance; more is 429, never a queue in front of other tenants.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use platform::notifications::{Signals, wait_for_projection};
use platform::problem::Problem;
use schemas::events::{AssistantCompletion, SessionEvent};
use schemas::ids::{MessageId, SessionId, UserId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Synchronous prompts one user may have waiting on one instance.
const WAITS_PER_USER: usize = 8;
/// How often a waiting prompt looks in the event store (the bus's delivery is at most once).
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Longest a completed reply's answer waits for the read models (then it is answered anyway).
const PROJECTION_WAIT: Duration = Duration::from_secs(5);

pub struct SyncPrompts {
    nats: async_nats::Client,
    db: deadpool_postgres::Pool,
    /// The projector's progress per aggregate.
    progress: Arc<Signals>,
    /// Longest a request waits for its reply.
    patience: Duration,
    slots: moka::future::Cache<UserId, Arc<Semaphore>>,
}

/// A waiter's interest in its session's completions, taken before the prompt is accepted.
pub struct Waiter {
    completions: async_nats::Subscriber,
    session: SessionId,
    _slot: OwnedSemaphorePermit,
}

impl SyncPrompts {
    pub fn new(
        nats: async_nats::Client,
        db: deadpool_postgres::Pool,
        progress: Arc<Signals>,
        patience: Duration,
    ) -> Self {
        let slots = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_idle(Duration::from_secs(600))
            .build();
        Self { nats, db, progress, patience, slots }
    }

    /// Start listening for `session`'s completions (429 if the user waits on too many already).
    pub async fn listen(&self, user: &UserId, session: &SessionId) -> Result<Waiter, Problem> {
        let gate = self
            .slots
            .get_with_by_ref(user, async { Arc::new(Semaphore::new(WAITS_PER_USER)) })
            .await;
        let slot = gate.try_acquire_owned().map_err(|_| {
            Problem::too_many_requests(
                "synchronous-prompts",
                format!("at most {WAITS_PER_USER} prompts waiting for their replies at once"),
                1,
            )
        })?;
        let unavailable = |e: &dyn std::fmt::Display| Problem::unavailable(format!("the bus: {e}"));
        let completions = self
            .nats
            .subscribe(schemas::subjects::session_completions(session))
            .await
            .map_err(|e| unavailable(&e))?;
        // The server knows of the interest before the prompt can be completed.
        self.nats.flush().await.map_err(|e| unavailable(&e))?;
        Ok(Waiter { completions, session: session.clone(), _slot: slot })
    }

    /// Wait for `reply` to complete, then for the read models to show it (at most a few
    /// seconds: the reply is answered either way); 504 once `patience` has passed (the reply
    /// goes on).
    pub async fn wait(
        &self,
        waiter: Waiter,
        reply: &MessageId,
    ) -> Result<AssistantCompletion, Problem> {
        let session = waiter.session.clone();
        let (done, sequence) = self.completion(waiter, reply).await?;
        if let Some(sequence) = sequence {
            self.until_shown(session.as_str(), sequence).await?;
        }
        Ok(done)
    }

    /// Wait (at most `PROJECTION_WAIT`, holding no connection) until the read models show
    /// `aggregate_id` up to `sequence`: OpenCode's clients read right after they write.
    pub async fn until_shown(&self, aggregate_id: &str, sequence: u64) -> Result<(), Problem> {
        let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
        let shown =
            wait_for_projection(&self.db, &self.progress, aggregate_id, sequence, PROJECTION_WAIT);
        if let Err(e) = shown.await? {
            tracing::debug!(?e, aggregate_id, "answering before the read models show the change");
        }
        Ok(())
    }

    /// The reply's completion and its sequence in the session, once it is recorded.
    async fn completion(
        &self,
        mut waiter: Waiter,
        reply: &MessageId,
    ) -> Result<(AssistantCompletion, Option<u64>), Problem> {
        let deadline = tokio::time::sleep(self.patience);
        tokio::pin!(deadline);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + CHECK_EVERY, CHECK_EVERY);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    return Err(Problem::timed_out(
                        "the reply takes longer than this request may wait; it goes on: follow the session's events",
                    ));
                }
                msg = waiter.completions.next() => {
                    let Some(msg) = msg else { continue };
                    if let Some(done) = completion(&msg.payload).filter(|(c, _)| &c.id == reply) {
                        return Ok(done);
                    }
                }
                _ = check.tick() => {
                    if let Some(done) = self.stored(&waiter.session, reply).await? {
                        return Ok(done);
                    }
                }
            }
        }
    }

    /// The reply's completion, if the event store has it.
    async fn stored(
        &self,
        session: &SessionId,
        reply: &MessageId,
    ) -> Result<Option<(AssistantCompletion, Option<u64>)>, Problem> {
        let db = self.db.get().await?;
        let rows = db
            .query(
                "SELECT payload::jsonb, sequence FROM events WHERE aggregate_type = 'session' \
                 AND aggregate_id = $1 AND event_type = 'message.completed' \
                 AND payload->'properties'->'message'->>'id' = $2",
                &[&session.as_str(), &reply.as_str()],
            )
            .await?;
        let found = rows.iter().find_map(|r| match serde_json::from_value(r.get(0)) {
            Ok(SessionEvent::MessageCompleted { message, .. }) => {
                Some((message, u64::try_from(r.get::<_, i64>(1)).ok()))
            }
            _ => None,
        });
        Ok(found)
    }
}

/// The completion a bus message carries, if it is one, with its sequence in the session.
fn completion(payload: &[u8]) -> Option<(AssistantCompletion, Option<u64>)> {
    #[derive(serde::Deserialize)]
    struct Wire {
        payload: SessionEvent,
        sequence: Option<u64>,
    }
    let wire = serde_json::from_slice::<Wire>(payload).ok()?;
    match wire.payload {
        SessionEvent::MessageCompleted { message, .. } => Some((message, wire.sequence)),
        _ => None,
    }
}
