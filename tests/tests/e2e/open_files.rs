//! A service started with a low soft limit on open files (systemd's and recent container
//! runtimes' 1,024 under a far higher hard limit) raises it to its hard limit: a query instance
//! then holds more event streams, each a socket, than the limit it was started with.

use e2e_tests::sse::SseClient;
use e2e_tests::{System, SystemOptions};
use futures::StreamExt;

use crate::WAIT;

/// The soft limit the services start with, and the streams opened (well past it).
const STARTED_WITH: u64 = 256;
const STREAMS: usize = 400;

/// A process's soft and hard limits on open files, from `/proc/<pid>/limits`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("its limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("the line");
    let mut numbers = line.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().expect("soft"), numbers.next().expect("hard"))
}

#[tokio::test]
async fn a_query_instance_started_with_a_low_open_file_limit_holds_more_streams_than_it() {
    let system = System::start_with(SystemOptions {
        worker: false,
        open_files: Some(STARTED_WITH),
        service_env: vec![("OC_SSE_STREAMS_PER_USER", STREAMS.to_string())],
        ..Default::default()
    })
    .await;
    let (soft, hard) = open_file_limits(system.query[0].proc.pid());
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    assert!(soft > STREAMS as u64 * 2, "this machine's hard limit leaves room: {hard}");

    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let url = system.stream_url(0, &session);
    let opened = futures::stream::iter(0..STREAMS)
        .map(|i| {
            let (url, alice) = (url.clone(), alice.clone());
            async move {
                // A connection the service cannot accept waits in its backlog unanswered.
                let open = tokio::time::timeout(WAIT, async {
                    let mut stream = SseClient::connect(&url, &alice, None).await.ok()?;
                    stream.next_within(WAIT).await.filter(|e| e.event == "server.connected")?;
                    Some(stream)
                });
                open.await.ok().flatten().unwrap_or_else(|| panic!("stream {i} did not open"))
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(opened.len(), STREAMS);
}
