//! Synchronous prompts (OpenCode's `POST /session/{id}/message`): the request waits for the reply
//! to complete, and then (briefly) for the read models to show it: a client that lists the
//! session's messages right after has the reply, and one that follows `/event` has been sent its
//! text before the answer comes (`opencode run --attach` exits on the answer, printing only what
//! its stream brought): every OpenCode stream of the asker's open on the reply's workspace
//! (`schemas::live::StreamReceipt`, query-service/src/receipts.rs) has said it was sent the reply.
//! Streams that open later say so as they open; those already open answer the roll the prompt
//! calls before it is accepted. The wait holds no pooled connection: it listens on the bus for
//! the session's completion and receipts (subscribed before the prompt exists, so they cannot be
//! missed), looks in the event store only every few seconds in case the bus lost the
//! completion, and sleeps on the projector's notifications. Each user may hold a few such waits
//! per instance; more is 429, never a queue in front of other tenants.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use platform::notifications::{Signals, wait_for_projection};
use platform::problem::Problem;
use schemas::events::{AssistantCompletion, SessionEvent};
use schemas::ids::{MessageId, SessionId, UserId, WorkspaceId};
use schemas::live::{StreamReceipt, StreamSaid};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Synchronous prompts one user may have waiting on one instance.
const WAITS_PER_USER: usize = 8;
/// How often a waiting prompt looks in the event store (the bus's delivery is at most once).
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Longest a completed reply's answer waits for the read models and the asker's streams (then
/// it is answered anyway).
const PROJECTION_WAIT: Duration = Duration::from_secs(5);
/// Streams of the asker's one answer waits for at most (a user holds a few).
const STREAMS_AWAITED: usize = 64;
/// How long after the roll call an answer still listens for streams answering it: a reply can
/// complete before a stream already open has answered (a busy query instance, a provider that
/// answers at once), and its client would then be answered before its stream was sent the
/// reply. So no answer comes sooner than this after the roll call; a stream answering later is
/// not waited for.
const ROLL_ANSWERED_WITHIN: Duration = Duration::from_millis(250);

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
    /// The asker's streams that have been sent a reply of the session.
    receipts: async_nats::Subscriber,
    /// The asker's streams saying they are open or have ended.
    streams: async_nats::Subscriber,
    session: SessionId,
    user: UserId,
    /// When the roll was called.
    rolled: tokio::time::Instant,
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
        let subscribe = |subject| async { self.nats.subscribe(subject).await };
        let completions = subscribe(schemas::subjects::session_completions(session));
        let completions = completions.await.map_err(|e| unavailable(&e))?;
        let receipts = subscribe(schemas::subjects::stream_receipts(session));
        let receipts = receipts.await.map_err(|e| unavailable(&e))?;
        let streams = subscribe(schemas::subjects::user_streams(user));
        let streams = streams.await.map_err(|e| unavailable(&e))?;
        // The server takes one connection's commands in order, so it knows of the interest
        // before the roll call: a stream opening after this is heard as it opens, one already
        // open answers the roll. Flushed, both are known before the prompt can be completed.
        let call = self.nats.publish(schemas::subjects::user_streams_roll_call(user), "".into());
        call.await.map_err(|e| unavailable(&e))?;
        self.nats.flush().await.map_err(|e| unavailable(&e))?;
        let (session, user) = (session.clone(), user.clone());
        let rolled = tokio::time::Instant::now();
        Ok(Waiter { completions, receipts, streams, session, user, rolled, _slot: slot })
    }

    /// Wait for `reply` to complete, then for the read models to show it and the asker's
    /// OpenCode streams to have been sent it (at most a few seconds: the reply is answered
    /// either way); 504 once `patience` has passed (the reply goes on).
    pub async fn wait(
        &self,
        mut waiter: Waiter,
        reply: &MessageId,
    ) -> Result<AssistantCompletion, Problem> {
        let (done, sequence) = self.completion(&mut waiter, reply).await?;
        let session = waiter.session.clone();
        let shown = async {
            match sequence {
                Some(sequence) => self.until_shown(session.as_str(), sequence).await,
                None => Ok(()),
            }
        };
        let sent = until_sent(&mut waiter, done.workspace_id.as_ref(), reply);
        let (shown, ()) = tokio::join!(shown, sent);
        shown?;
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
        waiter: &mut Waiter,
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

/// Wait until every OpenCode stream of the asker's open on `workspace` has said it was sent
/// `reply` (at most `PROJECTION_WAIT`: a stream's instance may have died meanwhile).
async fn until_sent(waiter: &mut Waiter, workspace: Option<&WorkspaceId>, reply: &MessageId) {
    let Some(workspace) = workspace else { return };
    let mut streams = Streams::default();
    let mut said = futures::stream::select(&mut waiter.streams, &mut waiter.receipts);
    let deadline = tokio::time::sleep(PROJECTION_WAIT);
    tokio::pin!(deadline);
    let roll_answered = tokio::time::sleep_until(waiter.rolled + ROLL_ANSWERED_WITHIN);
    tokio::pin!(roll_answered);
    loop {
        // What has arrived first; then, if some stream is still owed the reply, wait for more.
        let msg = match said.next().now_or_never() {
            Some(msg) => msg,
            // Streams may still be answering the roll.
            None if !roll_answered.is_elapsed() => tokio::select! {
                msg = said.next() => msg,
                _ = &mut roll_answered => continue,
            },
            None if streams.owed() == 0 => return,
            None => tokio::select! {
                msg = said.next() => msg,
                _ = &mut deadline => {
                    tracing::debug!(%reply, "answering before every stream was sent the reply");
                    return;
                }
            },
        };
        let Some(msg) = msg else { return };
        streams.hear(&msg.payload, &waiter.user, workspace, reply);
    }
}

/// What the asker's streams have said, as far as one reply is concerned.
#[derive(Default)]
struct Streams {
    /// Each stream heard from (at most `STREAMS_AWAITED`): whether it is open on the reply's
    /// workspace, and whether it has been sent the reply.
    heard: HashMap<String, (bool, bool)>,
}

impl Streams {
    fn hear(&mut self, payload: &[u8], user: &UserId, workspace: &WorkspaceId, reply: &MessageId) {
        let Ok(receipt) = serde_json::from_slice::<StreamReceipt>(payload) else { return };
        let new = !self.heard.contains_key(&receipt.stream);
        if &receipt.user != user || (new && self.heard.len() >= STREAMS_AWAITED) {
            return;
        }
        let (open, sent) = self.heard.entry(receipt.stream).or_default();
        match receipt.said {
            StreamSaid::Open { workspace: on } => *open |= &on == workspace,
            StreamSaid::Sent { reply: r } => *sent |= &r == reply,
            StreamSaid::Closed => *open = false,
        }
    }

    /// How many streams open on the workspace have not yet been sent the reply.
    fn owed(&self) -> usize {
        self.heard.values().filter(|(open, sent)| *open && !*sent).count()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn said(stream: &str, user: &UserId, said: StreamSaid) -> Vec<u8> {
        let receipt = StreamReceipt { stream: stream.into(), user: user.clone(), said };
        serde_json::to_vec(&receipt).unwrap()
    }

    #[test]
    fn only_the_askers_streams_open_on_the_replys_workspace_are_owed_it() {
        let (alice, bob) = (UserId::new(), UserId::new());
        let (ws, elsewhere) = (WorkspaceId::new(), WorkspaceId::new());
        let reply = MessageId::new();
        let mut streams = Streams::default();
        let hear = |streams: &mut Streams, payload: Vec<u8>| {
            streams.hear(&payload, &alice, &ws, &reply);
        };
        hear(&mut streams, said("a", &alice, StreamSaid::Open { workspace: ws.clone() }));
        hear(&mut streams, said("b", &alice, StreamSaid::Open { workspace: elsewhere }));
        hear(&mut streams, said("c", &bob, StreamSaid::Open { workspace: ws.clone() }));
        hear(&mut streams, said("d", &alice, StreamSaid::Open { workspace: ws.clone() }));
        assert_eq!(streams.owed(), 2, "a and d");
        hear(&mut streams, said("a", &alice, StreamSaid::Sent { reply: MessageId::new() }));
        assert_eq!(streams.owed(), 2, "another reply sent to a");
        hear(&mut streams, said("a", &alice, StreamSaid::Sent { reply: reply.clone() }));
        hear(&mut streams, said("d", &alice, StreamSaid::Closed));
        assert_eq!(streams.owed(), 0);
        // A stream answering the roll after it was sent the reply is not owed it again.
        hear(&mut streams, said("a", &alice, StreamSaid::Open { workspace: ws.clone() }));
        assert_eq!(streams.owed(), 0);
    }
}
