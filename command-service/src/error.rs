//! Errors of the command side and their one mapping to HTTP.

use cqrs_es::AggregateError;
use platform::problem::Problem;
use schemas::budget::BudgetScope;
use schemas::ids::BudgetId;

/// What an aggregate can refuse a command with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Missing, or in an organization the caller is not in (indistinguishable on purpose).
    #[error("not found")]
    NotFound,
    /// The command itself is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Valid, but not in the aggregate's current state (a prompt while a reply runs).
    #[error("{0}")]
    WrongState(String),
    /// The caller may see the resource but not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Well-formed, but names something that cannot be used (a model nobody offers).
    #[error("{0}")]
    Unprocessable(String),
    /// The command would take the aggregate past a documented size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The command was already carried out (an idempotent retry).
    #[error("already done")]
    AlreadyDone,
    /// A later attempt of the reply took it over: this attempt's report is refused.
    #[error("a later attempt took the reply over")]
    Superseded,
    /// A lookup the decision needs failed for infrastructure reasons.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A rate the organization set has no room for the prompt now.
    #[error("over the {} limit", .0.limit)]
    RateLimited(Box<platform::limits::Exceeded>),
    /// A spend budget has no room for what the prompt's reply may cost.
    #[error("over the budget {}", .0.budget_id)]
    OverBudget(Box<BudgetRefusal>),
}

/// Which budget refused a prompt, and how far it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusal {
    pub budget_id: BudgetId,
    pub scope: BudgetScope,
    pub amount_micro_dollars: u64,
    /// Spent, and held for replies still running.
    pub spent_micro_dollars: u64,
    pub reserved_micro_dollars: u64,
    /// The most this prompt's reply could cost.
    pub needed_micro_dollars: u64,
    pub retry_after_secs: u32,
}

impl From<&BudgetRefusal> for Problem {
    fn from(r: &BudgetRefusal) -> Self {
        let usd = |micro: u64| serde_json::json!(micro as f64 / 1e6);
        let used = r.spent_micro_dollars + r.reserved_micro_dollars;
        let detail = format!(
            "over the {} budget: ${} of ${} used, and this reply may cost up to ${}; retry in {} s",
            r.scope.problem_type().trim_end_matches("-budget"),
            used as f64 / 1e6,
            r.amount_micro_dollars as f64 / 1e6,
            r.needed_micro_dollars as f64 / 1e6,
            r.retry_after_secs,
        );
        Problem::too_many_requests(r.scope.problem_type(), detail, r.retry_after_secs)
            .with("budgetID", r.budget_id.to_string().into())
            .with("limit", usd(r.amount_micro_dollars))
            .with("used", usd(used))
            .with("reserved", usd(r.reserved_micro_dollars))
            .with("needed", usd(r.needed_micro_dollars))
    }
}

/// A failed command, after retries.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Concurrent writers kept winning the optimistic lock.
    #[error("concurrent modification")]
    Conflict,
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl From<AggregateError<DomainError>> for CommandError {
    fn from(e: AggregateError<DomainError>) -> Self {
        match e {
            AggregateError::UserError(d) => CommandError::Domain(d),
            AggregateError::AggregateConflict => CommandError::Conflict,
            AggregateError::DatabaseConnectionError(e) => CommandError::Unavailable(e.to_string()),
            other => CommandError::Unexpected(other.to_string()),
        }
    }
}

impl From<CommandError> for Problem {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Domain(DomainError::NotFound) => Problem::not_found(),
            CommandError::Domain(DomainError::Invalid(d)) => Problem::bad_request(d),
            CommandError::Domain(DomainError::WrongState(d)) => Problem::conflict(d),
            CommandError::Domain(DomainError::Forbidden(d)) => Problem::forbidden(d),
            CommandError::Domain(DomainError::TooLarge(d)) => Problem::payload_too_large(d),
            CommandError::Domain(DomainError::Unprocessable(d)) => Problem::unprocessable(d),
            CommandError::Domain(DomainError::OverBudget(r)) => Problem::from(&*r),
            CommandError::Domain(DomainError::RateLimited(e)) => (*e).into(),
            CommandError::Domain(DomainError::AlreadyDone) => {
                Problem::conflict("the command was already carried out")
            }
            CommandError::Domain(DomainError::Superseded) => {
                Problem::conflict("a later attempt took the reply over")
            }
            CommandError::Domain(DomainError::Unavailable(d)) | CommandError::Unavailable(d) => {
                tracing::warn!(error = %d, "command failed on infrastructure");
                Problem::unavailable("the event store is unavailable")
            }
            CommandError::Conflict => {
                Problem::conflict("the resource was modified concurrently; retry the request")
            }
            CommandError::Unexpected(d) => Problem::internal(&d),
        }
    }
}
