//! The instance's live events, by interest: one feed per session that this instance's SSE
//! clients watch, and nothing else. A feed starts as a core NATS subscription to the session's
//! events as the stream republishes them once stored (`subjects::REPUBLISHED`, each with its
//! stream sequence), so each instance receives the traffic of its own clients' sessions, not of
//! every tenant, without a JetStream consumer per session (a consumer costs the server a scan of
//! its message blocks for every event it delivers). A subscription delivers in stream order but
//! at most once: after anything that may have lost a message (a reconnection, a slow consumer,
//! an event whose predecessor on its subject never arrived) the feed follows an ordered JetStream consumer from the last event it delivered instead, for
//! the rest of its life, and JetStream's ordering and gap detection hold; a consumer that fails
//! is made again from the last event delivered, so nothing is skipped or repeated.
//!
//! Either can also go quiet without failing (its server lost, the client not noticing, an
//! interest not yet known across a cluster): once a feed that was active has been quiet for a
//! moment, or after a reconnection, it asks the stream's leader whether the session has
//! anything newer than what the feed delivered, and follows again from there if so.
//!
//! Frames reach the feed's clients in stream order, each once; each frame carries its stream
//! sequence, the SSE `id:` that makes streams resumable on any instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web_lab::sse;
use async_nats::jetstream::{self, consumer, stream::RawMessageErrorKind};
use bytestring::ByteString;
use futures::{Stream, StreamExt};
use platform::bus::DeliveryLosses;
use schemas::subjects;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// How long a feed must be quiet after activity before it checks with the stream that it has
/// missed nothing.
const QUIET: Duration = Duration::from_secs(3);
/// How long a feed waits before trying again when NATS does not answer.
const RETRY: Duration = Duration::from_secs(1);

/// One event as SSE clients receive it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The JetStream stream sequence: the SSE `id:`.
    pub seq: u64,
    /// The event type: the SSE `event:`.
    pub event: ByteString,
    /// `{"type": …, "properties": …}`: the SSE `data:`, serialised once for every client.
    pub data: ByteString,
}

impl Frame {
    /// Decode a bus message into a frame (None for messages that are not events).
    pub fn decode(seq: u64, payload: &[u8]) -> Option<Frame> {
        #[derive(serde::Deserialize)]
        struct Wire<'a> {
            #[serde(rename = "eventType")]
            event_type: &'a str,
            #[serde(borrow)]
            payload: &'a serde_json::value::RawValue,
            time: i64,
        }
        let wire: Wire = serde_json::from_slice(payload).ok()?;
        // Made to fanned out: how far behind the bus this instance's clients are.
        let lag = (schemas::now_ms() - wire.time).max(0) as f64 / 1000.0;
        metrics::histogram!("hub_lag_seconds").record(lag);
        Some(Frame { seq, event: wire.event_type.into(), data: wire.payload.get().into() })
    }

    pub fn to_sse(&self) -> sse::Event {
        sse::Data::new(self.data.clone()).event(self.event.clone()).id(self.seq.to_string()).into()
    }
}

/// What one feed follows: a session, or every session of a workspace.
struct Scope {
    /// The feed's name among the instance's feeds.
    key: String,
    /// The stream subjects it takes (domain and live events).
    filters: [String; 2],
    /// One filter for both, to ask the stream whether there is anything newer.
    check: String,
}

/// A bus message with its stream sequence.
type Delivery = anyhow::Result<(u64, async_nats::Message)>;

/// Gaps in a subscription to republished events, which the connection may not notice (a
/// message lost between servers). Each republished event names the stream sequence of the one
/// before it on the same subject: one the subscription never delivered, and not stored before
/// it started, was missed.
struct SubjectGaps {
    /// The subscription's start: events up to it are not owed.
    start: u64,
    /// The last sequence delivered of each subject (a session's events use a few).
    last: HashMap<String, u64>,
}

impl SubjectGaps {
    fn after(start: u64) -> Self {
        Self { start, last: HashMap::new() }
    }

    /// Whether the event `seq` of `subject`, whose predecessor on the subject is `previous`
    /// (0: none), shows that one was missed. Records it as delivered.
    fn missed_before(&mut self, subject: &str, seq: u64, previous: u64) -> bool {
        let delivered = self.last.insert(subject.to_owned(), seq);
        previous > self.start && delivered != Some(previous)
    }
}

