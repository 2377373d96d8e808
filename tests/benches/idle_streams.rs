//! Idle SSE streams: the query service's resident memory with `OC_BENCH_STREAMS` (default
//! 50,000) open session streams that carry nothing but heartbeats, spread over 50 users with
//! two sessions each (a user's streams are leased, and each lease taken counts the user's).
//! Measured twice, each on a system of its own:
//! - over HTTP/1.1, one connection per stream (as browsers and nginx open them), from as many
//!   loopback source addresses as the streams need ports, and no more streams than the
//!   machine's open-file limit lets one process hold;
//! - over cleartext HTTP/2 (`OC_HTTP2_CLEARTEXT`), 100 streams per connection, as a front that
//!   multiplexes upstream opens them.
//!
//! `OC_BENCH_PROTOCOLS` picks (`1.1,2` by default). Run with `make bench` (release binaries);
//! prints one line each.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use e2e_tests::http2::Http2;
use e2e_tests::process::resident_kb;
use e2e_tests::{System, SystemOptions};
use futures::StreamExt;

/// Streams opened from one loopback source address (under its ephemeral port range).
const PER_SOURCE_ADDRESS: usize = 20_000;

/// Streams per HTTP/2 connection (nginx's default limit is 128, Go's 250).
const PER_HTTP2_CONNECTION: usize = 100;

/// Streams opening at once.
const OPENING: usize = 64;

#[tokio::main]
async fn main() {
    let wanted: usize =
        std::env::var("OC_BENCH_STREAMS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let protocols = std::env::var("OC_BENCH_PROTOCOLS").unwrap_or_else(|_| "1.1,2".into());
    for protocol in protocols.split(',') {
        match protocol.trim() {
            "1.1" => http1(wanted).await,
            "2" => http2(wanted).await,
            other => panic!("OC_BENCH_PROTOCOLS: unknown protocol {other}"),
        }
    }
}

/// Users holding the streams, and sessions each.
const USERS: usize = 50;
const SESSIONS_PER_USER: usize = 2;

/// Stream `i`'s user's bearer token and its session's path.
struct Watched {
    streams: Vec<(String, String)>,
}

impl Watched {
    fn stream(&self, i: usize) -> &(String, String) {
        &self.streams[i % self.streams.len()]
    }
}

/// A system whose users may hold `streams` streams between them, with their sessions.
async fn system(streams: usize, http2: bool) -> (System, Watched) {
    let mut service_env = vec![
        ("OC_DATABASE_POOL_SIZE", "16".into()),
        ("OC_SSE_STREAMS_PER_USER", streams.div_ceil(USERS).to_string()),
    ];
    if http2 {
        service_env.push(("OC_HTTP2_CLEARTEXT", "true".into()));
    }
    let system =
        System::start_with(SystemOptions { worker: false, service_env, ..Default::default() })
            .await;
    let mut watched = Watched { streams: Vec::new() };
    for user in 0..USERS {
        let token = system.token(&format!("user{user}")).await;
        let org = system.create_org(&token, "bench").await;
        let ws = system.create_workspace(&token, &org.id, "bench").await;
        for _ in 0..SESSIONS_PER_USER {
            let session = system.create_session(&token, &ws.id).await;
            let path = format!("/session/{}/event?consistency={}", session.id, session.token);
            watched.streams.push((token.clone(), path));
        }
    }
    (system, watched)
}

/// The `n`th loopback source address of this run. Each run takes its own range (127.x.0.1, …),
/// so that ports a run before left in TIME_WAIT are not in its way.
fn loopback(n: usize) -> IpAddr {
    let run = u8::try_from(1 + std::process::id() % 250).unwrap();
    IpAddr::V4(Ipv4Addr::new(127, run, 0, u8::try_from(n + 1).expect("under 255 addresses")))
}

fn report(protocol: &str, open: usize, connections: usize, before: f64, after: f64) {
    println!(
        "HTTP/{protocol}: {open} idle streams over {connections} connections: query-service \
         {:.1} MB before, {:.1} MB after = {:.1} KB per stream",
        before / 1024.0,
        after / 1024.0,
        (after - before) / open as f64
    );
}

/// One connection per stream, each held open after its first event. One source address has
/// about 28,000 ephemeral ports towards the service's one port, so the streams come from as many
/// loopback addresses as they need.
async fn http1(wanted: usize) {
    // Each stream is a socket in this process and in the query service: stay under the open
    // files this machine allows a process.
    let (files, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("the open-file limit");
    let streams = wanted.min(usize::try_from(files).unwrap_or(usize::MAX).saturating_sub(1_000));
    if streams < wanted {
        println!(
            "HTTP/1.1: {wanted} streams asked; {streams} opened (a process may open {files} \
             files here)"
        );
    }
    let (system, watched) = system(streams, false).await;
    let query = &system.query[0];
    let before = resident_kb(query.proc.pid());
    let clients: Vec<reqwest::Client> = (0..streams.div_ceil(PER_SOURCE_ADDRESS).max(1))
        .map(|n| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .local_address(loopback(n))
                .build()
                .unwrap()
        })
        .collect();
    let open = futures::stream::iter(0..streams)
        .map(|i| {
            let (bearer, path) = watched.stream(i);
            let http = &clients[i / PER_SOURCE_ADDRESS];
            let req = http
                .get(format!("{}{path}", system.query[0].url))
                .bearer_auth(bearer)
                .header("accept", "text/event-stream");
            async move {
                let mut res = req.send().await.expect("stream opens");
                assert!(res.status().is_success(), "stream {i}: {}", res.status());
                let first = tokio::time::timeout(Duration::from_secs(60), res.chunk()).await;
                assert!(matches!(first, Ok(Ok(Some(_)))), "stream {i} sent nothing");
                res
            }
        })
        .buffer_unordered(OPENING)
        .collect::<Vec<_>>()
        .await;
    report("1.1", open.len(), open.len(), before, resident_kb(query.proc.pid()));
}

/// `PER_HTTP2_CONNECTION` streams on each connection, each held open after its first event.
async fn http2(streams: usize) {
    let (system, watched) = system(streams, true).await;
    let query = &system.query[0];
    let before = resident_kb(query.proc.pid());
    let count = streams.div_ceil(PER_HTTP2_CONNECTION);
    let mut connections = Vec::with_capacity(count);
    for n in 0..count {
        let source = loopback(n * PER_HTTP2_CONNECTION / PER_SOURCE_ADDRESS);
        let connection = Http2::connect_from(&query.url, Some(source)).await;
        connections.push(connection.expect("the query service speaks HTTP/2"));
    }
    let open = futures::stream::iter(0..streams)
        .map(|i| {
            let (bearer, path) = watched.stream(i);
            let connection = &connections[i / PER_HTTP2_CONNECTION];
            async move {
                let mut stream = connection.stream(path, bearer).await.expect("stream opens");
                stream.next(Duration::from_secs(60)).await;
                stream
            }
        })
        .buffer_unordered(OPENING)
        .collect::<Vec<_>>()
        .await;
    report("2", open.len(), connections.len(), before, resident_kb(query.proc.pid()));
}
