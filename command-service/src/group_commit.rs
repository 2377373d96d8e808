//! Commits of commands running at once, on different aggregates, in one statement.
//!
//! A command's commit is one statement (`crate::event_repository`), and each statement is a
//! transaction that holds a pooled connection until its WAL flush. In a burst of new sessions
//! prompting at once the commits queued for connections and flushes: from decision to commit
//! took a median 35 ms at fifty sessions. Here the commits that arrive while others are being
//! written go out together, as one statement (one round trip, one flush): every commit whose
//! read set is still current is written, and the others are answered with what they missed, as
//! alone. A commit that finds one of the statement slots free goes out at once, alone (the same
//! statement with one commit in it), so a quiet service waits for nothing.
//!
//! The statement fails for all its commits if it fails for one: another instance took one
//! commit's sequence first (the primary key), or a deadlock. Then each commit of the batch goes
//! again alone, so only the one that lost gets the conflict. One aggregate's commits never share
//! a batch: a second waits at its aggregate's gate (`platform::batching`) until the first is
//! answered (it would conflict with it anyway), holding nothing.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use futures::StreamExt;
use platform::batching::{BatchLimits, Batcher};
use platform::telemetry::InProgress;

use crate::event_repository::{
    Checked, Commit, EventRepository, is_connection_error, shared_error,
};

/// What a commit did, with its events given back (written or not).
pub type Committed = Result<(Checked, Vec<SerializedEvent>), PersistenceError>;

/// Statements writing commits at once (each holds one pooled connection), commits in one at
/// most, commits waiting, and how long one waits for room.
const LIMITS: BatchLimits = BatchLimits {
    in_flight: 4,
    max_batch: 64,
    queue: 4096,
    per_key: 1,
    queue_wait: Duration::from_secs(3),
};

/// A commit larger than this (its events' payloads as stored) is written alone, at once, as before there
/// were shared statements: a shared statement stays under 64 × 64 KiB, so a caller sending the
/// largest events (`MAX_EVENT_BYTES` each) cannot make one statement, or the memory of four,
/// hundreds of megabytes, nor make the commits sharing it wait for its bytes. A burst's prompts
/// are a few hundred bytes each.
const SHARED_AT_MOST: usize = 64 * 1024;

/// Commits of a failed batch that go again alone at once.
const ALONE_AT_ONCE: usize = 4;

/// The commits of one kind of aggregate, gathered as above.
#[derive(Clone)]
pub struct GroupCommit {
    batcher: Batcher<Commit, Committed>,
    events: Arc<EventRepository>,
}

impl GroupCommit {
    /// Start the batching task (on the current runtime).
    pub fn start(events: Arc<EventRepository>) -> Self {
        let store = events.clone();
        let batcher = Batcher::start(LIMITS, move |commits| write(store.clone(), commits));
        Self { batcher, events }
    }

    /// Write `commit` if the states it was decided from are current (see
    /// `EventRepository::commit_if_current`), with whatever other commits are waiting.
    pub async fn commit(&self, commit: Commit) -> Committed {
        // Counted until answered, or until its caller goes away.
        let _counted = InProgress::new("commits_in_progress");
        if commit.bytes > SHARED_AT_MOST {
            let checked = self.events.commit_if_current(&commit).await?;
            return Ok((checked, commit.events));
        }
        let key = format!("{}/{}", commit.aggregate_type, commit.aggregate_id);
        self.batcher.ask(&key, commit).await.map_err(|e| {
            // Too many commits waiting, or the service stopping: answered 503.
            PersistenceError::ConnectionError(Box::new(e))
        })?
    }
}

/// Write one batch of commits, each on a different aggregate: answers in the order given.
async fn write(events: Arc<EventRepository>, commits: Vec<Commit>) -> Vec<Committed> {
    if commits.len() == 1 {
        return join_alone(&events, commits).await;
    }
    metrics::counter!("commits_sharing_a_statement_total").increment(commits.len() as u64);
    match events.commit_all_if_current(&commits).await {
        Ok(checked) => {
            checked.into_iter().zip(commits).map(|(c, commit)| Ok((c, commit.events))).collect()
        }
        // The database is out of reach: the same for every commit (each answered 503).
        Err(e) if is_connection_error(&e) => {
            commits.iter().map(|_| Err(shared_error(&e))).collect()
        }
        Err(e) => {
            tracing::debug!(error = %e, commits = commits.len(), "a shared commit failed; each goes alone");
            metrics::counter!("commit_batches_retried_alone_total").increment(1);
            join_alone(&events, commits).await
        }
    }
}

/// Each commit in a statement of its own (a few at once), in the order given.
async fn join_alone(events: &EventRepository, commits: Vec<Commit>) -> Vec<Committed> {
    futures::stream::iter(commits)
        .map(|commit| async move {
            let checked = events.commit_if_current(&commit).await?;
            Ok((checked, commit.events))
        })
        .buffered(ALONE_AT_ONCE)
        .collect()
        .await
}
