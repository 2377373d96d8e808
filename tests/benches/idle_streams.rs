//! Idle SSE streams: the query service's resident memory with `OC_BENCH_STREAMS` (default
//! 50,000, or as many as the machine's open-file limit allows) open session streams that carry
//! nothing but heartbeats, spread over 100 sessions, from as many loopback source addresses as
//! the streams need ports.
//! Run with `make bench` (release binaries); prints one line.

use std::time::Duration;

use e2e_tests::process::resident_kb;
use e2e_tests::{System, SystemOptions};
use futures::StreamExt;

/// Streams opened from one loopback source address (under its ephemeral port range).
const PER_SOURCE_ADDRESS: usize = 20_000;

#[tokio::main]
async fn main() {
    let wanted: usize =
        std::env::var("OC_BENCH_STREAMS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    // Each stream is a socket in this process and in the query service: stay under the open
    // files this machine allows a process.
    let (files, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("the open-file limit");
    let streams = wanted.min(usize::try_from(files).unwrap_or(usize::MAX).saturating_sub(1_000));
    if streams < wanted {
        println!(
            "{wanted} streams asked; {streams} opened (a process may open {files} files here)"
        );
    }
    let system = System::start_with(SystemOptions {
        worker: false,
        service_env: vec![
            ("OC_DATABASE_POOL_SIZE", "16".into()),
            ("OC_SSE_STREAMS_PER_USER", streams.to_string()),
        ],
        ..Default::default()
    })
    .await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "bench").await;
    let ws = system.create_workspace(&alice, &org.id, "bench").await;
    let mut sessions = Vec::new();
    for _ in 0..100 {
        sessions.push(system.create_session(&alice, &ws.id).await);
    }
    let query = &system.query[0];
    let before = resident_kb(query.proc.pid());

    // One connection per stream (HTTP/1.1), each held open after its first event. One source
    // address has about 28,000 ephemeral ports towards the service's one port, so the streams
    // come from as many loopback addresses (127.0.0.1, 127.0.0.2, …) as they need.
    let clients: Vec<reqwest::Client> = (0..streams.div_ceil(PER_SOURCE_ADDRESS).max(1))
        .map(|n| {
            let source = std::net::Ipv4Addr::new(127, 0, 0, u8::try_from(n + 1).unwrap());
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .local_address(std::net::IpAddr::V4(source))
                .build()
                .unwrap()
        })
        .collect();
    let open = futures::stream::iter(0..streams)
        .map(|i| {
            let url = system.stream_url(0, &sessions[i % sessions.len()]);
            let http = &clients[i / PER_SOURCE_ADDRESS];
            let req = http.get(url).bearer_auth(&alice).header("accept", "text/event-stream");
            async move {
                let mut res = req.send().await.expect("stream opens");
                assert!(res.status().is_success(), "stream {i}: {}", res.status());
                let first = tokio::time::timeout(Duration::from_secs(60), res.chunk()).await;
                assert!(matches!(first, Ok(Ok(Some(_)))), "stream {i} sent nothing");
                res
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let after = resident_kb(query.proc.pid());
    println!(
        "{} idle streams: query-service {:.1} MB before, {:.1} MB after = {:.1} KB per stream",
        open.len(),
        before / 1024.0,
        after / 1024.0,
        (after - before) / open.len() as f64
    );
}
