//! PostgreSQL: the deadpool pool used by projector, query service and identity lookups, and the
//! migrations in `migrations/`, embedded and applied under sqlx's advisory lock.

use std::time::Duration;

use deadpool_postgres::{ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime, Timeouts};
use futures::future::BoxFuture;
use tokio_postgres::NoTls;

use crate::config::CommonConfig;
use crate::problem::Problem;

/// How long a request waits for a connection before it gets a 503 instead of hanging.
const POOL_WAIT: Duration = Duration::from_secs(3);

/// A connection pool. Connections are made lazily, so this succeeds while PostgreSQL is down.
pub fn pool(cfg: &CommonConfig) -> anyhow::Result<Pool> {
    build(cfg, None, None, RecyclingMethod::Fast, None)
}

/// Planner settings for connections whose statements join a batch of keys (an `unnest` of
/// arrays) to tables by their keys, as every statement of the projector does: an index probe
/// per key, never a hash or merge join over a whole table.
///
/// A prepared statement is planned with the table's size at the time, and a connection may keep
/// one generic plan, which guesses ten rows for an `unnest`. While a table is small (a new
/// deployment, a rebuild from empty) a hash join over a sequential scan costs less on paper
/// than the probes, and the connection keeps that plan as the table grows, until statistics
/// happen to be refreshed: each batch then reads the whole table. Measured under the
/// `throughput` benchmark: 3,900 rows of `rm_messages` read for every batch of 1–34
/// completions, 5.5 ms a statement and a quarter of PostgreSQL's time. Turned off, the planner
/// takes the index whatever it believes of the sizes; nothing these connections run needs the
/// other joins.
pub const KEYED_BATCH_PLANS: &str = "-c enable_hashjoin=off -c enable_mergejoin=off";

/// A pool for statements that join batches of keys to tables (see [`KEYED_BATCH_PLANS`]).
pub fn keyed_batch_pool(cfg: &CommonConfig) -> anyhow::Result<Pool> {
    build(cfg, None, None, RecyclingMethod::Fast, Some(KEYED_BATCH_PLANS))
}

/// The pool tenant reads go through, connecting as `user` (a role without superuser or
/// BYPASSRLS, a member of `oc_reader`: see migrations/0013…). A request binds a connection to
/// its caller ([`bind`]: `oc.user_id`, `oc.org_scope`), and the binding is undone before the
/// connection goes back to the pool (see [`Bound`]), so a read that forgot to bind sees no
/// tenant's rows rather than the previous caller's. Connections are handed out as they are, with
/// no statement on the way out.
pub fn reader_pool(cfg: &CommonConfig, user: &str, password: Option<&str>) -> anyhow::Result<Pool> {
    build(cfg, Some(user), password.filter(|p| !p.is_empty()), RecyclingMethod::Fast, None)
}

/// A connection of [`reader_pool`] reading on behalf of `user_id`, limited to `org_scope` where
/// it is not empty (an API key's organization). Both settings are set by one statement, so a
/// connection is never half bound.
pub async fn bind(pool: &Pool, user_id: &str, org_scope: &str) -> Result<Bound, Problem> {
    let (bound, ()) = bind_then(pool, user_id, org_scope, |_| Box::pin(async { Ok(()) })).await?;
    Ok(bound)
}

/// A read on a connection bound as [`bind_then`] binds it.
pub type ReadFuture<'c, T> = BoxFuture<'c, Result<T, Problem>>;

/// The first read of a connection bound as [`bind`] binds it, sent with the binding in one
/// round trip: statements on one connection run in the order they are sent, so `first` reads
/// as the caller, and a request's first answer no longer waits for a round trip of its own.
/// If the binding fails, so does this, whatever `first` found.
pub async fn bind_then<T>(
    pool: &Pool,
    user_id: &str,
    org_scope: &str,
    first: impl for<'c> FnOnce(&'c deadpool_postgres::Object) -> ReadFuture<'c, T>,
) -> Result<(Bound, T), Problem> {
    let db = pool.get().await?;
    let stmt = db
        .prepare_cached(
            "SELECT set_config('oc.user_id', $1, false), set_config('oc.org_scope', $2, false)",
        )
        .await?;
    // Unbound again once it is dropped, even if the binding failed halfway.
    let bound = Bound(Unbinding(Some(db)));
    // `join!` polls in order: the binding is sent before anything of `first`. (A binding sent
    // and left unpolled would hold up the connection's later answers: both are awaited here.)
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&user_id, &org_scope];
    let (binding, found) = futures::join!(bound.query_one(&stmt, &params), first(&bound));
    binding?;
    let found = found?;
    Ok((bound, found))
}

/// A reader connection bound to a caller. When dropped, it is unbound after the request, off its
/// path, and only then goes back to the pool; one that cannot be unbound (the statement fails,
/// the runtime is gone) is closed instead, never handed to another caller.
pub struct Bound(Unbinding);

/// Undoes [`bind`]'s settings.
const UNBIND: &str = "RESET oc.user_id; RESET oc.org_scope";

/// A bound connection: closed if dropped while it holds it.
struct Unbinding(Option<deadpool_postgres::Object>);

impl Drop for Unbinding {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

impl std::ops::Deref for Bound {
    type Target = deadpool_postgres::Object;

    fn deref(&self) -> &Self::Target {
        self.0.0.as_ref().expect("a bound connection is held until dropped")
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        let mut held = Unbinding(self.0.0.take());
        let unbind = async move {
            if let Some(conn) = &held.0
                && conn.batch_execute(UNBIND).await.is_ok()
            {
                drop(held.0.take()); // back to the pool
            }
        };
        // Never polled (no runtime, or it is stopping): dropping it closes the connection.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(unbind));
        }
    }
}

/// A pool on the configured database, as `user` (else the URL's), sized and timed out alike,
/// with `options` (server settings, `-c name=value`) for each of its connections.
fn build(
    cfg: &CommonConfig,
    user: Option<&str>,
    password: Option<&str>,
    recycling_method: RecyclingMethod,
    options: Option<&str>,
) -> anyhow::Result<Pool> {
    let mut pg = deadpool_postgres::Config::new();
    pg.url = Some(cfg.database_url.clone());
    pg.options = options.map(str::to_owned);
    pg.user = user.map(str::to_owned);
    pg.password = password.map(str::to_owned);
    pg.manager = Some(ManagerConfig { recycling_method });
    pg.pool = Some(PoolConfig {
        max_size: cfg.database_pool_size,
        timeouts: Timeouts {
            wait: Some(POOL_WAIT),
            create: Some(POOL_WAIT),
            recycle: Some(POOL_WAIT),
        },
        ..PoolConfig::default()
    });
    Ok(pg.create_pool(Some(Runtime::Tokio1), NoTls)?)
}

/// Apply pending migrations. Safe to run from several processes at once.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    sqlx::migrate!("../migrations").run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Apply migrations, retrying while PostgreSQL is not reachable yet (services may start first).
pub async fn migrate_with_retry(database_url: &str, attempts: usize) -> anyhow::Result<()> {
    crate::retry::times("migrations", attempts, || migrate(database_url)).await
}
