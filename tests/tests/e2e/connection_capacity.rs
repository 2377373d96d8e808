//! How many connections an instance takes, as a deployment starts it:
//! - started with a low soft limit on open files (systemd's and recent container runtimes'
//!   1,024 under a far higher hard limit), a service raises it to its hard limit, so a query
//!   instance holds more event streams, each a socket, than the limit it was started with;
//! - while its accept loop is held up, the kernel queues a reconnect storm's connections
//!   instead of dropping them (which their clients would resend only after seconds).

use e2e_tests::sse::SseClient;
use e2e_tests::{System, SystemOptions, eventually};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

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

/// Connections waiting in the accept queue of the listener on `port` (`ss`'s Recv-Q).
fn queued(port: &str) -> Option<usize> {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn connections_arriving_while_an_instance_cannot_accept_wait_in_its_queue() {
    const STORM: usize = 300;
    let system = System::start_with(SystemOptions { worker: false, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    for (name, url, pid) in [
        ("query", system.query[0].url.clone(), system.query[0].proc.pid()),
        ("command", system.command_url().to_owned(), system.command[0].proc.pid()),
    ] {
        let port = url.rsplit(':').next().unwrap().to_owned();
        let pid = Pid::from_raw(i32::try_from(pid).unwrap());
        // The instance stops accepting, as one does for a moment under a burst; the storm of
        // connections arrives meanwhile and is queued by the kernel, all of it.
        kill(pid, Signal::SIGSTOP).unwrap();
        let addr = url.trim_start_matches("http://").to_owned();
        let storm: Vec<_> = (0..STORM)
            .map(|_| tokio::spawn(tokio::net::TcpStream::connect(addr.clone())))
            .collect();
        let mut held = None;
        let all_queued = e2e_tests::within(WAIT, || {
            held = queued(&port);
            let all = held.filter(|n| *n >= STORM);
            async move { all }
        })
        .await;
        kill(pid, Signal::SIGCONT).unwrap();
        assert!(all_queued.is_some(), "{name}: the queue held {held:?} of {STORM}");
        for connection in storm {
            connection.await.unwrap().expect("connected");
        }
    }
    // Both answer as before.
    system.watch(&alice, &session).await;
    eventually("a read", WAIT, || async {
        let a = system.get(&alice, &format!("/session/{}", session.id), Some(&session.token)).await;
        (a.status == 200).then_some(())
    })
    .await;
}
