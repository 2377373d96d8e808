//! Budget alerts: a soft threshold crossed (checked after each completed reply) and a budget
//! exhausted (a prompt refused). Each is an `organization.budget_alert` event, raised at most
//! once per budget period by the organization aggregate, so it reaches the audit trail and the
//! bus (`oc.evt.<org>.….organization.budget_alert`) for a notifier to pick up.

use schemas::budget::{Budget, BudgetAlert, BudgetScope};
use schemas::ids::{OrganizationId, SessionId, UserId, WorkspaceId};

use crate::aggregates::{AlertReport, OrganizationCommand};
use crate::error::{BudgetRefusal, CommandError, DomainError};
use crate::executor::CommandContext;
use crate::startup::AppState;

fn context(organization: &OrganizationId) -> CommandContext {
    CommandContext {
        actor: "service:budgets".into(),
        correlation_id: format!("budget-alert:{organization}"),
        causation_id: None,
        organization_scope: None,
    }
}

async fn raise(
    state: &AppState,
    org: &OrganizationId,
    report: AlertReport,
) -> Result<(), CommandError> {
    let command = OrganizationCommand::RaiseBudgetAlert { report };
    match state.organizations.execute(org.as_str(), command, &context(org)).await {
        Ok(_) | Err(CommandError::Domain(DomainError::AlreadyDone)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A budget refused a prompt of `session`: its exhausted alert.
pub async fn raise_exhausted(
    state: &AppState,
    session: &SessionId,
    refusal: &BudgetRefusal,
) -> Result<(), CommandError> {
    let scope = state.sessions.scope_of(session.as_str()).await?;
    let Some(org) = scope.organization else { return Ok(()) };
    let report = AlertReport {
        budget: refusal.budget_id.clone(),
        alert: BudgetAlert::Exhausted,
        used_micro_dollars: refusal.spent_micro_dollars + refusal.reserved_micro_dollars,
    };
    raise(state, &org, report).await
}

/// After a reply of `user` in `workspace` completed: raise every threshold its budgets have
/// crossed and not yet raised this period. The budgets' use is read in one statement.
pub async fn raise_crossed_thresholds(
    state: &AppState,
    org: &OrganizationId,
    (workspace, user): (&WorkspaceId, &UserId),
    budgets: Vec<(Budget, Vec<BudgetAlert>)>,
) -> anyhow::Result<()> {
    let due: Vec<(&Budget, Vec<u8>)> = budgets
        .iter()
        .filter(|(budget, _)| match &budget.spec.scope {
            BudgetScope::Organization | BudgetScope::ApiKey(_) => true,
            BudgetScope::Workspace(ws) => ws == workspace,
            BudgetScope::Member(member) => member == user,
        })
        .map(|(budget, due)| {
            let thresholds = due.iter().filter_map(|a| match a {
                BudgetAlert::Threshold { percent } => Some(*percent),
                BudgetAlert::Exhausted => None,
            });
            (budget, thresholds.collect::<Vec<u8>>())
        })
        .filter(|(_, thresholds)| !thresholds.is_empty())
        .collect();
    let concerned: Vec<&Budget> = due.iter().map(|(budget, _)| *budget).collect();
    let used = state.spend.used(org, &concerned).await?;
    for ((budget, thresholds), (spent, _)) in due.into_iter().zip(used) {
        let amount = u128::from(budget.spec.amount.micro_dollars);
        for percent in thresholds {
            if u128::from(spent) * 100 >= amount * u128::from(percent) {
                let alert = BudgetAlert::Threshold { percent };
                let report =
                    AlertReport { budget: budget.id.clone(), alert, used_micro_dollars: spent };
                raise(state, org, report).await?;
            }
        }
    }
    Ok(())
}
