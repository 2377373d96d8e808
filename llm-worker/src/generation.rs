//! Answering one prompt: stream the reply from the provider, publish coalesced text deltas
//! straight to JetStream (`live.rs`), honour aborts, and report the final text, finish reason and usage to
//! the command service. The prompt message is acked only after the report was recorded, so a
//! worker that dies mid-reply leaves it to be redelivered: the next attempt announces itself
//! with `message.started` (a new `attempt`), which tells clients to discard the partial text.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use futures::future::MaybeDone;
use platform::telemetry::trace_step;
use schemas::api::CommandReply;
use schemas::envelope::Envelope;
use schemas::events::{SessionEvent, UserMessage};
use schemas::ids::{MessageId, OrganizationId, PartId, SessionId, WorkspaceId};
use schemas::live::LiveEvent;
use schemas::message::{ErrorKind, FinishReason, MessageError, MessageErrorName, Part, TokenUsage};
use schemas::subjects;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::aborts::Aborts;
use crate::config::WorkerConfig;
use crate::history::{Conversation, History, is_first_prompt};
use crate::live::{Pending, Sending};
use crate::providers::{ChatMessage, Provider, ProviderError, ProviderEvent, Target};
use identity::credentials;
use schemas::provider::ConnectionRef;

/// Everything a worker needs to answer prompts.
#[derive(Clone)]
pub struct Worker {
    /// Key-encryption keys that open provider keys (`identity::credentials`).
    pub keks: identity::credentials::Keks,
    pub js: jetstream::Context,
    pub nats: async_nats::Client,
    pub pool: deadpool_postgres::Pool,
    pub provider: Provider,
    pub aborts: Aborts,
    /// Conversations folded from the event store, cached per session.
    pub history: History,
    pub cfg: WorkerConfig,
}

/// The prompt being answered, and where its events go.
pub(crate) struct Job {
    pub(crate) org: OrganizationId,
    pub(crate) workspace: WorkspaceId,
    pub(crate) session: SessionId,
    pub(crate) message: UserMessage,
    pub(crate) assistant: MessageId,
    pub(crate) part: PartId,
    pub(crate) attempt: u32,
    pub(crate) sequence: u64,
    /// When the prompt was committed (ms since the epoch).
    pub(crate) committed_ms: i64,
    pub(crate) prompt_event_id: String,
    pub(crate) correlation_id: Option<String>,
    /// The provider connection to call; none for the deployment's default provider.
    pub(crate) connection: Option<ConnectionRef>,
    /// The trace context this job's live events carry (none with tracing off).
    pub(crate) trace: Option<async_nats::HeaderMap>,
}

/// How the reply ended.
pub(crate) struct Reply {
    pub(crate) text: String,
    /// The model's reasoning and its part, if it streamed any.
    pub(crate) reasoning: Option<(PartId, String)>,
    /// What the provider said the reply cost, in micro-dollars, if it did.
    pub(crate) provider_cost: Option<u64>,
    pub(crate) finish: FinishReason,
    pub(crate) error: Option<MessageError>,
    pub(crate) tokens: TokenUsage,
}

