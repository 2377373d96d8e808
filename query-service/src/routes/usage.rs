//! Usage reports from `rm_usage`: `GET /org/{org}/usage` (owners and admins),
//! `GET /workspace/{ws}/usage` (its admins), `GET /me/usage` (your own, across organizations).
//! `?from=&to=` (UTC days, inclusive; the last 30 days by default), `?groupBy=` any of user,
//! workspace, model, day, connection, organization; JSON, or CSV with `Accept: text/csv`.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use platform::problem::Problem;
use schemas::ids::{OrganizationId, WorkspaceId};
use schemas::message::CacheUsage;
use schemas::policy::Action;
use schemas::read::{UsageReport, UsageRow, UsageTokens};
use serde::Deserialize;

use crate::access;
use crate::startup::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    #[serde(rename = "groupBy")]
    group_by: Option<String>,
    consistency: Option<String>,
}

/// A grouping dimension and the columns it selects (constants, never user input).
const DIMENSIONS: [(&str, &[&str]); 6] = [
    ("day", &["day::text"]),
    ("organization", &["organization_id"]),
    ("user", &["user_id"]),
    ("workspace", &["workspace_id"]),
    ("model", &["provider_id", "model_id"]),
    ("connection", &["connection_id", "own_key"]),
];

/// Whose rows a report covers.
enum Scope<'a> {
    Organization(&'a OrganizationId),
    Workspace(&'a WorkspaceId),
    Me,
}

pub async fn organization(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    org: web::Path<OrganizationId>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, Problem> {
    let db = state.reader(&req, &user).await?;
    access::organization(&db, &org, &user, Action::ReadUsage).await?;
    report(&req, &db, &user, Scope::Organization(&org), &query).await
}

pub async fn workspace(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    ws: web::Path<WorkspaceId>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, Problem> {
    let db = state.reader(&req, &user).await?;
    access::workspace(&db, &ws, &user, Action::ManageWorkspace).await?;
    report(&req, &db, &user, Scope::Workspace(&ws), &query).await
}

pub async fn mine(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, Problem> {
    let db = state.reader(&req, &user).await?;
    report(&req, &db, &user, Scope::Me, &query).await
}

async fn report(
    req: &HttpRequest,
    db: &deadpool_postgres::Client,
    user: &AuthUser,
    scope: Scope<'_>,
    query: &UsageQuery,
) -> Result<HttpResponse, Problem> {
    let _ = &query.consistency; // read by `AppState::reader`
    let today = db
        .query_one("SELECT (now() AT TIME ZONE 'UTC')::date::text", &[])
        .await?
        .get::<_, String>(0);
    let to = match &query.to {
        Some(d) => valid_day(d)?,
        None => today,
    };
    let from = match &query.from {
        Some(d) => valid_day(d)?,
        None => db.query_one("SELECT ($1::text::date - 29)::text", &[&to]).await?.get(0),
    };
    let mut groups: Vec<&str> = Vec::new();
    for name in
        query.group_by.as_deref().unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty())
    {
        if !DIMENSIONS.iter().any(|(d, _)| *d == name) {
            let known: Vec<&str> = DIMENSIONS.iter().map(|(d, _)| *d).collect();
            return Err(Problem::bad_request(format!(
                "groupBy: {name} is not one of {}",
                known.join(", ")
            )));
        }
        if !groups.contains(&name) {
            groups.push(name);
        }
    }
    let columns: Vec<&str> = DIMENSIONS
        .iter()
        .filter(|(d, _)| groups.contains(d))
        .flat_map(|(_, cols)| cols.iter().copied())
        .collect();
    let (filter, key) = match scope {
        Scope::Organization(org) => ("organization_id = $3", org.to_string()),
        Scope::Workspace(ws) => ("workspace_id = $3", ws.to_string()),
        Scope::Me => ("user_id = $3", user.user_id.to_string()),
    };
    let select =
        if columns.is_empty() { String::new() } else { format!("{}, ", columns.join(", ")) };
    let group = if columns.is_empty() {
        String::new()
    } else {
        format!("GROUP BY {0} ORDER BY {0}", columns.join(", "))
    };
    let sql = format!(
        "SELECT {select}sum(requests)::bigint, sum(input_tokens)::bigint, sum(output_tokens)::bigint, \
                sum(reasoning_tokens)::bigint, sum(cache_read_tokens)::bigint, sum(cache_write_tokens)::bigint, \
                sum(cost_micro_dollars)::bigint \
         FROM rm_usage WHERE day BETWEEN $1::text::date AND $2::text::date AND {filter} {group}"
    );
    let rows = db.query(&sql, &[&from, &to, &key]).await?;
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut row = UsageRow::default();
        let mut i = 0;
        for name in DIMENSIONS.iter().map(|(d, _)| *d).filter(|d| groups.contains(d)) {
            match name {
                "day" => row.day = Some(r.get(i)),
                "organization" => row.organization_id = Some(r.get(i)),
                "user" => row.user_id = Some(r.get(i)),
                "workspace" => row.workspace_id = Some(r.get(i)),
                "model" => {
                    row.provider_id = Some(r.get(i));
                    i += 1;
                    row.model_id = Some(r.get(i));
                }
                _ => {
                    row.connection_id = Some(r.get(i));
                    i += 1;
                    row.own_key = Some(r.get(i));
                }
            }
            i += 1;
        }
        sums(&mut row, r, i);
        if row.requests > 0 || !columns.is_empty() {
            items.push(row);
        }
    }
    let mut total = UsageRow::default();
    for row in &items {
        add(&mut total, row);
    }
    let report = UsageReport {
        from,
        to,
        group_by: groups.iter().map(|g| g.to_string()).collect(),
        items,
        total,
    };
    let csv = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if csv {
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(to_csv(&report)));
    }
    Ok(HttpResponse::Ok().json(report))
}

fn sums(row: &mut UsageRow, r: &tokio_postgres::Row, at: usize) {
    let n = |i: usize| r.get::<_, Option<i64>>(i).unwrap_or(0).max(0) as u64;
    row.requests = n(at);
    row.tokens = UsageTokens {
        input: n(at + 1),
        output: n(at + 2),
        reasoning: n(at + 3),
        cache: CacheUsage { read: n(at + 4), write: n(at + 5) },
    };
    row.cost_micro_dollars = n(at + 6);
    row.cost = row.cost_micro_dollars as f64 / 1e6;
}

fn add(total: &mut UsageRow, row: &UsageRow) {
    total.requests += row.requests;
    total.tokens.input += row.tokens.input;
    total.tokens.output += row.tokens.output;
    total.tokens.reasoning += row.tokens.reasoning;
    total.tokens.cache.read += row.tokens.cache.read;
    total.tokens.cache.write += row.tokens.cache.write;
    total.cost_micro_dollars += row.cost_micro_dollars;
    total.cost = total.cost_micro_dollars as f64 / 1e6;
}

/// A UTC day as `YYYY-MM-DD`, checked to exist.
fn valid_day(day: &str) -> Result<String, Problem> {
    let bad = || Problem::bad_request(format!("{day:?} is not a day (YYYY-MM-DD)"));
    let parts: Vec<&str> = day.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return Err(bad()) };
    let digits = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_digit());
    if !(digits(y, 4) && digits(m, 2) && digits(d, 2)) {
        return Err(bad());
    }
    let (y, m, d): (u32, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1..=days).contains(&d) || y < 1970 {
        return Err(bad());
    }
    Ok(day.to_owned())
}

