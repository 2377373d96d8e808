//! What every service does first: apply migrations, install metrics, and connect to PostgreSQL
//! and NATS. Each service then adds its own parts.

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::CommonConfig;
use crate::{bus, db};

/// The connections and handles every service starts from.
pub struct Foundation {
    pub metrics: PrometheusHandle,
    pub db: deadpool_postgres::Pool,
    pub nats: async_nats::Client,
    /// When deliveries of core NATS subscriptions may have been lost (see `bus::DeliveryLosses`).
    pub nats_losses: bus::DeliveryLosses,
    pub js: async_nats::jetstream::Context,
}

/// Which pool a service's statements want (see `db`): the plain one, or the one planned for
/// batches of keys.
pub type PoolFor = fn(&CommonConfig) -> anyhow::Result<deadpool_postgres::Pool>;

/// Migrate (if configured), install the metrics recorder labelled `service`, and connect, to
/// PostgreSQL with `pool` (`db::pool` for most). Connections are lazy or retried, so this
/// succeeds while dependencies are still starting.
pub async fn foundation(
    common: &CommonConfig,
    service: &'static str,
    pool: PoolFor,
) -> anyhow::Result<Foundation> {
    if common.run_migrations {
        db::migrate_with_retry(&common.database_url, 30).await?;
    }
    let metrics = crate::telemetry::init_metrics(service)?;
    let db = pool(common)?;
    let (nats, nats_losses) = bus::connect(common, service).await?;
    bus::report_traffic(&nats);
    let js = bus::jetstream(nats.clone());
    Ok(Foundation { metrics, db, nats, nats_losses, js })
}