impl Worker {
    /// Handle one prompt message from the durable consumer, acking it when done.
    pub async fn handle(&self, msg: jetstream::Message, shutdown: &CancellationToken) {
        let attempt = msg.info().map_or(1, |i| u32::try_from(i.delivered).unwrap_or(u32::MAX));
        let mut job = match job(&msg.subject, &msg.payload, attempt) {
            Ok(Some(job)) => job,
            Ok(None) => {
                let _ = msg.ack().await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, subject = %msg.subject, "unreadable prompt event; terminating it");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        // Commit to pick-up: the relay, JetStream and waiting for a free slot.
        let waited = (schemas::now_ms() - job.committed_ms).max(0) as f64 / 1000.0;
        metrics::histogram!("prompt_pickup_seconds").record(waited);
        let span = tracing::info_span!(
            "prompt",
            message = %job.assistant,
            attempt = job.attempt,
            correlation_id = job.correlation_id.as_deref().unwrap_or_default(),
        );
        let trace = tracing::info_span!(
            target: platform::telemetry::TRACE_TARGET,
            "answer prompt",
            message.id = %job.assistant,
            attempt = job.attempt,
            pickup_ms = waited * 1000.0,
        );
        platform::trace_context::follow_nats(&trace, msg.headers.as_ref());
        job.trace = platform::trace_context::nats_headers(&trace);
        self.answer(job, msg, shutdown).instrument(trace).instrument(span).await;
    }

    async fn answer(&self, job: Job, msg: jetstream::Message, shutdown: &CancellationToken) {
        // A prompt delivered again: the earlier attempt's worker died, or went silent past its
        // ack deadline and may still be running. This attempt takes the reply over before it
        // tells clients anything, so the earlier one can no longer complete it.
        if job.attempt > 1 {
            match self.retry(&job, &msg, shutdown).await {
                Ok(CommandReply::Done { .. }) => {}
                Ok(CommandReply::Superseded) => return superseded(),
                Ok(outcome) => {
                    // AlreadyDone: an earlier attempt completed the reply (its ack was lost).
                    tracing::info!(?outcome, "delivered again, but the reply needs no new attempt");
                    metrics::counter!("prompts_already_answered_total").increment(1);
                    let _ = msg.double_ack().await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the new attempt; releasing the prompt");
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    return;
                }
            }
        }
        tracing::debug!("answering a prompt");
        let cancel = self.aborts.register(&job.assistant, job.attempt);
        let reply = self.generate(&job, &msg, &cancel).await;
        self.aborts.finish(&job.assistant, job.attempt);
        metrics::counter!("generations_total", "finish" => format!("{:?}", reply.finish).to_lowercase()).increment(1);
        match self.report(&job, reply, Some(&msg), shutdown).await {
            Ok(CommandReply::Superseded) => superseded(),
            Ok(_) => {
                if let Err(e) = msg.double_ack().await {
                    tracing::warn!(error = %e, "ack of a reported prompt failed; a redelivery will find it done");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, message = %job.assistant, "could not report the reply; releasing the prompt");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }

    /// End a reply that no worker finished within the allowed deliveries, as failed, so the
    /// session does not stay busy for ever. `payload` is the prompt event.
    pub async fn give_up(
        &self,
        subject: &str,
        payload: &[u8],
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Some(job) = job(subject, payload, attempts)? else {
            return Ok(());
        };
        tracing::warn!(message = %job.assistant, attempts, "giving up on a reply no worker finished");
        let reply = Reply {
            text: String::new(),
            reasoning: None,
            provider_cost: None,
            finish: FinishReason::Stop,
            error: None,
            tokens: TokenUsage::default(),
        };
        let reply = failed(
            reply,
            MessageError::new(
                MessageErrorName::UnknownError,
                ErrorKind::Internal,
                format!("no worker finished the reply after {attempts} attempts"),
            ),
        );
        self.report(&job, reply, None, shutdown).await.map(drop)
    }

    /// The turns before `job`'s prompt without a read, where that is safe: its first delivery,
    /// committed since this worker hears every abort (none can be missed), and this worker's
    /// fold of the session holds every turn before it.
    fn known_turns(&self, job: &Job, budget: usize) -> Option<Vec<ChatMessage>> {
        if job.attempt != 1 || !self.aborts.hears_every_abort_of(job.committed_ms) {
            return None;
        }
        self.history.known(&job.session, job.sequence, budget)
    }

    async fn generate(
        &self,
        job: &Job,
        msg: &jetstream::Message,
        cancel: &CancellationToken,
    ) -> Reply {
        let mut reply = Reply {
            text: String::new(),
            reasoning: None,
            provider_cost: None,
            finish: FinishReason::Stop,
            error: None,
            tokens: TokenUsage::default(),
        };
        let mut n = 0_u32;
        let started = LiveEvent::MessageStarted {
            session_id: job.session.clone(),
            message_id: job.assistant.clone(),
            part_id: job.part.clone(),
            attempt: job.attempt,
            time: schemas::now_ms(),
        };
        let started = self.live_message(job, &mut n, started);
        let prompt: Vec<&str> = job.message.parts.iter().map(|p| p.text()).collect();
        let prompt = prompt.join("\n");
        let limit = job.connection.as_ref().map(|c| c.limit).unwrap_or_default();
        let budget =
            context_bytes(limit, self.cfg.worker_context_bytes).saturating_sub(prompt.len());
        // Announcing the attempt, reading the conversation and opening the connection's key do
        // not depend on each other: one round trip's wait instead of three. The announcement
        // also goes on while the provider is called: it is the first live message in flight,
        // and the first delta follows it as any delta follows the one before (under load its
        // ack came last, and the provider call waited for it).
        // Each is a span of its own, so a trace shows which of them the provider call waited for.
        let announce: Sending<'_> = Box::pin(
            async { self.send_live(job, started?).await }
                .instrument(trace_step("announce attempt")),
        );
        let mut announce = futures::future::maybe_done(announce);
        let read = || {
            self.history
                .load(&self.pool, &job.session, job.sequence, &job.assistant, budget)
                .instrument(trace_step("read conversation"))
        };
        let open_key = self.target(job).instrument(trace_step("open key"));
        // A session's first prompt has no turns before it to read: its read only looks for an
        // abort made before this worker got to the reply, and goes on beside the provider call
        // (a burst of new sessions waited for it under load). An abort it finds drops the call
        // before anything is published. A first prompt committed since this worker hears every
        // abort (`Aborts::hears_every_abort_of`; the first delivery: a later one was maybe
        // answered already) needs no read at all: an abort of it cancels the reply as it comes.
        let (beside_the_call, conversation, target) = if is_first_prompt(job.sequence) {
            let unread = job.attempt == 1 && self.aborts.hears_every_abort_of(job.committed_ms);
            if unread {
                metrics::counter!("first_prompts_unread_total").increment(1);
            }
            let beside = (!unread).then(read);
            (beside, Ok(Conversation::default()), meanwhile(&mut announce, open_key).await)
        } else if let Some(turns) = self.known_turns(job, budget) {
            // A later prompt whose turns this worker's fold holds, all of them (it answered the
            // one before, and nothing came between): the same guarantee about aborts as above.
            metrics::counter!("later_prompts_unread_total").increment(1);
            let known = Ok(Conversation { turns, abort_requested: false });
            (None, known, meanwhile(&mut announce, open_key).await)
        } else {
            let (conversation, target) =
                meanwhile(&mut announce, async { tokio::join!(read(), open_key) }).await;
            (None, conversation, target)
        };
        // Not calling the provider: the announcement ends first (`unstreamed`).
        if matches!(announce, MaybeDone::Done(Err(_))) {
            return unstreamed(&mut announce, reply, |reply| reply).await;
        }
        let mut messages = match conversation {
            Ok(c) if c.abort_requested => return unstreamed(&mut announce, reply, aborted).await,
            Ok(c) => c.turns,
            Err(e) => {
                let unreadable =
                    |reply| internal_failure(reply, "cannot read the conversation", &e);
                return unstreamed(&mut announce, reply, unreadable).await;
            }
        };
        messages.push(ChatMessage { role: "user", content: prompt });
        let target = match target {
            Ok(target) => target,
            Err(error) => {
                return unstreamed(&mut announce, reply, |reply| failed(reply, error)).await;
            }
        };
        tracing::debug!(turns = messages.len(), "calling the provider");
        let requested = Instant::now();
        let _call = trace_step("provider call");
        let mut until_first_token = Some(trace_step("provider first token"));
        let call = async {
            let beside_the_call = futures::future::OptionFuture::from(beside_the_call);
            tokio::join!(self.provider.stream(&target, messages), beside_the_call)
        };
        let called = tokio::select! {
            _ = cancel.cancelled() => None,
            called = meanwhile(&mut announce, call) => Some(called),
        };
        let (stream, late) = called.map_or((None, None), |(stream, late)| (Some(stream), late));
        // The first prompt's read, if it failed, found an abort, or found turns after all (the
        // call was made without them): the call ends here.
        if let Some(read) = late.filter(|read| !matches!(read, Ok(c) if c.is_empty_and_open())) {
            drop(stream); // closes the provider's connection: nothing more is generated
            let ended = |reply| match read {
                Err(e) => internal_failure(reply, "cannot read the conversation", &e),
                Ok(c) if c.abort_requested => aborted(reply),
                Ok(_) => internal_failure(
                    reply,
                    "cannot answer",
                    &anyhow::anyhow!("a session's first prompt has turns before it"),
                ),
            };
            return unstreamed(&mut announce, reply, ended).await;
        }
        let mut stream = match stream {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                return unstreamed(&mut announce, reply, |reply| provider_failed(reply, e)).await;
            }
            None => return unstreamed(&mut announce, reply, aborted).await,
        };
        // Tell JetStream we are alive well within its ack deadline.
        let every = Duration::from_secs(self.cfg.worker_ack_wait_secs.max(3) / 3);
        // Its first tick is one period away. `interval`'s first tick is due at once, but tokio's
        // timer rounds a deadline up to its next millisecond, so awaiting it held the first
        // token back by up to a millisecond.
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // Text and reasoning received but not yet published, and when they may be published.
        let mut pending = Pending::default();
        let mut flush_at: Option<tokio::time::Instant> = None;
        // Deltas go out one at a time, in order, each once the one before is stored; the
        // provider is read meanwhile, and what arrives waits in `pending` for the next delta.
        // The announcement, if still on its way, is the first.
        let mut in_flight: Option<Sending<'_>> = match announce {
            MaybeDone::Future(sending) => Some(sending),
            MaybeDone::Done(Err(e)) => {
                return internal_failure(reply, "cannot publish the reply", &e);
            }
            MaybeDone::Done(Ok(())) | MaybeDone::Gone => None,
        };
        let mut first_token = true;
        loop {
            let flush = async {
                match flush_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    reply = aborted(reply);
                    break;
                }
                sent = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    if let Err(e) = sent {
                        return internal_failure(reply, "cannot publish the reply", &e);
                    }
                    if flush_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
                        flush_at = None;
                        in_flight = self.send_pending(job, &mut n, &reply, &mut pending);
                    }
                }
                _ = flush, if in_flight.is_none() => {
                    flush_at = None;
                    in_flight = self.send_pending(job, &mut n, &reply, &mut pending);
                }
                _ = progress.tick() => {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
                event = stream.next() => match event {
                    Some(Ok(ProviderEvent::Text(mut text))) => {
                        metrics::counter!("tokens_streamed_total").increment(1);
                        let room = self.cfg.max_reply_bytes.saturating_sub(reply.text.len());
                        let full = text.len() >= room;
                        if full {
                            text.truncate(floor_char_boundary(&text, room));
                        }
                        reply.text.push_str(&text);
                        pending.text.push_str(&text);
                        if full {
                            // Dropping the stream closes the provider connection: no more tokens billed.
                            reply.finish = FinishReason::Length;
                            break;
                        }
                        if first_token {
                            first_token = false;
                            until_first_token.take();
                            metrics::histogram!("provider_first_token_seconds").record(requested.elapsed().as_secs_f64());
                            // The first text goes out at once: time to first token is what users feel.
                            // Behind what is in flight (the announcement, say), it is queued in the
                            // same sending, alone: it goes the moment that is stored, and text
                            // arriving meanwhile follows in the next delta.
                            let first = self.send_pending(job, &mut n, &reply, &mut pending);
                            in_flight = match (in_flight.take(), first) {
                                (Some(before), Some(first)) => Some(Box::pin(async move {
                                    before.await?;
                                    first.await
                                })),
                                (before, first) => before.or(first),
                            };
                        } else if flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + self.cfg.coalesce());
                        }
                    }
                    Some(Ok(ProviderEvent::Reasoning(text))) => {
                        if reply.reasoning.is_none() {
                            // A part of its own: announce its kind before its first delta, after
                            // what is already on its way.
                            if let Some(sending) = in_flight.take()
                                && let Err(e) = sending.await
                            {
                                return internal_failure(reply, "cannot publish the reply", &e);
                            }
                            let part = PartId::new();
                            let updated = LiveEvent::PartUpdated {
                                session_id: job.session.clone(),
                                message_id: job.assistant.clone(),
                                part: Part::Reasoning {
                                    id: part.clone(),
                                    message_id: job.assistant.clone(),
                                    text: String::new(),
                                },
                                attempt: job.attempt,
                            };
                            if let Err(e) = self.publish_live(job, &mut n, updated).await {
                                return internal_failure(reply, "cannot publish the reply", &e);
                            }
                            reply.reasoning = Some((part, String::new()));
                        }
                        if let Some((_, all)) = reply.reasoning.as_mut() {
                            all.push_str(&text);
                        }
                        pending.reasoning.push_str(&text);
                        if flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + self.cfg.coalesce());
                        }
                    }
                    Some(Ok(ProviderEvent::Finish(reason))) => {
                        if reason == "length" {
                            reply.finish = FinishReason::Length;
                        }
                    }
                    Some(Ok(ProviderEvent::Usage(usage))) => reply.tokens = usage,
                    Some(Ok(ProviderEvent::Cost(micro_dollars))) => reply.provider_cost = Some(micro_dollars),
                    Some(Err(e)) => {
                        reply = provider_failed(reply, e);
                        break;
                    }
                    None => break,
                },
            }
        }
        let last = async {
            if let Some(sending) = in_flight.take() {
                sending.await?;
            }
            match self.send_pending(job, &mut n, &reply, &mut pending) {
                Some(sending) => sending.await,
                None => Ok(()),
            }
        };
        if let Err(e) = last.await {
            tracing::warn!(error = %e, "last delta not published; the completed message carries the text");
        }
        reply
    }

    /// Where this prompt's call goes, with the connection's key opened for this call only.
    async fn target(&self, job: &Job) -> Result<Target, MessageError> {
        let Some(connection) = &job.connection else {
            return Ok(self.provider.default_target());
        };
        let unavailable = |detail: &dyn std::fmt::Display| {
            tracing::warn!(error = %detail, connection = %connection.id, "cannot open the connection's key");
            MessageError::new(
                MessageErrorName::ProviderAuthError,
                ErrorKind::Auth,
                "the provider connection's key is not available (deleted or unreadable)",
            )
        };
        let db = self.pool.get().await.map_err(|e| {
            tracing::warn!(error = %e, "database unavailable");
            MessageError::new(
                MessageErrorName::UnknownError,
                ErrorKind::Internal,
                "cannot read the connection's key",
            )
        })?;
        let sealed = credentials::store::get(&db, &connection.id)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| unavailable(&"no key stored"))?;
        drop(db);
        let api_key = credentials::open(&self.keks, &sealed, &job.org, &connection.id)
            .map_err(|e| unavailable(&e))?;
        Ok(Target {
            kind: connection.kind,
            base_url: connection.base_url.clone(),
            api_key,
            headers: connection.headers.clone(),
            model: job.message.model.model_id.clone(),
            limit: connection.limit,
        })
    }
}

