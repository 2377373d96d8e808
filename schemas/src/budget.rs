//! Spend budgets an organization's owners and admins set: an amount of dollars per day, per
//! month or per rolling window, on the organization, a workspace, a member or an API key, with
//! soft thresholds that raise an event once per period. Money is exact: whole micro-dollars.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{ApiKeyId, BudgetId, OrganizationId, UserId, WorkspaceId};

/// The longest rolling window: 31 days.
pub const MAX_ROLLING_HOURS: u32 = 744;
/// Budgets one organization may have.
pub const MAX_BUDGETS: usize = 100;
/// Soft thresholds one budget may have.
pub const MAX_THRESHOLDS: usize = 5;

/// An amount of US dollars, held exactly as an integer number of micro-dollars; read and
/// written as a JSON number of dollars ($12.50 is 12,500,000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Usd {
    pub micro_dollars: u64,
}

impl Serialize for Usd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.micro_dollars as f64 / 1e6)
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let dollars = f64::deserialize(d)?;
        micro_dollars(dollars, "an amount is dollars, 0 to 1e9")
            .map(|micro_dollars| Usd { micro_dollars })
            .map_err(serde::de::Error::custom)
    }
}

/// Dollars (at most six decimal places, 0 to a billion) as exact micro-dollars.
pub fn micro_dollars(dollars: f64, range_error: &'static str) -> Result<u64, &'static str> {
    if !dollars.is_finite() || !(0.0..=1e9).contains(&dollars) {
        return Err(range_error);
    }
    // Amounts are decimal with at most six places: rounding recovers them exactly.
    Ok((dollars * 1e6).round() as u64)
}

impl JsonSchema for Usd {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Usd".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "number", "minimum": 0, "maximum": 1e9, "description": "US dollars",
        })
    }
}

/// What a budget caps: the spend of the whole organization, of one workspace, of one member
/// (in this organization), or of one API key.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(tag = "type", content = "id", rename_all = "camelCase")]
pub enum BudgetScope {
    Organization,
    Workspace(WorkspaceId),
    Member(UserId),
    ApiKey(ApiKeyId),
}

impl BudgetScope {
    /// The problem type of a refusal by a budget of this scope.
    pub fn problem_type(&self) -> &'static str {
        match self {
            BudgetScope::Organization => "organization-budget",
            BudgetScope::Workspace(_) => "workspace-budget",
            BudgetScope::Member(_) => "member-budget",
            BudgetScope::ApiKey(_) => "api-key-budget",
        }
    }

    /// The key its spend is counted under (`spend_counters.scope`), unique across tenants.
    pub fn counter_key(&self, org: &OrganizationId) -> String {
        match self {
            BudgetScope::Organization => format!("org:{org}"),
            BudgetScope::Workspace(ws) => format!("ws:{ws}"),
            BudgetScope::Member(user) => format!("member:{org}:{user}"),
            BudgetScope::ApiKey(key) => format!("key:{key}"),
        }
    }
}

/// How long a budget's amount lasts: a UTC calendar day, a UTC calendar month, or the last
/// `hours` hours (counted in whole hours: the current one and the `hours - 1` before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum BudgetPeriod {
    Day,
    Month,
    Rolling { hours: u32 },
}

/// `POST /org/{org}/budget`, `PUT /org/{org}/budget/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    pub scope: BudgetScope,
    #[serde(rename = "amountUsd")]
    pub amount: Usd,
    pub period: BudgetPeriod,
    /// Percentages of the amount (1–99) at which an event says the budget is getting used up,
    /// once per period each.
    #[serde(default)]
    pub thresholds: Vec<u8>,
    /// Whether replies paid with members' own keys count; true unless the organization says
    /// otherwise (they always count toward usage).
    #[serde(rename = "includeOwnKeys", default = "yes")]
    pub include_own_keys: bool,
}

fn yes() -> bool {
    true
}

/// A budget as the organization holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Budget {
    pub id: BudgetId,
    #[serde(flatten)]
    pub spec: SetBudget,
}