/// What a feed does after its connection may have lost a message.
#[derive(Clone, Copy)]
enum OnLoss {
    /// Ask the stream once quiet (a consumer's own gap detection covers the rest).
    Check,
    /// Follow a consumer from the last event delivered (a subscription has no gap detection).
    Refollow,
}

/// One watched scope's live events.
struct Feed {
    tx: broadcast::Sender<Arc<Frame>>,
    /// Every event of the session up to this stream sequence has been sent on `tx`, or came
    /// before the feed started.
    covered: AtomicU64,
    /// Whether the feed knows where it starts (and so what its clients are owed).
    ready: watch::Sender<bool>,
    /// Ends the feed when its last client leaves.
    stop: CancellationToken,
}

impl Feed {
    fn covered(&self) -> u64 {
        self.covered.load(Ordering::Acquire)
    }

    /// Hand event `seq` to the clients. The position moves first: a client that subscribes
    /// between the two reads a position that already includes `seq`, and skips the frame.
    fn deliver(&self, seq: u64, payload: &[u8]) {
        self.covered.store(seq, Ordering::Release);
        if let Some(frame) = Frame::decode(seq, payload) {
            let _ = self.tx.send(Arc::new(frame));
        }
    }
}

/// A client's view of one session: its frames from `position` on. Dropping it lets the feed go
/// when nobody else watches the session.
pub struct Subscription {
    frames: Option<broadcast::Receiver<Arc<Frame>>>,
    position: u64,
    hub: Arc<Hub>,
    session: String,
}

impl Subscription {
    /// Everything about the session up to this stream sequence came before this subscription;
    /// everything after comes through `recv`.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next frame (`Lagged` if this client fell further behind than the session's buffer).
    pub async fn recv(&mut self) -> Result<Arc<Frame>, broadcast::error::RecvError> {
        match self.frames.as_mut() {
            Some(frames) => frames.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.frames.take());
        self.hub.release(&self.session);
    }
}

pub struct Hub {
    js: jetstream::Context,
    nats: async_nats::Client,
    /// Whether the stream republishes what it stores as `subjects::REPUBLISHED` (set by its
    /// writers): feeds then start as subscriptions.
    republishes: AtomicBool,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    buffer: usize,
    losses: DeliveryLosses,
    /// Whether the event stream has been reached (it is the writers' to create).
    has_stream: watch::Sender<bool>,
    shutdown: CancellationToken,
}

