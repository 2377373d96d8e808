//! The whole system for one test: dependencies and service processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::nats::{NATS_USERS, NatsServers};
use crate::process::{Proc, bin, free_port, repo_root};

/// What to start.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// Query-service instances (SSE resume across instances needs two).
    pub query_instances: usize,
    /// Whether the first command-service runs the outbox relay.
    pub relay: bool,
    /// Whether to start an LLM worker.
    pub worker: bool,
    /// The worker's ack wait: how soon a dead worker's prompt goes to another.
    pub worker_ack_wait_secs: u64,
    /// Extra environment for the worker (timeouts, delivery limits).
    pub worker_env: Vec<(&'static str, String)>,
    /// Extra environment for every service.
    pub service_env: Vec<(&'static str, String)>,
    /// Write every service's output (at debug level) to files in `System::log_dir`, so a test
    /// can search the logs.
    pub capture_logs: bool,
    /// Run NATS with the services' users and permissions (compose/nats/permissions.conf): each
    /// service connects as itself, and anonymous clients are refused.
    pub nats_auth: bool,
    /// Run a NATS cluster of three, the stream and consumers replicated on all three.
    pub nats_cluster: bool,
    /// Run a PostgreSQL server of the test's own (`System::restart_postgres`), not the machine's.
    pub own_postgres: bool,
    /// Start every service with this soft limit on open files (under the machine's hard limit),
    /// as systemd and recent container runtimes start services with 1,024.
    pub open_files: Option<u64>,
}

impl Default for SystemOptions {
    fn default() -> Self {
        Self {
            query_instances: 1,
            relay: true,
            worker: true,
            worker_ack_wait_secs: 30,
            worker_env: Vec::new(),
            service_env: Vec::new(),
            capture_logs: false,
            nats_auth: false,
            nats_cluster: false,
            own_postgres: false,
            open_files: None,
        }
    }
}

/// A service process, its base URL, and where its operations endpoints are.
pub struct Service {
    pub proc: Proc,
    pub url: String,
    /// `/healthz`, `/readyz`, `/metrics`: a listener of their own for the API services, the
    /// only listener of the others.
    pub ops_url: String,
}

pub struct System {
    // Field order is drop order: services stop before their dependencies.
    /// The front (nginx with the deployment's configuration) that `command_url`, `query_url`
    /// and `watch` go through, when a benchmark runs the deployment's shape; else none, and
    /// they go to the instances directly.
    pub front: Option<crate::front::Front>,
    pub command: Vec<Service>,
    pub query: Vec<Service>,
    pub projector: Option<Service>,
    pub workers: Vec<Service>,
    pub fake_provider: Proc,
    pub provider_url: String,
    pub oidc: Proc,
    pub issuer: String,
    oidc_port: u16,
    oidc_callbacks: String,
    /// Where the OpenID provider wrote its signing keys (for token-forging tests).
    pub oidc_keys: PathBuf,
    pub nats: NatsServers,
    pub nats_url: String,
    pub db_url: String,
    db_name: String,
    admin_url: String,
    /// The test's own PostgreSQL server, when it has one (dropped after the database is).
    own_postgres: Option<crate::postgres::OwnPostgres>,
    pub opts: SystemOptions,
    /// The key-encryption key every service seals or opens provider keys with.
    pub keks: String,
    /// Where service logs go when `capture_logs` is set.
    pub log_dir: PathBuf,
    pub http: reqwest::Client,
    tokens: Mutex<HashMap<String, String>>,
}

impl System {
    pub async fn start() -> System {
        Self::start_with(SystemOptions::default()).await
    }

    pub async fn start_with(opts: SystemOptions) -> System {
        let own_postgres = match opts.own_postgres {
            true => Some(crate::postgres::OwnPostgres::start().await),
            false => None,
        };
        let admin_url = match &own_postgres {
            Some(pg) => pg.admin_url(),
            None => std::env::var("OC_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        };
        let db_name = format!(
            "oc_e2e_{}_{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                % 1_000_000_000
        );
        admin(&admin_url, &format!("CREATE DATABASE {db_name}")).await;
        let db_url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db_name}"),
            None => panic!("OC_TEST_POSTGRES_URL must end with a database name"),
        };

        let nats_dir = std::env::temp_dir().join(format!("oc-e2e-nats-{db_name}"));
        let nats_count = if opts.nats_cluster { 3 } else { 1 };
        let nats = NatsServers::start(nats_count, opts.nats_auth, &nats_dir);
        let nats_url = nats.url();
        let log_dir = std::env::temp_dir().join(format!("oc-e2e-logs-{db_name}"));

        let oidc_port = free_port();
        let oidc_keys = std::env::temp_dir().join(format!("oc-e2e-oidc-{db_name}.json"));
        // Query services get their ports now: the provider must know their sign-in callbacks.
        let query_ports: Vec<u16> = (0..opts.query_instances).map(|_| free_port()).collect();
        let callbacks = query_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/auth/callback"))
            .collect::<Vec<_>>()
            .join(",");
        let oidc = spawn_oidc(oidc_port, &oidc_keys, &callbacks);
        // (waited for, and started again if it died, once the system below exists)
        let issuer = format!("http://127.0.0.1:{oidc_port}");

        let fake_port = free_port();
        let mut cmd = Command::new(bin("fake-provider"));
        cmd.env("FAKE_ADDR", format!("127.0.0.1:{fake_port}"));
        let fake_provider = Proc::spawn("fake-provider", cmd);
        let provider_url = format!("http://127.0.0.1:{fake_port}");

        // Idle connections are dropped before the services' keep-alive (5 s) closes them: a POST
        // sent on a connection the server is closing at that moment fails, and is not retried.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let mut system = System {
            front: None,
            command: Vec::new(),
            query: Vec::new(),
            projector: None,
            workers: Vec::new(),
            fake_provider,
            provider_url,
            oidc,
            issuer,
            oidc_port,
            oidc_callbacks: callbacks,
            oidc_keys,
            nats,
            nats_url,
            db_url,
            db_name,
            admin_url,
            own_postgres,
            opts: opts.clone(),
            keks: {
                use base64::Engine;
                let key: [u8; 32] = rand::random();
                format!("test:{}", base64::engine::general_purpose::STANDARD.encode(key))
            },
            log_dir,
            http,
            tokens: Mutex::default(),
        };
        let provider_health = format!("{}/healthz", system.provider_url);
        let ready = wait_ready(&system.http, Some(&mut system.fake_provider), &provider_health);
        ready.await.unwrap_or_else(|why| panic!("{why}"));
        system.start_oidc().await;
        let command = system.start_command(opts.relay).await;
        system.command.push(command);
        system.projector = Some(system.start_service("projector", "OC_PROJECTOR_ADDR", &[]).await);
        for port in query_ports {
            let callback = format!("http://127.0.0.1:{port}/auth/callback");
            let env = [("OC_OIDC_REDIRECT_URL", callback.as_str())];
            let q = system.start_service_at("query-service", "OC_QUERY_ADDR", port, &env).await;
            system.query.push(q);
        }
        if opts.worker {
            let w = system.start_worker().await;
            system.workers.push(w);
        }
        system
    }

    /// Environment every service process gets.
    pub fn env(&self, cmd: &mut Command) {
        let log = match std::env::var("RUST_LOG") {
            Ok(filter) => filter,
            Err(_) if self.opts.capture_logs => "debug".into(),
            Err(_) if std::env::var_os("OC_TEST_LOGS").is_some() => "info".into(),
            Err(_) => "warn".into(),
        };
        cmd.env("OC_DATABASE_URL", &self.db_url)
            .env("OC_DATABASE_POOL_SIZE", "4")
            .env("OC_NATS_URL", &self.nats_url)
            .env("OC_STREAM_REPLICAS", self.nats.len().to_string())
            .env("OC_OIDC_ISSUER", &self.issuer)
            .env("OC_PROVIDER_BASE_URL", format!("{}/v1", self.provider_url))
            .env("OC_WORKER_ACK_WAIT_SECS", self.opts.worker_ack_wait_secs.to_string())
            .env("OC_SHUTDOWN_GRACE_SECS", "5")
            .env("OC_PROVIDER_KEKS", &self.keks)
            // The fake provider listens on loopback.
            .env("OC_PROVIDER_ALLOW_PRIVATE_URLS", "true")
            .env("OC_OIDC_DEVICE_POLL_SECS", "1")
            // Tests drive many commands quickly as one user; the rate tests set their own limits.
            .env("OC_RATE_LIMIT_PER_MINUTE", "1000000")
            .env("OC_RATE_LIMIT_BURST", "100000")
            .env("OC_API_KEY_RATE_LIMIT_PER_MINUTE", "1000000")
            .env("OC_API_KEY_RATE_LIMIT_BURST", "100000")
            .env("RUST_LOG", log);
        for (k, v) in &self.opts.service_env {
            cmd.env(k, v);
        }
    }

    /// Start a service binary listening on a fresh port, and wait until it is ready.
    pub async fn start_service(
        &self,
        name: &str,
        addr_var: &str,
        extra: &[(&str, &str)],
    ) -> Service {
        self.start_service_at(name, addr_var, free_port(), extra).await
    }

    /// Start a service binary listening on `port`, and wait until it is ready.
    pub async fn start_service_at(
        &self,
        name: &str,
        addr_var: &str,
        port: u16,
        extra: &[(&str, &str)],
    ) -> Service {
        let mut cmd = match self.opts.open_files {
            // The shell lowers the soft limit, then becomes the service (same process).
            Some(files) => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(format!("ulimit -Sn {files} && exec \"$0\"")).arg(bin(name));
                sh
            }
            None => Command::new(bin(name)),
        };
        self.env(&mut cmd);
        cmd.env(addr_var, format!("127.0.0.1:{port}"));
        let url = format!("http://127.0.0.1:{port}");
        let ops_var = match name {
            "command-service" => Some("OC_COMMAND_OPS_ADDR"),
            "query-service" => Some("OC_QUERY_OPS_ADDR"),
            _ => None,
        };
        let ops_url = match ops_var {
            Some(var) => {
                let ops = free_port();
                cmd.env(var, format!("127.0.0.1:{ops}"));
                format!("http://127.0.0.1:{ops}")
            }
            None => url.clone(),
        };
        if self.opts.nats_auth
            && let Some((user, _, password)) = NATS_USERS.iter().find(|(u, _, _)| *u == name)
        {
            cmd.env("OC_NATS_USER", user).env("OC_NATS_PASSWORD", password);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let log = self.opts.capture_logs.then(|| {
            let _ = std::fs::create_dir_all(&self.log_dir);
            self.log_dir.join(format!("{name}.log"))
        });
        let mut proc = Proc::spawn_logging(name, cmd, log.as_deref());
        let ready = wait_ready(&self.http, Some(&mut proc), &format!("{ops_url}/readyz")).await;
        ready.unwrap_or_else(|why| panic!("{why}"));
        Service { proc, url, ops_url }
    }

    pub async fn start_command(&self, relay: bool) -> Service {
        let relay = if relay { "true" } else { "false" };
        self.start_service("command-service", "OC_COMMAND_ADDR", &[("OC_RELAY_ENABLED", relay)])
            .await
    }

    pub async fn start_worker(&self) -> Service {
        let env: Vec<(&str, &str)> =
            self.opts.worker_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.start_service("llm-worker", "OC_WORKER_ADDR", &env).await
    }

    /// Wait until `url` answers 200.
    pub async fn wait_http(&self, url: &str) {
        wait_ready(&self.http, None, url).await.unwrap_or_else(|why| panic!("{why}"));
    }

    /// A bearer token for a demo user, from the OpenID provider's real authorization-code flow.
    pub async fn token(&self, user: &str) -> String {
        let mut tokens = self.tokens.lock().await;
        if let Some(t) = tokens.get(user) {
            return t.clone();
        }
        let out = tokio::process::Command::new("node")
            .arg(repo_root().join("dev/oidc/token.mjs"))
            .arg(user)
            .arg(&self.issuer)
            .output()
            .await
            .expect("node runs");
        assert!(out.status.success(), "token.mjs failed: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        tokens.insert(user.to_owned(), token.clone());
        token
    }

    /// A connection to this test's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls).await.expect("db");
        tokio::spawn(conn);
        client
    }

    /// Restart the OpenID provider on the same port: it signs with a new key from now on (a key
    /// rotation), and tokens it issued before no longer verify.
    pub async fn rotate_oidc_key(&mut self) {
        self.oidc.kill();
        self.oidc = spawn_oidc(self.oidc_port, &self.oidc_keys, &self.oidc_callbacks);
        self.tokens.lock().await.clear();
        self.start_oidc().await;
    }

    /// Wait for the OpenID provider to serve its discovery document. Node can die at start on a
    /// loaded machine (it is the one dependency here not written to wait for its port); a
    /// provider that died is started again, twice at most, and its last words are reported.
    async fn start_oidc(&mut self) {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        for attempt in 1..=3 {
            match wait_ready(&self.http, Some(&mut self.oidc), &url).await {
                Ok(()) => return,
                Err(why) if attempt < 3 => {
                    eprintln!("restarting the OpenID provider: {why}");
                    self.oidc = spawn_oidc(self.oidc_port, &self.oidc_keys, &self.oidc_callbacks);
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Start NATS again after `self.nats.kill()`, on the same port and store.
    /// Crash the test's own PostgreSQL (`own_postgres`) and start it again on the same data.
    pub async fn restart_postgres(&mut self) {
        self.own_postgres.as_mut().expect("a test's own PostgreSQL").restart().await;
    }

    pub fn restart_nats(&mut self) {
        self.nats.restart_node(0);
    }

    /// A client of the tests' NATS (any server of the cluster).
    pub async fn nats(&self) -> async_nats::Client {
        async_nats::connect(self.nats.urls().as_slice()).await.expect("nats")
    }

    pub fn command_url(&self) -> &str {
        match &self.front {
            Some(front) => &front.url,
            None => &self.command.last().expect("a command service").url,
        }
    }

    pub fn query_url(&self) -> &str {
        match &self.front {
            Some(front) => &front.url,
            None => &self.query[0].url,
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.command.clear();
        self.query.clear();
        self.projector = None;
        self.workers.clear();
        let _ = std::fs::remove_file(&self.oidc_keys);
        let _ = std::fs::remove_dir_all(&self.log_dir);
        let (url, name) = (self.admin_url.clone(), self.db_name.clone());
        // Drop runs outside any runtime we may block; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(admin(&url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")));
        })
        .join();
    }
}

/// Wait until `url` answers 200, or `proc` (the process that should serve it) exits, or a
/// minute passes; the error says which, with the process's last output.
async fn wait_ready(
    http: &reqwest::Client,
    mut proc: Option<&mut Proc>,
    url: &str,
) -> Result<(), String> {
    let answered = crate::within(Duration::from_secs(60), || {
        // Checked before each poll: a process that died will never answer.
        let exited = proc.as_deref_mut().and_then(Proc::exited);
        async move {
            if let Some(why) = exited {
                return Some(Err(format!("waiting for {url}: {why}")));
            }
            let res = http.get(url).timeout(Duration::from_secs(2)).send().await;
            res.is_ok_and(|r| r.status().is_success()).then_some(Ok(()))
        }
    });
    answered.await.unwrap_or_else(|| Err(format!("timed out waiting for {url} to answer 200")))
}

fn spawn_oidc(port: u16, keys_out: &std::path::Path, callbacks: &str) -> Proc {
    let _ = std::fs::remove_file(keys_out);
    let mut cmd = Command::new("node");
    cmd.arg(repo_root().join("dev/oidc/server.mjs"))
        .env("OIDC_PORT", port.to_string())
        .env("OIDC_TEST_KEYS_OUT", keys_out)
        .env("OIDC_WEB_REDIRECT_URIS", callbacks);
    Proc::spawn("oidc-provider", cmd)
}

async fn admin(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}
