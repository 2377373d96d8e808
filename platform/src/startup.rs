//! What every service does first: raise its open-file limit, apply migrations, install metrics,
//! and connect to PostgreSQL and NATS. Each service then adds its own parts.

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

/// Raise the open-file limit, migrate (if configured), install the metrics recorder labelled
/// `service`, and connect, to PostgreSQL with `pool` (`db::pool` for most). Connections are
/// lazy or retried, so this succeeds while dependencies are still starting.
pub async fn foundation(
    common: &CommonConfig,
    service: &'static str,
    pool: PoolFor,
) -> anyhow::Result<Foundation> {
    raise_open_file_limit();
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

/// Raise this process's soft limit on open files to its hard limit, as Go's runtime and nginx
/// (`worker_rlimit_nofile`) do. Every event stream over HTTP/1.1, and every database and NATS
/// connection, is a file; services are often started with a soft limit of 1,024 (systemd's
/// default, and a container's under recent Docker and containerd) under a far higher hard limit,
/// which would cap a query instance at about a thousand streams and refuse the next
/// connections unanswered. Where the limit cannot be raised, the service runs with what it has.
fn raise_open_file_limit() {
    let before = rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if now > before => {
            tracing::info!(before, now, "open-file limit raised to the hard limit");
        }
        Ok(now) => tracing::debug!(now, "open-file limit already at its hard limit"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit; running with it as is");
        }
    }
}
