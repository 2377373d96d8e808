//! Catch-up reads — the events committed after a cached aggregate's sequence — of every command
//! running at once, in one statement.
//!
//! A prompt reads three aggregates' catch-up (its session, workspace and organization), each a
//! statement waiting for a pooled connection; under a burst those waits are most of a command's
//! time. Here a read goes out at once when a slot is free, and while every slot is busy the
//! reads that arrive meanwhile wait together and go out as one statement: nothing is added at
//! one command, and a burst needs a few statements instead of three per prompt. The statement
//! binds its sequences as parameters, so it is prepared once per connection (postgres-es writes
//! the sequence into its query text: a new statement to parse and plan for every sequence).
//!
//! Identical reads waiting at once (a burst of one organization's prompts all read that
//! organization after the same cached sequence) take one place in the queue and share one
//! answer; a read only joins one not yet sent, so it never answers with less than was
//! committed when its command began.
//!
//! Only catch-ups of cached aggregates come here (typically none to a few events each); a full
//! load of an aggregate nobody cached goes to the event store on its own, so one large history
//! never holds up other tenants' reads. The batching itself is `platform::batching`.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use platform::batching::{BatchLimits, JoiningBatcher};
use sqlx::Row;

/// Four statements at once (of the pool's connections), 256 reads in one at most, 4,096 waiting,
/// 32 different reads of one aggregate at once (identical ones are joined); beyond, a read waits
/// for its turn and room as long as for a connection (then 503).
const LIMITS: BatchLimits = BatchLimits {
    in_flight: 4,
    max_batch: 256,
    queue: 4096,
    per_key: 32,
    queue_wait: Duration::from_secs(3),
};

/// Each wanted aggregate's events after its sequence, in order; `n` says whose they are. The
/// lateral subquery (kept apart by `OFFSET 0`) is always an index scan of the primary key per
/// wanted aggregate: as a plain join, the plan PostgreSQL keeps for a prepared statement could
/// be the one chosen while `events` was small (a hash join over a scan of the whole table), and
/// a new deployment's statements would scan every event for each read until the next `ANALYZE`.
const EVENTS_AFTER: &str = "SELECT w.n, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
        e.event_version, e.payload, e.metadata \
     FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS w(aggregate_type, aggregate_id, after, n) \
     CROSS JOIN LATERAL ( \
         SELECT * FROM events e WHERE e.aggregate_type = w.aggregate_type \
             AND e.aggregate_id = w.aggregate_id AND e.sequence > w.after \
         ORDER BY e.sequence OFFSET 0) e \
     ORDER BY w.n, e.sequence";

type Reply = Result<Vec<SerializedEvent>, PersistenceError>;

/// One read's events, or why the statement failed (shared by every caller of the batch).
type Read = Result<Vec<SerializedEvent>, Arc<sqlx::Error>>;

/// One caller's read.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Want {
    aggregate_type: &'static str,
    aggregate_id: String,
    after: i64,
}

/// The handle callers read through; cheap to clone (every cache of the service shares one).
#[derive(Clone)]
pub struct CatchUp {
    batcher: JoiningBatcher<Want, Read>,
}

impl CatchUp {
    /// Start reading on `pool`; the batching task ends when the last handle is dropped.
    pub fn start(pool: sqlx::PgPool) -> Self {
        Self { batcher: JoiningBatcher::start(LIMITS, move |batch| read(pool.clone(), batch)) }
    }

    /// The events of aggregate `aggregate_id` of kind `aggregate_type` after sequence `after`,
    /// as committed when the read began.
    pub async fn events_after(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
        after: usize,
    ) -> Reply {
        let after = i64::try_from(after).map_err(|e| PersistenceError::UnknownError(e.into()))?;
        let want = Want { aggregate_type, aggregate_id: aggregate_id.to_owned(), after };
        match self.batcher.ask(&format!("{aggregate_type}:{aggregate_id}"), want).await {
            Ok(Ok(events)) => Ok(events),
            Ok(Err(e)) => Err(crate::event_repository::shared_error(&e)),
            Err(e) => Err(PersistenceError::ConnectionError(e.into())),
        }
    }
}

/// One statement for `batch` (no two alike): each read's events, or the failure.
async fn read(pool: sqlx::PgPool, batch: Vec<Want>) -> Vec<Read> {
    metrics::histogram!("event_store_catch_up_batch_size").record(batch.len() as f64);
    match read_all(&pool, &batch).await {
        Ok(events) => events.into_iter().map(Ok).collect(),
        Err(e) => {
            let e = Arc::new(e);
            batch.iter().map(|_| Err(e.clone())).collect()
        }
    }
}

/// The events of each of `batch`, in `batch`'s order.
async fn read_all(
    pool: &sqlx::PgPool,
    batch: &[Want],
) -> Result<Vec<Vec<SerializedEvent>>, sqlx::Error> {
    let types: Vec<&str> = batch.iter().map(|w| w.aggregate_type).collect();
    let ids: Vec<&str> = batch.iter().map(|w| w.aggregate_id.as_str()).collect();
    let afters: Vec<i64> = batch.iter().map(|w| w.after).collect();
    let rows = sqlx::query(EVENTS_AFTER).bind(types).bind(ids).bind(afters).fetch_all(pool).await?;
    let mut events: Vec<Vec<SerializedEvent>> = batch.iter().map(|_| Vec::new()).collect();
    for row in &rows {
        let n: i64 = row.try_get("n")?;
        let whose = usize::try_from(n - 1).ok().and_then(|i| events.get_mut(i));
        whose.ok_or(sqlx::Error::RowNotFound)?.push(serialized(row)?);
    }
    Ok(events)
}

/// A row as postgres-es reads one.
pub(crate) fn serialized(row: &sqlx::postgres::PgRow) -> Result<SerializedEvent, sqlx::Error> {
    let sequence: i64 = row.try_get("sequence")?;
    Ok(SerializedEvent {
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: usize::try_from(sequence).map_err(|e| sqlx::Error::Decode(e.into()))?,
        aggregate_type: row.try_get("aggregate_type")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
    })
}
