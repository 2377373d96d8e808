//! Read-your-writes: a read may carry the consistency token a command returned
//! (`X-Consistency-Token` header or `?consistency=`); it then waits, bounded, until the read
//! models reflect that aggregate up to that sequence.
//!
//! The wait holds no pooled connection: a waiter checks the position with a connection it gives
//! back at once, then sleeps until the projector's NOTIFY for that aggregate (see
//! `platform::notifications`) wakes it. A token beyond what was ever committed for its aggregate could
//! never be reached and is refused at once (404, as a write that does not exist); whether the
//! caller may read the token's aggregate is checked after the wait, like the resource it names
//! (`access::aggregate`).

use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use platform::problem::Problem;
use schemas::api::ConsistencyToken;

use platform::notifications::{ProjectionWait, Signals, wait_for_projection};

pub const HEADER: &str = "X-Consistency-Token";

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
    match wait_for_projection(pool, progress, &token.aggregate_id, wanted, max_wait).await? {
        Ok(()) => Ok(()),
        Err(ProjectionWait::NeverCommitted) => Err(Problem::not_found()),
        Err(ProjectionWait::TimedOut) => {
            Err(Problem::unavailable("the read models have not caught up with this write yet"))
        }
    }
}
