//! Spend budgets and prompt rates, enforced across every instance in PostgreSQL
//! (migrations/0022_spend.sql): a prompt takes its rates and holds the most its reply can cost
//! under its budgets in one statement before it is accepted; the `message.completed` event
//! releases the hold and counts the real cost, in its own transaction.
//!
//! PostgreSQL rather than JetStream KV: the counters must move in the same transaction as the
//! completion event (so a cost is counted exactly once whatever crashes), and the check-and-hold
//! across up to four budgets is one statement under row and advisory locks, which a key-value
//! compare-and-set can only approximate with retries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemas::budget::Budget;
use schemas::ids::{MessageId, OrganizationId, SessionId};
use schemas::provider::{ModelCost, ModelLimit};
use tokio::sync::Semaphore;

use crate::error::{BudgetRefusal, DomainError};
use crate::prompt_limits::PromptRate;

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

/// What a prompt must get past before it is accepted: its rates, and a hold of the most its
/// reply can cost under its budgets.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    pub session: &'a SessionId,
    /// The assistant message the reply will be: the completion event releases the hold by it.
    pub reply: &'a MessageId,
    pub organization: &'a OrganizationId,
    pub own_key: bool,
    pub micro_dollars: u64,
    pub budgets: &'a [Budget],
    pub rates: &'a [PromptRate],
}

/// Admits prompts (a trait so aggregate tests run without a database).
#[async_trait]
pub trait SpendLedger: Send + Sync {
    /// Take the prompt's rates and hold its reply's most under its budgets, all or nothing, or
    /// refuse with the first budget or rate it would exceed. Idempotent per reply: a command
    /// run again after a conflict takes and holds nothing more.
    async fn admit(&self, admission: &Admission<'_>) -> Result<(), DomainError>;
}

/// The ledger in PostgreSQL.
pub struct PgSpend {
    db: deadpool_postgres::Pool,
    /// Admissions of one organization running at once on this instance. Its admissions queue on
    /// its budgets' locks in PostgreSQL anyway; bounding them here keeps that queue in memory, so
    /// a burst of one organization's prompts holds at most this many of the pool's connections
    /// while every other tenant's commands find theirs.
    gates: moka::future::Cache<OrganizationId, Arc<Semaphore>>,
}

/// Admissions of one organization in PostgreSQL at once, per instance.
const ADMISSIONS_PER_ORGANIZATION: usize = 2;

fn db_error(e: impl std::fmt::Display) -> DomainError {
    DomainError::Unavailable(e.to_string())
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgSpend {
    pub fn new(db: deadpool_postgres::Pool) -> Self {
        let gates = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_idle(Duration::from_secs(600))
            .build();
        Self { db, gates }
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
    async fn admit(&self, a: &Admission<'_>) -> Result<(), DomainError> {
        if a.budgets.is_empty() && a.rates.is_empty() {
            // No budget to hold under and no rate to take: the statement would only record a
            // hold that no counter carries. Skipping it spares the prompt a pooled connection and
            // a turn at its organization's gate (where a burst of its prompts queued two at a
            // time). A budget set meanwhile would not have counted this hold either.
            return Ok(());
        }
        let gate = self
            .gates
            .get_with_by_ref(a.organization, async {
                Arc::new(Semaphore::new(ADMISSIONS_PER_ORGANIZATION))
            })
            .await;
        let _turn = gate.acquire().await.map_err(db_error)?;
        let db = self.db.get().await.map_err(db_error)?;
        let stmt = db
            .prepare_cached(
                "SELECT * FROM prompt_admit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .await
            .map_err(db_error)?;
        let org = a.organization;
        let ids: Vec<&str> = a.budgets.iter().map(|b| b.id.as_str()).collect();
        let scopes: Vec<String> = a.budgets.iter().map(|b| b.spec.scope.counter_key(org)).collect();
        // The hold goes where the budgets look: their scopes' counters (the cost, later, goes
        // to every scope the reply is charged to, budgeted or not).
        let mut held_in = scopes.clone();
        held_in.sort_unstable();
        held_in.dedup();
        let amounts: Vec<i64> = a.budgets.iter().map(|b| n(b.spec.amount.micro_dollars)).collect();
        let periods: Vec<&str> = a.budgets.iter().map(|b| b.spec.period.sql().0).collect();
        let hours: Vec<i32> = a.budgets.iter().map(|b| b.spec.period.sql().1).collect();
        let own: Vec<bool> = a.budgets.iter().map(|b| b.spec.include_own_keys).collect();
        let rate_keys: Vec<&str> = a.rates.iter().map(|r| r.key.as_str()).collect();
        let rate_costs: Vec<f64> = a.rates.iter().map(|r| r.rate.interval_secs()).collect();
        let rate_windows: Vec<f64> = a.rates.iter().map(|r| r.rate.window_secs()).collect();
        let refused = db
            .query_opt(
                &stmt,
                &[
                    &a.session.as_str(),
                    &a.reply.as_str(),
                    &org.as_str(),
                    &held_in,
                    &a.own_key,
                    &n(a.micro_dollars),
                    &rate_keys,
                    &rate_costs,
                    &rate_windows,
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
        let retry: f64 = row.get(3);
        if let Some(index) = row.get::<_, Option<i32>>(4) {
            let rate = usize::try_from(index - 1).ok().and_then(|i| a.rates.get(i));
            let rate = rate.ok_or_else(|| db_error(format!("no rate {index}")))?;
            return Err(DomainError::RateLimited(Box::new(rate.refused(retry))));
        }
        let id: Option<String> = row.get(0);
        let id = id.unwrap_or_default();
        let budget = a.budgets.iter().find(|b| b.id.as_str() == id).ok_or_else(|| db_error(&id))?;
        let (spent, reserved): (i64, i64) = (row.get(1), row.get(2));
        Err(DomainError::OverBudget(Box::new(BudgetRefusal {
            budget_id: budget.id.clone(),
            scope: budget.spec.scope.clone(),
            amount_micro_dollars: budget.spec.amount.micro_dollars,
            spent_micro_dollars: spent.max(0) as u64,
            reserved_micro_dollars: reserved.max(0) as u64,
            needed_micro_dollars: a.micro_dollars,
            retry_after_secs: retry.max(1.0) as u32,
        })))
    }
}

/// A ledger that admits everything (aggregate unit tests).
#[cfg(test)]
pub struct NoBudgets;

#[cfg(test)]
#[async_trait]
impl SpendLedger for NoBudgets {
    async fn admit(&self, _: &Admission<'_>) -> Result<(), DomainError> {
        Ok(())
    }
}
