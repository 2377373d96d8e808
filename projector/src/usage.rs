//! Usage per organization × day × user × workspace × model × connection, added up from each
//! `message.completed` in the same transaction as the rest of its projection (so a rebuild
//! gives the same sums). Whether the connection was a member's own key is read from the
//! connections read model as it stands at that point of the event order.

use deadpool_postgres::Transaction;
use schemas::events::AssistantCompletion;
use schemas::ids::SessionId;

use crate::projection::exec;

pub async fn record(
    tx: &Transaction<'_>,
    session: &SessionId,
    message: &AssistantCompletion,
) -> anyhow::Result<()> {
    let connection = message.connection_id.as_ref().map_or("", |c| c.as_str());
    let own_key = match &message.connection_id {
        None => false,
        Some(c) => tx
            .query_opt(
                "SELECT owner_id IS NOT NULL FROM rm_connections WHERE connection_id = $1",
                &[&c.as_str()],
            )
            .await?
            .is_some_and(|r| r.get(0)),
    };
    let t = &message.tokens;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let cost = message.cost.map_or(0, |c| n(c.micro_dollars));
    exec(
        tx,
        "INSERT INTO rm_usage AS u (organization_id, day, user_id, workspace_id, provider_id, model_id, \
             connection_id, own_key, requests, input_tokens, output_tokens, reasoning_tokens, \
             cache_read_tokens, cache_write_tokens, cost_micro_dollars) \
         SELECT s.organization_id, (to_timestamp($2::bigint / 1000.0) AT TIME ZONE 'UTC')::date, $3, \
                coalesce(nullif($4, ''), s.workspace_id), $5, $6, $7, $8, 1, $9, $10, $11, $12, $13, $14 \
         FROM rm_sessions s WHERE s.session_id = $1 \
         ON CONFLICT (organization_id, day, user_id, workspace_id, provider_id, model_id, connection_id, own_key) \
         DO UPDATE SET requests = u.requests + 1, input_tokens = u.input_tokens + EXCLUDED.input_tokens, \
             output_tokens = u.output_tokens + EXCLUDED.output_tokens, \
             reasoning_tokens = u.reasoning_tokens + EXCLUDED.reasoning_tokens, \
             cache_read_tokens = u.cache_read_tokens + EXCLUDED.cache_read_tokens, \
             cache_write_tokens = u.cache_write_tokens + EXCLUDED.cache_write_tokens, \
             cost_micro_dollars = u.cost_micro_dollars + EXCLUDED.cost_micro_dollars",
        &[
            &session.as_str(),
            &message.time,
            &message.user_id.as_ref().map_or("", |u| u.as_str()),
            &message.workspace_id.as_ref().map_or("", |w| w.as_str()),
            &message.model.provider_id,
            &message.model.model_id,
            &connection,
            &own_key,
            &n(t.input),
            &n(t.output),
            &n(t.reasoning),
            &n(t.cache.read),
            &n(t.cache.write),
            &cost,
        ],
    )
    .await?;
    Ok(())
}
