//! Live events of a reply (its start, text and reasoning deltas) published straight to
//! JetStream, in order: each is sent once the one before it is stored. A NATS restart or a
//! cluster's leader election is ridden out: the same message (same id, so JetStream keeps it
//! once) is sent again until it is stored, for up to `OC_WORKER_PUBLISH_PATIENCE_SECS`.

use async_nats::jetstream;
use futures::future::BoxFuture;
use schemas::envelope::{Envelope, aggregate};
use schemas::events::EventName;
use schemas::ids::PartId;
use schemas::live::LiveEvent;
use schemas::subjects;

use crate::generation::{Job, Reply, Worker};

/// A live event ready to go.
pub(crate) struct Outgoing {
    subject: String,
    payload: bytes::Bytes,
    /// The envelope id, also the `Nats-Msg-Id`.
    id: String,
}

/// Live events on their way: done when JetStream stored them all.
pub(crate) type Sending<'a> = BoxFuture<'a, anyhow::Result<()>>;

/// Text and reasoning received from the provider and not yet published.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) text: String,
    pub(crate) reasoning: String,
}

impl Worker {
    /// Envelope the reply's next live event (`n` counts them, for unique ids).
    pub(crate) fn live_message(
        &self,
        job: &Job,
        n: &mut u32,
        event: LiveEvent,
    ) -> anyhow::Result<Outgoing> {
        *n += 1;
        let event_type = event.event_type();
        let envelope = Envelope {
            id: format!("{}:{}:{}", job.assistant, job.attempt, n),
            organization_id: job.org.clone(),
            aggregate_type: aggregate::SESSION.into(),
            aggregate_id: job.session.to_string(),
            sequence: None,
            event_type: event_type.into(),
            event_version: event.event_version().into(),
            time: schemas::now_ms(),
            actor: Some("service:llm-worker".into()),
            correlation_id: job.correlation_id.clone(),
            causation_id: Some(job.prompt_event_id.clone()),
            payload: event,
        };
        let subject = subjects::live_event(&job.org, &job.workspace, &job.session, event_type);
        Ok(Outgoing { subject, payload: serde_json::to_vec(&envelope)?.into(), id: envelope.id })
    }

    /// Publish a live event and wait for JetStream to store it.
    pub(crate) async fn send_live(&self, job: &Job, out: Outgoing) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let publish = || async {
            let mut message = jetstream::message::PublishMessage::build()
                .payload(out.payload.clone())
                .message_id(&out.id);
            if let Some(headers) = &job.trace {
                message = message.headers(headers.clone());
            }
            let stored = async { self.js.send_publish(out.subject.clone(), message).await?.await };
            stored.await.inspect_err(|_| {
                metrics::counter!("live_publish_failures_total").increment(1);
            })?;
            anyhow::Ok(())
        };
        platform::retry::within("publishing a live event", self.cfg.publish_patience(), publish)
            .await?;
        metrics::histogram!("live_publish_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    pub(crate) async fn publish_live(
        &self,
        job: &Job,
        n: &mut u32,
        event: LiveEvent,
    ) -> anyhow::Result<()> {
        let out = self.live_message(job, n, event)?;
        self.send_live(job, out).await
    }

    /// Start publishing what is pending, as a reasoning delta and a text delta (in that order);
    /// `None` when nothing is.
    pub(crate) fn send_pending<'a>(
        &'a self,
        job: &'a Job,
        n: &mut u32,
        reply: &Reply,
        pending: &mut Pending,
    ) -> Option<Sending<'a>> {
        let mut deltas = Vec::new();
        if let Some((part, _)) = &reply.reasoning {
            deltas.extend(delta(job, part, &mut pending.reasoning));
        }
        deltas.extend(delta(job, &job.part, &mut pending.text));
        if deltas.is_empty() {
            return None;
        }
        let out: anyhow::Result<Vec<Outgoing>> =
            deltas.into_iter().map(|d| self.live_message(job, n, d)).collect();
        Some(Box::pin(async move {
            for message in out? {
                self.send_live(job, message).await?;
            }
            Ok(())
        }))
    }
}

/// A delta of `part` carrying the text pending for it (taken), if there is any.
fn delta(job: &Job, part: &PartId, pending: &mut String) -> Option<LiveEvent> {
    (!pending.is_empty()).then(|| LiveEvent::PartDelta {
        session_id: job.session.clone(),
        message_id: job.assistant.clone(),
        part_id: part.clone(),
        field: "text".into(),
        delta: std::mem::take(pending),
        attempt: job.attempt,
    })
}
