//! Receipts for synchronous prompts (`schemas::live::StreamReceipt`): an OpenCode event stream
//! says when it begins to follow a session and when it has been sent one of its replies, so the
//! command service answers `POST /session/{id}/message` only once the asker's own streams have
//! the reply (command-service/src/sync_prompts.rs). `opencode run` exits on that answer and
//! prints only what its stream brought by then.

use std::collections::HashSet;
use std::time::Duration;

use schemas::ids::{MessageId, SessionId, UserId};
use schemas::live::StreamReceipt;

/// Sessions one stream remembers having announced (then it forgets and announces again).
const FOLLOWED: usize = 1_000;
/// Longest a receipt waits to be written to NATS (while NATS is away the stream goes on).
const FLUSH_AT_MOST: Duration = Duration::from_secs(1);

/// One OpenCode stream's receipts.
pub struct Receipts {
    nats: async_nats::Client,
    stream: String,
    user: UserId,
    following: HashSet<SessionId>,
}

impl Receipts {
    pub fn new(nats: async_nats::Client, user: UserId) -> Self {
        let stream = schemas::ids::RequestId::new().to_string();
        Self { nats, stream, user, following: HashSet::new() }
    }

    /// Before a session's events are sent: say that this stream follows it, the first time it
    /// sees the session and again at each new prompt of it (a synchronous prompt's answer hears
    /// receipts only from just before its prompt).
    pub async fn follow(&mut self, session: &SessionId, prompted: bool) {
        if self.following.contains(session) && !prompted {
            return;
        }
        if self.following.len() >= FOLLOWED {
            self.following.clear();
        }
        self.following.insert(session.clone());
        self.say(session, None).await;
    }

    /// After the completion of `reply` has been sent.
    pub async fn sent(&self, session: &SessionId, reply: MessageId) {
        self.say(session, Some(reply)).await;
    }

    async fn say(&self, session: &SessionId, sent: Option<MessageId>) {
        let receipt = StreamReceipt { stream: self.stream.clone(), user: self.user.clone(), sent };
        let Ok(body) = serde_json::to_vec(&receipt) else { return };
        let subject = schemas::subjects::stream_receipts(session);
        // Written out before the stream sends on (so a receipt reaches NATS before the client
        // has what it speaks of); lost, it only makes a synchronous answer wait its bound.
        let sent = async {
            self.nats.publish(subject, body.into()).await?;
            self.nats.flush().await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(FLUSH_AT_MOST, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, %session, "a stream receipt was not sent"),
            Err(_) => tracing::debug!(%session, "a stream receipt is late"),
        }
    }
}
