//! Usage per organization × day × user × workspace × model × connection, added up from each
//! `message.completed` in the same transaction as the rest of its projection (so a rebuild
//! gives the same sums). Whether the connection was a member's own key is read from the
//! connections read model as it stands at that point of the event order.

use schemas::events::AssistantCompletion;
use schemas::ids::SessionId;

use crate::projection::{Step, step};

/// Adds each row's sums to its counters (several replies of a batch may count toward one row,
/// which one `INSERT … ON CONFLICT` may change only once: hence summed first).
const USAGE: &str = "INSERT INTO rm_usage AS u (organization_id, day, user_id, workspace_id, provider_id, \
         model_id, connection_id, own_key, requests, input_tokens, output_tokens, reasoning_tokens, \
         cache_read_tokens, cache_write_tokens, cost_micro_dollars) \
     SELECT organization_id, day, user_id, workspace_id, provider_id, model_id, connection_id, own_key, \
         count(*), sum(input)::bigint, sum(output)::bigint, sum(reasoning)::bigint, \
         sum(cache_read)::bigint, sum(cache_write)::bigint, sum(cost)::bigint \
     FROM (SELECT s.organization_id, (to_timestamp(x.at / 1000.0) AT TIME ZONE 'UTC')::date AS day, \
             x.user_id, coalesce(nullif(x.workspace_id, ''), s.workspace_id) AS workspace_id, \
             x.provider_id, x.model_id, x.connection_id, \
             coalesce((SELECT c.owner_id IS NOT NULL FROM rm_connections c \
                       WHERE c.connection_id = x.connection_id), false) AS own_key, \
             x.input, x.output, x.reasoning, x.cache_read, x.cache_write, x.cost \
           FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                       $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
                       $12::bigint[], $13::bigint[]) \
               AS x(session_id, at, user_id, workspace_id, provider_id, model_id, connection_id, \
                    input, output, reasoning, cache_read, cache_write, cost) \
           JOIN rm_sessions s ON s.session_id = x.session_id) r \
     GROUP BY organization_id, day, user_id, workspace_id, provider_id, model_id, connection_id, own_key \
     ON CONFLICT (organization_id, day, user_id, workspace_id, provider_id, model_id, connection_id, own_key) \
     DO UPDATE SET requests = u.requests + EXCLUDED.requests, \
         input_tokens = u.input_tokens + EXCLUDED.input_tokens, \
         output_tokens = u.output_tokens + EXCLUDED.output_tokens, \
         reasoning_tokens = u.reasoning_tokens + EXCLUDED.reasoning_tokens, \
         cache_read_tokens = u.cache_read_tokens + EXCLUDED.cache_read_tokens, \
         cache_write_tokens = u.cache_write_tokens + EXCLUDED.cache_write_tokens, \
         cost_micro_dollars = u.cost_micro_dollars + EXCLUDED.cost_micro_dollars";

/// Completed replies' usage, column by column.
#[derive(Default)]
pub(crate) struct Usage {
    session_id: Vec<String>,
    at: Vec<i64>,
    user_id: Vec<String>,
    workspace_id: Vec<String>,
    provider_id: Vec<String>,
    model_id: Vec<String>,
    connection_id: Vec<String>,
    input: Vec<i64>,
    output: Vec<i64>,
    reasoning: Vec<i64>,
    cache_read: Vec<i64>,
    cache_write: Vec<i64>,
    cost: Vec<i64>,
}

impl Usage {
    /// Count `message`'s usage.
    pub(crate) fn add(&mut self, session: &SessionId, message: &AssistantCompletion) {
        let t = &message.tokens;
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.session_id.push(session.to_string());
        self.at.push(message.time);
        self.user_id.push(message.user_id.as_ref().map_or(String::new(), |u| u.to_string()));
        self.workspace_id
            .push(message.workspace_id.as_ref().map_or(String::new(), |w| w.to_string()));
        self.provider_id.push(message.model.provider_id.clone());
        self.model_id.push(message.model.model_id.clone());
        // No connection (a deployment-wide key) is the empty string, which names none.
        self.connection_id
            .push(message.connection_id.as_ref().map_or(String::new(), |c| c.to_string()));
        self.input.push(n(t.input));
        self.output.push(n(t.output));
        self.reasoning.push(n(t.reasoning));
        self.cache_read.push(n(t.cache.read));
        self.cache_write.push(n(t.cache.write));
        self.cost.push(message.cost.map_or(0, |c| n(c.micro_dollars)));
    }

    /// The statement adding what was counted to its rows; none if nothing was.
    pub(crate) fn into_step(self) -> Option<Step> {
        (!self.session_id.is_empty()).then(|| {
            step!(
                USAGE,
                self.session_id,
                self.at,
                self.user_id,
                self.workspace_id,
                self.provider_id,
                self.model_id,
                self.connection_id,
                self.input,
                self.output,
                self.reasoning,
                self.cache_read,
                self.cache_write,
                self.cost
            )
        })
    }
}
