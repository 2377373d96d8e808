//! Throughput: prompts accepted per second with 50 concurrent clients and the projection lag
//! under that load, right after the system started and again once it has run for a few seconds
//! (a worker answers a prompt without reading its conversation only when the prompt was
//! committed 5 s after it began hearing every abort, its margin for other machines' clocks);
//! text tokens per second delivered to SSE clients with the provider streaming as fast as it
//! can; the lag again at rates offered evenly, below the most the machine takes and at the
//! goal's; and each service's resident memory before and after. Run with `make bench` (release
//! binaries).

use std::time::{Duration, Instant};

use e2e_tests::System;
use e2e_tests::bench::cpu_by_process;
use e2e_tests::process::resident_kb;
use e2e_tests::sse::{is_idle, reply_text};
use futures::StreamExt;
use futures::future::join_all;
use serde_json::json;

const CLIENTS: usize = 50;
/// Sessions each client prompts in turn (a session answering a reply refuses another prompt).
const SESSIONS_PER_CLIENT: usize = 20;
const ROUNDS: usize = 3;
const WAIT: Duration = Duration::from_secs(120);
/// Prompts per second the paced runs offer, all clients together (`OC_BENCH_RATES`,
/// comma-separated; 500 and the goal for prompts accepted per second, 1,000).
fn paced_rates() -> Vec<f64> {
    let rates = std::env::var("OC_BENCH_RATES").unwrap_or_else(|_| "500,1000".into());
    rates.split(',').map(|r| r.trim().parse().expect("OC_BENCH_RATES: numbers")).collect()
}

#[tokio::main]
async fn main() {
    let system = e2e_tests::bench::system(CLIENTS).await;
    let up = Instant::now();
    memory(&system, "idle");
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "bench").await;
    let ws = system.create_workspace(&alice, &org.id, "bench").await;
    let sessions: Vec<String> = futures::stream::iter(0..CLIENTS * SESSIONS_PER_CLIENT)
        .map(|_| async { system.create_session(&alice, &ws.id).await.id })
        .buffer_unordered(32)
        .collect()
        .await;

    accepted_per_second(&system, &alice, &sessions, "just started", None).await;
    // The same sessions again, once the worker answers prompts from what it holds (a warm-up
    // the bench chooses, not a wait for a condition: none says when the margin has passed).
    tokio::time::sleep_until((up + Duration::from_secs(6)).into()).await;
    accepted_per_second(&system, &alice, &sessions, "running", None).await;
    // Rates offered evenly rather than as fast as the clients can: the lag the read models keep
    // at loads below the machine's most, and at the goal's rate.
    for rate in paced_rates() {
        let pace = Some(Duration::from_secs_f64(CLIENTS as f64 / rate));
        let when = format!("paced at {rate} prompts/s");
        accepted_per_second(&system, &alice, &sessions, &when, pace).await;
    }
    tokens_per_second(&system, &alice, &ws.id).await;
    memory(&system, "after load");
}

