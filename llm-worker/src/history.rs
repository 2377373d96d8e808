//! The conversation so far, read from the read models. A prompt is only accepted once the
//! previous reply completed, so waiting for the session's read model to reach the last event
//! before the prompt's commit guarantees the history is complete (and usually it already has:
//! the wait does not include projecting the prompt itself).
//!
//! Only the newest turns that fit `OC_WORKER_CONTEXT_BYTES` (with the prompt) are read and sent:
//! a long session costs no more per prompt than a short one.

use std::time::{Duration, Instant};

use schemas::events::PROMPT_COMMIT_EVENTS;
use schemas::ids::{MessageId, SessionId};

use crate::providers::ChatMessage;

/// How long to wait for the projector to catch up before answering with what is there.
const CATCH_UP: Duration = Duration::from_secs(5);

/// What the worker needs to know before answering.
pub struct Conversation {
    /// The turns before the prompt, oldest first.
    pub turns: Vec<ChatMessage>,
    /// The user already asked to stop this reply (before this worker got to it).
    pub abort_requested: bool,
}

pub async fn load(
    pool: &deadpool_postgres::Pool,
    session: &SessionId,
    prompt_sequence: u64,
    before: &MessageId,
    reply: &MessageId,
    budget_bytes: usize,
) -> anyhow::Result<Conversation> {
    let needed = i64::try_from(prompt_sequence.saturating_sub(PROMPT_COMMIT_EVENTS))?;
    let started = Instant::now();
    let deadline = started + CATCH_UP;
    let mut delay = Duration::from_millis(2);
    // The connection goes back to the pool while waiting: replies being generated outnumber the
    // pool's connections, and a waiting reply must not hold one another reply needs.
    let client = loop {
        let client = pool.get().await?;
        let at: i64 = client
            .query_opt(
                "SELECT sequence FROM rm_positions WHERE aggregate_id = $1",
                &[&session.as_str()],
            )
            .await?
            .map_or(0, |r| r.get(0));
        if at >= needed {
            break client;
        }
        if Instant::now() >= deadline {
            tracing::warn!(%session, at, needed, "read model behind; answering with the history it has");
            break client;
        }
        drop(client);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    };
    metrics::histogram!("history_wait_seconds").record(started.elapsed().as_secs_f64());
    // The newest turns whose text fits the budget, counted from the newest back, so the work
    // per prompt is bounded whatever the session's length.
    let budget = i64::try_from(budget_bytes).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT role, parts FROM ( \
                 SELECT message_id, role, parts, \
                        sum(octet_length(parts::text)) OVER (ORDER BY message_id DESC) AS newer \
                 FROM rm_messages \
                 WHERE session_id = $1 AND message_id < $2 AND (role = 'user' OR info ? 'finish') \
             ) t WHERE newer <= $3 ORDER BY message_id",
            &[&session.as_str(), &before.as_str(), &budget],
        )
        .await?;
    let abort_requested = client
        .query_opt(
            "SELECT 1 FROM rm_messages \
             WHERE session_id = $1 AND message_id = $2 AND (info->>'abortRequested')::boolean",
            &[&session.as_str(), &reply.as_str()],
        )
        .await?
        .is_some();
    let mut turns: Vec<ChatMessage> = rows
        .iter()
        .filter_map(|row| {
            let role: String = row.get(0);
            let parts: serde_json::Value = row.get(1);
            let text: String = parts
                .as_array()?
                .iter()
                // Text only: reasoning is not sent back.
                .filter(|p| p.get("type").and_then(|t| t.as_str()) == Some("text"))
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join("\n");
            (!text.is_empty()).then(|| ChatMessage {
                role: if role == "user" { "user" } else { "assistant" },
                content: text,
            })
        })
        .collect();
    // A conversation starts with the user: drop a reply whose prompt did not fit.
    if turns.first().is_some_and(|t| t.role != "user") {
        turns.remove(0);
    }
    Ok(Conversation { turns, abort_requested })
}
