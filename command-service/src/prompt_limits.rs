//! How fast prompts may come, as an organization sets it (`PUT /org/{org}/limits`): requests and
//! tokens per minute, for each member and for the organization as a whole, counted across every
//! instance (`platform::limits`, GCRA in PostgreSQL; a minute's worth may come at once).
//!
//! Requests are taken when a prompt is accepted, by the prompt command once the sender is known
//! to be a member who may prompt (so strangers use up nothing), in the same statement as its
//! budget holds (`crate::spend`). Tokens are known only when the reply is done: they are
//! charged then, in the completion event's own transaction (a trigger on the event store,
//! migrations/0027, with the keys and rate below), and a prompt is refused while the tokens
//! already charged are more than a minute's worth ahead. So one reply may overshoot a token
//! limit; the next prompts wait until it is paid off.

use platform::limits::{Exceeded, Rate};
use schemas::ids::{OrganizationId, UserId};
use schemas::provider::SetPromptLimits;

/// `per_minute` prompts or tokens, a minute's worth at once. GCRA counts in whole units, so
/// tokens are counted per minute exactly as requests are.
fn per_minute(per_minute: u64) -> Rate {
    let per_minute = u32::try_from(per_minute).unwrap_or(u32::MAX);
    Rate { per_minute, burst: per_minute }
}

/// The request and token keys of a member and of the organization. The token keys are charged
/// by the completion trigger too (`events_complete_reply`, migrations/0028), which builds
/// them the same way: change both together.
fn keys(org: &OrganizationId, user: &UserId) -> [(String, String, &'static str, &'static str); 2] {
    [
        (
            format!("prompts:{org}:{user}"),
            format!("tokens:{org}:{user}"),
            "member-request-rate",
            "member-token-rate",
        ),
        (
            format!("prompts:{org}"),
            format!("tokens:{org}"),
            "organization-request-rate",
            "organization-token-rate",
        ),
    ]
}

/// A rate a prompt takes one of: its key in `rate_limits`, the rate, and how a refusal names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRate {
    pub key: String,
    pub rate: Rate,
    pub limit: &'static str,
    pub allowed: String,
}

impl PromptRate {
    /// The refusal of a prompt by this rate, `wait_secs` before it would fit.
    pub fn refused(&self, wait_secs: f64) -> Exceeded {
        let (interval, window) = (self.rate.interval_secs(), self.rate.window_secs());
        Exceeded {
            limit: self.limit,
            allowed: self.allowed.clone(),
            retry_after: std::time::Duration::from_secs_f64(wait_secs.max(0.001)),
            // Refused when one more would lie `wait` past the window: what the window holds now.
            used: Some(((wait_secs + window - interval) / interval).round().max(0.0) as u64),
        }
    }
}

/// The rates a prompt of `user` in `org` takes (taken with its budget holds, in one statement:
/// `crate::spend`): requests, and a token rate not yet paid off, for the member and for the
/// organization, where set.
pub fn rates_for(set: SetPromptLimits, org: &OrganizationId, user: &UserId) -> Vec<PromptRate> {
    keys(org, user)
        .into_iter()
        .zip([set.member, set.organization])
        .flat_map(|((request_key, token_key, request_limit, token_limit), limits)| {
            [
                (token_key, limits.tokens_per_minute, token_limit, "tokens"),
                (request_key, u64::from(limits.requests_per_minute), request_limit, "prompts"),
            ]
        })
        .filter(|(_, n, _, _)| *n > 0)
        .map(|(key, n, limit, unit)| PromptRate {
            key,
            rate: per_minute(n),
            limit,
            allowed: format!("{n} {unit} per minute"),
        })
        .collect()
}
