//! The organization's spend budgets: part of the organization aggregate, so a prompt finds the
//! budgets it falls under in the same view its model resolves against. What is spent lives in
//! PostgreSQL counters (`crate::spend`), not here: the aggregate holds the rules, and which
//! alerts it has raised in their current period (so each is raised once).

use std::collections::BTreeMap;

use schemas::budget::{
    Budget, BudgetAlert, BudgetScope, MAX_BUDGETS, MAX_ROLLING_HOURS, MAX_THRESHOLDS, SetBudget,
};
use schemas::events::OrganizationEvent;
use schemas::ids::{ApiKeyId, BudgetId, UserId, WorkspaceId};
use schemas::policy::Action;
use serde::{Deserialize, Serialize};

use super::Organization;
use crate::directory::Services;
use crate::error::DomainError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Budgets {
    by_id: BTreeMap<BudgetId, BudgetState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BudgetState {
    budget: Budget,
    /// Alerts raised, each with when it may be raised again (its period's end, ms).
    alerted: Vec<(BudgetAlert, i64)>,
}

/// What a prompt is charged to, to find the budgets it falls under.
#[derive(Debug, Clone)]
pub struct Payer<'a> {
    pub workspace: &'a WorkspaceId,
    pub user: &'a UserId,
    pub api_key: Option<&'a ApiKeyId>,
    pub own_key: bool,
}

/// An alert to raise if it is due (`RaiseBudgetAlert`).
#[derive(Debug, Clone)]
pub struct AlertReport {
    pub budget: BudgetId,
    pub alert: BudgetAlert,
    pub used_micro_dollars: u64,
}

impl Organization {
    /// Create (`create`) or replace budget `id`, after checking that its scope is part of
    /// this organization.
    pub(super) async fn set_budget(
        &self,
        id: BudgetId,
        spec: SetBudget,
        create: bool,
        actor: UserId,
        services: &Services,
        time: i64,
    ) -> Result<Vec<OrganizationEvent>, DomainError> {
        let organization_id = self.authorize(&actor, Action::ManageBudgets)?;
        match (create, self.budgets.by_id.contains_key(&id)) {
            (true, true) => return Err(DomainError::WrongState("the budget exists".into())),
            (false, false) => return Err(DomainError::NotFound),
            (true, false) if self.budgets.by_id.len() >= MAX_BUDGETS => {
                return Err(DomainError::TooLarge(format!(
                    "an organization has at most {MAX_BUDGETS} budgets"
                )));
            }
            _ => {}
        }
        let spec = valid(spec)?;
        let in_organization = match &spec.scope {
            BudgetScope::Organization => true,
            BudgetScope::Member(user) => self.role_of(user).is_some(),
            BudgetScope::Workspace(ws) => services
                .directory
                .workspace(ws)
                .await?
                .is_some_and(|w| w.organization_id == organization_id),
            BudgetScope::ApiKey(key) => {
                services.directory.api_key_organization(key).await?.as_ref()
                    == Some(&organization_id)
            }
        };
        if !in_organization {
            return Err(DomainError::Invalid(
                "scope: no such member, workspace or API key in this organization".into(),
            ));
        }
        let budget = Budget { id, spec };
        Ok(vec![OrganizationEvent::BudgetSet { organization_id, budget, actor_id: actor, time }])
    }

    pub(super) fn remove_budget(
        &self,
        id: BudgetId,
        actor: UserId,
        time: i64,
    ) -> Result<Vec<OrganizationEvent>, DomainError> {
        let organization_id = self.authorize(&actor, Action::ManageBudgets)?;
        if !self.budgets.by_id.contains_key(&id) {
            return Err(DomainError::NotFound);
        }
        Ok(vec![OrganizationEvent::BudgetRemoved {
            organization_id,
            budget_id: id,
            actor_id: actor,
            time,
        }])
    }

