//! The outbox relay: publishes committed events to JetStream, each exactly once, in order per
//! aggregate, and deletes their outbox rows only after JetStream acknowledged them.
//!
//! - Exactly once: the `Nats-Msg-Id` is the event id (`<aggregateID>:<sequence>`), so a batch
//!   re-published after a crash between publish and delete is dropped by JetStream's dedup window.
//! - In order: rows are taken in `position` order and sent in that order on one connection, which
//!   JetStream stores in arrival order; the acks are awaited after the whole batch is sent
//!   (pipelined: one round trip per batch, not per event). An aggregate's next event cannot be
//!   inserted before its previous one committed (the sequence primary key), so its positions are
//!   increasing. If any ack fails the batch stays in the outbox and is sent again; what JetStream
//!   already stored is dropped as a duplicate.
//! - Several instances: one relays at a time, the one whose connection holds a session advisory
//!   lock; the others try the lock at each wake-up and take over when the holder's connection
//!   ends (the instance died, or froze: PostgreSQL closes a connection idle for `LEADER_IDLE`,
//!   which the active relay, polling every `POLL`, never is). Holding the lock across batches
//!   leaves a batch two statements (read, delete) instead of a transaction of five.
//! - Handed its own instance's commits ([`Wake::committed_events`]): when this instance relays,
//!   its relay is idle, and no earlier event of the committed aggregate was still in the outbox
//!   at commit (the commit's statement says), the relay publishes the events as the command
//!   committed them, without
//!   reading them back: nothing of their aggregate can still be waiting to go before them, and
//!   one relay on one connection keeps every publish in order. Anything else (behind an earlier
//!   event, the relay busy, the hand-off full, a hand-off older than [`HANDOFF_FRESH`], the lock
//!   lost) is read from the outbox as before: under load that read takes everything committed
//!   meanwhile in one batch, which costs fewer statements and acks than hand-offs one by one.
//!   A row read both ways is sent twice, and JetStream drops the copy.
//! - Woken at commit ([`Wake`]): when the active relay is this instance's own, directly; else the
//!   committing instance publishes `oc.sys.outbox` on core NATS, which every relay hears; a slow
//!   poll covers lost wake-ups. (Not a PostgreSQL NOTIFY: a transaction that notifies takes one
//!   global lock at commit, held through its flush, so every commit of every instance would wait
//!   for the one before it.)
//! - What it reads from the outbox (other instances' commits among them) goes on to this
//!   instance's follower once on the bus (`crate::follow`): while this instance relays, its
//!   follower does not hear the bus, which would only echo what the relay published.
//! - The relay's statements commit without waiting for the disk (a lost delete only sends the
//!   batch again, which the dedup window drops), so the next batch does not queue behind a flush.
//! - An event the bus can never take (over its payload limit) is parked in `parked_events` and
//!   skipped, instead of stalling the outbox for every tenant.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use platform::stored_event::StoredEvent;
use schemas::envelope::metadata;
use schemas::subjects;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Arbitrary but fixed: the advisory lock key that elects the active relay.
const RELAY_LOCK_KEY: i64 = 0x006f_6372_656c_6179; // "ocrelay" in ASCII
const BATCH: i64 = 256;
const POLL: Duration = Duration::from_millis(500);
/// How long PostgreSQL keeps a relay connection that sends nothing (`idle_session_timeout`):
/// the longest a frozen relay keeps the outbox from the others.
const LEADER_IDLE: Duration = Duration::from_secs(5);
/// Bytes of events handed to the relay and not yet published, at most: beyond it, commits are
/// read back from the outbox (a burst of large prompts cannot grow the instance's memory).
const HANDOFF_BYTES: usize = 8 * 1024 * 1024;
/// Batches of relayed events waiting for this instance's follower, at most: a few batches'
/// memory, as the relay's own (beyond, a batch is not followed: following is best effort, and
/// the commits' checks catch what it misses). The follower only applies events to states in
/// memory, far faster than batches come.
const FOLLOWER_BATCHES: usize = 4;
/// A hand-off older than this is not published from memory but read back from the outbox: long
/// after its commit, JetStream's duplicate window is all that would keep a copy of it sent
/// meanwhile from going in twice, and the outbox read needs none.
const HANDOFF_FRESH: Duration = Duration::from_secs(1);

