//! `projector rebuild`: replay the whole event store into fresh read models, in one transaction,
//! so readers see the old state until the new one is complete. Events are read in `position`
//! order, which is each aggregate's sequence order.
//!
//! An event that cannot be projected does not stop the rebuild: it is parked (as the live
//! projector would), its aggregate moves past it, and the rebuild reports how many it parked.

use deadpool_postgres::Transaction;
use schemas::envelope::Envelope;
use serde_json::Value;

use crate::event_store;
use crate::projection::{self, Outcome};

const PAGE: i64 = 1000;

/// Every read-model table (by the `rm_` naming rule of `migrations/`), so a new read model is
/// rebuilt without anyone remembering to list it.
pub const READ_MODEL_TABLES: &str = "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'rm\\_%' ORDER BY 1";

/// What a rebuild did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    pub applied: u64,
    /// Events skipped and recorded in `parked_events` (the ids are logged).
    pub parked: u64,
}

pub async fn rebuild(pool: &deadpool_postgres::Pool) -> anyhow::Result<Rebuilt> {
    let mut client = pool.get().await?;
    let mut tx = client.transaction().await?;
    for row in tx.query(READ_MODEL_TABLES, &[]).await? {
        let table: String = row.get(0);
        tx.execute(&format!("DELETE FROM {table}"), &[]).await?;
    }
    // The projector's parkings are re-decided by this replay; the relay's stay.
    tx.execute("DELETE FROM parked_events WHERE stage = 'projector'", &[]).await?;
    // Pages are read on a connection of their own, the next one while this one is applied.
    let reader = pool.get().await?;
    let mut done = Rebuilt::default();
    let mut page = event_store::page(&reader, 0, PAGE).await?;
    loop {
        let next = async {
            match page.last() {
                Some((last, _)) if page.len() as i64 == PAGE => {
                    event_store::page(&reader, *last, PAGE).await.map(Some)
                }
                _ => Ok(None),
            }
        };
        // Usually every event of the page applies: one savepoint for the page, and all its
        // statements sent at once. If any does not, the page is undone and applied again event
        // by event, each in its own savepoint, parking what fails.
        let (applied, next) = tokio::join!(apply_page(&mut tx, &page), next);
        match applied? {
            Some(applied) => done.applied += applied,
            None => replay_page(&mut tx, page, &mut done).await?,
        }
        match next? {
            Some(next) => page = next,
            None => break,
        }
    }
    tx.commit().await?;
    Ok(done)
}

/// Apply a whole page inside one savepoint, its statements pipelined: the number applied, or
/// `None` (and nothing applied) if any event is unreadable or does not apply.
async fn apply_page(
    tx: &mut Transaction<'_>,
    page: &[(i64, anyhow::Result<Envelope<Value>>)],
) -> anyhow::Result<Option<u64>> {
    let Some(envelopes) =
        page.iter().map(|(_, e)| e.as_ref().ok()).collect::<Option<Vec<&Envelope<Value>>>>()
    else {
        return Ok(None);
    };
    let savepoint = tx.savepoint("page").await?;
    match projection::apply_pipelined(&savepoint, &envelopes).await {
        Ok(true) => {
            savepoint.commit().await?;
            Ok(Some(page.len() as u64))
        }
        Ok(false) | Err(_) => {
            savepoint.rollback().await?;
            Ok(None)
        }
    }
}

/// Apply a page event by event, each in its own savepoint, parking what fails.
async fn replay_page(
    tx: &mut Transaction<'_>,
    page: Vec<(i64, anyhow::Result<Envelope<Value>>)>,
    done: &mut Rebuilt,
) -> anyhow::Result<()> {
    for (position, envelope) in page {
        let envelope = match envelope {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(position, error = %e, "unreadable event in the store; skipped");
                done.parked += 1;
                continue;
            }
        };
        match replay_one(tx, &envelope).await {
            Ok(()) => done.applied += 1,
            Err(reason) => {
                tracing::error!(event = %envelope.id, %reason, "event parked by the rebuild");
                projection::park_anyway(tx, &envelope, &reason).await?;
                done.parked += 1;
            }
        }
    }
    Ok(())
}

/// Apply one event inside a savepoint, so a failure undoes only that event.
async fn replay_one(tx: &mut Transaction<'_>, envelope: &Envelope<Value>) -> Result<(), String> {
    let savepoint = tx.savepoint("event").await.map_err(|e| e.to_string())?;
    match projection::apply(&savepoint, envelope).await {
        Ok(Outcome::Applied) => savepoint.commit().await.map_err(|e| e.to_string()),
        Ok(other) => Err(format!("replay gave {other:?}")),
        Err(e) => Err(format!("{e:#}")),
    }
}
