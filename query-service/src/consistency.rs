//! Read-your-writes: a read may carry the consistency token a command returned
//! (`X-Consistency-Token` header or `?consistency=`); it then waits, bounded, until the read
//! models reflect that aggregate up to that sequence.
//!
//! The wait holds no pooled connection: a waiter checks the position with a connection it gives
//! back at once, then sleeps until the projector's NOTIFY for that aggregate (see
//! `notifications.rs`) wakes it. A token beyond what was ever committed for its aggregate could
//! never be reached and is refused at once (404, as a write that does not exist); whether the
//! caller may read the token's aggregate is checked after the wait, like the resource it names
//! (`access::aggregate`).

use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use platform::problem::Problem;
use schemas::api::ConsistencyToken;

use crate::notifications::Signals;

pub const HEADER: &str = "X-Consistency-Token";
/// A waiter re-checks at least this often, in case a notification was lost.
const RECHECK: Duration = Duration::from_secs(1);

/// The token of a request, if it has one. A malformed token is a 400.
pub fn token(req: &HttpRequest) -> Result<Option<ConsistencyToken>, Problem> {
    let raw = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| url_query_param(req.query_string(), "consistency"));
    match raw {
        None => Ok(None),
        Some(raw) => ConsistencyToken::decode(&raw)
            .map(Some)
            .ok_or_else(|| Problem::bad_request("malformed consistency token")),
    }
}

fn url_query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Wait until the read models reach `token`: 404 if it names no committed write, 503 with
/// Retry-After if they do not get there within `max_wait`.
pub async fn wait_for(
    pool: &deadpool_postgres::Pool,
    progress: &Arc<Signals>,
    token: &ConsistencyToken,
    max_wait: Duration,
) -> Result<(), Problem> {
    let wanted = i64::try_from(token.sequence).map_err(|_| Problem::not_found())?;
    // Interest first, then the check: a notification between the two is not missed.
    let mut woken = progress.interest(&token.aggregate_id);
    let (at, committed) = positions(pool, &token.aggregate_id).await?;
    if wanted > committed {
        return Err(Problem::not_found());
    }
    let deadline = tokio::time::Instant::now() + max_wait;
    let mut at = at;
    while at < wanted {
        // Re-check now and then even without a notification, in case one was lost.
        let wake = tokio::time::timeout(RECHECK, woken.changed());
        if tokio::time::timeout_at(deadline, wake).await.is_err() {
            return Err(Problem::unavailable(
                "the read models have not caught up with this write yet",
            ));
        }
        at = positions(pool, &token.aggregate_id).await?.0;
    }
    Ok(())
}

/// (projected, committed) sequences of an aggregate; the connection goes back at once.
async fn positions(
    pool: &deadpool_postgres::Pool,
    aggregate_id: &str,
) -> Result<(i64, i64), Problem> {
    let db = pool.get().await?;
    let stmt = db
        .prepare_cached(
            "SELECT coalesce((SELECT sequence FROM rm_positions WHERE aggregate_id = $1), 0), \
                    oc_committed_sequence($1)",
        )
        .await?;
    let row = db.query_one(&stmt, &[&aggregate_id]).await?;
    Ok((row.get(0), row.get(1)))
}
