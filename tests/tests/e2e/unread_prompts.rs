//! A worker answers without reading the event store where it safely can (a session's first
//! prompt; a later one whose conversation its own reports built), and honours an abort either
//! way, whether it was made before any worker ran, or while the worker was busy elsewhere.

use e2e_tests::api::Created;
use e2e_tests::sse::{SseClient, is_idle};
use e2e_tests::{System, SystemOptions, eventually};

use crate::WAIT;

/// A system whose one worker answers one prompt at a time.
async fn with_one_worker_slot() -> System {
    let worker_env = vec![("OC_WORKER_CONCURRENCY", "1".into())];
    System::start_with(SystemOptions { worker_env, ..Default::default() }).await
}

/// Read `stream` until the reply completes: it must end aborted, with no text generated.
async fn ended_aborted_with_nothing_generated(stream: &mut SseClient) {
    let events = stream.until(WAIT, |e| e.event == "message.completed").await;
    let message = &events.last().unwrap().data["properties"]["message"];
    assert_eq!(message["finish"], "aborted");
    assert!(!events.iter().any(|e| e.event == "message.part.delta"), "nothing generated");
}

/// New sessions' first prompts until one is answered without a read (a few seconds after the
/// worker started: its clock margin); from then on the worker hears every abort of what is
/// committed. Returns how many the worker has answered so.
async fn a_first_prompt_answered_unread(system: &System, bearer: &str, worker: &str) -> f64 {
    let answered_unread = e2e_tests::within(WAIT, || async {
        let (_, _, session) = system.session_for("alice").await;
        let mut stream = system.watch(bearer, &session).await;
        system.prompt(bearer, &session.id, "[[fake tokens=1]]").await;
        stream.until(WAIT, is_idle).await;
        system.metric(worker, "first_prompts_unread_total").await.filter(|n| *n > 0.0)
    });
    answered_unread.await.expect("a first prompt answered without a read")
}

#[tokio::test]
async fn an_abort_made_while_no_worker_runs_the_reply_is_honoured_when_one_starts() {
    let mut system =
        System::start_with(SystemOptions { worker: false, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    system.prompt(&alice, &session.id, "[[fake tokens=1000 delay_ms=20]]").await;
    let abort =
        system.post(&alice, &format!("/session/{}/abort", session.id), serde_json::json!({})).await;
    assert_eq!(abort.status, 202);
    stream.until(WAIT, |e| e.event == "session.abort_requested").await;

    let worker = system.start_worker().await;
    system.workers.push(worker);
    ended_aborted_with_nothing_generated(&mut stream).await;
}

/// A session's first prompt committed once the worker hears every abort is answered without
/// reading the event store; an abort made while the worker was busy elsewhere, before it got to
/// the reply, still stops it before anything is generated.
#[tokio::test]
async fn an_abort_made_while_the_worker_is_busy_is_honoured_when_it_gets_to_the_reply() {
    let system = with_one_worker_slot().await;
    let alice = system.token("alice").await;
    let worker = system.workers[0].ops_url.clone();
    let unread = || system.metric(&worker, "first_prompts_unread_total");
    let before = a_first_prompt_answered_unread(&system, &alice, &worker).await;

    // The next session's prompt waits for the worker's one slot, and is aborted meanwhile.
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    aborted_while_the_worker_is_busy(&system, &alice, &session, &mut stream).await;
    assert!(unread().await.unwrap_or(0.0) >= before + 2.0, "both prompts answered unread");
}

/// Take the worker's one slot with another session's long reply, prompt `session` (the prompt
/// waits for the slot) and abort it meanwhile, then free the slot: the reply ends aborted with
/// nothing generated.
async fn aborted_while_the_worker_is_busy(
    system: &System,
    bearer: &str,
    session: &Created,
    stream: &mut SseClient,
) {
    let (_, _, long) = system.session_for("alice").await;
    let mut long_stream = system.watch(bearer, &long).await;
    system.prompt(bearer, &long.id, "[[fake tokens=100000 delay_ms=20]]").await;
    long_stream.until(WAIT, |e| e.event == "message.part.delta").await;
    system.prompt(bearer, &session.id, "[[fake tokens=50]]").await;
    for aborted in [session, &long] {
        let path = format!("/session/{}/abort", aborted.id);
        assert_eq!(system.post(bearer, &path, serde_json::json!({})).await.status, 202);
        if aborted.id == session.id {
            stream.until(WAIT, |e| e.event == "session.abort_requested").await;
        }
    }
    ended_aborted_with_nothing_generated(stream).await;
}

/// A session's later prompts, once the worker's own reports of the replies before them were
/// committed as they were (nothing between), are answered without reading the event store:
/// each still sends the whole conversation, and an abort made while the worker is busy
/// elsewhere still stops one before anything is generated. The prompt after that abort (an
/// abort request came between) reads again, and sends the aborted prompt too.
#[tokio::test]
async fn later_prompts_answered_from_the_workers_own_fold_send_the_whole_conversation() {
    let system = with_one_worker_slot().await;
    let alice = system.token("alice").await;
    let worker = system.workers[0].ops_url.clone();
    let later = || async { system.metric(&worker, "later_prompts_unread_total").await };
    // From now on the worker hears every abort of what is committed.
    a_first_prompt_answered_unread(&system, &alice, &worker).await;

    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    async fn ask(system: &System, bearer: &str, session: &Created, stream: &mut SseClient) {
        system.prompt(bearer, &session.id, "[[fake tokens=2]]").await;
        stream.until(WAIT, is_idle).await;
    }
    for _ in 0..3 {
        ask(&system, &alice, &session, &mut stream).await;
    }
    let before = later().await.unwrap_or(0.0);
    assert_eq!(before, 2.0, "both follow-ups answered without a read");

    // This session's next prompt waits for the worker's one slot, and is aborted meanwhile.
    aborted_while_the_worker_is_busy(&system, &alice, &session, &mut stream).await;
    assert!(later().await.unwrap_or(0.0) >= before + 1.0, "the aborted prompt answered unread");
    stream.until(WAIT, is_idle).await;
    let after_abort = later().await;
    ask(&system, &alice, &session, &mut stream).await;
    assert_eq!(later().await, after_abort, "the prompt after the abort read the event store");

    // Every reply's input is the one before's plus its reply (2 words) and its prompt (2):
    // no turn missing or repeated, read or not. The aborted prompt adds its 2 words and no reply.
    let path = format!("/session/{}/message", session.id);
    let inputs = eventually("every reply in the read model", WAIT, || async {
        let items = system.get(&alice, &path, None).await.body;
        let replies: Vec<_> = items
            .as_array()?
            .iter()
            .filter(|m| m["info"]["role"] == "assistant")
            .cloned()
            .collect();
        let finished = replies.iter().filter(|m| !m["info"]["finish"].is_null()).count();
        (finished == 5).then(|| {
            replies
                .iter()
                .map(|m| (m["info"]["finish"].clone(), m["info"]["tokens"]["input"].as_u64()))
                .collect::<Vec<_>>()
        })
    })
    .await;
    let answered: Vec<u64> =
        inputs.iter().filter(|(finish, _)| finish == "stop").filter_map(|(_, n)| *n).collect();
    assert_eq!(answered.len(), 4, "{inputs:?}");
    let growth: Vec<u64> = answered.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(growth, [4, 4, 6], "inputs {answered:?}");
}
