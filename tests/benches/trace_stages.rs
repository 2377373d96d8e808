//! Where a prompt's time goes, from its trace: bursts of 1, 10, 50 and 200 new sessions (as in
//! `first_token`, `OC_BENCH_LEVELS`), every service exporting its spans to a collector of the
//! bench's own, and per prompt the moment each step of its trace began or ended, counted from the
//! arrival of the prompt's POST. A level below [`SAMPLES`] is run again, one burst after the
//! other, until it has that many traces, so its percentiles are not one prompt's. Trace export
//! costs a little, so the absolute numbers are a bit above `first_token`'s; the shares are what
//! this is for. Run with `make bench`; `OC_BENCH_SPANS=1` also prints one trace's spans at each
//! level.

use std::time::Duration;

use e2e_tests::bench::{burst, durable_commit_floor, levels, percentiles};
use e2e_tests::otlp::{OtlpReceiver, ReceivedSpan};
use e2e_tests::within;

/// Traces wanted at each level at least.
const SAMPLES: usize = 30;

const ROOT: &str = "POST /session/{id}/prompt_async";

/// The stream each new session opens before its prompt.
const STREAM_ROOT: &str = "GET /session/{id}/event";

/// The steps of opening a session's stream, in milliseconds after its request arrived.
const STREAM_MILESTONES: &[&str] = &[
    "caller authenticated",
    "session's access checked (its organization read)",
    "stream lease taken",
    "session's feed ready (its start position known)",
    "answered (the stream's head sent)",
];

/// The milestones of one prompt, in milliseconds after its request arrived.
const MILESTONES: &[&str] = &[
    "caller authenticated",
    "request rate taken",
    "command starts (request read)",
    "aggregate loaded",
    "decided (directory lookups, rate limits, budget hold)",
    "events committed",
    "answered 202 (request span ends)",
    "outbox relay picks the prompt event up",
    "outbox relay has JetStream's ack",
    "worker picks the prompt up",
    "attempt announced (JetStream's ack)",
    "key opened (and the conversation read, where the call waited for one)",
    "worker calls the provider",
    "provider's first token",
    "first delta handed to SSE clients",
];

#[tokio::main]
async fn main() {
    let collector = OtlpReceiver::start().await;
    let system = e2e_tests::bench::system_with(200, collector.env()).await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "bench").await;
    let ws = system.create_workspace(&alice, &org.id, "bench").await;
    // Warm up (connections, caches), then forget the warm-up's spans.
    burst(&system, &alice, &ws.id, 10, "warm [[fake tokens=20]]").await;
    // What "events committed" cannot be shorter than here.
    let (commit, trip) = durable_commit_floor(&system).await;
    println!("a durable commit of one row on the database {commit}; a round trip alone {trip}");
    for n in levels() {
        let mut traces = Vec::new();
        let mut opens = Vec::new();
        for _ in 0..SAMPLES.div_ceil(n) {
            tokio::time::sleep(Duration::from_millis(500)).await; // the last burst's exports
            collector.clear();
            burst(&system, &alice, &ws.id, n, "bench [[fake tokens=20]]").await;
            traces.extend(
                within(Duration::from_secs(30), || async {
                    let traces: Vec<Vec<f64>> = collector
                        .traces_rooted_at("command-service", ROOT)
                        .iter()
                        .filter_map(|t| milestones(t))
                        .collect();
                    (traces.len() >= n).then_some(traces)
                })
                .await
                .unwrap_or_else(|| panic!("fewer than {n} complete traces")),
            );
            opens.extend(
                collector
                    .traces_rooted_at("query-service", STREAM_ROOT)
                    .iter()
                    .filter_map(|t| stream_milestones(t)),
            );
        }
        if std::env::var_os("OC_BENCH_SPANS").is_some() {
            print_spans(&collector.traces_rooted_at("command-service", ROOT)[0]);
        }
        println!(
            "burst of {n} new sessions: milestones of {} traces ({} bursts) after the POST arrived",
            traces.len(),
            SAMPLES.div_ceil(n)
        );
        for (i, name) in MILESTONES.iter().enumerate() {
            let at: Vec<f64> = traces.iter().map(|t| t[i]).collect();
            println!("  {name}: {}", percentiles(&at));
        }
        println!("  the sessions' streams opened before, {} of them:", opens.len());
        for (i, name) in STREAM_MILESTONES.iter().enumerate() {
            let at: Vec<f64> = opens.iter().map(|t| t[i]).collect();
            println!("    {name}: {}", percentiles(&at));
        }
    }
}