/// Events committed by this instance, handed to its relay.
struct Handoff {
    events: Vec<(i64, StoredEvent)>,
    at: Instant,
    /// Its share of [`HANDOFF_BYTES`], given back when it is published or dropped.
    _room: tokio::sync::OwnedSemaphorePermit,
}

/// Tells the relay, wherever it runs, that events were committed. Never makes a command wait.
/// When this instance holds the relay's lock its relay is woken in process (a NATS round trip
/// less on every prompt's way to the worker, and no message for relays that could not take the
/// outbox anyway); otherwise one task publishes the wake-ups, and those that come while it is
/// sending one (or while NATS is away) are folded into its next.
#[derive(Clone)]
pub struct Wake {
    to_bus: Arc<Notify>,
    local: Arc<LocalRelay>,
}

/// This instance's relay, as the commands of the instance see it.
struct LocalRelay {
    /// Holds the relay's lock (set and cleared by [`run`] only).
    active: AtomicBool,
    /// Sending or reading right now (set and cleared by [`run`] only): commits meanwhile are
    /// left to its next outbox read, which takes them in one batch.
    busy: AtomicBool,
    wake: Notify,
    handoffs: mpsc::UnboundedSender<Handoff>,
    room: Arc<Semaphore>,
    /// [`Self::active`] for the follower, which hears the bus only while it is false.
    relaying: watch::Sender<bool>,
    /// The events read from the outbox and published, for the follower.
    relayed: mpsc::Sender<Vec<StoredEvent>>,
}

/// What this instance's relay tells its follower (`crate::follow`): whether it relays, and
/// what it published from the outbox meanwhile.
pub struct Relayed {
    pub relaying: watch::Receiver<bool>,
    pub events: mpsc::Receiver<Vec<StoredEvent>>,
}

/// What this instance's commands hand to its relay: given to [`run`], so an instance has one
/// relay at most.
pub struct Handoffs(mpsc::UnboundedReceiver<Handoff>);

impl Wake {
    /// The wake-ups, the hand-offs for this instance's relay (dropped if it runs none: commits
    /// are then never handed over, as no relay here holds the lock), and what the relay tells
    /// the follower.
    pub fn start(
        nats: async_nats::Client,
        shutdown: CancellationToken,
    ) -> (Self, Handoffs, Relayed) {
        let to_bus = Arc::new(Notify::new());
        let wakes = to_bus.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = wakes.notified() => {}
                }
                let _ = nats.publish(subjects::OUTBOX_WAKE, bytes::Bytes::new()).await;
            }
        });
        let (handoffs, received) = mpsc::unbounded_channel();
        let (relaying, relaying_seen) = watch::channel(false);
        let (relayed, followed) = mpsc::channel(FOLLOWER_BATCHES);
        let local = Arc::new(LocalRelay {
            active: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            wake: Notify::new(),
            handoffs,
            room: Arc::new(Semaphore::new(HANDOFF_BYTES)),
            relaying,
            relayed,
        });
        let relayed = Relayed { relaying: relaying_seen, events: followed };
        (Self { to_bus, local }, Handoffs(received), relayed)
    }

    /// After a commit of `events` (with their outbox positions; `bytes` as stored),
    /// `behind_earlier` if an earlier event of their aggregate was still in the outbox: handed
    /// to this instance's relay when it may publish them at once, else as [`Wake::committed`].
    pub fn committed_events(
        &self,
        events: Vec<(i64, StoredEvent)>,
        bytes: usize,
        behind_earlier: bool,
    ) {
        let idle =
            self.local.active.load(Ordering::Acquire) && !self.local.busy.load(Ordering::Acquire);
        if behind_earlier || !idle {
            return self.committed();
        }
        let room = u32::try_from(bytes)
            .ok()
            .and_then(|bytes| self.local.room.clone().try_acquire_many_owned(bytes.max(1)).ok());
        let Some(room) = room else { return self.committed() };
        let handoff = Handoff { events, at: Instant::now(), _room: room };
        if self.local.handoffs.send(handoff).is_err() {
            self.committed();
        }
    }

    /// After a commit. Best effort: if it is lost, the relay's poll finds the events.
    pub fn committed(&self) {
        if self.local.active.load(Ordering::Acquire) {
            self.local.wake.notify_one();
        } else {
            self.to_bus.notify_one();
        }
    }
}

