//! The conversation so far, folded from the session's own events in the event store: every
//! event before a prompt was committed before the prompt event was even published, so the fold
//! is always complete, with no wait on the projector and no reading of its private JSON. An
//! abort of the reply is an event too.
//!
//! Folds are cached per session (bounded by count and by the text they hold), so a long
//! conversation is not re-read for every prompt: the next prompt reads only the events after
//! the cached fold. Only the newest turns that fit the budget are sent.

use std::sync::Arc;
use std::time::Instant;

use moka::sync::Cache;
use schemas::events::SessionEvent;
use schemas::ids::{MessageId, SessionId};

use crate::providers::ChatMessage;

/// Sessions whose folds are kept.
const CACHED_SESSIONS: u64 = 1_000;
/// Text the cached folds may hold together, in bytes.
const CACHED_BYTES: u64 = 256 * 1024 * 1024;

/// One turn: who said it, and its text (reasoning is not part of it).
#[derive(Debug, Clone)]
struct Turn {
    user: bool,
    text: Arc<str>,
}

/// A session's conversation up to (and including) `sequence`.
#[derive(Debug, Clone, Default)]
struct Fold {
    sequence: i64,
    turns: Vec<Turn>,
}

impl Fold {
    fn bytes(&self) -> usize {
        self.turns.iter().map(|t| t.text.len()).sum()
    }

    fn apply(&mut self, sequence: i64, event: SessionEvent) {
        self.sequence = sequence;
        match event {
            SessionEvent::Prompted { message, .. } => {
                let text: Vec<&str> = message.parts.iter().map(|p| p.text()).collect();
                self.turns.push(Turn { user: true, text: text.join("\n").into() });
            }
            SessionEvent::MessageCompleted { message, .. } => {
                let text: String = message.parts.iter().map(|p| p.text()).collect();
                if !text.is_empty() {
                    self.turns.push(Turn { user: false, text: text.into() });
                }
            }
            _ => {}
        }
    }
}

/// Whether the prompt at `sequence` has no turns before it, without reading: a session's events
/// begin with its creation (sequence 1), and a prompt's commit puts the session's busy status
/// before the prompt itself, so a session's first prompt is its third event and any later one
/// comes after at least one more. (Unless it is sure to hear any abort of the prompt, the worker
/// still reads, beside the provider call, and fails the attempt if turns turn up: see
/// `generation.rs`.)
pub fn is_first_prompt(sequence: u64) -> bool {
    sequence <= 3
}

/// What the worker needs to know before answering.
#[derive(Default)]
pub struct Conversation {
    /// The turns before the prompt, oldest first, newest that fit the budget.
    pub turns: Vec<ChatMessage>,
    /// The user already asked to stop this reply (before this worker got to it).
    pub abort_requested: bool,
}

impl Conversation {
    /// No turns before the prompt, and the reply not aborted: what a first prompt's read must find.
    pub fn is_empty_and_open(&self) -> bool {
        self.turns.is_empty() && !self.abort_requested
    }
}

/// Folds of recent sessions.
#[derive(Clone)]
pub struct History {
    folds: Cache<SessionId, Arc<Fold>>,
}

impl Default for History {
    fn default() -> Self {
        let folds = Cache::builder()
            .max_capacity(CACHE_WEIGHT)
            .weigher(|_, fold: &Arc<Fold>| {
                u32::try_from(fold.bytes() / 1024 + 1).unwrap_or(u32::MAX)
            })
            .build();
        Self { folds }
    }
}

/// The cache's capacity in its weight unit (KiB of text, at least one per session).
const CACHE_WEIGHT: u64 = CACHED_BYTES / 1024 + CACHED_SESSIONS;

impl History {
    /// The conversation before the prompt at `prompt_sequence` of `session`, within `budget`
    /// bytes of text, and whether `reply` was aborted already.
    pub async fn load(
        &self,
        pool: &deadpool_postgres::Pool,
        session: &SessionId,
        prompt_sequence: u64,
        reply: &MessageId,
        budget: usize,
    ) -> anyhow::Result<Conversation> {
        let started = Instant::now();
        let prompt = i64::try_from(prompt_sequence)?;
        let cached = self.folds.get(session).filter(|f| f.sequence < prompt);
        let mut fold = cached.as_deref().cloned().unwrap_or_default();
        let client = pool.get().await?;
        // Prepared once per connection: one round trip per read instead of a prepare and a read.
        let read = client
            .prepare_cached(
                "SELECT sequence, payload::jsonb FROM events \
                 WHERE aggregate_type = 'session' AND aggregate_id = $1 AND sequence > $2 \
                 ORDER BY sequence",
            )
            .await?;
        let rows = client.query(&read, &[&session.as_str(), &fold.sequence]).await?;
        drop(client);
        let mut abort_requested = false;
        for row in rows {
            let sequence: i64 = row.get(0);
            let event: SessionEvent = serde_json::from_value(row.get(1))?;
            if sequence >= prompt {
                // After the prompt, only whether this reply was aborted matters.
                abort_requested |= matches!(
                    &event, SessionEvent::AbortRequested { message_id, .. } if message_id == reply
                );
                continue;
            }
            fold.apply(sequence, event);
        }
        let turns = newest_within(&fold.turns, budget);
        self.folds.insert(session.clone(), Arc::new(fold));
        metrics::histogram!("history_read_seconds").record(started.elapsed().as_secs_f64());
        Ok(Conversation { turns, abort_requested })
    }
}

/// The newest turns whose text fits `budget` bytes, oldest first, starting with the user.
fn newest_within(turns: &[Turn], budget: usize) -> Vec<ChatMessage> {
    let mut used = 0;
    let mut kept: Vec<&Turn> = turns
        .iter()
        .rev()
        .take_while(|t| {
            used += t.text.len();
            used <= budget
        })
        .collect();
    kept.reverse();
    let start = kept.iter().position(|t| t.user).unwrap_or(kept.len());
    kept[start..]
        .iter()
        .map(|t| ChatMessage {
            role: if t.user { "user" } else { "assistant" },
            content: t.text.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(user: bool, text: &str) -> Turn {
        Turn { user, text: text.into() }
    }

    #[test]
    fn the_newest_turns_that_fit_are_kept_starting_with_the_user() {
        let turns = [turn(true, "aaaa"), turn(false, "bbbb"), turn(true, "cc"), turn(false, "dd")];
        let kept = newest_within(&turns, 8);
        let roles: Vec<&str> = kept.iter().map(|m| m.role).collect();
        assert_eq!(roles, ["user", "assistant"], "bbbb does not start with the user");
        assert_eq!(kept[0].content, "cc");
        assert_eq!(newest_within(&turns, 100).len(), 4);
        assert!(newest_within(&turns, 1).is_empty());
    }
}