impl Hub {
    pub fn new(
        js: jetstream::Context,
        losses: DeliveryLosses,
        buffer: usize,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            nats: js.client(),
            js,
            republishes: AtomicBool::new(false),
            feeds: Mutex::default(),
            buffer,
            losses,
            has_stream: watch::Sender::new(false),
            shutdown,
        })
    }

    /// Whether the event stream has been reached: readiness.
    pub fn has_stream(&self) -> bool {
        *self.has_stream.borrow()
    }

    /// Wait until the event stream exists (the writers create it), or shutdown.
    pub async fn run(self: Arc<Self>) {
        let found =
            platform::retry::until_stopped("finding the event stream", &self.shutdown, || {
                self.js.get_stream(subjects::STREAM)
            });
        if let Some(stream) = found.await {
            let republish = stream.cached_info().config.republish.as_ref();
            let republishes = republish == Some(&platform::bus::republish());
            if !republishes {
                tracing::warn!("the event stream does not republish: each feed is a consumer");
            }
            self.republishes.store(republishes, Ordering::Release);
            self.has_stream.send_replace(true);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Feed>>> {
        // Nothing panics while holding the lock; recover from poisoning regardless.
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watch `session` of `org`, waiting at most `within` for its feed to start; None if it did
    /// not (NATS unreachable).
    pub async fn subscribe(
        self: &Arc<Self>,
        org: &str,
        session: &str,
        within: Duration,
    ) -> Option<Subscription> {
        let scope = Scope {
            key: session.to_owned(),
            filters: subjects::session_filters_of(org, session),
            check: subjects::session_events(org, session),
        };
        self.watch(scope, within).await
    }

    /// Watch every session of workspace `ws` of `org` (OpenCode's `/event`), as `subscribe`.
    pub async fn subscribe_workspace(
        self: &Arc<Self>,
        org: &str,
        ws: &str,
        within: Duration,
    ) -> Option<Subscription> {
        let scope = Scope {
            key: format!("workspace:{ws}"),
            filters: [format!("oc.evt.{org}.{ws}.>"), format!("oc.live.{org}.{ws}.>")],
            check: format!("oc.*.{org}.{ws}.>"),
        };
        self.watch(scope, within).await
    }

    async fn watch(self: &Arc<Self>, scope: Scope, within: Duration) -> Option<Subscription> {
        let key = scope.key.clone();
        let (feed, frames) = {
            let mut feeds = self.lock();
            let feed = feeds.entry(key.clone()).or_insert_with(|| {
                let feed = Arc::new(Feed {
                    tx: broadcast::channel(self.buffer).0,
                    covered: AtomicU64::new(0),
                    ready: watch::Sender::new(false),
                    stop: self.shutdown.child_token(),
                });
                tokio::spawn(self.clone().follow(scope, feed.clone()));
                feed
            });
            (feed.clone(), feed.tx.subscribe())
        };
        // From here the subscription releases the feed when dropped, started or not.
        let mut sub =
            Subscription { frames: Some(frames), position: 0, hub: self.clone(), session: key };
        let mut ready = feed.ready.subscribe();
        tokio::time::timeout(within, ready.wait_for(|r| *r)).await.ok()?.ok()?;
        sub.position = feed.covered();
        Some(sub)
    }

    /// Stop the session's feed if nobody watches it any more.
    fn release(&self, session: &str) {
        let mut feeds = self.lock();
        if feeds.get(session).is_some_and(|f| f.tx.receiver_count() == 0)
            && let Some(feed) = feeds.remove(session)
        {
            feed.stop.cancel();
        }
    }

    /// Run one feed until it is released or the service stops.
    async fn follow(self: Arc<Self>, scope: Scope, feed: Arc<Feed>) {
        metrics::gauge!("hub_feeds").increment(1.0);
        let Scope { key: session, filters, check } = scope;
        let mut losses = self.losses.clone();
        losses.mark_unchanged();
        let mut subscribed = self.republishes.load(Ordering::Acquire);
        while !feed.stop.is_cancelled() {
            let outcome = async {
                if subscribed {
                    let messages = self.subscribe_republished(&check, &feed).await?;
                    self.pump(&check, &feed, messages, &mut losses, OnLoss::Refollow).await
                } else {
                    let messages = self.consume(&filters, &feed).await?;
                    self.pump(&check, &feed, messages, &mut losses, OnLoss::Check).await
                }
            };
            if let Err(e) = outcome.await {
                if std::mem::take(&mut subscribed) {
                    // From what it delivered, at once: a consumer's start is the remedy.
                    metrics::counter!("hub_subscription_fallbacks_total").increment(1);
                    tracing::debug!(error = %e, %session, "a session feed follows a consumer");
                    continue;
                }
                metrics::counter!("hub_refollows_total").increment(1);
                tracing::debug!(error = %e, %session, "a session feed follows again");
                tokio::select! {
                    _ = feed.stop.cancelled() => {}
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
        metrics::gauge!("hub_feeds").decrement(1.0);
    }

    /// Where a new feed starts: after the end of the stream (its clients learn that position).
    async fn start(&self, feed: &Feed) -> anyhow::Result<()> {
        if !*feed.ready.borrow() {
            let stream = self.js.get_stream(subjects::STREAM).await?;
            feed.covered.store(stream.cached_info().state.last_sequence, Ordering::Release);
        }
        Ok(())
    }

    /// The session's events as the stream republishes them, from the feed's start on. The
    /// subscription is made before the start is read, on the same connection, so the server
    /// has the interest before it answers: whatever is stored after the start is delivered.
    async fn subscribe_republished(
        &self,
        check: &str,
        feed: &Feed,
    ) -> anyhow::Result<impl Stream<Item = Delivery> + Unpin + use<>> {
        let subscriber = self.nats.subscribe(subjects::republished(check)).await?;
        self.start(feed).await?;
        feed.ready.send_replace(true);
        let mut gaps = SubjectGaps::after(feed.covered());
        Ok(subscriber.map(move |msg| {
            let header = |name| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get_last(name))
                    .and_then(|v| v.as_str().parse().ok())
            };
            let seq = header(async_nats::header::NATS_SEQUENCE)
                .ok_or_else(|| anyhow::anyhow!("a republished event without its sequence"))?;
            let previous = header(async_nats::header::NATS_LAST_SEQUENCE).unwrap_or(0);
            if gaps.missed_before(msg.subject.as_str(), seq, previous) {
                // Lost on the way (a route between servers cut, say), unseen by this connection.
                metrics::counter!("hub_republish_gaps_total").increment(1);
                anyhow::bail!("a republished event of this subject was missed");
            }
            Ok((seq, msg))
        }))
    }

    /// A consumer of the session's events after what the feed has delivered; for a new feed,
    /// after the end of the stream.
    async fn consume(
        &self,
        filters: &[String; 2],
        feed: &Feed,
    ) -> anyhow::Result<impl Stream<Item = Delivery> + Unpin + use<>> {
        self.start(feed).await?;
        let stream = self.js.get_stream_no_info(subjects::STREAM).await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: filters.to_vec(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: feed.covered() + 1,
                },
                ..Default::default()
            })
            .await?;
        let messages = consumer.messages().await?;
        feed.ready.send_replace(true);
        Ok(messages.map(|msg| {
            let msg = msg?;
            let seq = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
            Ok((seq, msg.message))
        }))
    }

    /// Deliver the session's events in order until the feed stops (Ok) or must follow again
    /// (Err).
    async fn pump(
        &self,
        check: &str,
        feed: &Feed,
        mut messages: impl Stream<Item = Delivery> + Unpin,
        losses: &mut DeliveryLosses,
        on_loss: OnLoss,
    ) -> anyhow::Result<()> {
        // Starting out counts as activity: check once quiet.
        let mut unchecked = true;
        loop {
            tokio::select! {
                _ = feed.stop.cancelled() => return Ok(()),
                changed = losses.changed() => {
                    if changed.is_err() {
                        return Ok(()); // the client is gone: the service is stopping
                    }
                    match on_loss {
                        OnLoss::Check => unchecked = true,
                        OnLoss::Refollow => anyhow::bail!("the subscription may have lost events"),
                    }
                }
                _ = tokio::time::sleep(QUIET), if unchecked => {
                    match self.has_newer(check, feed.covered()).await {
                        Ok(true) => anyhow::bail!("the feed went quiet"),
                        Ok(false) => unchecked = false,
                        // (checked again after the next quiet moment)
                        Err(e) => tracing::debug!(error = %e, "cannot check a session feed"),
                    }
                }
                msg = messages.next() => {
                    let (seq, msg) = match msg {
                        Some(m) => m?,
                        None => anyhow::bail!("the feed's messages ended"),
                    };
                    unchecked = true;
                    // (events stored before the feed started; and a consumer the client library
                    // made again before its first message starts from the beginning of the
                    // stream: async-nats 0.51)
                    if seq > feed.covered() {
                        let span = tracing::info_span!(
                            target: platform::telemetry::TRACE_TARGET,
                            "sse fan-out",
                            clients = feed.tx.receiver_count(),
                        );
                        platform::trace_context::follow_nats(&span, msg.headers.as_ref());
                        span.in_scope(|| feed.deliver(seq, &msg.payload));
                    }
                }
            }
        }
    }

    /// Whether the stream holds an event of the session after `after` (asked of the stream's
    /// leader, which has everything stored).
    async fn has_newer(&self, check: &str, after: u64) -> anyhow::Result<bool> {
        let stream = self.js.get_stream_no_info(subjects::STREAM).await?;
        match stream.raw_message_builder().sequence(after + 1).next_by_subject(check).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SubjectGaps;

    #[test]
    fn a_subjects_event_whose_predecessor_was_never_delivered_shows_a_gap() {
        let mut gaps = SubjectGaps::after(10);
        // First of their subjects since the start: predecessors before it, or none.
        assert!(!gaps.missed_before("delta", 12, 9));
        assert!(!gaps.missed_before("status", 13, 0));
        assert!(!gaps.missed_before("delta", 14, 12));
        // The delta at 15 never arrived.
        assert!(gaps.missed_before("delta", 16, 15));
        // A subject whose first event since the start was missed.
        assert!(gaps.missed_before("completed", 18, 17));
    }
}