/// Which budget alert an event is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum BudgetAlert {
    /// Spend reached this percentage of the amount.
    Threshold { percent: u8 },
    /// A prompt was refused: the budget is used up for now.
    Exhausted,
}

/// `GET /org/{org}/budget`: each budget with what its current period has used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BudgetStatus {
    #[serde(flatten)]
    pub budget: Budget,
    /// Spent by replies that completed in the current period.
    #[serde(rename = "spentUsd")]
    pub spent: Usd,
    /// Held for replies still running (their most they can cost).
    #[serde(rename = "reservedUsd")]
    pub reserved: Usd,
    /// When the current period began and ends (ms since the epoch; a rolling window's end is
    /// the end of the current hour).
    #[serde(rename = "periodStart")]
    pub period_start: i64,
    #[serde(rename = "periodEnd")]
    pub period_end: i64,
}

/// `GET /org/{org}/budget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BudgetList {
    pub items: Vec<BudgetStatus>,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

impl BudgetPeriod {
    /// The period in force at `now_ms` (ms since the epoch): when it began and when it next
    /// moves, the same windows the spend counters sum (`spend_window` in migrations/0022_spend.sql).
    pub fn bounds(&self, now_ms: i64) -> (i64, i64) {
        match *self {
            BudgetPeriod::Day => {
                let start = now_ms.div_euclid(DAY_MS) * DAY_MS;
                (start, start + DAY_MS)
            }
            BudgetPeriod::Month => {
                let (y, m, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
                let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m, 1) * DAY_MS, days_from_civil(next.0, next.1, 1) * DAY_MS)
            }
            BudgetPeriod::Rolling { hours } => {
                let hour = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
                (hour - i64::from(hours.max(1) - 1) * HOUR_MS, hour + HOUR_MS)
            }
        }
    }

    /// The name the spend counters' SQL knows the period by, and its rolling hours.
    pub fn sql(&self) -> (&'static str, i32) {
        match *self {
            BudgetPeriod::Day => ("day", 0),
            BudgetPeriod::Month => ("month", 0),
            BudgetPeriod::Rolling { hours } => {
                ("rolling", i32::try_from(hours).unwrap_or(i32::MAX))
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of `days_from_civil`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_months_and_whole_hours() {
        // 2026-02-14T10:30:00Z
        let now = 1_771_065_000_000;
        assert_eq!(BudgetPeriod::Day.bounds(now), (1_771_027_200_000, 1_771_113_600_000));
        // February 2026 (28 days), and December rolls over into the next year.
        assert_eq!(BudgetPeriod::Month.bounds(now), (1_769_904_000_000, 1_772_323_200_000));
        let december = 1_796_083_200_000; // 2026-12-01T00:00:00Z
        assert_eq!(BudgetPeriod::Month.bounds(december + 5), (december, 1_798_761_600_000));
        let rolling = BudgetPeriod::Rolling { hours: 24 }.bounds(now);
        assert_eq!(rolling, (1_771_063_200_000 - 23 * HOUR_MS, 1_771_066_800_000));
        for day in [-800_000, -1, 0, 59, 20_000, 3_000_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn a_budget_reads_and_writes_as_its_api_says() {
        let json = serde_json::json!({
            "scope": {"type": "member", "id": "usr_01J0000000000000000000000A"},
            "amountUsd": 12.5,
            "period": {"type": "rolling", "hours": 24},
            "thresholds": [50, 80],
        });
        let set: SetBudget = serde_json::from_value(json).unwrap();
        assert_eq!(set.amount.micro_dollars, 12_500_000);
        assert!(set.include_own_keys);
        assert_eq!(set.period, BudgetPeriod::Rolling { hours: 24 });
        let again = serde_json::to_value(&set).unwrap();
        assert_eq!(again["scope"]["type"], "member");
        assert_eq!(again["amountUsd"], 12.5);
        let org: SetBudget = serde_json::from_value(serde_json::json!({
            "scope": {"type": "organization"}, "amountUsd": 100, "period": {"type": "month"},
        }))
        .unwrap();
        assert_eq!(org.scope, BudgetScope::Organization);
    }
}
