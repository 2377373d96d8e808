//! Receipts for synchronous prompts (`schemas::live::StreamReceipt`): an OpenCode event stream
//! says it is open on its workspace (when it opens, and whenever a synchronous prompt of its
//! user's calls the roll), that it has been sent one of the workspace's replies, and that it has
//! ended. The command service answers `POST /session/{id}/message` only once every open stream
//! of the asker's on that workspace has the reply (command-service/src/sync_prompts.rs):
//! `opencode run` exits on that answer and prints only what its stream brought by then.
//!
//! A stream says it is open before it sends anything, not when it first sees the session: a
//! stream behind on its events (a busy instance) is still waited for.

use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};

use schemas::ids::{MessageId, SessionId, UserId, WorkspaceId};
use schemas::live::{StreamReceipt, StreamSaid};

/// Longest a receipt waits to be written to NATS (while NATS is away the stream goes on).
const FLUSH_AT_MOST: Duration = Duration::from_secs(1);

/// One OpenCode stream's receipts.
#[derive(Clone)]
pub struct Receipts {
    nats: async_nats::Client,
    stream: String,
    user: UserId,
    workspace: WorkspaceId,
}

impl Receipts {
    pub fn new(nats: async_nats::Client, user: UserId, workspace: WorkspaceId) -> Self {
        let stream = schemas::ids::RequestId::new().to_string();
        Self { nats, stream, user, workspace }
    }

    /// The roll calls of the user's synchronous prompts, each to be answered with `open` (if
    /// NATS refuses the subscription, or it ends, the stream has said it is open only when it
    /// opened).
    pub async fn roll_calls(&self) -> BoxStream<'static, async_nats::Message> {
        let subject = schemas::subjects::user_streams_roll_call(&self.user);
        match self.nats.subscribe(subject).await {
            Ok(calls) => calls.chain(stream::pending()).boxed(),
            Err(e) => {
                tracing::debug!(error = %e, "an OpenCode stream cannot hear roll calls");
                stream::pending().boxed()
            }
        }
    }

    /// Before the stream sends anything, and at each roll call: it is open on its workspace.
    pub async fn open(&self) {
        let said = StreamSaid::Open { workspace: self.workspace.clone() };
        self.say(schemas::subjects::user_streams(&self.user), said).await;
    }

    /// After the completion of `reply` has been taken by the stream's response.
    pub async fn sent(&self, session: &SessionId, reply: MessageId) {
        let said = StreamSaid::Sent { reply };
        self.say(schemas::subjects::stream_receipts(session), said).await;
    }

    /// Once the stream has ended (a prompt waiting for it need not wait its bound).
    pub async fn closed(&self) {
        self.say(schemas::subjects::user_streams(&self.user), StreamSaid::Closed).await;
    }

    async fn say(&self, subject: String, said: StreamSaid) {
        let receipt = StreamReceipt { stream: self.stream.clone(), user: self.user.clone(), said };
        let Ok(body) = serde_json::to_vec(&receipt) else { return };
        // Written out before the stream sends on (so a receipt reaches NATS before the client
        // has what it speaks of); lost, it only makes a synchronous answer wait its bound, or
        // not wait for this stream.
        let sent = async {
            self.nats.publish(subject, body.into()).await?;
            self.nats.flush().await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(FLUSH_AT_MOST, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "a stream receipt was not sent"),
            Err(_) => tracing::debug!("a stream receipt is late"),
        }
    }
}
