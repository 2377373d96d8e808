//! Outbox relay throughput: how fast a backlog of committed events reaches JetStream.
//!
//! A command service with its relay off accepts `OC_BENCH_EVENTS` session creations (default
//! 5,000), so they wait in the outbox; then a relaying command service starts and the time until
//! the outbox is empty is measured; then how long the projector takes to have them all, and a
//! rebuild of the read models from the whole event store. Run with `make bench` (release
//! binaries); prints one line each.

use std::time::{Duration, Instant};

use e2e_tests::{System, SystemOptions};
use futures::StreamExt;

#[tokio::main]
async fn main() {
    let events: usize =
        std::env::var("OC_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let mut system =
        System::start_with(SystemOptions { relay: false, worker: false, ..Default::default() })
            .await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "bench").await;
    let ws = system.create_workspace(&alice, &org.id, "bench").await;
    futures::stream::iter(0..events)
        .for_each_concurrent(16, |_| async {
            system.create_session(&alice, &ws.id).await;
        })
        .await;
    let db = system.db().await;
    let backlog: i64 = db.query_one("SELECT count(*) FROM outbox", &[]).await.unwrap().get(0);

    let started = Instant::now();
    let relay = system.start_command(true).await;
    system.command.push(relay);
    let deadline = started + Duration::from_secs(600);
    poll(&db, "SELECT count(*) FROM outbox", |left| left == 0, deadline).await;
    let took = started.elapsed();
    println!(
        "relay: {backlog} events published in {:.0} ms (including service start) = {:.0} events/s",
        took.as_secs_f64() * 1e3,
        backlog as f64 / took.as_secs_f64()
    );
    // The projector has been receiving them meanwhile: when has it projected every session?
    let all = events as i64;
    poll(&db, "SELECT count(*) FROM rm_sessions", |n| n >= all, deadline).await;
    let took = started.elapsed();
    println!(
        "projector: all {events} sessions in the read model {:.0} ms after the relay started = {:.0} events/s",
        took.as_secs_f64() * 1e3,
        events as f64 / took.as_secs_f64()
    );

    // A rebuild of every read model from the event store (as an operator runs it), beside the
    // live projector.
    let stored: i64 = db.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    let mut rebuild = std::process::Command::new(e2e_tests::process::bin("projector"));
    rebuild.arg("rebuild");
    system.env(&mut rebuild);
    let started = Instant::now();
    let out = rebuild.output().expect("projector rebuild runs");
    let took = started.elapsed();
    assert!(out.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&out.stderr));
    println!(
        "rebuild: {stored} events in {:.0} ms (including process start) = {:.0} events/s",
        took.as_secs_f64() * 1e3,
        stored as f64 / took.as_secs_f64()
    );
}

/// Wait until the count `sql` returns satisfies `done`. A tight poll (not `eventually`, which
/// backs off to 250 ms), so the time measured is exact.
async fn poll(
    db: &tokio_postgres::Client,
    sql: &str,
    done: impl Fn(i64) -> bool,
    deadline: Instant,
) {
    loop {
        let n: i64 = db.query_one(sql, &[]).await.unwrap().get(0);
        if done(n) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out: {sql} is {n}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
