//! `GET /org/{org}/budget` (owners and admins): the organization's spend budgets from
//! `rm_budgets`, each with what its current period has spent and holds, read from the spend
//! counters the command side keeps (migrations/0022_spend.sql).

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::budget::{Budget, BudgetList, BudgetStatus, Usd};
use schemas::ids::OrganizationId;
use schemas::policy::Action;

use crate::access;
use crate::startup::AppState;

pub async fn list(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
) -> Result<HttpResponse, Problem> {
    let db = state.reader(&req, &user).await?;
    access::organization(&db, &org, &user, Action::ReadUsage).await?;
    let rows = db
        .query(
            "SELECT budget FROM rm_budgets WHERE organization_id = $1 ORDER BY budget_id",
            &[&org.as_str()],
        )
        .await?;
    let budgets = rows
        .iter()
        .map(|r| serde_json::from_value::<Budget>(r.get(0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::internal(&e.to_string()))?;
    let scopes: Vec<String> = budgets.iter().map(|b| b.spec.scope.counter_key(&org)).collect();
    let own: Vec<bool> = budgets.iter().map(|b| b.spec.include_own_keys).collect();
    let periods: Vec<&str> = budgets.iter().map(|b| b.spec.period.sql().0).collect();
    let hours: Vec<i32> = budgets.iter().map(|b| b.spec.period.sql().1).collect();
    // One statement for all, at one instant, so every budget is read at the same time.
    let used = db
        .query(
            "SELECT u.spent, u.reserved, (extract(epoch FROM now_utc) * 1000)::bigint \
             FROM (SELECT clock_timestamp() AT TIME ZONE 'UTC' AS now_utc) t, \
                  unnest($1::text[], $2::bool[], $3::text[], $4::int[]) WITH ORDINALITY \
                      AS b(scope, own, period, hours, n), \
                  LATERAL spend_window(b.period, b.hours, t.now_utc) w, \
                  LATERAL spend_used(b.scope, b.own, w.granularity, w.from_ts) u \
             ORDER BY b.n",
            &[&scopes, &own, &periods, &hours],
        )
        .await?;
    let usd = |v: i64| Usd { micro_dollars: v.max(0) as u64 };
    let items = budgets
        .into_iter()
        .zip(used)
        .map(|(budget, row)| {
            let (start, end) = budget.spec.period.bounds(row.get(2));
            BudgetStatus {
                spent: usd(row.get(0)),
                reserved: usd(row.get(1)),
                period_start: start,
                period_end: end,
                budget,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(BudgetList { items }))
}
