//! The conversation so far, folded from the session's own events in the event store: every
//! event before a prompt was committed before the prompt event was even published, so the fold
//! is always complete, with no wait on the projector and no reading of its private JSON. An
//! abort of the reply is an event too.
//!
//! Folds are cached per session (bounded by count and by the text they hold), so a long
//! conversation is not re-read for every prompt: the next prompt reads only the events after
//! the cached fold. A reply the command service committed just as this worker reported it, right
//! after its prompt, extends the fold without a read (`History::answered`), so the session's
//! next prompt, if it comes here and nothing came between, needs no read at all
//! (`History::known`). Every cached fold is a prefix of the session's events, whichever way it
//! was made. Only the newest turns that fit the budget are sent.

use std::sync::Arc;
use std::time::Instant;

use moka::sync::Cache;
use schemas::events::{COMPLETE_COMMIT_EVENTS, PROMPT_COMMIT_EVENTS, SessionEvent, UserMessage};
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
            SessionEvent::Prompted { message, .. } => self.asked(&message),
            SessionEvent::MessageCompleted { message, .. } => {
                self.answered(message.parts.iter().map(|p| p.text()).collect());
            }
            _ => {}
        }
    }

    fn asked(&mut self, message: &UserMessage) {
        let text: Vec<&str> = message.parts.iter().map(|p| p.text()).collect();
        self.turns.push(Turn { user: true, text: text.join("\n").into() });
    }

    /// A reply's text, as its completion holds it (reasoning parts add none; an empty reply
    /// is no turn).
    fn answered(&mut self, text: String) {
        if !text.is_empty() {
            self.turns.push(Turn { user: false, text: text.into() });
        }
    }

    /// Whether the fold holds every turn before the prompt at `prompt`: it reaches at least
    /// the event before the prompt's commit (which adds only the busy status), and not past it.
    fn is_complete_before(&self, prompt: i64) -> bool {
        self.sequence < prompt && self.sequence + PROMPT_COMMIT_EVENTS as i64 >= prompt
    }
}

/// Whether the prompt at `sequence` has no turns before it, without reading: a session's events
/// begin with its creation (sequence 1), and a prompt's commit puts the session's busy status
/// before the prompt itself, so a session's first prompt is its third event and any later one
/// comes after at least one more. (Unless it is sure to hear any abort of the prompt, the worker
/// still reads, beside the provider call, and fails the attempt if turns turn up: see
/// `generation.rs`.)
pub fn is_first_prompt(sequence: u64) -> bool {
    sequence <= 1 + PROMPT_COMMIT_EVENTS
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

    /// The turns before the prompt at `prompt_sequence`, within `budget`, from the cached fold
    /// alone: only if it holds every one of them. An abort of the reply is not looked for: the
    /// caller must be sure to hear it live.
    pub fn known(
        &self,
        session: &SessionId,
        prompt_sequence: u64,
        budget: usize,
    ) -> Option<Vec<ChatMessage>> {
        let prompt = i64::try_from(prompt_sequence).ok()?;
        let fold = self.folds.get(session).filter(|f| f.is_complete_before(prompt))?;
        Some(newest_within(&fold.turns, budget))
    }

    /// The reply to the prompt at `prompt_sequence` was committed as reported (`text`), by a
    /// commit whose last event is `through`. If that commit came right after the prompt's and
    /// the fold held every turn before the prompt, the fold goes on to `through` with the
    /// prompt and the reply: the session's next prompt, if nothing comes between, reads
    /// nothing. Otherwise the fold stays as it is (the next read fetches what it lacks).
    pub fn answered(
        &self,
        session: &SessionId,
        (prompt_sequence, prompt): (u64, &UserMessage),
        text: &str,
        through: u64,
    ) {
        let (Ok(at), Ok(through)) = (i64::try_from(prompt_sequence), i64::try_from(through)) else {
            return;
        };
        if through != at + COMPLETE_COMMIT_EVENTS as i64 {
            return;
        }
        let mut fold = match self.folds.get(session) {
            Some(fold) if fold.is_complete_before(at) => fold.as_ref().clone(),
            // A first prompt answered without a read: nothing before it but the creation.
            None if is_first_prompt(prompt_sequence) => Fold::default(),
            _ => return,
        };
        fold.asked(prompt);
        fold.answered(text.to_owned());
        fold.sequence = through;
        // A read for a later prompt racing this may have cached a longer fold, or this one
        // may replace it: either is a prefix of the session's events.
        self.folds.insert(session.clone(), Arc::new(fold));
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

    fn asking(text: &str) -> UserMessage {
        use schemas::ids::{PartId, UserId};
        let id = MessageId::new();
        UserMessage {
            parts: vec![schemas::message::Part::Text {
                id: PartId::new(),
                message_id: id.clone(),
                text: text.into(),
            }],
            id,
            user_id: UserId::new(),
            model: schemas::message::ModelRef {
                provider_id: "default".into(),
                model_id: "default".into(),
            },
            time: 0,
        }
    }

    fn contents(turns: Option<Vec<ChatMessage>>) -> Option<Vec<String>> {
        turns.map(|t| t.into_iter().map(|m| format!("{}: {}", m.role, m.content)).collect())
    }

    // A session's events: created (1); busy (2), prompted (3); completed (4), idle (5); busy
    // (6), prompted (7); ...
    #[test]
    fn replies_committed_right_after_their_prompts_make_the_next_prompt_known() {
        let history = History::default();
        let session = SessionId::new();
        assert_eq!(contents(history.known(&session, 7, 1000)), None, "nothing cached");
        // The first prompt, answered without a read.
        history.answered(&session, (3, &asking("one")), "two", 5);
        let second = Some(vec!["user: one".to_owned(), "assistant: two".to_owned()]);
        assert_eq!(contents(history.known(&session, 7, 1000)), second);
        assert_eq!(contents(history.known(&session, 8, 1000)), None, "an event came between");
        history.answered(&session, (7, &asking("three")), "", 9);
        let third = contents(history.known(&session, 11, 1000)).unwrap();
        assert_eq!(third.len(), 3, "an empty reply is no turn: {third:?}");
        assert_eq!(third[2], "user: three");
    }

    #[test]
    fn a_reply_not_right_after_its_prompt_or_after_an_incomplete_fold_leaves_the_fold() {
        let history = History::default();
        let session = SessionId::new();
        // An abort request (4) came between the prompt and its reply (5, 6).
        history.answered(&session, (3, &asking("one")), "two", 6);
        assert!(history.known(&session, 8, 1000).is_none());
        // A later prompt with no fold before it: unknown what came before.
        history.answered(&session, (7, &asking("one")), "two", 9);
        assert!(history.known(&session, 11, 1000).is_none());
        // A fold that stops short of the prompt's commit.
        history.answered(&session, (3, &asking("one")), "two", 5);
        history.answered(&session, (11, &asking("three")), "four", 13);
        assert!(history.known(&session, 15, 1000).is_none());
        assert!(history.known(&session, 7, 1000).is_some(), "the fold kept as it was");
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
