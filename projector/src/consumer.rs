//! The live projector: a durable JetStream consumer of every domain event, acked only after the
//! read-model transaction committed. Several projector instances share the consumer.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use schemas::envelope::Envelope;
use schemas::subjects;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::projection::{self, Outcome};

pub const CONSUMER: &str = "projector";

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
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Heartbeat and reconnect hiccups arrive as items; keep going.
                tracing::warn!(error = %e, "projector consumer error");
                continue;
            }
            None => anyhow::bail!("consumer stream ended"),
        };
        // Finish the message in hand even if shutdown arrives meanwhile.
        handle(&pool, msg).await;
    }
}

/// Project one bus message and acknowledge it accordingly.
pub async fn handle(pool: &deadpool_postgres::Pool, msg: jetstream::Message) {
    let envelope: Envelope<Value> = match serde_json::from_slice(&msg.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, subject = %msg.subject, "unreadable event; terminating it");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let lag = (schemas::now_ms() - envelope.time).max(0) as f64 / 1000.0;
    match project(pool, &envelope).await {
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

/// Apply one event in its own transaction.
pub async fn project(
    pool: &deadpool_postgres::Pool,
    envelope: &Envelope<Value>,
) -> anyhow::Result<Outcome> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let outcome = projection::apply(&tx, envelope).await?;
    tx.commit().await?;
    Ok(outcome)
}
