//! The prompt consumer: a durable pull consumer shared by all worker instances. Prompts are
//! pulled only for free generation slots (one pull asks for as many as are free), so nothing
//! waits in a local buffer while its ack deadline runs out (and gets generated twice).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use schemas::subjects;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::generation::Worker;

pub const CONSUMER: &str = "llm-worker";

pub async fn run(
    worker: Worker,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let stream = worker.js.get_stream(subjects::STREAM).await?;
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.into()),
                filter_subject: subjects::ALL_PROMPTS.into(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(worker.cfg.worker_ack_wait_secs),
                max_deliver: worker.cfg.worker_max_deliver,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await?;
    let slots = Arc::new(Semaphore::new(worker.cfg.worker_concurrency));
    let result = loop {
        // Reserve every free slot (waiting for one if none is): one pull then asks for that many
        // prompts, so a burst arrives in one round trip, and each prompt that comes has its slot.
        let mut permits = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            p = slots.clone().acquire_owned() => p?,
        };
        let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
        if let Ok(more) = slots.clone().try_acquire_many_owned(free) {
            permits.merge(more);
        }
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let mut prompts = match pull(&consumer, permits.num_permits()).await {
            Ok(prompts) => prompts,
            Err(e) => break Err(e),
        };
        loop {
            let next = tokio::select! {
                next = prompts.next() => next,
                _ = shutdown.cancelled() => {
                    hand_back(prompts).await;
                    break;
                }
            };
            match next {
                Some(Ok(msg)) => {
                    let permit = permits.split(1).expect("a slot for every prompt pulled");
                    let (worker, stop) = (worker.clone(), shutdown.clone());
                    metrics::gauge!("worker_busy_slots").increment(1.0);
                    tokio::spawn(async move {
                        worker.handle(msg, &stop).await;
                        metrics::gauge!("worker_busy_slots").decrement(1.0);
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    // A status instead of a prompt (say, the server had too many waiting pulls):
                    // pause a moment, so that one the server keeps sending cannot make this spin.
                    tracing::debug!(error = %e, "pull returned no prompt");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                None => break, // the pull expired or got all it asked for
            }
        }
        // Slots reserved for prompts that did not come are released here (`permits` drops).
    };
    // Finish the replies in hand: wait until every slot is free again, up to the grace period.
    let all = u32::try_from(worker.cfg.worker_concurrency).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, slots.acquire_many(all)).await;
    result
}

/// How long one pull request waits at the server for prompts. It bounds how long a stopping
/// worker takes to hand its pull back; an idle worker makes one request per period.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// Ask for up to `wanted` prompts, delivered as they come within [`PULL_WAIT`].
///
/// A waiting pull (`batch`), not a `fetch`: `fetch` is "no wait", so an idle worker would ask
/// again and again without pause and keep a core busy.
async fn pull(
    consumer: &jetstream::consumer::PullConsumer,
    wanted: usize,
) -> anyhow::Result<jetstream::consumer::pull::Batch> {
    consumer
        .batch()
        .max_messages(wanted)
        .expires(PULL_WAIT)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("pull failed: {e}"))
}

/// At shutdown: the pull stays open at the server until it expires; a prompt it delivers now
/// must go straight back, not wait out its ack deadline in an inbox nobody reads.
async fn hand_back(mut prompts: jetstream::consumer::pull::Batch) {
    while let Some(next) = prompts.next().await {
        if let Ok(msg) = next {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
    }
}
