//! The live projector: a durable JetStream consumer of every domain event, acked only after the
//! read-model transaction committed. Several projector instances share the consumer.
//!
//! Events that have already arrived are projected together, in order, in one transaction: under
//! load one commit covers many events instead of one commit (and one WAL flush) each; when idle
//! a batch is the one event that came, and nothing waits to fill a batch. If a batch fails, its
//! events are projected one by one, so one bad event holds up only itself — and only for a few
//! attempts: an event whose projection keeps failing is parked (`parked_events`, a metric, an
//! error log line) and its aggregate moves on, so nothing one tenant sends is retried forever in
//! the consumer's shared pending window. Database outages are retried without parking anything.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt, StreamExt};
use schemas::envelope::Envelope;
use schemas::subjects;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::event_store;
use crate::projection::{self, Outcome};

pub const CONSUMER: &str = "projector";
/// Most events projected in one transaction.
const MAX_BATCH: usize = 128;

pub async fn run(
    js: jetstream::Context,
    pool: deadpool_postgres::Pool,
    policy: Parking,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stream = js.get_stream(subjects::STREAM).await?;
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.into()),
                filter_subject: subjects::ALL_DOMAIN_EVENTS.into(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1024,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let mut batch = match next {
            Some(Ok(m)) => vec![m],
            Some(Err(e)) => {
                // Heartbeat and reconnect hiccups arrive as items; keep going.
                tracing::warn!(error = %e, "projector consumer error");
                continue;
            }
            None => anyhow::bail!("consumer stream ended"),
        };
        // Add what has already arrived, without waiting for more.
        while batch.len() < MAX_BATCH {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m),
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "projector consumer error");
                    break;
                }
                _ => break,
            }
        }
        // Finish the messages in hand even if shutdown arrives meanwhile.
        let started = std::time::Instant::now();
        handle(&pool, &policy, batch).await;
        metrics::histogram!("projector_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}

/// Project bus messages, in order, and acknowledge each accordingly.
pub async fn handle(
    pool: &deadpool_postgres::Pool,
    policy: &Parking,
    batch: Vec<jetstream::Message>,
) {
    // A span per traced event, from its arrival here to its acknowledgement (tracing on only).
    let _spans: Vec<tracing::Span> = batch
        .iter()
        .filter_map(|msg| {
            let headers = msg.headers.as_ref()?;
            headers.get(platform::trace_context::TRACEPARENT)?;
            let span = tracing::info_span!(
                target: platform::telemetry::TRACE_TARGET,
                "project",
                // (the subject's last token is the event type; the subject names tenants)
                otel.name = %format_args!("project {}", msg.subject.rsplit('.').next().unwrap_or_default()),
            );
            platform::trace_context::follow_nats(&span, Some(headers));
            Some(span)
        })
        .collect();
    let mut events = Vec::with_capacity(batch.len());
    for msg in batch {
        match serde_json::from_slice::<Envelope<Value>>(&msg.payload) {
            Ok(envelope) => events.push((msg, envelope)),
            Err(e) => {
                tracing::error!(error = %e, subject = %msg.subject, "unreadable event; terminating it");
                let _ = msg.ack_with(AckKind::Term).await;
            }
        }
    }
    if events.is_empty() {
        return;
    }
    let envelopes: Vec<&Envelope<Value>> = events.iter().map(|(_, e)| e).collect();
    match project_all(pool, &envelopes).await {
        Ok(outcomes) => {
            for ((msg, envelope), outcome) in events.into_iter().zip(outcomes) {
                settle(pool, policy, msg, &envelope, Ok(outcome)).await;
            }
        }
        Err(e) if events.len() == 1 => {
            let (msg, envelope) = events.pop().expect("one event");
            settle(pool, policy, msg, &envelope, Err(e)).await;
        }
        Err(e) => {
            tracing::debug!(error = %e, events = events.len(), "batch failed; projecting one by one");
            for (msg, envelope) in events {
                let outcome = project_all(pool, &[&envelope]).await.map(|mut o| o.remove(0));
                settle(pool, policy, msg, &envelope, outcome).await;
            }
        }
    }
}

/// Acknowledge one projected message: done, parked, or to be redelivered.
async fn settle(
    pool: &deadpool_postgres::Pool,
    policy: &Parking,
    msg: jetstream::Message,
    envelope: &Envelope<Value>,
    mut outcome: anyhow::Result<Outcome>,
) {
    let attempts = msg.info().map_or(1, |i| i.delivered).max(1) as u64;
    if let Ok(Outcome::Gap { expected, got }) = outcome {
        // An earlier event is missing here: delivered later after a retry, or never (the relay
        // parked it). The event store has it; project it from there instead of waiting.
        tracing::debug!(id = %envelope.id, expected, got, "filling a gap from the event store");
        outcome = fill_gap(pool, policy, envelope, expected, attempts).await;
    }
    // Made to visible in the read model.
    let lag = (schemas::now_ms() - envelope.time).max(0) as f64 / 1000.0;
    match outcome {
        Ok(Outcome::Applied) | Ok(Outcome::Duplicate) => {
            metrics::histogram!("projection_lag_seconds").record(lag);
            metrics::counter!("events_projected_total", "aggregate" => envelope.aggregate_type.clone()).increment(1);
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "ack failed; the event will be redelivered and skipped");
            }
        }
        Ok(Outcome::Gap { expected, got }) => {
            tracing::warn!(id = %envelope.id, expected, got, "event still ahead of its predecessor");
            let _ = msg.ack_with(AckKind::Nak(Some(policy.backoff(attempts)))).await;
        }
        Err(e) if is_transient(&e) => {
            // The database is away: nothing is wrong with the event, and parking would need the
            // database too. Retry; this affects every event alike, not one tenant's.
            tracing::warn!(error = %e, id = %envelope.id, "projection failed on infrastructure; will retry");
            let _ = msg.ack_with(AckKind::Nak(Some(policy.backoff(attempts)))).await;
        }
        Err(e) if attempts >= policy.max_attempts => {
            match park(pool, envelope, &format!("{e:#}"), attempts).await {
                Ok(_) => {
                    let _ = msg.ack().await;
                }
                Err(park_error) => {
                    tracing::warn!(error = %park_error, id = %envelope.id, "parking failed; will retry");
                    let _ = msg.ack_with(AckKind::Nak(Some(policy.backoff(attempts)))).await;
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, id = %envelope.id, attempts, "projection failed; will retry");
            let _ = msg.ack_with(AckKind::Nak(Some(policy.backoff(attempts)))).await;
        }
    }
}

