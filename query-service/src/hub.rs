//! The instance's one bus subscription, fanned out in process: an ordered JetStream consumer on
//! the whole events stream, whose messages are handed to the SSE clients of the session they
//! are about. Each frame carries its stream sequence, the SSE `id:` that makes streams resumable
//! on any instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web_lab::sse;
use async_nats::jetstream::{self, consumer};
use bytestring::ByteString;
use futures::StreamExt;
use schemas::subjects;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How long the subscription may be silent before the hub checks that the stream has not moved
/// on without it.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

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

pub struct Hub {
    sessions: Mutex<HashMap<String, broadcast::Sender<Arc<Frame>>>>,
    /// The last stream sequence this instance has fanned out.
    position: AtomicU64,
    buffer: usize,
    /// Whether the hub follows the stream yet: until it does, it does not know where "now" is
    /// on the stream, and a client subscribed then would miss what comes before it starts.
    following: tokio::sync::watch::Sender<bool>,
}

impl Hub {
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            sessions: Mutex::default(),
            position: AtomicU64::new(0),
            buffer,
            following: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Whether the hub has started following the stream.
    pub fn is_following(&self) -> bool {
        *self.following.borrow()
    }

    /// Wait, at most `within`, for the hub to follow the stream; whether it does.
    pub async fn until_following(&self, within: std::time::Duration) -> bool {
        let mut rx = self.following.subscribe();
        tokio::time::timeout(within, rx.wait_for(|f| *f)).await.is_ok_and(|r| r.is_ok())
    }

    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Receive every frame about `session` published from now on.
    pub fn subscribe(&self, session: &str) -> broadcast::Receiver<Arc<Frame>> {
        let mut sessions = self.lock();
        sessions
            .entry(session.to_owned())
            .or_insert_with(|| broadcast::channel(self.buffer).0)
            .subscribe()
    }

    /// Forget sessions nobody listens to any more.
    pub fn unsubscribe_idle(&self, session: &str) {
        let mut sessions = self.lock();
        if sessions.get(session).is_some_and(|tx| tx.receiver_count() == 0) {
            sessions.remove(session);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Arc<Frame>>>> {
        // Nothing panics while holding the lock; recover from poisoning regardless.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, session: &str, frame: Frame) {
        let seq = frame.seq;
        if let Some(tx) = self.lock().get(session) {
            let _ = tx.send(Arc::new(frame));
        }
        self.position.store(seq, Ordering::Release);
    }

    /// Follow the stream from its current end until shutdown, re-subscribing after failures.
    pub async fn run(self: Arc<Self>, js: jetstream::Context, shutdown: CancellationToken) {
        // `follow` returns Ok only at shutdown.
        platform::retry::until_stopped("event hub subscription", &shutdown, || {
            self.follow(&js, &shutdown)
        })
        .await;
    }

    async fn follow(
        &self,
        js: &jetstream::Context,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut stream = js.get_stream(subjects::STREAM).await?;
        let last = stream.info().await?.state.last_sequence;
        // Continue where we stopped; on first start, from the end of the stream.
        let start = match self.position() {
            0 => {
                self.position.store(last, Ordering::Release);
                last + 1
            }
            p => p + 1,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        // From here every event after `position` reaches the subscribers.
        self.following.send_replace(true);
        // The ordered consumer lives on one server; if that server goes (a NATS node lost), the
        // client is meant to notice and make a new one, but may stay silent instead. So: when
        // nothing has arrived for a while, ask the stream whether it has moved past us, and if
        // it has, follow again from our position (nothing is skipped or repeated).
        let mut check = tokio::time::interval(STALL_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut arrived = false;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = check.tick() => {
                    if !std::mem::take(&mut arrived) {
                        let last = stream.info().await?.state.last_sequence;
                        if last > self.position() {
                            metrics::counter!("hub_stalls_total").increment(1);
                            anyhow::bail!("the subscription stalled at {} of {last}", self.position());
                        }
                    }
                    continue;
                }
                m = messages.next() => m,
            };
            arrived = true;
            let msg = match msg {
                Some(Ok(m)) => m,
                Some(Err(e)) => anyhow::bail!(e),
                None => anyhow::bail!("subscription ended"),
            };
            let seq = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
            match (subjects::session_of(&msg.subject), Frame::decode(seq, &msg.payload)) {
                (Some(session), Some(frame)) => self.publish(session, frame),
                _ => self.position.store(seq, Ordering::Release),
            }
        }
    }
}
