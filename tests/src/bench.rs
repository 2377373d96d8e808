//! What the benchmarks share: the system a latency benchmark runs, latencies in milliseconds
//! and their percentiles, and the CPU each process of a run used.

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::process::{cpu_seconds, machine_cpu_seconds};
use crate::{System, SystemOptions};

/// How long a benchmark waits for any one thing before it fails.
const WAIT: Duration = Duration::from_secs(60);

/// Per prompt: (accepted, first delta) in milliseconds, from the prompt's POST.
pub type Sample = (f64, f64);

/// The concurrency levels measured (`OC_BENCH_LEVELS`, comma-separated; 1, 10, 50 and 200).
pub fn levels() -> Vec<usize> {
    std::env::var("OC_BENCH_LEVELS")
        .unwrap_or_else(|_| "1,10,50,200".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// How many sessions prompt at once in the latency benchmarks (`OC_BENCH_SESSIONS`, 50).
pub fn sessions() -> usize {
    std::env::var("OC_BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(50)
}

/// The system for `sessions` sessions of one user prompting at once: the services' default
/// database pool (not the tests' small one), worker slots and stream leases for all of them.
pub async fn system(sessions: usize) -> System {
    system_with(sessions, Vec::new()).await
}

/// Whether to run the deployment's shape (`OC_BENCH_DEPLOYED=1`), as `compose/` runs it: every
/// client request through the front (nginx with `compose/nginx/nginx.conf`, one worker
/// process), two instances of the command service (one relaying), of the query service and of
/// the worker, and NATS as a cluster of three with the services' own users, the stream and
/// consumers replicated on all three. Else one instance of each, NATS alone, no front.
pub fn deployed() -> bool {
    std::env::var("OC_BENCH_DEPLOYED").is_ok_and(|v| v == "1")
}

/// Connections per database pool: the services' default (16), or in the deployment's shape as
/// many as let its seven instances fit this machine's PostgreSQL (`max_connections` 100, three
/// kept for superusers): an API service holds two pools and a listener (and the command service
/// its relay's connection), the projector and a worker one pool each, so two of each API
/// service and worker and one projector hold at most 11 × pool + 6 connections
/// (`docs/scaling.md`, "Database connections").
fn database_pool_size(deployed: bool) -> usize {
    if deployed { 8 } else { 16 }
}

/// `OC_BENCH_SERVICE_ENV`: more environment for every service, as `NAME=value` separated by
/// spaces (`TOKIO_WORKER_THREADS=1`, say), to compare settings on one build.
fn more_service_env() -> Vec<(&'static str, String)> {
    let given = std::env::var("OC_BENCH_SERVICE_ENV").unwrap_or_default();
    given
        .split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("OC_BENCH_SERVICE_ENV: NAME=value");
            // Read once per run, so the names live as long as the run.
            let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
            (name, value.to_owned())
        })
        .collect()
}

/// [`system`], with more environment for every service (trace export, say).
pub async fn system_with(sessions: usize, env: Vec<(&'static str, String)>) -> System {
    let deployed = deployed();
    let mut service_env = vec![
        ("OC_DATABASE_POOL_SIZE", database_pool_size(deployed).to_string()),
        ("OC_SSE_STREAMS_PER_USER", (sessions * 4).to_string()),
    ];
    service_env.extend(env);
    service_env.extend(more_service_env());
    let mut system = System::start_with(SystemOptions {
        worker_env: vec![("OC_WORKER_CONCURRENCY", (sessions * 2).to_string())],
        service_env,
        query_instances: if deployed { 2 } else { 1 },
        nats_cluster: deployed,
        nats_auth: deployed,
        // `OC_BENCH_LOGS=1`: every service's log at debug level in files, to look into a run.
        capture_logs: std::env::var("OC_BENCH_LOGS").is_ok_and(|v| v == "1"),
        ..Default::default()
    })
    .await;
    if deployed {
        let command = system.start_command(false).await;
        system.command.push(command);
        let worker = system.start_worker().await;
        system.workers.push(worker);
        system.front = Some(crate::front::Front::start(&system).await);
        println!(
            "the deployment's shape: through the front, two instances of each API service and \
             worker, NATS as a cluster of three, database pools of {}",
            database_pool_size(true)
        );
    }
    system
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (0–1) of `samples` (nearest rank); 0 when there are none.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[((n as f64 * q) as usize).min(n - 1)],
    }
}

/// "p50 … / p90 … / p99 … ms".
pub fn percentiles(samples: &[f64]) -> String {
    let at = |q| quantile(samples, q);
    format!("p50 {:.2} / p90 {:.2} / p99 {:.2} ms", at(0.5), at(0.9), at(0.99))
}

/// What a burst of new sessions measured.
pub struct Burst {
    /// Per session, from its prompt's POST: (accepted, first delta).
    pub samples: Vec<Sample>,
    /// Per session, from the start line (before the session was created) to its first delta:
    /// what a user starting a new conversation waits.
    pub from_start: Vec<f64>,
    /// Per session, from the start line: its creation answered, and its stream opened (the
    /// stream's first event read).
    pub created: Vec<f64>,
    pub opened: Vec<f64>,
}

/// `n` new sessions at the same instant, each created, its stream opened and `prompt` sent.
pub async fn burst(system: &System, bearer: &str, ws: &str, n: usize, prompt: &str) -> Burst {
    let start_line = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let runs = (0..n).map(|_| {
        let start_line = start_line.clone();
        async move {
            start_line.wait().await;
            let began = Instant::now();
            let session = system.create_session(bearer, ws).await;
            let created = began.elapsed();
            let mut stream = system.watch(bearer, &session).await;
            let opened = began.elapsed();
            let start = Instant::now();
            system.prompt(bearer, &session.id, prompt).await;
            let accepted = start.elapsed();
            stream.until(WAIT, |e| e.event == "message.part.delta").await;
            let first = start.elapsed();
            let whole = began.elapsed();
            stream.until(WAIT, crate::sse::is_idle).await;
            ((ms(accepted), ms(first)), ms(whole), ms(created), ms(opened))
        }
    });
    let sessions: Vec<(Sample, f64, f64, f64)> = join_all(runs).await;
    Burst {
        samples: sessions.iter().map(|s| s.0).collect(),
        from_start: sessions.iter().map(|s| s.1).collect(),
        created: sessions.iter().map(|s| s.2).collect(),
        opened: sessions.iter().map(|s| s.3).collect(),
    }
}

/// Samples the floor is taken from at least: one request's time (at one session) varies by a
/// factor of three from one call to the next, and the overhead is measured against its median.
const FLOOR_SAMPLES: usize = 30;

/// `n` streaming requests straight to the fake provider at the same instant: each one's time to
/// its first text (the floor the service's first delta is compared with). After one round that
/// is not counted (its connections are new), rounds of `n` until there are [`FLOOR_SAMPLES`].
pub async fn provider_direct(system: &System, n: usize) -> Vec<f64> {
    direct_round(system, n).await;
    let mut samples = Vec::new();
    while samples.len() < FLOOR_SAMPLES {
        samples.extend(direct_round(system, n).await);
    }
    samples
}

/// One round of [`provider_direct`]: `n` requests at the same instant.
async fn direct_round(system: &System, n: usize) -> Vec<f64> {
    let url = format!("{}/v1/chat/completions", system.provider_url);
    let body = serde_json::json!({ "model": "m", "stream": true,
        "messages": [{ "role": "user", "content": "bench [[fake tokens=20]]" }] });
    let start_line = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let runs = (0..n).map(|_| {
        let (start_line, url, body) = (start_line.clone(), url.clone(), body.clone());
        async move {
            start_line.wait().await;
            let start = Instant::now();
            let req = system.http.post(url).bearer_auth("sk-bench").json(&body);
            let mut res = req.send().await.expect("the fake provider answers");
            let mut seen = String::new();
            while let Some(chunk) = res.chunk().await.expect("the fake provider streams") {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if seen.contains("\"content\"") {
                    break;
                }
            }
            ms(start.elapsed())
        }
    });
    join_all(runs).await
}

/// The database's part of a prompt's commit that no code of ours can shorten: single-row
/// inserts on the run's database, each its own transaction committed as the event store's are
/// (answered once the write-ahead log is flushed to disk), one after another; beside as many
/// bare round trips (`SELECT 1`). Returns both as [`percentiles`], in milliseconds, after a few
/// that are not counted.
pub async fn durable_commit_floor(system: &System) -> (String, String) {
    const SAMPLES: usize = 200;
    let db = system.db().await;
    db.batch_execute("CREATE TABLE IF NOT EXISTS bench_commit_floor (n bigint)").await.unwrap();
    let insert = db.prepare("INSERT INTO bench_commit_floor VALUES ($1)").await.unwrap();
    let select = db.prepare("SELECT 1").await.unwrap();
    let (mut commits, mut trips) = (Vec::new(), Vec::new());
    for i in 0..SAMPLES + 10 {
        let start = Instant::now();
        db.execute(&insert, &[&(i as i64)]).await.expect("a durable commit");
        let committed = ms(start.elapsed());
        let start = Instant::now();
        db.query_one(&select, &[]).await.expect("a round trip");
        if i >= 10 {
            commits.push(committed);
            trips.push(ms(start.elapsed()));
        }
    }
    (percentiles(&commits), percentiles(&trips))
}

/// CPU seconds used so far by the whole machine (the part no process below accounts for is
/// mostly PostgreSQL, whose processes come and go), each service, NATS, the fake provider and
/// the benchmark's own client; the instances of one service, the NATS servers of a cluster and
/// the front's processes each summed under one name.
pub fn cpu_by_process(system: &System) -> Vec<(String, f64)> {
    let mut all = vec![("machine".to_owned(), machine_cpu_seconds())];
    let mut add = |name: &str, pids: &[u32]| {
        let used: f64 = pids.iter().map(|pid| cpu_seconds(*pid)).sum();
        match all.iter_mut().find(|(n, _)| n == name) {
            Some((_, sum)) => *sum += used,
            None => all.push((name.to_owned(), used)),
        }
    };
    let services = system.command.iter().chain(&system.query).chain(&system.projector);
    for service in services.chain(&system.workers) {
        add(&service.proc.name, &[service.proc.pid()]);
    }
    add("nats-server", &system.nats.pids());
    if let Some(front) = &system.front {
        add("front (nginx)", &front.pids());
    }
    add("fake-provider", &[system.fake_provider.pid()]);
    add("bench client", &[std::process::id()]);
    all
}
