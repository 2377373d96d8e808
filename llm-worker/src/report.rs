//! What a worker tells the command service, over NATS request/reply: a finished reply
//! (`CompleteMessage`), and before regenerating one, its new attempt (`RetryReply`). Both are
//! retried while the command service is unreachable, keeping the prompt's delivery alive meanwhile.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use futures::FutureExt;
use schemas::api::{CommandReply, CompleteMessage, MAX_EVENT_BYTES, ReasoningReport, RetryReply};
use schemas::message::{FinishReason, ModelRef};
use schemas::subjects;
use tokio_util::sync::CancellationToken;

use crate::generation::{Job, Reply, Worker, floor_char_boundary};

/// How long a command is retried while the command service cannot take it.
const PATIENCE: Duration = Duration::from_secs(120);

impl Worker {
    /// Record that `job` regenerates its reply as a new attempt: `Done` to go on; `AlreadyDone`
    /// if an earlier attempt completed it; `Superseded` if a later attempt took it over.
    pub(crate) async fn retry(
        &self,
        job: &Job,
        msg: &jetstream::Message,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<CommandReply> {
        let command = RetryReply {
            organization_id: job.org.clone(),
            session_id: job.session.clone(),
            message_id: job.assistant.clone(),
            attempt: job.attempt,
            causation_id: job.prompt_event_id.clone(),
        };
        let body = serde_json::to_vec(&command)?.into();
        self.command(subjects::CMD_RETRY_REPLY, body, Some(msg), shutdown).await
    }

    /// Report the finished reply. `Superseded` means a later attempt took the reply over: this
    /// one is dropped and the prompt left unacknowledged for it. The prompt message, if any, is
    /// kept alive with progress acks while the command service is unreachable.
    pub(crate) async fn report(
        &self,
        job: &Job,
        reply: Reply,
        msg: Option<&jetstream::Message>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<CommandReply> {
        let mut reply = reply;
        // Reasoning and text share one event: reasoning may take half of it.
        let mut cut = false;
        if let Some((_, reasoning)) = reply.reasoning.as_mut() {
            cut |= fit_to_event(reasoning, TEXT_ROOM / 2);
        }
        let reasoning_room = reply.reasoning.as_ref().map_or(0, |(_, r)| json_len(r));
        cut |= fit_to_event(&mut reply.text, TEXT_ROOM.saturating_sub(reasoning_room));
        if cut && reply.finish == FinishReason::Stop {
            reply.finish = FinishReason::Length;
        }
        let command = CompleteMessage {
            organization_id: job.org.clone(),
            workspace_id: job.workspace.clone(),
            session_id: job.session.clone(),
            message_id: job.assistant.clone(),
            part_id: job.part.clone(),
            text: reply.text,
            reasoning: reply.reasoning.map(|(part_id, text)| ReasoningReport { part_id, text }),
            finish: reply.finish,
            error: reply.error,
            tokens: reply.tokens,
            model: match &job.connection {
                Some(_) => job.message.model.clone(),
                None => ModelRef {
                    provider_id: "openai-compatible".into(),
                    model_id: self.provider.default_target().model,
                },
            },
            connection_id: job.connection.as_ref().map(|c| c.id.clone()),
            provider_cost_micro_dollars: reply.provider_cost,
            user_id: Some(job.message.user_id.clone()),
            attempt: job.attempt,
            causation_id: job.prompt_event_id.clone(),
        };
        let body: bytes::Bytes = serde_json::to_vec(&command)?.into();
        let limit = self.nats.server_info().max_payload;
        if body.len() > limit {
            // Cannot succeed by retrying; OC_MAX_REPLY_BYTES is set too high for this server.
            anyhow::bail!("the report is {} bytes, over the bus limit of {limit}", body.len());
        }
        let outcome = self.command(subjects::CMD_COMPLETE_MESSAGE, body, msg, shutdown).await?;
        match &outcome {
            // Committed as reported: the session's fold may take the reply on.
            CommandReply::Done { through: Some(through) } => self.history.answered(
                &job.session,
                (job.sequence, &job.message),
                &command.text,
                *through,
            ),
            // Nothing a retry can change: drop ours.
            CommandReply::Rejected { reason } => {
                tracing::warn!(%reason, message = %job.assistant, "reply rejected");
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Send an internal command until the command service gives an answer other than
    /// `Unavailable`, for at most `PATIENCE` or until shutdown.
    async fn command(
        &self,
        subject: &'static str,
        body: bytes::Bytes,
        msg: Option<&jetstream::Message>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<CommandReply> {
        let mut delay = Duration::from_millis(50);
        let deadline = Instant::now() + PATIENCE;
        loop {
            // The command continues this reply's trace (nothing is added with tracing off).
            let request = match platform::trace_context::nats_headers(&tracing::Span::current()) {
                Some(headers) => {
                    self.nats.request_with_headers(subject, headers, body.clone()).boxed()
                }
                None => self.nats.request(subject, body.clone()).boxed(),
            };
            let answer = tokio::time::timeout(Duration::from_secs(5), request).await;
            let reason = match answer {
                Ok(Ok(res)) => match serde_json::from_slice::<CommandReply>(&res.payload) {
                    Ok(CommandReply::Unavailable { reason }) => reason,
                    Ok(outcome) => return Ok(outcome),
                    Err(e) => format!("unreadable answer: {e}"),
                },
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".into(),
            };
            if shutdown.is_cancelled() || Instant::now() > deadline {
                anyhow::bail!("{subject} failed: {reason}");
            }
            tracing::warn!(%reason, subject, "command not accepted yet; retrying");
            if let Some(msg) = msg {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// Room in a stored event for the reply's text, as JSON (escaping can make text several times
/// longer: a control character becomes six bytes); the rest of the event is small.
const TEXT_ROOM: usize = MAX_EVENT_BYTES - 16 * 1024;

/// How long `text` is as JSON.
fn json_len(text: &str) -> usize {
    serde_json::to_string(text).map_or(usize::MAX, |j| j.len())
}

/// Shorten `text` until its JSON form fits `room` bytes; true if it had to.
fn fit_to_event(text: &mut String, room: usize) -> bool {
    let mut cut = false;
    loop {
        let size = json_len(text);
        if size <= room {
            return cut;
        }
        // Keep the share that fits at the current escaping ratio, and a little less.
        let keep = (text.len() as u128 * room as u128 / size as u128) as usize;
        text.truncate(floor_char_boundary(text, keep.saturating_sub(8)));
        cut = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_cut_to_fit_an_event_as_json_not_as_text() {
        let mut plain = "a".repeat(100);
        assert!(!fit_to_event(&mut plain, TEXT_ROOM));
        // 300 KiB of control characters is 1.8 MiB as JSON.
        let mut escaped = "\u{1}".repeat(300 * 1024);
        assert!(fit_to_event(&mut escaped, TEXT_ROOM));
        assert!(serde_json::to_string(&escaped).unwrap().len() <= TEXT_ROOM);
        assert!(escaped.len() > TEXT_ROOM / 7, "not cut more than needed");
    }
}