/// The milestones of a stream's opening (see [`STREAM_MILESTONES`]).
fn stream_milestones(trace: &[ReceivedSpan]) -> Option<Vec<f64>> {
    let root = trace.iter().find(|s| s.name == STREAM_ROOT)?;
    let step = |name: &str| {
        trace.iter().find(|s| s.parent_span_id == root.span_id && s.name == name).map(|s| s.end_ns)
    };
    let at = |ns: u64| (ns as f64 - root.start_ns as f64) / 1e6;
    Some(vec![
        at(step("authenticate")?),
        at(step("session access")?),
        at(step("stream lease")?),
        at(step("feed ready")?),
        at(root.end_ns),
    ])
}

/// Every span of one trace, in the order they began, each with its start and end in
/// milliseconds after the POST arrived (`OC_BENCH_SPANS=1`): what overlapped a slow step.
fn print_spans(trace: &[ReceivedSpan]) {
    let root = trace.iter().find(|s| s.name == ROOT).map_or(0, |s| s.start_ns) as f64;
    let at = |ns: u64| (ns as f64 - root) / 1e6;
    let mut spans: Vec<&ReceivedSpan> = trace.iter().collect();
    spans.sort_by_key(|s| s.start_ns);
    println!("  one trace's spans (start, end, service, name):");
    for s in spans {
        println!("    {:>8.2} {:>8.2}  {:<16} {}", at(s.start_ns), at(s.end_ns), s.service, s.name);
    }
}

/// The trace's milestones (see [`MILESTONES`]), if it has all its steps yet.
fn milestones(trace: &[ReceivedSpan]) -> Option<Vec<f64>> {
    let named = |name: &str| trace.iter().find(|s| s.name == name);
    let root = named(ROOT)?;
    let child = |parent: &ReceivedSpan, name: &str| {
        trace.iter().find(|s| s.parent_span_id == parent.span_id && s.name == name)
    };
    let command = child(root, "command session")?;
    let worker = named("answer prompt")?;
    let relay = trace.iter().find(|s| s.span_id == worker.parent_span_id)?;
    let first_token = named("provider first token")?;
    let call = named("provider call")?;
    // Most prompts are answered without a read, and a first prompt's read goes on beside the
    // call: only a read that ended before the call is a step on its path.
    let read_before_the_call = trace
        .iter()
        .filter(|s| s.name == "read conversation" && s.end_ns <= call.start_ns)
        .map(|s| s.end_ns);
    let ready = read_before_the_call.chain([named("open key")?.end_ns]).max()?;
    let fanout = trace
        .iter()
        .filter(|s| s.name == "sse fan-out" && s.start_ns >= first_token.end_ns)
        .map(|s| s.end_ns)
        .min()?;
    let at = |ns: u64| (ns as f64 - root.start_ns as f64) / 1e6;
    Some(vec![
        at(child(root, "authenticate")?.end_ns),
        at(child(root, "request rate")?.end_ns),
        at(command.start_ns),
        at(child(command, "load")?.end_ns),
        at(child(command, "decide")?.end_ns),
        at(child(command, "commit")?.end_ns),
        at(root.end_ns),
        at(relay.start_ns),
        at(relay.end_ns),
        at(worker.start_ns),
        at(named("announce attempt")?.end_ns),
        at(ready),
        at(call.start_ns),
        at(first_token.end_ns),
        at(fanout),
    ])
}
