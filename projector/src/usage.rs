//! Usage per organization × day × user × workspace × model × connection, added up from each
//! `message.completed` in the same transaction as the rest of its projection (so a rebuild
//! gives the same sums). Whether the connection was a member's own key is read from the
//! connections read model as it stands at that point of the event order.

use schemas::events::AssistantCompletion;
use schemas::ids::SessionId;

use crate::projection::{Step, step};

/// The statement adding `message`'s usage to its row.
pub(crate) fn record(session: &SessionId, message: &AssistantCompletion) -> Step {
    let t = &message.tokens;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    step!(
        "INSERT INTO rm_usage AS u (organization_id, day, user_id, workspace_id, provider_id, model_id, \
             connection_id, own_key, requests, input_tokens, output_tokens, reasoning_tokens, \
             cache_read_tokens, cache_write_tokens, cost_micro_dollars) \
         SELECT s.organization_id, (to_timestamp($2::bigint / 1000.0) AT TIME ZONE 'UTC')::date, $3, \
                coalesce(nullif($4, ''), s.workspace_id), $5, $6, $7, \
                coalesce((SELECT c.owner_id IS NOT NULL FROM rm_connections c WHERE c.connection_id = $7), false), \
                1, $8, $9, $10, $11, $12, $13 \
         FROM rm_sessions s WHERE s.session_id = $1 \
         ON CONFLICT (organization_id, day, user_id, workspace_id, provider_id, model_id, connection_id, own_key) \
         DO UPDATE SET requests = u.requests + 1, input_tokens = u.input_tokens + EXCLUDED.input_tokens, \
             output_tokens = u.output_tokens + EXCLUDED.output_tokens, \
             reasoning_tokens = u.reasoning_tokens + EXCLUDED.reasoning_tokens, \
             cache_read_tokens = u.cache_read_tokens + EXCLUDED.cache_read_tokens, \
             cache_write_tokens = u.cache_write_tokens + EXCLUDED.cache_write_tokens, \
             cost_micro_dollars = u.cost_micro_dollars + EXCLUDED.cost_micro_dollars",
        session.to_string(),
        message.time,
        message.user_id.as_ref().map_or(String::new(), |u| u.to_string()),
        message.workspace_id.as_ref().map_or(String::new(), |w| w.to_string()),
        message.model.provider_id.clone(),
        message.model.model_id.clone(),
        // No connection (a deployment-wide key) is the empty string, which names none.
        message.connection_id.as_ref().map_or(String::new(), |c| c.to_string()),
        n(t.input),
        n(t.output),
        n(t.reasoning),
        n(t.cache.read),
        n(t.cache.write),
        message.cost.map_or(0, |c| n(c.micro_dollars)),
    )
}
