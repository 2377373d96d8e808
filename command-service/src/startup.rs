//! Wiring: builds the command service from configuration and runs it until shutdown.

use std::net::TcpListener;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::web;
use identity::AuthConfig;
use identity::Authenticator;
use identity::admission::RequestLimits;
use platform::config::CommonConfig;
use platform::limits::Rate;
use platform::{bus, http};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::aggregates::{ApiKey, Organization, Session, Workspace};
use crate::catch_up::CatchUp;
use crate::config::CommandConfig;
use crate::directory::{EventStoreDirectory, Services};
use crate::executor::Executor;
use crate::spend::PgSpend;
use crate::{internal, relay, routes};

/// What request handlers share.
pub struct AppState {
    /// Identity and profile lookups (not the event store).
    pub db: deadpool_postgres::Pool,
    /// Memberships, for checks a route makes before a command (from the event store).
    pub directory: Arc<dyn crate::directory::Directory>,
    /// Key-encryption keys that seal provider keys.
    pub keks: identity::credentials::Keks,
    /// Whether provider connections may point at private addresses.
    pub allow_private_urls: bool,
    pub organizations: Executor<Organization>,
    pub workspaces: Executor<Workspace>,
    pub sessions: Executor<Session>,
    pub api_keys: Executor<ApiKey>,
    /// Spend held and counted under the budgets.
    pub spend: Arc<PgSpend>,
    /// Synchronous prompts waiting for their replies.
    pub sync_prompts: crate::sync_prompts::SyncPrompts,
}

pub struct Application {
    port: u16,
    server: Server,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
    grace: Duration,
}

impl Application {
    pub async fn build(
        common: CommonConfig,
        auth: AuthConfig,
        cfg: CommandConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let platform::startup::Foundation { metrics, db: pool, nats, js, .. } =
            platform::startup::foundation(&common, "command-service", platform::db::pool).await?;
        // Besides the deadpool pool (identity, readiness): sqlx for the event store (postgres-es).
        // sqlx pings a connection when it is returned to the pool; pinging it again when it is
        // taken would put a round trip in front of every statement (as deadpool's `Fast`
        // recycling elsewhere, a connection that died while idle fails its next statement: 503).
        //
        // Its statements keep one plan per connection (`force_generic_plan`): the batched ones
        // take arrays, and PostgreSQL, which can count an array given as a value but not one
        // given as a parameter, judged each custom plan cheaper than the generic one and planned
        // them again at every call (measured: as long as running them, for the event insert
        // with its check). Their plans are index scans whatever the values (the lateral
        // subqueries of `catch_up.rs` and `event_repository.rs`).
        let options = PgConnectOptions::from_str(&common.database_url)?
            .options([("plan_cache_mode", "force_generic_plan")]);
        let pg = PgPoolOptions::new()
            .max_connections(common.database_pool_size as u32)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);

        let spend = Arc::new(PgSpend::new(pool.clone()));
        // Every aggregate cache's catch-up reads, batched together (`catch_up.rs`).
        let catch_up = CatchUp::start(pg.clone());
        let services = Services {
            directory: Arc::new(EventStoreDirectory::new(pg.clone(), catch_up.clone())),
            spend: spend.clone(),
        };
        let keks = platform::config::load::<identity::ProviderKeysConfig>()?.keks()?;
        let (wake, handoffs, relayed) = relay::Wake::start(nats.clone(), shutdown.clone());
        // The projector's progress, for synchronous prompts that wait for the read models.
        let notifications = platform::notifications::Notifications::new();
        let state = Arc::new(AppState {
            keks,
            allow_private_urls: cfg.provider_allow_private_urls,
            db: pool.clone(),
            directory: services.directory.clone(),
            organizations: Executor::new(
                pg.clone(),
                catch_up.clone(),
                services.clone(),
                wake.clone(),
            ),
            workspaces: Executor::new(pg.clone(), catch_up.clone(), services.clone(), wake.clone()),
            sessions: Executor::new(pg.clone(), catch_up.clone(), services.clone(), wake.clone()),
            api_keys: Executor::new(pg.clone(), catch_up, services, wake.clone()),
            spend: spend.clone(),
            sync_prompts: crate::sync_prompts::SyncPrompts::new(
                nats.clone(),
                pool.clone(),
                notifications.progress.clone(),
                Duration::from_secs(cfg.sync_prompt_wait_secs),
            ),
        });
        let discovery = identity::Discovery::new(auth.oidc_issuer.clone())?;
        let authenticator = web::Data::new(Authenticator::new(auth, discovery, pool.clone())?);
        let limits = web::Data::new(RequestLimits::new(
            pool.clone(),
            Rate { per_minute: cfg.rate_limit_per_minute, burst: cfg.rate_limit_burst },
            Rate {
                per_minute: cfg.api_key_rate_limit_per_minute,
                burst: cfg.api_key_rate_limit_burst,
            },
        ));
        let ready = http::readiness(pool, nats.clone());

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(
            notifications.clone().run(common.database_url.clone(), shutdown.clone()),
        ));
        if cfg.relay_enabled {
            let (js, pg, stop, common) = (js.clone(), pg.clone(), shutdown.clone(), common.clone());
            let wake = wake.clone();
            tasks.push(tokio::spawn(async move {
                // The stream must exist before the first publish; NATS may still be starting.
                let stream = || bus::ensure_stream(&js, &common);
                if platform::retry::until_stopped("creating the event stream", &stop, stream)
                    .await
                    .is_some()
                {
                    relay::run(pg, js, wake, handoffs, stop).await;
                }
            }));
        }
        {
            let ttl = Duration::from_secs(cfg.spend_reservation_ttl_secs);
            tasks.push(tokio::spawn(sweep_reservations(spend, ttl, shutdown.clone())));
        }
        if cfg.follow_commits {
            let (nats, state, stop) = (nats.clone(), state.clone(), shutdown.clone());
            tasks.push(tokio::spawn(crate::follow::run(nats, state, relayed, stop)));
        }
        {
            let (nats, state, stop) = (nats.clone(), state.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = internal::run(nats, state, stop).await {
                    tracing::error!(error = %e, "internal command listener stopped");
                }
            }));
        }

        let listener = http::api_listener(&cfg.command_addr)?;
        let port = listener.local_addr()?.port();
        let data = web::Data::from(state);
        let spec = http::ServerSpec {
            listener,
            ops_listener: Some(TcpListener::bind(&cfg.command_ops_addr)?),
            metrics,
            ready,
            shutdown_grace_secs: common.shutdown_grace_secs,
            workers: None,
            http2_cleartext: common.http2_cleartext,
            shutdown: shutdown.clone(),
        };
        let server = http::serve(spec, move |c| {
            c.app_data(data.clone())
                .app_data(authenticator.clone())
                .app_data(limits.clone())
                .configure(routes::configure);
        })?;
        tracing::info!(port, "command-service listening");
        Ok(Self { port, server, tasks, shutdown, grace: common.shutdown_grace() })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serve until the shutdown token fires, then let requests and the relay finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(self.grace, task).await;
        }
        Ok(())
    }
}

/// Free, once a minute, what prompts held longer than `ttl` (every instance does; a
/// reservation is released once whoever gets to it).
async fn sweep_reservations(spend: Arc<PgSpend>, ttl: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        match spend.sweep(ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(released = n, "released budget reservations nobody settled"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep budget reservations"),
        }
    }
}
