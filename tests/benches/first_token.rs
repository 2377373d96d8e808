//! Prompt latency: how long a prompt takes to be accepted, and from the prompt's POST to the
//! first text delta on the session's stream, at 1 and at `OC_BENCH_SESSIONS` (default 50)
//! sessions prompting at once. The fake provider answers at once (no time to first token), so
//! the second number is the pipeline's own overhead plus the fake provider's response time.
//! Run with `make bench` (release binaries); prints one line per scenario.

use std::time::{Duration, Instant};

use e2e_tests::sse::SseClient;
use e2e_tests::{System, SystemOptions};
use futures::future::join_all;

const WAIT: Duration = Duration::from_secs(60);

/// Per prompt: (accepted, first delta) in milliseconds.
type Sample = (f64, f64);

#[tokio::main]
async fn main() {
    let sessions: usize =
        std::env::var("OC_BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let system = System::start_with(SystemOptions {
        worker_env: vec![("OC_WORKER_CONCURRENCY", (sessions * 2).to_string())],
        ..Default::default()
    })
    .await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "bench").await;
    let ws = system.create_workspace(&alice, &org.id, "bench").await;

    let one = run(&system, &alice, &ws.id, 1, 60).await;
    report("1 session", &one);
    let many = run(&system, &alice, &ws.id, sessions, 20).await;
    report(&format!("{sessions} sessions at once"), &many);
}

/// `sessions` sessions each send `prompts` prompts one after another (each waits for its reply);
/// the first quarter of each session's prompts is warm-up and not counted.
async fn run(
    system: &System,
    bearer: &str,
    ws: &str,
    sessions: usize,
    prompts: usize,
) -> Vec<Sample> {
    let mut streams = Vec::new();
    for _ in 0..sessions {
        let session = system.create_session(bearer, ws).await;
        let stream = system.watch(bearer, &session).await;
        streams.push((session, stream));
    }
    let runs = streams.into_iter().map(|(session, mut stream)| async move {
        let mut samples = Vec::new();
        for i in 0..prompts {
            let start = Instant::now();
            system.prompt(bearer, &session.id, "bench [[fake tokens=20]]").await;
            let accepted = start.elapsed();
            stream.until(WAIT, |e| e.event == "message.part.delta").await;
            let first = start.elapsed();
            stream.until(WAIT, e2e_tests::sse::is_idle).await;
            if i >= prompts / 4 {
                samples.push((ms(accepted), ms(first)));
            }
        }
        samples
    });
    join_all(runs).await.into_iter().flatten().collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(scenario: &str, samples: &[Sample]) {
    let pick = |f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        format!("p50 {:.1} / p90 {:.1} / p99 {:.1} ms", at(0.5), at(0.9), at(0.99))
    };
    println!(
        "{scenario} ({} prompts): accepted {}; POST to first delta {}",
        samples.len(),
        pick(|s| s.0),
        pick(|s| s.1)
    );
}