fn to_csv(report: &UsageReport) -> String {
    let mut header: Vec<&str> = Vec::new();
    for g in &report.group_by {
        match g.as_str() {
            "model" => header.extend(["provider_id", "model_id"]),
            "connection" => header.extend(["connection_id", "own_key"]),
            "user" => header.push("user_id"),
            "workspace" => header.push("workspace_id"),
            "organization" => header.push("organization_id"),
            other => header.push(other),
        }
    }
    header.extend([
        "requests",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_micro_dollars",
    ]);
    let mut out = header.join(",");
    out.push('\n');
    for row in &report.items {
        let mut cells: Vec<String> = Vec::new();
        for g in &report.group_by {
            let text = |v: &Option<String>| v.clone().unwrap_or_default();
            match g.as_str() {
                "day" => cells.push(text(&row.day)),
                "organization" => cells.push(text(&row.organization_id)),
                "user" => cells.push(text(&row.user_id)),
                "workspace" => cells.push(text(&row.workspace_id)),
                "model" => cells.extend([text(&row.provider_id), text(&row.model_id)]),
                _ => cells
                    .extend([text(&row.connection_id), row.own_key.unwrap_or(false).to_string()]),
            }
        }
        let t = &row.tokens;
        cells.extend(
            [
                row.requests,
                t.input,
                t.output,
                t.reasoning,
                t.cache.read,
                t.cache.write,
                row.cost_micro_dollars,
            ]
            .map(|n| n.to_string()),
        );
        // Ids and days hold no commas or quotes; quote anyway so the format never depends on it.
        out.push_str(
            &cells
                .iter()
                .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_are_checked_to_exist() {
        assert!(super::valid_day("2024-02-29").is_ok());
        for bad in ["2023-02-29", "2024-13-01", "24-01-01", "2024-1-01", "x", "2024-04-31"] {
            assert!(super::valid_day(bad).is_err(), "{bad}");
        }
    }
}