/// Whether this instance's relay holds the lock, for [`Wake`]; cleared when the relay stops,
/// however it stops, so commits never keep waking a relay that is gone.
struct ActiveFlag(Arc<LocalRelay>);

impl ActiveFlag {
    fn set(&self, active: bool) {
        self.0.active.store(active, Ordering::Release);
        self.0.relaying.send_if_modified(|was| std::mem::replace(was, active) != active);
        metrics::gauge!("outbox_relay_active").set(if active { 1.0 } else { 0.0 });
    }
}

impl Drop for ActiveFlag {
    fn drop(&mut self) {
        self.set(false);
    }
}

pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    wake: Wake,
    Handoffs(mut handoffs): Handoffs,
    shutdown: CancellationToken,
) {
    let local = wake.local;
    let flag = ActiveFlag(local.clone());
    let mut wakes: Option<async_nats::Subscriber> = None;
    let mut relay: Option<Relay> = None;
    let mut handed: Vec<Handoff> = Vec::new();
    // Read the outbox at start, when woken, and at least every `POLL` (a lost wake-up).
    let mut read_outbox = true;
    let mut poll_at = tokio::time::Instant::now() + POLL;
    loop {
        if wakes.is_none() {
            wakes = js.client().subscribe(subjects::OUTBOX_WAKE).await.ok();
        }
        // Wake-ups that came while the last batches were sent are covered by the next batch.
        if let Some(w) = wakes.as_mut() {
            while let Some(Some(_)) = w.next().now_or_never() {}
        }
        local.busy.store(true, Ordering::Release);
        // Everything handed over so far goes first: a row the outbox read finds while its
        // hand-off still waits here would be sent twice.
        take_handed(&mut handoffs, &mut handed);
        let mut result = Ok(());
        if !handed.is_empty() {
            match publish_handed(&mut relay, &js, std::mem::take(&mut handed)).await {
                Ok(all) => read_outbox |= !all,
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() && (read_outbox || tokio::time::Instant::now() >= poll_at) {
            read_outbox = false;
            poll_at = tokio::time::Instant::now() + POLL;
            result = drain(&pool, &js, &mut relay, &flag).await;
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "outbox relay failed; will retry");
            // A database error may have ended the connection: close it (giving the lock up, if
            // it was held) and start again. A bus error keeps it: the relay stays the relay and
            // sends the batch again once NATS is back.
            if e.downcast_ref::<sqlx::Error>().is_some() {
                relay = None;
                flag.set(false);
            }
            // The outbox is read again at the next wake-up or poll, not at once: the database
            // or the bus is away.
            poll_at = tokio::time::Instant::now() + POLL;
            read_outbox = false;
        }
        local.busy.store(false, Ordering::Release);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(first) = handoffs.recv() => handed.push(first),
            _ = local.wake.notified() => read_outbox = true,
            woke = wait(&mut wakes, poll_at) => {
                read_outbox = true;
                if !woke { wakes = None; }
            }
        }
    }
}

/// Add what is waiting in `handoffs` to `handed`, up to a batch.
fn take_handed(handoffs: &mut mpsc::UnboundedReceiver<Handoff>, handed: &mut Vec<Handoff>) {
    while handed.len() < BATCH as usize {
        match handoffs.try_recv() {
            Ok(more) => handed.push(more),
            Err(_) => return,
        }
    }
}

