//! Bus traffic per query instance: with 4 query instances and `OC_BENCH_SESSIONS` (default 40)
//! sessions, each watched by one client on one instance (spread evenly), every session streams
//! a reply; then the bytes and messages NATS sent each query instance (its `/connz`), beside
//! what the stream stored. Set `OC_TEST_BIN_QUERY_SERVICE` to another build's query service to
//! compare the two.

use std::collections::HashMap;
use std::time::Duration;

use e2e_tests::sse::{SseClient, is_idle};
use e2e_tests::{System, SystemOptions};
use futures::future::join_all;
use schemas::subjects;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const INSTANCES: usize = 4;

/// Bytes and messages NATS has sent each query-service connection, by connection id.
async fn sent_to_query_instances(system: &System) -> HashMap<u64, (u64, u64)> {
    let url = format!("{}/connz?limit=1000", system.nats.monitor_url(0));
    let connz: Value = system.http.get(url).send().await.unwrap().json().await.unwrap();
    let connections = connz["connections"].as_array().cloned().unwrap_or_default();
    connections
        .iter()
        .filter(|c| c["name"] == "query-service")
        .map(|c| {
            let id = c["cid"].as_u64().unwrap();
            (id, (c["out_bytes"].as_u64().unwrap(), c["out_msgs"].as_u64().unwrap()))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let sessions: usize =
        std::env::var("OC_BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let system = System::start_with(SystemOptions {
        query_instances: INSTANCES,
        worker_env: vec![("OC_WORKER_CONCURRENCY", (sessions * 2).to_string())],
        service_env: vec![("OC_SSE_STREAMS_PER_USER", (sessions * 4).to_string())],
        ..Default::default()
    })
    .await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "traffic").await;
    let ws = system.create_workspace(&alice, &org.id, "traffic").await;
    let mut watched = Vec::new();
    for i in 0..sessions {
        let session = system.create_session(&alice, &ws.id).await;
        let url = system.stream_url(i % INSTANCES, &session);
        let mut stream = SseClient::connect(&url, &alice, None).await.expect("the stream opens");
        assert_eq!(stream.next(WAIT).await.event, "server.connected");
        watched.push((session, stream));
    }
    let js = async_nats::jetstream::new(system.nats().await);
    let stored = || async {
        let mut stream = js.get_stream(subjects::STREAM).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        (state.bytes, state.messages)
    };
    let (bytes_before, messages_before) = stored().await;
    let before = sent_to_query_instances(&system).await;

    let replies = watched.into_iter().map(|(session, mut stream)| {
        let (system, alice) = (&system, &alice);
        async move {
            system.prompt(alice, &session.id, "traffic [[fake tokens=100 delay_ms=5]]").await;
            stream.until(WAIT, is_idle).await.len()
        }
    });
    let delivered: usize = join_all(replies).await.iter().sum();

    let (bytes_after, messages_after) = stored().await;
    let after = sent_to_query_instances(&system).await;
    println!(
        "{sessions} sessions over {INSTANCES} query instances: the stream stored {} messages, {:.1} KB; clients received {delivered} events",
        messages_after - messages_before,
        (bytes_after - bytes_before) as f64 / 1024.0
    );
    for (id, (bytes, messages)) in &after {
        let (b0, m0) = before.get(id).copied().unwrap_or_default();
        println!(
            "  query instance (connection {id}): {:.1} KB in {} messages from NATS",
            (bytes - b0) as f64 / 1024.0,
            messages - m0
        );
    }
}
