//! Wiring: builds the query service from configuration and runs it until shutdown.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::web;
use async_nats::jetstream;
use identity::AuthConfig;
use identity::Authenticator;
use platform::config::CommonConfig;
use platform::{db, http};
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::QueryConfig;
use crate::hub::Hub;
use crate::routes;

/// What request handlers share.
pub struct AppState {
    /// The read pool; take connections with `reader`, which binds them to the caller.
    pub db: deadpool_postgres::Pool,
    pub js: jetstream::Context,
    pub hub: Arc<Hub>,
    pub cfg: QueryConfig,
    /// Identity writes (users, login sessions): the default role, not the read role.
    pub identity: deadpool_postgres::Pool,
    /// Fired at shutdown; open SSE streams end on it.
    pub shutdown: CancellationToken,
    /// Leases of open event streams (the per-user cap).
    pub streams: Arc<crate::streams::StreamLeases>,
    /// The instance's database notifications: the projector's progress (read-your-writes
    /// waits) and access changes (open streams re-check).
    pub notifications: Arc<platform::notifications::Notifications>,
}

impl AppState {
    /// A database connection for `user`'s read, once the read models reflect the request's
    /// consistency token (if it carries one). The connection reads as `oc_reader` on behalf of
    /// `user`, so row-level security limits it to the user's organizations whatever it queries.
    pub async fn reader(
        &self,
        req: &actix_web::HttpRequest,
        user: &identity::AuthUser,
    ) -> Result<platform::db::Bound, platform::problem::Problem> {
        let (db, ()) = self.reader_then(req, user, |_| Box::pin(async { Ok(()) })).await?;
        Ok(db)
    }

    /// [`Self::reader`], with the request's first read sent with the binding (and the token's
    /// check) in one round trip (`platform::db::bind_then`): what `first` finds, unless the
    /// token is not the caller's to read.
    pub async fn reader_then<T: Send>(
        &self,
        req: &actix_web::HttpRequest,
        user: &identity::AuthUser,
        first: impl for<'c> FnOnce(&'c deadpool_postgres::Object) -> platform::db::ReadFuture<'c, T>
        + Send
        + 'static,
    ) -> Result<(platform::db::Bound, T), platform::problem::Problem> {
        let token = crate::consistency::token(req)?;
        if let Some(token) = &token {
            let progress = &self.notifications.progress;
            crate::consistency::wait_for(&self.db, progress, token, self.cfg.consistency_wait())
                .await?;
        }
        let caller = user.clone();
        self.bind_then(user, move |db| {
            Box::pin(async move {
                // A token is read like the aggregate it names: another tenant's is "not found".
                let check = async {
                    match &token {
                        Some(t) => crate::access::aggregate(db, &t.aggregate_id, &caller).await,
                        None => Ok(()),
                    }
                };
                let (checked, found) = futures::join!(check, first(db));
                checked?;
                found
            })
        })
        .await
    }

    /// A database connection reading as `oc_reader` on behalf of `user` (no consistency wait),
    /// unbound again once dropped (`platform::db::Bound`).
    pub async fn bind(
        &self,
        user: &identity::AuthUser,
    ) -> Result<platform::db::Bound, platform::problem::Problem> {
        platform::db::bind(&self.db, user.user_id.as_str(), org_scope(user)).await
    }

    /// [`Self::bind`], with the connection's first read sent in the same round trip
    /// (`platform::db::bind_then`).
    pub async fn bind_then<T>(
        &self,
        user: &identity::AuthUser,
        first: impl for<'c> FnOnce(&'c deadpool_postgres::Object) -> platform::db::ReadFuture<'c, T>,
    ) -> Result<(platform::db::Bound, T), platform::problem::Problem> {
        platform::db::bind_then(&self.db, user.user_id.as_str(), org_scope(user), first).await
    }
}

/// The organization an API key limits its caller to (`oc.org_scope`); empty for a signed-in user.
fn org_scope(user: &identity::AuthUser) -> &str {
    user.scope.as_ref().map_or("", |o| o.as_str())
}

pub struct Application {
    port: u16,
    server: Server,
    /// Background tasks (hub, notifications), awaited at shutdown.
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(
        common: CommonConfig,
        auth: AuthConfig,
        cfg: QueryConfig,
        login: identity::LoginConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let platform::startup::Foundation { metrics, db: identity, nats, nats_losses, js } =
            platform::startup::foundation(&common, "query-service", platform::db::pool).await?;
        // Tenant reads: their own role and pool (see `platform::db::reader_pool`).
        let pool = db::reader_pool(
            &common,
            &cfg.reader_database_user,
            Some(cfg.reader_database_password.expose_secret()),
        )?;
        let hub = Hub::new(js.clone(), nats_losses, cfg.sse_session_buffer, shutdown.clone());
        // The stream is the writers' to create (the query service may only read it); the hub
        // waits for it.
        let hub_task = tokio::spawn(hub.clone().run());
        let notifications = platform::notifications::Notifications::new();
        let streams = crate::streams::StreamLeases::new(identity.clone(), cfg.sse_streams_per_user);
        let renew_task = tokio::spawn(streams.clone().renew(shutdown.clone()));
        let listener_task = {
            let (n, url, stop) =
                (notifications.clone(), common.database_url.clone(), shutdown.clone());
            tokio::spawn(n.run(url, stop))
        };
        let discovery = identity::Discovery::new(auth.oidc_issuer.clone())?;
        let sign_in = web::Data::new(identity::sign_in::SignIn::new(
            login,
            discovery.clone(),
            identity.clone(),
        ));
        let authenticator = web::Data::new(Authenticator::new(auth, discovery, identity.clone())?);
        let ready = {
            // Ready once PostgreSQL and NATS answer and the event stream exists.
            let (base, hub) = (http::readiness(pool.clone(), nats), hub.clone());
            let ready: http::ReadinessCheck = Arc::new(move || {
                let (base, hub) = (base.clone(), hub.clone());
                Box::pin(async move {
                    base().await?;
                    match hub.has_stream() {
                        true => Ok(()),
                        false => Err("the event stream does not exist yet".into()),
                    }
                })
            });
            ready
        };
        let listener = http::api_listener(&cfg.query_addr)?;
        let ops_listener = TcpListener::bind(&cfg.query_ops_addr)?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            db: pool,
            js,
            hub,
            cfg,
            identity,
            shutdown: shutdown.clone(),
            notifications,
            streams,
        });
        let spec = http::ServerSpec {
            listener,
            ops_listener: Some(ops_listener),
            metrics,
            ready,
            shutdown_grace_secs: common.shutdown_grace_secs,
            workers: None,
            http2_cleartext: common.http2_cleartext,
            shutdown: shutdown.clone(),
        };
        let server = http::serve(spec, move |c| {
            c.app_data(state.clone())
                .app_data(authenticator.clone())
                .app_data(sign_in.clone())
                .configure(routes::configure);
        })?;
        tracing::info!(port, "query-service listening");
        Ok(Self { port, server, tasks: vec![hub_task, listener_task, renew_task], shutdown })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        Ok(())
    }
}
