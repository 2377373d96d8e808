//! `projector rebuild`: replay the whole event store into fresh read models, in one transaction,
//! so readers see the old state until the new one is complete. Events are read in `position`
//! order, which is each aggregate's sequence order.

use platform::stored_event::StoredEvent;

use crate::projection::{self, Outcome};

const PAGE: i64 = 1000;

/// Every read-model table (by the `rm_` naming rule of `migrations/`), so a new read model is
/// rebuilt without anyone remembering to list it.
pub const READ_MODEL_TABLES: &str = "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'rm\\_%' ORDER BY 1";

/// Returns how many events were applied.
pub async fn rebuild(pool: &deadpool_postgres::Pool) -> anyhow::Result<u64> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    for row in tx.query(READ_MODEL_TABLES, &[]).await? {
        let table: String = row.get(0);
        tx.execute(&format!("DELETE FROM {table}"), &[]).await?;
    }
    let mut after = 0_i64;
    let mut applied = 0;
    loop {
        let rows = tx
            .query(
                "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
                        payload::jsonb, metadata::jsonb, (extract(epoch FROM recorded_at) * 1000)::bigint \
                 FROM events WHERE position > $1 ORDER BY position LIMIT $2",
                &[&after, &PAGE],
            )
            .await?;
        for row in &rows {
            after = row.get(0);
            let event = StoredEvent {
                aggregate_type: row.get(1),
                aggregate_id: row.get(2),
                sequence: row.get(3),
                event_type: row.get(4),
                event_version: row.get(5),
                payload: row.get(6),
                metadata: row.get(7),
                recorded_at_ms: row.get(8),
            };
            let (_, envelope) = event.to_envelope()?;
            match projection::apply(&tx, &envelope).await? {
                Outcome::Applied => applied += 1,
                other => anyhow::bail!("replay of {} gave {other:?}", envelope.id),
            }
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    tx.commit().await?;
    Ok(applied)
}
