//! Traces: one prompt is one connected trace across the four services, from the HTTP request
//! through the outbox, JetStream, the worker's provider call, the completion command, the
//! projector and the SSE fan-out.

use std::collections::BTreeSet;

use e2e_tests::otlp::{OtlpReceiver, ReceivedSpan, orphans};
use e2e_tests::sse::{SseClient, is_idle};
use e2e_tests::system::SystemOptions;
use e2e_tests::{System, within};

use crate::WAIT;

/// The steps a prompt's trace must show, as (service, span name).
const STEPS: &[(&str, &str)] = &[
    ("command-service", "POST /session/{id}/prompt_async"),
    ("command-service", "authenticate"),
    ("command-service", "request rate"),
    ("command-service", "command session"),
    ("command-service", "outbox relay"),
    ("llm-worker", "answer prompt"),
    ("llm-worker", "provider first token"),
    ("llm-worker", "provider call"),
    ("command-service", "internal command"),
    ("query-service", "sse fan-out"),
];

fn missing(trace: &[ReceivedSpan]) -> Vec<String> {
    let mut missing: Vec<String> = STEPS
        .iter()
        .filter(|(service, name)| {
            !trace.iter().any(|s| s.service == *service && s.name.starts_with(name))
        })
        .map(|(service, name)| format!("{service}: {name}"))
        .collect();
    if !trace.iter().any(|s| s.service == "projector" && s.name.starts_with("project ")) {
        missing.push("projector: project …".into());
    }
    missing
}

#[tokio::test]
async fn one_prompt_makes_one_connected_trace_across_the_four_services() {
    // Arrange: every service exports to a collector of the test's own.
    let collector = OtlpReceiver::start().await;
    let system =
        System::start_with(SystemOptions { service_env: collector.env(), ..Default::default() })
            .await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = SseClient::connect(&system.stream_url(0, &session), &alice, None)
        .await
        .expect("stream opens");

    // Act
    system.prompt(&alice, &session.id, "trace me [[fake tokens=5]]").await;
    stream.until(WAIT, is_idle).await;

    // Assert: the prompt's trace reaches every step, and every span's parent is in it.
    let root = "POST /session/{id}/prompt_async";
    let trace = within(WAIT, || async {
        let trace = collector.trace_rooted_at("command-service", root);
        (missing(&trace).is_empty() && orphans(&trace).is_empty()).then_some(trace)
    })
    .await
    .unwrap_or_else(|| {
        let trace = collector.trace_rooted_at("command-service", root);
        panic!(
            "the prompt's trace is incomplete: missing {:?}, orphans {:?}; trace {trace:#?}",
            missing(&trace),
            orphans(&trace)
        )
    });
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["command-service", "llm-worker", "projector", "query-service"])
    );
    let roots: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root, the prompt's request: {roots:?}");

    // The worker's span descends from the relay's, which descends from the command's.
    let parent_of = |s: &ReceivedSpan| trace.iter().find(|p| p.span_id == s.parent_span_id);
    let worker = trace.iter().find(|s| s.name == "answer prompt").unwrap();
    let relay = parent_of(worker).expect("the worker's parent");
    assert_eq!((relay.service.as_str(), relay.name.as_str()), ("command-service", "outbox relay"));
}