/// A later attempt took this reply over: stop, and leave the prompt's delivery (unacknowledged)
/// to it.
fn superseded() {
    tracing::info!("a later attempt took the reply over; this one stops");
    metrics::counter!("replies_superseded_total").increment(1);
}

/// The prompt a bus message asks to answer (None for other events).
fn job(subject: &str, payload: &[u8], attempt: u32) -> anyhow::Result<Option<Job>> {
    let envelope: Envelope<SessionEvent> = serde_json::from_slice(payload)?;
    let SessionEvent::Prompted { session_id, message, assistant_message_id, connection, .. } =
        envelope.payload
    else {
        return Ok(None);
    };
    let (_, ws, _) = subjects::scope_of(subject).ok_or_else(|| anyhow::anyhow!("bad subject"))?;
    Ok(Some(Job {
        org: envelope.organization_id,
        workspace: ws.parse()?,
        session: session_id,
        message,
        assistant: assistant_message_id,
        part: PartId::new(),
        attempt,
        sequence: envelope.sequence.unwrap_or(0),
        committed_ms: envelope.time,
        prompt_event_id: envelope.id,
        correlation_id: envelope.correlation_id,
        connection,
        trace: None,
    }))
}

/// Text (in bytes) the history and prompt may take for a model: its context less room for the
/// reply, at about four bytes a token, and never more than the deployment allows.
fn context_bytes(limit: schemas::provider::ModelLimit, most: usize) -> usize {
    if limit.context == 0 {
        return most;
    }
    let reply = limit.output.min(limit.context / 2);
    let tokens = usize::try_from(limit.context - reply).unwrap_or(usize::MAX);
    tokens.saturating_mul(4).min(most)
}

