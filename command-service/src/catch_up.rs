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
//! Only catch-ups of cached aggregates come here (typically none to a few events each); a full
//! load of an aggregate nobody cached goes to the event store on its own, so one large history
//! never holds up other tenants' reads. The reading task owns each statement: a caller that
//! gives up (its client went away) takes nobody else's read with it.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use sqlx::Row;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Statements of this service's catch-up reads at once (of the pool's connections).
const IN_FLIGHT: usize = 4;
/// Reads in one statement at most.
const MAX_BATCH: usize = 256;
/// Reads waiting for a statement at most; beyond, a caller waits for room as for a connection.
const QUEUE: usize = 4096;
/// How long a read waits for room in the queue (the pool's own acquire timeout).
const QUEUE_WAIT: Duration = Duration::from_secs(3);

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

/// One caller's read.
struct Want {
    aggregate_type: &'static str,
    aggregate_id: String,
    after: i64,
    reply: oneshot::Sender<Reply>,
}

/// The handle callers read through; cheap to clone (every cache of the service shares one).
#[derive(Clone)]
pub struct CatchUp {
    queue: mpsc::Sender<Want>,
}

impl CatchUp {
    /// Start the reading task on `pool`. It ends when the last handle is dropped.
    pub fn start(pool: sqlx::PgPool) -> Self {
        let (queue, wants) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, wants));
        Self { queue }
    }

    /// The events of aggregate `aggregate_id` of kind `aggregate_type` after sequence `after`,
    /// as committed when the read began.
    pub async fn events_after(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
        after: usize,
    ) -> Reply {
        let (reply, answer) = oneshot::channel();
        let after = i64::try_from(after).map_err(|e| PersistenceError::UnknownError(e.into()))?;
        let want = Want { aggregate_type, aggregate_id: aggregate_id.to_owned(), after, reply };
        let sent = tokio::time::timeout(QUEUE_WAIT, self.queue.send(want)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(unavailable("too many reads of the event store are waiting"));
        }
        answer.await.unwrap_or_else(|_| Err(unavailable("the event store reader stopped")))
    }
}

fn unavailable(why: &str) -> PersistenceError {
    PersistenceError::ConnectionError(why.into())
}

/// Take the reads that came, one statement per batch, at most `IN_FLIGHT` at once. A slot is
/// taken before the batch is gathered, so while all are busy the queue fills into the next.
async fn run(pool: sqlx::PgPool, mut wants: mpsc::Receiver<Want>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = wants.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(want) = wants.try_recv()
        {
            batch.push(want);
        }
        // Callers that went away while waiting are not read for.
        batch.retain(|w| !w.reply.is_closed());
        let pool = pool.clone();
        tokio::spawn(async move {
            read(&pool, batch).await;
            drop(slot);
        });
    }
}

/// One statement for `batch`, each caller answered with its own events (or the failure).
async fn read(pool: &sqlx::PgPool, batch: Vec<Want>) {
    if batch.is_empty() {
        return;
    }
    metrics::histogram!("event_store_catch_up_batch_size").record(batch.len() as f64);
    let types: Vec<&str> = batch.iter().map(|w| w.aggregate_type).collect();
    let ids: Vec<&str> = batch.iter().map(|w| w.aggregate_id.as_str()).collect();
    let afters: Vec<i64> = batch.iter().map(|w| w.after).collect();
    let rows = sqlx::query(EVENTS_AFTER).bind(types).bind(ids).bind(afters).fetch_all(pool).await;
    let mut events: Vec<Vec<SerializedEvent>> = batch.iter().map(|_| Vec::new()).collect();
    let failure = match rows {
        Ok(rows) => rows.iter().try_for_each(|row| {
            let n: i64 = row.try_get("n")?;
            let whose = usize::try_from(n - 1).ok().and_then(|i| events.get_mut(i));
            whose.ok_or(sqlx::Error::RowNotFound)?.push(serialized(row)?);
            Ok::<_, sqlx::Error>(())
        }),
        Err(e) => Err(e),
    }
    .err();
    for (want, events) in batch.into_iter().zip(events) {
        let answer = match &failure {
            None => Ok(events),
            Some(e) => Err(crate::event_repository::shared_error(e)),
        };
        // A caller that went away meanwhile needs no answer.
        let _ = want.reply.send(answer);
    }
}

/// A row as postgres-es reads one.
fn serialized(row: &sqlx::postgres::PgRow) -> Result<SerializedEvent, sqlx::Error> {
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