/// 50 clients, each prompting its sessions in turn without waiting for replies: as soon as its
/// last prompt was answered, or every `pace` when given (the clients' starts spread over one
/// `pace`); `when` labels the run.
async fn accepted_per_second(
    system: &System,
    bearer: &str,
    sessions: &[String],
    when: &str,
    pace: Option<Duration>,
) {
    let db = system.db().await;
    let replies_before = replies_shown(&db).await;
    let projector = system.projector.as_ref().expect("a projector").ops_url.clone();
    let relay = system.command[0].ops_url.clone();
    let lag_before = histogram(system, &projector, "projection_lag_seconds").await;
    let outbox_before = histogram(system, &relay, "outbox_lag_seconds").await;
    let batches_before = histogram(system, &relay, "outbox_batch_duration_seconds").await;
    let projector_before = histogram(system, &projector, "projector_batch_duration_seconds").await;
    let event_by_event_before =
        counter(system, &projector, "projector_batches_event_by_event_total").await;
    let workers: Vec<String> = system.workers.iter().map(|w| w.ops_url.clone()).collect();
    let reads =
        ["history_read_seconds_count", "first_prompts_unread_total", "later_prompts_unread_total"];
    let mut reads_before = Vec::new();
    for name in reads {
        reads_before.push(counter_of_all(system, &workers, name).await);
    }
    let cpu_before = cpu_by_process(system);
    let started = Instant::now();
    let clients = sessions.chunks(SESSIONS_PER_CLIENT).enumerate().map(|(i, mine)| async move {
        let (mut accepted, mut busy) = (0, 0);
        let mut ticks = pace.map(|every| {
            let first = started + every.mul_f64(i as f64 / CLIENTS as f64);
            let mut ticks = tokio::time::interval_at(first.into(), every);
            // A client that fell behind sends at once and keeps its rate from there.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        for _ in 0..ROUNDS {
            for session in mine {
                if let Some(ticks) = ticks.as_mut() {
                    ticks.tick().await;
                }
                let body =
                    json!({ "parts": [{ "type": "text", "text": "bench [[fake tokens=1]]" }] });
                let answer =
                    system.post(bearer, &format!("/session/{session}/prompt_async"), body).await;
                match answer.status {
                    202 => accepted += 1,
                    409 => busy += 1,
                    other => panic!("prompt answered {other}: {answer:?}"),
                }
            }
        }
        (accepted, busy)
    });
    let counts = join_all(clients).await;
    let took = started.elapsed().as_secs_f64();
    let accepted: usize = counts.iter().map(|c| c.0).sum();
    let busy: usize = counts.iter().map(|c| c.1).sum();
    println!(
        "{CLIENTS} clients, {when}: {accepted} prompts accepted in {took:.2} s = {:.0} accepted/s ({busy} refused: session still answering)",
        accepted as f64 / took
    );
    // Projection lag (event recorded → in the read model) of what that load made, once drained:
    // every reply it asked for shown complete, and every session idle again.
    let all = (CLIENTS * SESSIONS_PER_CLIENT) as i64;
    let drained = e2e_tests::within(WAIT, || async {
        let idle: i64 = db
            .query_one("SELECT count(*) FROM rm_sessions WHERE status = 'idle'", &[])
            .await
            .unwrap()
            .get(0);
        let replies = replies_shown(&db).await;
        (idle >= all && replies >= replies_before + accepted as i64).then_some(())
    })
    .await;
    assert!(drained.is_some(), "every reply shown and every session idle again");
    let lag_after = histogram(system, &projector, "projection_lag_seconds").await;
    let outbox_after = histogram(system, &relay, "outbox_lag_seconds").await;
    let batches_after = histogram(system, &relay, "outbox_batch_duration_seconds").await;
    let projector_after = histogram(system, &projector, "projector_batch_duration_seconds").await;
    let drained_in = started.elapsed().as_secs_f64();
    let used: Vec<String> = cpu_by_process(system)
        .into_iter()
        .zip(cpu_before)
        .map(|((name, after), (_, before))| format!("{name} {:.1} s", after - before))
        .collect();
    println!(
        "  CPU from the first prompt until every session was idle ({drained_in:.1} s): {}",
        used.join(", ")
    );
    for (what, after, before) in [
        ("projection lag (recorded → in the read model)", &lag_after, &lag_before),
        ("of which in the outbox (recorded → on the bus)", &outbox_after, &outbox_before),
        ("the relay's batches (read → deleted)", &batches_after, &batches_before),
        ("the projector's batches (delivered → acknowledged)", &projector_after, &projector_before),
    ] {
        let during: Vec<(f64, f64)> = after
            .iter()
            .enumerate()
            .map(|(i, (le, a))| (*le, a - before.get(i).map_or(0.0, |b| b.1)))
            .collect();
        for q in [0.5, 0.99] {
            println!(
                "  {what} under that load: p{:.0} ≤ {} ms (bucket bound)",
                q * 100.0,
                bucket_quantile(&during, q) * 1e3
            );
        }
    }
    let count = |h: &[(f64, f64)]| h.last().map_or(0.0, |b| b.1);
    println!(
        "  the relay sent {} events in {} batches; the projector took them in {} batches, {} of them event by event",
        count(&outbox_after) - count(&outbox_before),
        count(&batches_after) - count(&batches_before),
        count(&projector_after) - count(&projector_before),
        counter(system, &projector, "projector_batches_event_by_event_total").await
            - event_by_event_before
    );
    let mut during = Vec::new();
    for (name, before) in reads.iter().zip(reads_before) {
        during.push(counter_of_all(system, &workers, name).await - before);
    }
    println!(
        "  the worker read {} conversations, and answered {} first and {} later prompts without a read",
        during[0], during[1], during[2]
    );
}

/// Replies the read models show complete.
async fn replies_shown(db: &tokio_postgres::Client) -> i64 {
    let row = db.query_one(
        "SELECT count(*) FROM rm_messages WHERE role = 'assistant' AND info ->> 'finish' IS NOT NULL",
        &[],
    );
    row.await.unwrap().get(0)
}

/// 50 sessions at once, each streaming a 2,000-token reply as fast as the provider sends it.
async fn tokens_per_second(system: &System, bearer: &str, ws: &str) {
    const TOKENS: usize = 2_000;
    let mut watched = Vec::new();
    for _ in 0..CLIENTS {
        let session = system.create_session(bearer, ws).await;
        let stream = system.watch(bearer, &session).await;
        watched.push((session, stream));
    }
    let started = Instant::now();
    let runs = watched.into_iter().map(|(session, mut stream)| async move {
        let prompt = format!("bench [[fake tokens={TOKENS}]]");
        let accepted = system.prompt(bearer, &session.id, &prompt).await;
        let events = stream.until(WAIT, is_idle).await;
        let assistant = accepted["assistantMessageID"].as_str().unwrap().to_owned();
        reply_text(&events, &assistant).split_whitespace().count()
    });
    let tokens: usize = join_all(runs).await.into_iter().sum();
    let took = started.elapsed().as_secs_f64();
    assert_eq!(tokens, CLIENTS * TOKENS, "every token reached its client");
    println!(
        "{CLIENTS} sessions streaming {TOKENS} tokens each: {tokens} tokens delivered in {took:.2} s = {:.0} tokens/s",
        tokens as f64 / took
    );
}

fn memory(system: &System, when: &str) {
    let services = system.command.iter().chain(&system.query).chain(&system.projector);
    for service in services.chain(&system.workers) {
        let rss = resident_kb(service.proc.pid()) / 1024.0;
        println!("{when} {}: {rss:.1} MB resident", service.proc.name);
    }
}

/// A Prometheus histogram's cumulative buckets: (upper bound in seconds, count).
async fn histogram(system: &System, ops_url: &str, name: &str) -> Vec<(f64, f64)> {
    let text = system.http.get(format!("{ops_url}/metrics")).send().await.unwrap().text().await;
    let prefix = format!("{name}_bucket{{");
    text.unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect()
}

/// A counter's value, all labels together (0 before its first increment).
async fn counter(system: &System, ops_url: &str, name: &str) -> f64 {
    let text = system.http.get(format!("{ops_url}/metrics")).send().await.unwrap().text().await;
    text.unwrap_or_default()
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// [`counter`] summed over several instances.
async fn counter_of_all(system: &System, ops_urls: &[String], name: &str) -> f64 {
    let mut sum = 0.0;
    for url in ops_urls {
        sum += counter(system, url, name).await;
    }
    sum
}

/// The upper bound of the bucket holding quantile `q` of cumulative `buckets`.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets.iter().find(|(_, count)| *count >= total * q).map_or(f64::NAN, |b| b.0)
}
