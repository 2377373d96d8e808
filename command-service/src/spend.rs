//! Spend budgets, held across every instance in PostgreSQL (migrations/0021_spend.sql): a
//! prompt under a budget reserves the most its reply can cost before it is accepted; the
//! `message.completed` event releases that and counts the real cost, in its own transaction.
//!
//! PostgreSQL rather than JetStream KV: the counters must move in the same transaction as the
//! completion event (so a cost is counted exactly once whatever crashes), and the check-and-hold
//! across up to four budgets is one statement under row and advisory locks, which a key-value
//! compare-and-set can only approximate with retries.

use std::time::Duration;

use async_trait::async_trait;
use schemas::budget::Budget;
use schemas::ids::{MessageId, OrganizationId, SessionId};
use schemas::provider::{ModelCost, ModelLimit};

use crate::error::{BudgetRefusal, DomainError};

/// Output tokens assumed for a model whose catalog gives no output limit (what the worker asks
/// an Anthropic model for in that case).
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 8192;
/// Input beyond the session's text: instructions and message framing, in tokens.
const PROMPT_OVERHEAD_TOKENS: u64 = 1024;

/// The most a prompt's reply can cost: its input is at most the session's text (a token is
/// never less than a byte) and the model's context, its output at most the model's output limit.
pub fn most_a_reply_costs(price: &ModelCost, limit: ModelLimit, history_bytes: u64) -> u64 {
    let mut input = history_bytes.saturating_add(PROMPT_OVERHEAD_TOKENS);
    if limit.context > 0 {
        input = input.min(limit.context);
    }
    let output = if limit.output > 0 { limit.output } else { DEFAULT_MAX_OUTPUT_TOKENS };
    price.at_most(input, output)
}

/// A reservation for one prompt's reply.
#[derive(Debug, Clone)]
pub struct Hold<'a> {
    pub session: &'a SessionId,
    /// The assistant message the reply will be: the completion event releases the hold by it.
    pub reply: &'a MessageId,
    pub organization: &'a OrganizationId,
    pub own_key: bool,
    pub micro_dollars: u64,
}

/// Holds and releases spend (a trait so aggregate tests run without a database).
#[async_trait]
pub trait SpendLedger: Send + Sync {
    /// Hold the reply's most under `budgets`, or refuse with the first budget it would exceed.
    /// Idempotent per reply: a command run again after a conflict holds nothing more.
    async fn reserve(&self, hold: &Hold<'_>, budgets: &[Budget]) -> Result<(), DomainError>;
}

/// The ledger in PostgreSQL.
pub struct PgSpend {
    db: deadpool_postgres::Pool,
}

fn db_error(e: impl std::fmt::Display) -> DomainError {
    DomainError::Unavailable(e.to_string())
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgSpend {
    pub fn new(db: deadpool_postgres::Pool) -> Self {
        Self { db }
    }

    /// Give back what a prompt held (its command failed); nothing if it held nothing.
    pub async fn release(&self, session: &SessionId, reply: &MessageId) -> anyhow::Result<()> {
        let db = self.db.get().await?;
        let stmt = db.prepare_cached("SELECT spend_release($1, $2)").await?;
        db.execute(&stmt, &[&session.as_str(), &reply.as_str()]).await?;
        Ok(())
    }

    /// Release reservations older than `ttl`; how many there were.
    pub async fn sweep(&self, ttl: Duration) -> anyhow::Result<i32> {
        let db = self.db.get().await?;
        let secs = ttl.as_secs_f64();
        let row = db.query_one("SELECT spend_sweep(make_interval(secs => $1))", &[&secs]).await?;
        Ok(row.get(0))
    }

    /// What `budget` of `org` has spent and holds in its current period, in micro-dollars.
    pub async fn used(&self, org: &OrganizationId, budget: &Budget) -> anyhow::Result<(u64, u64)> {
        let db = self.db.get().await?;
        let (period, hours) = budget.spec.period.sql();
        let stmt = db
            .prepare_cached(
                "SELECT u.spent, u.reserved FROM spend_window($1, $2, clock_timestamp() AT TIME ZONE 'UTC') w, \
                 LATERAL spend_used($3, $4, w.granularity, w.from_ts) u",
            )
            .await?;
        let scope = budget.spec.scope.counter_key(org);
        let row =
            db.query_one(&stmt, &[&period, &hours, &scope, &budget.spec.include_own_keys]).await?;
        let (spent, reserved): (i64, i64) = (row.get(0), row.get(1));
        Ok((spent.max(0) as u64, reserved.max(0) as u64))
    }
}

#[async_trait]
impl SpendLedger for PgSpend {
    async fn reserve(&self, hold: &Hold<'_>, budgets: &[Budget]) -> Result<(), DomainError> {
        let db = self.db.get().await.map_err(db_error)?;
        let stmt = db
            .prepare_cached(
                "SELECT * FROM spend_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .await
            .map_err(db_error)?;
        let org = hold.organization;
        let ids: Vec<&str> = budgets.iter().map(|b| b.id.as_str()).collect();
        let scopes: Vec<String> = budgets.iter().map(|b| b.spec.scope.counter_key(org)).collect();
        // The hold goes where the budgets look: their scopes' counters (the cost, later, goes
        // to every scope the reply is charged to, budgeted or not).
        let mut held_in = scopes.clone();
        held_in.sort_unstable();
        held_in.dedup();
        let amounts: Vec<i64> = budgets.iter().map(|b| n(b.spec.amount.micro_dollars)).collect();
        let periods: Vec<&str> = budgets.iter().map(|b| b.spec.period.sql().0).collect();
        let hours: Vec<i32> = budgets.iter().map(|b| b.spec.period.sql().1).collect();
        let own: Vec<bool> = budgets.iter().map(|b| b.spec.include_own_keys).collect();
        let refused = db
            .query_opt(
                &stmt,
                &[
                    &hold.session.as_str(),
                    &hold.reply.as_str(),
                    &org.as_str(),
                    &held_in,
                    &hold.own_key,
                    &n(hold.micro_dollars),
                    &ids,
                    &scopes,
                    &amounts,
                    &periods,
                    &hours,
                    &own,
                ],
            )
            .await
            .map_err(db_error)?;
        let Some(row) = refused else { return Ok(()) };
        let id: String = row.get(0);
        let budget = budgets.iter().find(|b| b.id.as_str() == id).ok_or_else(|| db_error(&id))?;
        let (spent, reserved, retry): (i64, i64, i32) = (row.get(1), row.get(2), row.get(3));
        Err(DomainError::OverBudget(Box::new(BudgetRefusal {
            budget_id: budget.id.clone(),
            scope: budget.spec.scope.clone(),
            amount_micro_dollars: budget.spec.amount.micro_dollars,
            spent_micro_dollars: spent.max(0) as u64,
            reserved_micro_dollars: reserved.max(0) as u64,
            needed_micro_dollars: hold.micro_dollars,
            retry_after_secs: retry.max(1) as u32,
        })))
    }
}

/// A ledger that holds nothing (aggregate unit tests).
#[cfg(test)]
pub struct NoBudgets;

#[cfg(test)]
#[async_trait]
impl SpendLedger for NoBudgets {
    async fn reserve(&self, _: &Hold<'_>, _: &[Budget]) -> Result<(), DomainError> {
        Ok(())
    }
}
