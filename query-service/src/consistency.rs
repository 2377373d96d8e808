//! Read-your-writes: a read may carry the consistency token a command returned
//! (`X-Consistency-Token` header or `?consistency=`); it then waits, bounded, until the read
//! models reflect that aggregate up to that sequence.

use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use platform::problem::Problem;
use schemas::api::ConsistencyToken;

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

/// Wait until the read models reach `token`, or answer 503 with Retry-After after `max_wait`.
pub async fn wait_for(
    pool: &deadpool_postgres::Pool,
    token: Option<ConsistencyToken>,
    max_wait: Duration,
) -> Result<(), Problem> {
    let Some(token) = token else { return Ok(()) };
    let client = pool.get().await?;
    let stmt =
        client.prepare_cached("SELECT sequence FROM rm_positions WHERE aggregate_id = $1").await?;
    let wanted = i64::try_from(token.sequence).unwrap_or(i64::MAX);
    let deadline = Instant::now() + max_wait;
    let mut delay = Duration::from_millis(1);
    loop {
        let at: i64 =
            client.query_opt(&stmt, &[&token.aggregate_id]).await?.map_or(0, |r| r.get(0));
        if at >= wanted {
            return Ok(());
        }
        if Instant::now() + delay > deadline {
            return Err(Problem::unavailable(
                "the read models have not caught up with this write yet",
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}