/// Publish what this instance's commands handed over, if this instance still relays. True if
/// all of it went from memory; what did not (too old, or the lock lost since) is left to the
/// outbox, for whichever relay holds the lock.
async fn publish_handed(
    relay: &mut Option<Relay>,
    js: &jetstream::Context,
    handed: Vec<Handoff>,
) -> anyhow::Result<bool> {
    let Some(relay) = relay.as_mut().filter(|r| r.active) else { return Ok(false) };
    let (fresh, stale): (Vec<_>, Vec<_>) =
        handed.into_iter().partition(|h| h.at.elapsed() < HANDOFF_FRESH);
    let events: Vec<_> = fresh.into_iter().flat_map(|h| h.events).collect();
    let handed = events.len() as u64;
    publish(&mut relay.conn, js, &events).await?;
    metrics::counter!("outbox_handed_off_total").increment(handed);
    Ok(stale.is_empty())
}

/// This instance's relay connection: its own, never the pool's (a session lock must not go back
/// to the pool with it), and whether it holds the relay's lock.
struct Relay {
    conn: PgConnection,
    active: bool,
}

/// Publish everything in the outbox, if this instance relays (or can take over).
async fn drain(
    pool: &PgPool,
    js: &jetstream::Context,
    relay: &mut Option<Relay>,
    flag: &ActiveFlag,
) -> anyhow::Result<()> {
    let relay = match relay {
        Some(relay) => relay,
        None => {
            let mut conn = pool.acquire().await?.detach();
            let idle = format!("{}ms", LEADER_IDLE.as_millis());
            sqlx::query(
                "SELECT set_config('synchronous_commit', 'off', false), \
                        set_config('idle_session_timeout', $1, false)",
            )
            .bind(idle)
            .execute(&mut conn)
            .await?;
            relay.insert(Relay { conn, active: false })
        }
    };
    if !relay.active {
        relay.active = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut relay.conn)
            .await?;
    }
    // Which instance relays: for this instance's commits, and for operators (exactly one
    // reports 1 while the outbox moves).
    flag.set(relay.active);
    if relay.active {
        while publish_batch(&mut relay.conn, js, &flag.0).await? == BATCH as usize {}
    }
    Ok(())
}

/// Wait for a wake-up or the next poll. False if the subscription ended.
async fn wait(wakes: &mut Option<async_nats::Subscriber>, poll_at: tokio::time::Instant) -> bool {
    match wakes {
        Some(w) => match tokio::time::timeout_at(poll_at, w.next()).await {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => {
                tracing::warn!("outbox wake-up subscription ended");
                false
            }
        },
        None => {
            tokio::time::sleep_until(poll_at).await;
            false
        }
    }
}