/// Project the aggregate's events `expected..` from the event store (parking any that keep
/// failing, as if delivered `attempts` times), then `envelope` itself.
async fn fill_gap(
    pool: &deadpool_postgres::Pool,
    policy: &Parking,
    envelope: &Envelope<Value>,
    expected: i64,
    attempts: u64,
) -> anyhow::Result<Outcome> {
    let got = i64::try_from(envelope.sequence.unwrap_or_default())?;
    let missing = {
        let client = pool.get().await?;
        event_store::range(&client, &envelope.aggregate_id, expected, got).await?
    };
    for earlier in &missing {
        match project_all(pool, &[earlier]).await {
            Ok(_) => {}
            Err(e) if !is_transient(&e) && attempts >= policy.max_attempts => {
                park(pool, earlier, &format!("{e:#}"), attempts).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(project_all(pool, &[envelope]).await?.remove(0))
}

/// Skip an event for good (see `projection::park`), loudly.
async fn park(
    pool: &deadpool_postgres::Pool,
    envelope: &Envelope<Value>,
    reason: &str,
    attempts: u64,
) -> anyhow::Result<bool> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let parked =
        projection::park(&tx, envelope, reason, attempts.min(i32::MAX as u64) as i32).await?;
    tx.commit().await?;
    if parked {
        metrics::counter!("events_parked_total", "stage" => "projector").increment(1);
        tracing::error!(
            event = %envelope.id, organization = %envelope.organization_id, attempts, %reason,
            "event parked: it cannot be projected; its aggregate continues without it (see parked_events)"
        );
    }
    Ok(parked)
}

/// Failures of the database itself rather than of the event: retried without limit.
fn is_transient(e: &anyhow::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.chain().any(|cause| {
        if cause.downcast_ref::<deadpool_postgres::PoolError>().is_some() {
            return true;
        }
        let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() else { return false };
        match pg.code() {
            // No answer from the server at all: connection lost, closed, timed out.
            None => true,
            Some(code) => {
                [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED]
                    .contains(code)
                    // Insufficient resources, operator intervention, system errors.
                    || ["53", "57", "58", "08"].iter().any(|class| code.code().starts_with(class))
            }
        }
    })
}

/// How long failed events wait before their next attempt, and how many attempts they get.
#[derive(Debug, Clone)]
pub struct Parking {
    pub max_attempts: u64,
}

impl Parking {
    fn backoff(&self, attempts: u64) -> Duration {
        Duration::from_millis(200u64.saturating_mul(1 << attempts.min(5)))
    }
}

/// Apply events, in order, in one transaction.
///
/// Usually every event is its aggregate's next one, and all their statements are sent at once
/// (one round trip's wait for the whole batch). If one is not (a redelivery, a gap) or one fails,
/// that attempt is undone and the batch is applied event by event, which tells which is which.
pub async fn project_all(
    pool: &deadpool_postgres::Pool,
    envelopes: &[&Envelope<Value>],
) -> anyhow::Result<Vec<Outcome>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    match projection::apply_pipelined(&tx, envelopes).await {
        Ok(true) => {
            tx.commit().await?;
            return Ok(vec![Outcome::Applied; envelopes.len()]);
        }
        Ok(false) => tx.rollback().await?,
        Err(e) => {
            tracing::debug!(error = %e, "pipelined batch failed; applying event by event");
            tx.rollback().await?;
        }
    }
    // Not the usual case (a redelivery, a gap, an event that does not apply): each event's
    // statements wait for the one before.
    metrics::counter!("projector_batches_event_by_event_total").increment(1);
    let tx = client.transaction().await?;
    let mut outcomes = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        outcomes.push(projection::apply(&tx, envelope).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}
