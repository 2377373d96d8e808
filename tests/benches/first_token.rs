//! Prompt latency: how long a prompt takes to be accepted, and from the prompt's POST to the
//! first text delta on the session's stream. One session prompting back to back; then at each
//! concurrency level (`OC_BENCH_LEVELS`, default 1, 10, 50 and 200) that many sessions
//! streaming replies at once, and a burst of that many new sessions, each created, its stream
//! opened and prompted at the same instant; each beside the floor, as many requests straight to
//! the fake provider at the same instant (time to its first text; rounds of them, 30 requests
//! or more). The fake provider answers at once, so first delta minus the floor is the
//! pipeline's own overhead.
//! Run with `make bench` (release binaries); prints one line per scenario.

use std::time::{Duration, Instant};

use e2e_tests::System;
use e2e_tests::bench::{
    Sample, burst, cpu_by_process, durable_commit_floor, levels, ms, percentiles, provider_direct,
    quantile,
};
use e2e_tests::process::resident_kb;
use futures::future::join_all;

const WAIT: Duration = Duration::from_secs(60);

/// Sessions prompting back to back in the last run, whatever the levels.
const BACK_TO_BACK: usize = 50;

#[tokio::main]
async fn main() {
    let levels = levels();
    // Room for the largest level and for the back-to-back run at the end.
    let most = levels.iter().copied().chain([BACK_TO_BACK]).max().unwrap_or(BACK_TO_BACK);
    let system = e2e_tests::bench::system(most).await;
    let cpu_at_start = cpu_by_process(&system);
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
    let floor = provider_direct(&system, 1).await;
    let one = run(&system, &alice, &ws.id, (1, 60), instant).await;
    report("1 session, instant replies", &one, &floor);
    let (commit, trip) = durable_commit_floor(&system).await;
    println!("  a durable commit of one row on the database {commit}; a round trip alone {trip}");
    for &n in &levels {
        let floor = provider_direct(&system, n).await;
        let prompts = if n > 50 { 4 } else { 8 };
        let steady = run(&system, &alice, &ws.id, (n, prompts), streaming).await;
        report(&format!("{n} sessions streaming at once"), &steady, &floor);
        let floor = provider_direct(&system, n).await;
        let burst = burst(&system, &alice, &ws.id, n, instant).await;
        report(&format!("burst of {n} new sessions"), &burst.samples, &floor);
        println!(
            "  from the start line (session created, stream opened, prompted) to first delta {}",
            percentiles(&burst.from_start)
        );
        println!(
            "    of which the session created {}; its stream opened {}",
            percentiles(&burst.created),
            percentiles(&burst.opened)
        );
    }
    let started = std::time::Instant::now();
    let flood = run(&system, &alice, &ws.id, (BACK_TO_BACK, 20), instant).await;
    let took = started.elapsed().as_secs_f64();
    report(&format!("{BACK_TO_BACK} sessions, instant replies back to back"), &flood, &[]);
    println!("  {} prompts answered in {took:.1} s", BACK_TO_BACK * 20);
    where_time_went(&system, cpu_at_start).await;
}

/// Where the time went: the CPU each process used over the whole run, and the mean of every
/// histogram the services export (latencies in milliseconds, sizes as they are).
async fn where_time_went(system: &System, cpu_at_start: Vec<(String, f64)>) {
    for ((process, now), (_, before)) in cpu_by_process(system).into_iter().zip(cpu_at_start) {
        println!("  {process}: {:.1} s of CPU", now - before);
    }
    let services = system.command.iter().chain(&system.query).chain(&system.projector);
    for service in services.chain(&system.workers) {
        let url = service.ops_url.as_str();
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
            // Durations are exported in seconds; the rest (batch sizes) are counts.
            if series.ends_with("_seconds") {
                println!("  {url} {series}: mean {:.2} ms over {count}", sum / count * 1e3);
            } else {
                println!("  {url} {series}: mean {:.2} over {count}", sum / count);
            }
        }
    }
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

fn report(scenario: &str, samples: &[Sample], floor: &[f64]) {
    let pick = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
    println!(
        "{scenario} ({} prompts): accepted {}; POST to first delta {}",
        samples.len(),
        percentiles(&pick(|s| s.0)),
        percentiles(&pick(|s| s.1))
    );
    if !floor.is_empty() {
        // The measure: first delta minus the provider's own time to first text, and
        // the first delta as a multiple of calling the provider directly.
        let (first, direct) = (quantile(&pick(|s| s.1), 0.5), quantile(floor, 0.5));
        println!(
            "  provider direct at the same concurrency: first text {}; overhead p50 {:.2} ms, {:.1}x the floor",
            percentiles(floor),
            first - direct,
            first / direct.max(0.001)
        );
    }
}
