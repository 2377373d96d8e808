//! REST reads: one client reading back to back from the query service, each kind of read as
//! many times (`OC_BENCH_READS`, default 2,000), and each read's latency from the request to the
//! whole answer. A read takes a pooled connection, binds it to its caller (row-level security),
//! and reads; the rate of these is what a page of the web client or OpenCode's own clients
//! costs. Run with `make bench` (release binaries).

use std::time::Instant;

use e2e_tests::bench::{ms, percentiles};

#[tokio::main]
async fn main() {
    let reads: usize =
        std::env::var("OC_BENCH_READS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let system = e2e_tests::bench::system(1).await;
    let alice = system.token("alice").await;
    let (_org, _ws, session) = system.session_for("alice").await;
    let paths = [
        ("the session", format!("/session/{}", session.id)),
        ("its messages", format!("/session/{}/message", session.id)),
        ("the caller's organizations", "/org".to_owned()),
    ];
    for (name, path) in &paths {
        // Warm the connections and statement caches, then measure.
        let answer = system.get(&alice, path, Some(&session.token)).await;
        assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
        let mut samples = Vec::with_capacity(reads);
        for _ in 0..reads {
            let start = Instant::now();
            let answer = system.get(&alice, path, None).await;
            samples.push(ms(start.elapsed()));
            assert_eq!(answer.status, 200, "{path}");
        }
        println!("{name} (GET {path}), {reads} reads back to back: {}", percentiles(&samples));
    }
}