    /// The alert, unless it was raised already in the budget's current period (AlreadyDone).
    pub(super) fn raise_budget_alert(
        &self,
        report: AlertReport,
        time: i64,
    ) -> Result<Vec<OrganizationEvent>, DomainError> {
        let organization_id = self.id.clone().ok_or(DomainError::NotFound)?;
        let state = self.budgets.by_id.get(&report.budget).ok_or(DomainError::NotFound)?;
        if !state.alert_due(report.alert, time) {
            return Err(DomainError::AlreadyDone);
        }
        let budget = &state.budget;
        Ok(vec![OrganizationEvent::BudgetAlert {
            organization_id,
            budget_id: report.budget,
            alert: report.alert,
            scope: budget.spec.scope.clone(),
            used_micro_dollars: report.used_micro_dollars,
            amount_micro_dollars: budget.spec.amount.micro_dollars,
            until: budget.spec.period.bounds(time).1,
            time,
        }])
    }

    /// The budgets a prompt paid as `payer` falls under.
    pub fn budgets_for(&self, payer: &Payer<'_>) -> Vec<Budget> {
        self.budgets
            .by_id
            .values()
            .map(|s| &s.budget)
            .filter(|b| b.spec.include_own_keys || !payer.own_key)
            .filter(|b| match &b.spec.scope {
                BudgetScope::Organization => true,
                BudgetScope::Workspace(ws) => ws == payer.workspace,
                BudgetScope::Member(user) => user == payer.user,
                BudgetScope::ApiKey(key) => Some(key) == payer.api_key,
            })
            .cloned()
            .collect()
    }

    /// Every budget, and the alerts each could still raise at `time`.
    pub fn budgets(&self) -> impl Iterator<Item = &Budget> {
        self.budgets.by_id.values().map(|s| &s.budget)
    }

    /// Whether `alert` of budget `id` may be raised at `time`.
    pub fn budget_alert_due(&self, id: &BudgetId, alert: BudgetAlert, time: i64) -> bool {
        self.budgets.by_id.get(id).is_some_and(|s| s.alert_due(alert, time))
    }

    pub(super) fn apply_budget(&mut self, event: OrganizationEvent) {
        match event {
            OrganizationEvent::BudgetSet { budget, .. } => {
                // A changed budget starts its alerts afresh (a raised amount may be crossed again).
                let state = BudgetState { budget, alerted: Vec::new() };
                self.budgets.by_id.insert(state.budget.id.clone(), state);
            }
            OrganizationEvent::BudgetRemoved { budget_id, .. } => {
                self.budgets.by_id.remove(&budget_id);
            }
            OrganizationEvent::BudgetAlert { budget_id, alert, until, .. } => {
                if let Some(state) = self.budgets.by_id.get_mut(&budget_id) {
                    state.alerted.retain(|(a, _)| *a != alert);
                    state.alerted.push((alert, until));
                }
            }
            _ => {}
        }
    }
}

impl BudgetState {
    fn alert_due(&self, alert: BudgetAlert, time: i64) -> bool {
        !self.alerted.iter().any(|(a, until)| *a == alert && *until > time)
    }
}

fn valid(mut spec: SetBudget) -> Result<SetBudget, DomainError> {
    let invalid = |m: &str| Err(DomainError::Invalid(m.into()));
    if spec.amount.micro_dollars == 0 {
        return invalid("amountUsd must be more than 0");
    }
    if let schemas::budget::BudgetPeriod::Rolling { hours } = spec.period
        && !(1..=MAX_ROLLING_HOURS).contains(&hours)
    {
        return invalid("period.hours must be 1 to 744 (31 days)");
    }
    spec.thresholds.sort_unstable();
    spec.thresholds.dedup();
    if spec.thresholds.len() > MAX_THRESHOLDS
        || spec.thresholds.iter().any(|t| !(1..=99).contains(t))
    {
        return invalid("thresholds: at most 5 percentages, each 1 to 99");
    }
    Ok(spec)
}
