//! The live projector: a durable JetStream consumer of every domain event, acked only after the
//! read-model transaction committed. Several projector instances share the consumer.
//!
//! Events that have already arrived are projected together, in order, in one transaction: under
//! load one commit covers many events instead of one commit (and one WAL flush) each; when idle
//! a batch is the one event that came, and nothing waits to fill a batch. If a batch fails, its
//! events are projected one by one, so one bad event holds up only itself.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt, StreamExt};
use schemas::envelope::Envelope;
use schemas::subjects;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::projection::{self, Outcome};

pub const CONSUMER: &str = "projector";
/// Most events projected in one transaction.
const MAX_BATCH: usize = 128;

pub async fn run(
    js: jetstream::Context,
    pool: deadpool_postgres::Pool,
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
        handle(&pool, batch).await;
    }
}

/// Project bus messages, in order, and acknowledge each accordingly.
pub async fn handle(pool: &deadpool_postgres::Pool, batch: Vec<jetstream::Message>) {
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
                settle(msg, &envelope, Ok(outcome)).await;
            }
        }
        Err(e) if events.len() == 1 => {
            let (msg, envelope) = events.pop().expect("one event");
            settle(msg, &envelope, Err(e)).await;
        }
        Err(e) => {
            tracing::debug!(error = %e, events = events.len(), "batch failed; projecting one by one");
            for (msg, envelope) in events {
                let outcome = project_all(pool, &[&envelope]).await.map(|mut o| o.remove(0));
                settle(msg, &envelope, outcome).await;
            }
        }
    }
}

/// Acknowledge one projected message: done, or to be redelivered.
async fn settle(
    msg: jetstream::Message,
    envelope: &Envelope<Value>,
    outcome: anyhow::Result<Outcome>,
) {
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
            tracing::warn!(id = %envelope.id, expected, got, "event arrived before its predecessor");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_millis(200)))).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, id = %envelope.id, "projection failed; will retry");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

/// Apply events, in order, in one transaction.
pub async fn project_all(
    pool: &deadpool_postgres::Pool,
    envelopes: &[&Envelope<Value>],
) -> anyhow::Result<Vec<Outcome>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut outcomes = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        outcomes.push(projection::apply(&tx, envelope).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}
