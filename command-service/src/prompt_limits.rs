//! How fast prompts may come, as an organization sets it (`PUT /org/{org}/limits`): requests and
//! tokens per minute, for each member and for the organization as a whole, counted across every
//! instance (`platform::limits`, GCRA in PostgreSQL; a minute's worth may come at once).
//!
//! Requests are taken when a prompt is sent, before its command runs. Tokens are known only when
//! the reply is done: they are charged then, and a prompt is refused while the tokens already
//! charged are more than a minute's worth ahead. So one reply may overshoot a token limit; the
//! next prompts wait until it is paid off.

use identity::AuthUser;
use platform::limits::{self, Exceeded, Rate, Refused};
use platform::problem::Problem;
use schemas::ids::{OrganizationId, UserId};
use schemas::message::TokenUsage;
use schemas::provider::SetPromptLimits;

fn requests(per_minute: u32) -> Rate {
    Rate { per_minute, burst: per_minute }
}

/// A token rate: `per_minute` tokens, a minute's worth at once. GCRA counts in whole units, so
/// tokens are counted per minute exactly as requests are.
fn tokens(per_minute: u64) -> Rate {
    let per_minute = u32::try_from(per_minute).unwrap_or(u32::MAX);
    Rate { per_minute, burst: per_minute }
}

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

/// Let a prompt of `user` in `org` through, or say which limit refused it and when to retry.
/// Every rate the organization set is taken in one statement, all or nothing.
pub async fn admit(
    db: &deadpool_postgres::Pool,
    set: SetPromptLimits,
    org: &OrganizationId,
    user: &AuthUser,
) -> Result<(), Problem> {
    if set == SetPromptLimits::default() {
        return Ok(());
    }
    let mut rates = Vec::new();
    for ((request_key, token_key, request_limit, token_limit), limits) in
        keys(org, &user.user_id).into_iter().zip([set.member, set.organization])
    {
        if limits.tokens_per_minute > 0 {
            let allowed = format!("{} tokens per minute", limits.tokens_per_minute);
            rates.push((token_key, tokens(limits.tokens_per_minute), token_limit, allowed));
        }
        if limits.requests_per_minute > 0 {
            let allowed = format!("{} prompts per minute", limits.requests_per_minute);
            rates.push((request_key, requests(limits.requests_per_minute), request_limit, allowed));
        }
    }
    let db = db.get().await?;
    let takes: Vec<(&str, Rate, u32)> =
        rates.iter().map(|(k, r, _, _)| (k.as_str(), *r, 1)).collect();
    match limits::take_all(&db, &takes).await? {
        None => Ok(()),
        Some((i, refused)) => {
            let (_, _, limit, allowed) = rates.swap_remove(i);
            Err(exceeded(limit, allowed, refused))
        }
    }
}

fn exceeded(limit: &'static str, allowed: String, refused: Refused) -> Problem {
    Exceeded { limit, allowed, retry_after: refused.wait, used: Some(refused.used) }.into()
}

/// Charge a finished reply's tokens to its member's and organization's token rates.
pub async fn charge(
    db: &deadpool_postgres::Pool,
    set: SetPromptLimits,
    org: &OrganizationId,
    user: &UserId,
    used: &TokenUsage,
) -> anyhow::Result<()> {
    let total = used.input + used.output + used.cache.read + used.cache.write;
    if total == 0 {
        return Ok(());
    }
    let db = db.get().await?;
    for ((_, token_key, _, _), limits) in
        keys(org, user).into_iter().zip([set.member, set.organization])
    {
        if limits.tokens_per_minute > 0 {
            limits::charge(&db, &token_key, tokens(limits.tokens_per_minute), total).await?;
        }
    }
    Ok(())
}