/// Publish up to one batch read from the outbox, on the connection holding the relay's lock.
/// Returns how many events were read.
async fn publish_batch(
    conn: &mut PgConnection,
    js: &jetstream::Context,
    local: &LocalRelay,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    // The batch's outbox rows first, then each one's event by its key: a plain join let the
    // planner hash the whole `events` table for every batch (measured: 9-15 ms a batch at a
    // few thousand events, and growing with the store).
    let rows = sqlx::query(
        "SELECT o.position, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
                e.event_version, e.payload, e.metadata, \
                (extract(epoch FROM e.recorded_at) * 1000)::bigint AS recorded_at_ms \
         FROM (SELECT * FROM outbox ORDER BY position LIMIT $1) o \
         CROSS JOIN LATERAL (SELECT * FROM events e \
                WHERE e.aggregate_type = o.aggregate_type AND e.aggregate_id = o.aggregate_id \
                  AND e.sequence = o.sequence LIMIT 1) e \
         ORDER BY o.position",
    )
    .bind(BATCH)
    .fetch_all(&mut *conn)
    .await?;
    let read = rows.len();
    let events = rows
        .iter()
        .map(|row| {
            let event = StoredEvent {
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                sequence: row.try_get("sequence")?,
                event_type: row.try_get("event_type")?,
                event_version: row.try_get("event_version")?,
                payload: row.try_get("payload")?,
                metadata: row.try_get("metadata")?,
                recorded_at_ms: row.try_get("recorded_at_ms")?,
            };
            Ok((row.try_get::<i64, _>("position")?, event))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    publish(conn, js, &events).await?;
    metrics::histogram!("outbox_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    // (this instance's own commits among them are skipped by the follower unread)
    let published = events.into_iter().map(|(_, event)| event).collect();
    if let Err(mpsc::error::TrySendError::Full(_)) = local.relayed.try_send(published) {
        metrics::counter!("relayed_batches_not_followed_total").increment(1);
    }
    Ok(read)
}

/// Publish `events` (each with its outbox position) in order, wait for JetStream's acks, and
/// delete their outbox rows.
async fn publish(
    conn: &mut PgConnection,
    js: &jetstream::Context,
    events: &[(i64, StoredEvent)],
) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut positions = Vec::with_capacity(events.len());
    let mut acks = Vec::with_capacity(events.len());
    // When each published event was recorded: its time in the outbox, once acknowledged.
    let mut recorded = Vec::with_capacity(events.len());
    // Spans of traced events, ended when their batch is acknowledged.
    let mut spans = Vec::new();
    // Room for the body under the server's payload limit, after the headers (the msg id).
    let room = js.client().server_info().max_payload.saturating_sub(1024);
    for (position, event) in events {
        let position = *position;
        let (subject, envelope) = event.to_envelope()?;
        let body = serde_json::to_vec(&envelope)?;
        if body.len() > room {
            // JetStream would refuse it on every attempt, and everything behind it would wait:
            // park it where operators see it, and go on. (The command side refuses events this
            // large; this is the last line.) Readers fill the gap from the event store.
            park(conn, &envelope, &format!("{} bytes, over the bus limit of {room}", body.len()))
                .await?;
            positions.push(position);
            continue;
        }
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(&envelope.id);
        if let Some(parent) = event.meta(metadata::TRACEPARENT) {
            // The event continues the trace of the command that stored it.
            let span = tracing::info_span!(
                target: platform::telemetry::TRACE_TARGET,
                "outbox relay",
                messaging.destination.name = %subject,
            );
            platform::trace_context::follow_traceparent(&span, Some(parent));
            if let Some(headers) = platform::trace_context::nats_headers(&span) {
                publish = publish.headers(headers);
            }
            spans.push(span);
        }
        acks.push(js.send_publish(subject, publish).await?);
        positions.push(position);
        recorded.push(event.recorded_at_ms);
    }
    for ack in acks {
        if ack.await?.duplicate {
            metrics::counter!("outbox_duplicates_total").increment(1);
        }
    }
    drop(spans); // the traced events are on the bus
    // Committed → on the bus: the relay's part of the projection lag.
    let now = schemas::now_ms();
    for at in recorded {
        metrics::histogram!("outbox_lag_seconds").record((now - at).max(0) as f64 / 1000.0);
    }
    sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
        .bind(&positions)
        .execute(&mut *conn)
        .await?;
    metrics::counter!("outbox_published_total").increment(positions.len() as u64);
    Ok(())
}

/// Record an event the relay will never publish (before its outbox row is deleted: a crash in
/// between parks it again, which changes nothing).
async fn park(
    conn: &mut PgConnection,
    envelope: &schemas::envelope::Envelope<serde_json::Value>,
    reason: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO parked_events (stage, event_id, aggregate_type, aggregate_id, sequence, reason, attempts) \
         VALUES ('relay', $1, $2, $3, $4, $5, 1) ON CONFLICT DO NOTHING",
    )
    .bind(&envelope.id)
    .bind(&envelope.aggregate_type)
    .bind(&envelope.aggregate_id)
    .bind(envelope.sequence.unwrap_or_default() as i64)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    metrics::counter!("events_parked_total", "stage" => "relay").increment(1);
    tracing::error!(event = %envelope.id, organization = %envelope.organization_id, %reason,
        "event parked: it cannot be published; the outbox goes on without it (see parked_events)");
    Ok(())
}
