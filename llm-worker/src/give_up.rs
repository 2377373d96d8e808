//! Prompts JetStream stopped delivering: when every allowed delivery of a prompt ended without an
//! ack (its workers died), the server publishes a max-deliveries advisory. One worker (a queue
//! group) takes it and ends the reply as failed, so the session does not stay busy for ever.

use futures::StreamExt;
use schemas::subjects;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::consumer::CONSUMER;
use crate::generation::Worker;

#[derive(Deserialize)]
struct Advisory {
    stream_seq: u64,
    deliveries: u64,
}

pub async fn listen(worker: Worker, shutdown: CancellationToken) -> anyhow::Result<()> {
    let subject =
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{CONSUMER}", subjects::STREAM);
    let mut advisories = worker.nats.queue_subscribe(subject, "llm-worker".into()).await?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = advisories.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        if let Err(e) = handle(&worker, &msg.payload, &shutdown).await {
            tracing::error!(error = %e, "cannot give up on an undelivered prompt");
        }
    }
}

async fn handle(
    worker: &Worker,
    payload: &[u8],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let advisory: Advisory = serde_json::from_slice(payload)?;
    let stream = worker.js.get_stream(subjects::STREAM).await?;
    let prompt = stream.get_raw_message(advisory.stream_seq).await?;
    let attempts = u32::try_from(advisory.deliveries).unwrap_or(u32::MAX);
    worker.give_up(&prompt.subject, &prompt.payload, attempts, shutdown).await
}
