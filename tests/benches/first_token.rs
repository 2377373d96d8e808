//! Prompt latency: how long a prompt takes to be accepted, and from the prompt's POST to the
//! first text delta on the session's stream, at 1 and at `OC_BENCH_SESSIONS` (default 50)
//! sessions prompting at once. The fake provider answers at once (no time to first token), so
//! the second number is the pipeline's own overhead plus the fake provider's response time.
//! Then bursts: 1, 10 and `OC_BENCH_SESSIONS` new sessions, each created, its stream opened and
//! prompted at the same instant, beside the floor — as many requests straight to the fake
//! provider at the same instant, time to its first text.
//! Run with `make bench` (release binaries); prints one line per scenario.

use std::time::{Duration, Instant};

use e2e_tests::System;
use e2e_tests::bench::{ms, percentiles};
use e2e_tests::process::{cpu_seconds, resident_kb};
use futures::future::join_all;

const WAIT: Duration = Duration::from_secs(60);

/// Per prompt: (accepted, first delta) in milliseconds.
type Sample = (f64, f64);

#[tokio::main]
async fn main() {
    let sessions = e2e_tests::bench::sessions();
    let system = e2e_tests::bench::system(sessions).await;
    let services = system.command.iter().chain(&system.query).chain(&system.projector);
    for service in services.chain(&system.workers) {
        let rss = resident_kb(service.proc.pid()) / 1024.0;
        println!("idle {}: {rss:.1} MB resident", service.proc.name);
    }
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "bench").await;
    let ws = system.create_workspace(&alice, &org.id, "bench").await;

    // Replies as fast as the fake provider can send them.
    let instant = "bench [[fake tokens=20]]";
    // Replies streaming for about a second, as a model's do.
    let streaming = "bench [[fake tokens=50 delay_ms=20]]";
    let one = run(&system, &alice, &ws.id, (1, 60), instant).await;
    report("1 session, instant replies", &one);
    let many = run(&system, &alice, &ws.id, (sessions, 8), streaming).await;
    report(&format!("{sessions} sessions streaming at once"), &many);
    let started = std::time::Instant::now();
    let flood = run(&system, &alice, &ws.id, (sessions, 20), instant).await;
    let took = started.elapsed().as_secs_f64();
    report(&format!("{sessions} sessions, instant replies back to back"), &flood);
    println!("  {} prompts answered in {took:.1} s", sessions * 20);
    for n in [1, 10, sessions] {
        let floor = provider_direct(&system, n).await;
        let burst = burst(&system, &alice, &ws.id, n, instant).await;
        report(&format!("burst of {n} new sessions"), &burst);
        println!("  provider direct, {n} at once: first text {}", percentiles(&floor));
    }
    where_time_went(&system).await;
}

/// User plus system CPU time a process has used (Linux).
/// The mean of every latency histogram the services export, over both scenarios: where the
/// time went.
async fn where_time_went(system: &System) {
    let services = system.command.iter().chain(&system.query).chain(&system.projector);
    println!("  this benchmark's client: {:.1} s of CPU", cpu_seconds(std::process::id()));
    println!("  nats-server: {:.1} s of CPU", cpu_seconds(system.nats.pid()));
    println!("  fake-provider: {:.1} s of CPU", cpu_seconds(system.fake_provider.pid()));
    for service in services.chain(&system.workers) {
        let url = service.ops_url.as_str();
        println!("  {} {url}: {:.1} s of CPU", service.proc.name, cpu_seconds(service.proc.pid()));
        let text = system.http.get(format!("{url}/metrics")).send().await.unwrap().text().await;
        let mut sums = std::collections::BTreeMap::<String, (f64, f64)>::new();
        for line in text.unwrap_or_default().lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let value: f64 = value.parse().unwrap_or(0.0);
            if let Some(series) =
                name.strip_suffix("_sum").or_else(|| name.split_once("_sum{").map(|(n, _)| n))
            {
                sums.entry(series.to_owned()).or_default().0 += value;
            } else if let Some(series) =
                name.strip_suffix("_count").or_else(|| name.split_once("_count{").map(|(n, _)| n))
            {
                sums.entry(series.to_owned()).or_default().1 += value;
            }
        }
        for (series, (sum, count)) in sums.into_iter().filter(|(_, (_, c))| *c > 0.0) {
            println!("  {url} {series}: mean {:.2} ms over {count}", sum / count * 1e3);
        }
    }
}

/// `n` new sessions at the same instant, each created, its stream opened and `prompt` sent; per
/// session, from its prompt's POST: (accepted, first delta).
async fn burst(system: &System, bearer: &str, ws: &str, n: usize, prompt: &str) -> Vec<Sample> {
    let start_line = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let runs = (0..n).map(|_| {
        let start_line = start_line.clone();
        async move {
            start_line.wait().await;
            let session = system.create_session(bearer, ws).await;
            let mut stream = system.watch(bearer, &session).await;
            let start = Instant::now();
            system.prompt(bearer, &session.id, prompt).await;
            let accepted = start.elapsed();
            stream.until(WAIT, |e| e.event == "message.part.delta").await;
            let first = start.elapsed();
            stream.until(WAIT, e2e_tests::sse::is_idle).await;
            (ms(accepted), ms(first))
        }
    });
    join_all(runs).await
}

/// `n` streaming requests straight to the fake provider at the same instant: each one's time to
/// its first text (the floor the service's first delta is compared with).
async fn provider_direct(system: &System, n: usize) -> Vec<f64> {
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

/// `sessions` sessions each send `prompts` prompts one after another (each waits for its reply);
/// the first quarter of each session's prompts is warm-up and not counted.
async fn run(
    system: &System,
    bearer: &str,
    ws: &str,
    (sessions, prompts): (usize, usize),
    prompt: &str,
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
            system.prompt(bearer, &session.id, prompt).await;
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

fn report(scenario: &str, samples: &[Sample]) {
    let pick = |f: fn(&Sample) -> f64| percentiles(&samples.iter().map(f).collect::<Vec<_>>());
    println!(
        "{scenario} ({} prompts): accepted {}; POST to first delta {}",
        samples.len(),
        pick(|s| s.0),
        pick(|s| s.1)
    );
}