/// The largest index ≤ `at` that is a char boundary of `s`.
pub(crate) fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len())).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0)
}

fn failed(mut reply: Reply, error: MessageError) -> Reply {
    reply.finish = FinishReason::Error;
    reply.error = Some(error);
    reply
}

/// A failure on our side: the detail goes to the log, the user gets the gist.
fn internal_failure(reply: Reply, what: &str, detail: &dyn std::fmt::Display) -> Reply {
    tracing::warn!(error = %detail, "{what}");
    failed(reply, MessageError::new(MessageErrorName::UnknownError, ErrorKind::Internal, what))
}

fn aborted(mut reply: Reply) -> Reply {
    reply.finish = FinishReason::Aborted;
    reply.error = Some(MessageError::new(
        MessageErrorName::MessageAbortedError,
        ErrorKind::Aborted,
        "aborted by the user",
    ));
    reply
}

fn provider_failed(reply: Reply, e: ProviderError) -> Reply {
    // The full error (with the provider's text) is for operators only.
    tracing::warn!(error = %e, "provider failed");
    failed(reply, e.classify())
}

/// `work`'s output; `beside` makes progress meanwhile, and may end before, after or not at all.
async fn meanwhile<T>(beside: &mut MaybeDone<Sending<'_>>, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = &mut *beside, if matches!(beside, MaybeDone::Future(_)) => {}
        }
    }
}

/// End an attempt that streams nothing: the announcement ends first, and its failure, if it
/// failed, is the outcome; else `outcome`.
async fn unstreamed(
    announce: &mut MaybeDone<Sending<'_>>,
    reply: Reply,
    outcome: impl FnOnce(Reply) -> Reply,
) -> Reply {
    match finish(announce).await {
        Err(e) => internal_failure(reply, "cannot publish the reply", &e),
        Ok(()) => outcome(reply),
    }
}

/// Let `sending` end: its failure, if it failed and nobody took its outcome yet.
async fn finish(sending: &mut MaybeDone<Sending<'_>>) -> anyhow::Result<()> {
    (&mut *sending).await;
    Pin::new(sending).take_output().unwrap_or(Ok(()))
}
