//! Nothing is lost or doubled when processes die: outbox, projection and generation.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer;
use e2e_tests::api::Created;
use e2e_tests::sse::{Event, SseClient, is_idle, reply_text};
use e2e_tests::{System, SystemOptions, eventually, fake_text};
use futures::StreamExt;
use nix::sys::signal::Signal;

use crate::WAIT;

/// Every domain event id on the bus, in stream order.
async fn bus_event_ids(system: &System) -> Vec<String> {
    let js = async_nats::jetstream::new(system.nats().await);
    let stream = js.get_stream(schemas::subjects::STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: schemas::subjects::ALL_DOMAIN_EVENTS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::new();
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_secs(1), messages.next()).await
    {
        let envelope: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        ids.push(envelope["id"].as_str().unwrap().to_owned());
        if msg.info().unwrap().pending == 0 {
            break;
        }
    }
    ids
}

/// Every stored event id, as `<aggregateID>:<sequence>`.
async fn stored_event_ids(system: &System) -> HashSet<String> {
    let rows =
        system.db().await.query("SELECT aggregate_id, sequence FROM events", &[]).await.unwrap();
    rows.iter().map(|r| format!("{}:{}", r.get::<_, String>(0), r.get::<_, i64>(1))).collect()
}

/// The bus holds each stored event exactly once, each aggregate's in sequence order.
async fn assert_bus_matches_store(system: &System) {
    let stored = stored_event_ids(system).await;
    let on_bus = eventually("every stored event on the bus", WAIT, || async {
        let ids = bus_event_ids(system).await;
        (ids.len() >= stored.len()).then_some(ids)
    })
    .await;
    assert_eq!(on_bus.len(), stored.len(), "no duplicates on the bus");
    assert_eq!(on_bus.iter().cloned().collect::<HashSet<_>>(), stored);
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    for id in &on_bus {
        let (aggregate, seq) = id.rsplit_once(':').unwrap();
        let seq: u64 = seq.parse().unwrap();
        let prev = last.insert(aggregate, seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "{aggregate} in order");
    }
}

#[tokio::test]
async fn events_committed_by_a_killed_command_service_are_published_by_the_next_one() {
    // The first command service commits but never publishes (its relay is off), then dies.
    let mut system = System::start_with(SystemOptions { relay: false, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=5]]").await;
    system.command[0].proc.kill();
    system.command.clear();

    let replacement = system.start_command(true).await;
    system.command.push(replacement);

    let path = format!("/session/{}/message", session.id);
    let token = accepted["consistencyToken"].as_str().unwrap();
    assert_eq!(system.get(&alice, &path, Some(token)).await.status, 200);
    let reply = eventually("the reply to the stranded prompt", WAIT, || async {
        let a = system.get(&alice, &path, None).await;
        (a.body[1]["info"]["finish"] == "stop").then(|| a.body[1].clone())
    })
    .await;
    assert_eq!(reply["parts"][0]["text"], fake_text(5));
    assert_bus_matches_store(&system).await;
}

#[tokio::test]
async fn a_relay_that_publishes_again_after_a_crash_creates_no_duplicates() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=3]]").await;
    let path = format!("/session/{}/message", session.id);
    eventually("the reply", WAIT, || async {
        let a =
            system.get(&alice, &path, Some(accepted["consistencyToken"].as_str().unwrap())).await;
        (a.body[1]["info"]["finish"] == "stop").then_some(())
    })
    .await;
    // As if the relay died after publishing but before deleting its outbox rows.
    let db = system.db().await;
    db.execute(
        "INSERT INTO outbox (position, aggregate_type, aggregate_id, sequence) \
         SELECT position, aggregate_type, aggregate_id, sequence FROM events",
        &[],
    )
    .await
    .unwrap();
    eventually("the outbox drained again", WAIT, || async {
        let n: i64 = db.query_one("SELECT count(*) FROM outbox", &[]).await.unwrap().get(0);
        (n == 0).then_some(())
    })
    .await;
    assert_bus_matches_store(&system).await;
}

#[tokio::test]
async fn a_backlog_of_many_batches_reaches_the_bus_once_and_in_order_while_commits_go_on() {
    // Events pile up while no relay runs; then one starts and works through them batch after
    // batch while new commits (on the relaying instance) keep coming.
    let mut system = System::start_with(SystemOptions { relay: false, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let (_, ws, _) = system.session_for("alice").await;
    create_sessions(&system, &alice, &ws.id, 900).await;
    let db = system.db().await;
    let backlog: i64 = db.query_one("SELECT count(*) FROM outbox", &[]).await.unwrap().get(0);
    assert!(backlog > 3 * 256, "a backlog of several of the relay's batches: {backlog}");

    let relay = system.start_command(true).await;
    system.command.push(relay);
    create_sessions(&system, &alice, &ws.id, 300).await;
    eventually("the outbox drained", WAIT, || async {
        let n: i64 = db.query_one("SELECT count(*) FROM outbox", &[]).await.unwrap().get(0);
        (n == 0).then_some(())
    })
    .await;
    assert_bus_matches_store(&system).await;
}

/// Workspaces renamed through two instances at once, round after round: the relaying
/// instance hands its commits to its relay from memory where nothing of the workspace still
/// waits in the outbox, the other's (and those behind an earlier event) are read from the
/// outbox. Either way every event reaches the bus once, each aggregate's in order.
#[tokio::test]
async fn commits_handed_to_the_relay_and_read_from_the_outbox_reach_the_bus_once_and_in_order() {
    let system = System::start().await;
    let second = system.start_command(false).await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let mut workspaces = Vec::new();
    for i in 0..4 {
        workspaces.push(system.create_workspace(&alice, &org.id, &format!("w{i}")).await.id);
    }
    let rename = |url: &str, ws: &str, name: String| {
        let req = system.http.patch(format!("{url}/workspace/{ws}")).bearer_auth(&alice);
        let req = req.json(&serde_json::json!({ "name": name }));
        async move { req.send().await.expect("command service reachable").status() }
    };
    let instances = [system.command_url().to_owned(), second.url.clone()];
    for round in 0..25 {
        let renames = workspaces.iter().flat_map(|ws| {
            instances.iter().enumerate().map(move |(i, url)| (url, ws, format!("{ws} {round} {i}")))
        });
        for status in futures::future::join_all(renames.map(|(u, w, n)| rename(u, w, n))).await {
            assert!(status.is_success(), "renamed: {status}");
        }
    }
    assert_bus_matches_store(&system).await;
    let handed = system.metric(&system.command[0].ops_url, "outbox_handed_off_total").await;
    assert!(handed.unwrap_or(0.0) > 0.0, "some commits went to the relay from memory");
}

/// `n` new sessions in workspace `ws`, sixteen requests at a time.
async fn create_sessions(system: &System, bearer: &str, ws: &str, n: usize) {
    futures::stream::iter(0..n)
        .map(|_| system.create_session(bearer, ws))
        .buffer_unordered(16)
        .for_each(|_| async {})
        .await;
}

/// Publish every domain event on the bus again (new message ids, so JetStream stores them
/// again). Returns how many.
async fn redeliver_all(system: &System) -> usize {
    let js = async_nats::jetstream::new(system.nats().await);
    let stream_info = js.get_stream(schemas::subjects::STREAM).await.unwrap();
    let mut replayed = 0;
    for seq in 1..=stream_info.cached_info().state.last_sequence {
        let Ok(raw) = stream_info.get_raw_message(seq).await else {
            continue;
        };
        if raw.subject.starts_with("oc.evt.") {
            js.publish(raw.subject.to_string(), raw.payload.clone()).await.unwrap().await.unwrap();
            replayed += 1;
        }
    }
    replayed
}

async fn rows_in_store(system: &System) -> usize {
    count(system, "SELECT count(*) FROM events").await as usize
}

/// The one number `sql` answers.
async fn count(system: &System, sql: &str) -> i64 {
    system.db().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Wait until the projector's consumer has nothing pending or unacknowledged.
async fn projector_caught_up(system: &System) {
    let js = async_nats::jetstream::new(system.nats().await);
    eventually("the projector to consume everything", WAIT, || async {
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            js.get_consumer_from_stream("projector", schemas::subjects::STREAM).await.ok()?;
        let info = c.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_redelivered_event_is_not_projected_twice_and_a_rebuild_gives_the_same_read_models() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    for text in ["one [[fake tokens=3]]", "two [[fake tokens=4]]"] {
        system.prompt(&alice, &session.id, text).await;
        stream.until(WAIT, is_idle).await;
    }
    let path = format!("/session/{}", session.id);
    let settled = || async {
        let a = system.get(&alice, &path, None).await;
        let n = count(&system, "SELECT count(*) FROM rm_messages WHERE info ? 'finish'").await;
        (a.body["status"]["type"] == "idle" && n == 2).then_some(())
    };
    eventually("both replies projected", WAIT, settled).await;
    let live = system.read_models().await;

    let replayed = redeliver_all(&system).await;
    assert_eq!(replayed, rows_in_store(&system).await);
    projector_caught_up(&system).await;
    assert_eq!(system.read_models().await, live, "redelivery changed nothing");

    system.rebuild().await;
    assert_eq!(system.read_models().await, live, "rebuild gives the live read models");
}

/// The projector sends a batch's statements all at once and, when some event in it was
/// projected before, undoes the batch and goes event by event: the new events in such a batch
/// are applied exactly once (usage, which adds up, included).
#[tokio::test]
async fn a_batch_mixing_redelivered_and_new_events_applies_the_new_ones_once() {
    let mut system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    system.prompt(&alice, &session.id, "one [[fake tokens=3]]").await;
    stream.until(WAIT, is_idle).await;
    let finished = "SELECT count(*) FROM rm_messages WHERE info ? 'finish'";
    eventually("the first reply projected", WAIT, || async {
        (count(&system, finished).await == 1).then_some(())
    })
    .await;

    // With the projector stopped, everything so far is redelivered and a second prompt is
    // answered: the projector finds old and new events side by side when it comes back.
    system.projector = None;
    let replayed = redeliver_all(&system).await;
    assert!(replayed > 0);
    system.prompt(&alice, &session.id, "two [[fake tokens=4]]").await;
    stream.until(WAIT, is_idle).await;
    system.projector = Some(system.start_service("projector", "OC_PROJECTOR_ADDR", &[]).await);
    projector_caught_up(&system).await;

    let messages = count(&system, "SELECT count(*) FROM rm_messages").await;
    assert_eq!(messages, 4, "two prompts, two replies");
    assert_eq!(count(&system, finished).await, 2);
    let requests = "SELECT coalesce(sum(requests), 0)::bigint FROM rm_usage";
    assert_eq!(count(&system, requests).await, 2, "each reply counted once in usage");
    let live = system.read_models().await;
    system.rebuild().await;
    assert_eq!(system.read_models().await, live, "rebuild gives the live read models");
}

#[tokio::test]
async fn a_reply_cut_short_by_a_dead_worker_is_regenerated_once_by_another() {
    let mut system =
        System::start_with(SystemOptions { worker_ack_wait_secs: 2, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=30 delay_ms=30]]").await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap();
    let mut events = Vec::new();
    while events.iter().filter(|e: &&e2e_tests::sse::Event| e.event == "message.part.delta").count()
        < 3
    {
        events.push(stream.next(WAIT).await);
    }
    system.workers[0].proc.kill();
    let replacement = system.start_worker().await;
    system.workers.push(replacement);

    events.extend(stream.until(WAIT, |e| e.event == "message.completed").await);
    let attempts: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "message.started")
        .map(|e| e.data["properties"]["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2], "the second attempt tells clients to discard the first");
    assert_eq!(reply_text(&events, assistant), fake_text(30));
    let message = &events.last().unwrap().data["properties"]["message"];
    assert_eq!(message["attempt"], 2);
    assert_eq!(message["parts"][0]["text"], fake_text(30));
    // Exactly one completion is stored.
    let n: i64 = system
        .db()
        .await
        .query_one("SELECT count(*) FROM events WHERE event_type = 'message.completed'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// A reply whose worker was frozen (SIGSTOP) after its first delta, and taken over by a
/// replacement worker: the system (the frozen worker is `workers[0]`), the session's stream and
/// the events so far, up to the later attempt's `message.started`.
struct TakenOver {
    system: System,
    alice: String,
    session: e2e_tests::api::Created,
    stream: SseClient,
    assistant: String,
    events: Vec<Event>,
}

impl TakenOver {
    async fn start(prompt: &str) -> TakenOver {
        let mut system =
            System::start_with(SystemOptions { worker_ack_wait_secs: 2, ..Default::default() })
                .await;
        let alice = system.token("alice").await;
        let (_, _, session) = system.session_for("alice").await;
        let mut stream = system.watch(&alice, &session).await;
        let accepted = system.prompt(&alice, &session.id, prompt).await;
        let assistant = accepted["assistantMessageID"].as_str().unwrap().to_owned();
        let mut events = stream.until(WAIT, |e| e.event == "message.part.delta").await;
        system.workers[0].proc.signal(Signal::SIGSTOP);
        let replacement = system.start_worker().await;
        system.workers.push(replacement);
        let later_attempt = |e: &Event| {
            e.event == "message.started" && e.data["properties"]["attempt"].as_u64() > Some(1)
        };
        events.extend(stream.until(WAIT, later_attempt).await);
        TakenOver { system, alice, session, stream, assistant, events }
    }
}

/// A worker frozen mid-reply (a stop-the-world pause, or cut off from the bus) past its ack
/// deadline wakes up after another worker took the reply over, reads the rest of its provider's
/// answer at once and reports it first. That late report must not close the reply the newer
/// attempt is streaming: clients follow the newest attempt, so its text must be the stored one.
#[tokio::test]
async fn a_worker_that_wakes_after_its_reply_was_taken_over_does_not_complete_it() {
    let taken = TakenOver::start("[[fake tokens=40 delay_ms=100]]").await;
    let TakenOver { system, alice, session, mut stream, assistant, mut events } = taken;
    let assistant = assistant.as_str();
    let part = events.last().unwrap().data["properties"]["partID"].clone();
    events.extend(
        stream
            .until(WAIT, |e| {
                e.event == "message.part.delta" && e.data["properties"]["partID"] == part
            })
            .await,
    );
    // The frozen worker wakes with most of its answer waiting in its socket.
    system.workers[0].proc.signal(Signal::SIGCONT);

    events.extend(stream.until(WAIT, |e| e.event == "message.completed").await);
    let message = &events.last().unwrap().data["properties"]["message"];
    let stored = message["parts"][0]["text"].as_str().unwrap();
    assert_eq!(reply_text(&events, assistant), stored, "the client's text is the stored text");
    assert_eq!(stored, fake_text(40));
    assert!(message["attempt"].as_u64() > Some(1), "completed by the attempt clients follow");
    // The woken worker stays quiet about it: one completion, and the session takes prompts.
    stream.until(WAIT, is_idle).await;
    system.prompt(&alice, &session.id, "[[fake tokens=2]]").await;
    let n: i64 = system
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE event_type = 'message.completed' \
             AND payload::text LIKE '%' || $1 || '%'",
            &[&assistant],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "one completion of the reply");
}

/// The woken worker of an earlier attempt also stops generating as soon as it learns that a
/// later attempt took its reply over (`message.retried`): it does not go on streaming, and
/// paying the provider for, a reply nobody will keep.
#[tokio::test]
async fn a_worker_whose_reply_was_taken_over_stops_generating_it() {
    let taken = TakenOver::start("[[fake tokens=300 delay_ms=50]]").await;
    let TakenOver { system, mut stream, assistant, mut events, .. } = taken;
    let assistant = assistant.as_str();
    let first_delta = events.iter().find(|e| e.event == "message.part.delta").unwrap();
    let first_part = first_delta.data["properties"]["partID"].clone();
    system.workers[0].proc.signal(Signal::SIGCONT);

    events.extend(stream.until(Duration::from_secs(60), |e| e.event == "message.completed").await);
    let message = &events.last().unwrap().data["properties"]["message"];
    assert_eq!(message["parts"][0]["text"], fake_text(300));
    assert_eq!(reply_text(&events, assistant), fake_text(300));
    // The earlier attempt would have streamed its whole reply (it started first, so it would
    // have finished first); it stopped soon after it woke.
    let earlier = e2e_tests::sse::part_text(&events, first_part.as_str().unwrap());
    assert!(fake_text(300).starts_with(&earlier), "{earlier}");
    assert!(earlier.len() < fake_text(300).len(), "the earlier attempt streamed to the end");
}

/// A system allowing one delivery per prompt, where the only worker died streaming a reply (so
/// that prompt's only delivery died with it). Returns the system (its dead worker still listed),
/// the user's token, the session and its open stream.
async fn a_reply_whose_only_delivery_died() -> (System, String, Created, SseClient) {
    let mut system = System::start_with(SystemOptions {
        worker_ack_wait_secs: 2,
        worker_env: vec![("OC_WORKER_MAX_DELIVER", "1".into())],
        ..Default::default()
    })
    .await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    system.prompt(&alice, &session.id, "[[fake tokens=100 delay_ms=30]]").await;
    stream.until(WAIT, |e| e.event == "message.part.delta").await;
    system.workers[0].proc.kill();
    (system, alice, session, stream)
}

#[tokio::test]
async fn a_reply_no_worker_could_finish_ends_as_failed_and_frees_the_session() {
    let (mut system, alice, session, mut stream) = a_reply_whose_only_delivery_died().await;
    let replacement = system.start_worker().await;
    system.workers.push(replacement);

    let events = stream.until(WAIT, is_idle).await;
    let done = events.iter().find(|e| e.event == "message.completed").unwrap();
    let message = &done.data["properties"]["message"];
    assert_eq!(message["finish"], "error");
    assert!(
        message["error"]["message"].as_str().unwrap().contains("after 1 attempts"),
        "{message}"
    );
    assert!(
        !events.iter().any(|e| e.event == "message.started"),
        "not regenerated beyond the limit"
    );
    system.prompt(&alice, &session.id, "[[fake tokens=2]]").await;
}

#[tokio::test]
async fn a_reply_given_up_on_while_no_worker_runs_is_ended_when_one_starts() {
    let (mut system, alice, session, mut stream) = a_reply_whose_only_delivery_died().await;
    system.workers.clear(); // no worker is left

    // JetStream gives up on the prompt while nobody listens; the advisory is kept for later.
    let js = async_nats::jetstream::new(system.nats().await);
    eventually("the max-deliveries advisory to be kept", WAIT, || async {
        let mut advisories = js.get_stream(schemas::subjects::WORKER_ADVISORY_STREAM).await.ok()?;
        (advisories.info().await.ok()?.state.messages == 1).then_some(())
    })
    .await;
    let worker = system.start_worker().await;
    system.workers.push(worker);

    let events = stream.until(WAIT, is_idle).await;
    let done = events.iter().find(|e| e.event == "message.completed").unwrap();
    assert_eq!(done.data["properties"]["message"]["finish"], "error");
    system.prompt(&alice, &session.id, "[[fake tokens=2]]").await;
}

#[tokio::test]
async fn two_command_services_relay_every_event_once_and_concurrent_writes_all_land() {
    let mut system = System::start().await;
    let second = system.start_command(true).await;
    system.command.push(second);
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;

    // Concurrent writes to one aggregate, spread over both instances: optimistic-lock conflicts
    // are retried, so every one lands.
    let mut users = Vec::new();
    for name in ["bob", "carol", "dave", "erin"] {
        let token = system.token(name).await;
        let me = system.get(&token, "/me", None).await;
        users.push(me.body["userID"].as_str().unwrap().to_owned());
    }
    let adds = users.iter().enumerate().map(|(i, user)| {
        let url = format!("{}/org/{}/member", system.command[i % 2].url, org.id);
        let req = system
            .http
            .post(url)
            .bearer_auth(&alice)
            .json(&serde_json::json!({ "userID": user, "role": "member" }));
        async move { req.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(adds).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let db = system.db().await;
    let seqs: Vec<i64> = db
        .query("SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence", &[&org.id])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<i64>>(), "created + owner + four members, no gaps");

    // Each instance keeps the organization as it last wrote it: a change made through one must
    // be seen by the next command through the other (a command on a stale state would conflict
    // on every retry and end in 409).
    let frank = system.token("frank").await;
    let frank = system.get(&frank, "/me", None).await.body["userID"].as_str().unwrap().to_owned();
    let members = |i: usize| format!("{}/org/{}/member", system.command[i].url, org.id);
    let body = serde_json::json!({ "userID": frank, "role": "member" });
    let added = system.http.post(members(1)).bearer_auth(&alice).json(&body).send().await.unwrap();
    assert_eq!(added.status(), 201);
    for (i, role) in [(0, "admin"), (1, "viewer"), (0, "member")] {
        let body = serde_json::json!({ "role": role });
        let url = format!("{}/{frank}", members(i));
        let changed = system.http.put(url).bearer_auth(&alice).json(&body).send().await.unwrap();
        assert!(changed.status().is_success(), "{role} through instance {i}: {}", changed.status());
    }
    let path = format!("/org/{}/member", org.id);
    eventually("frank's last role in the read model", WAIT, || async {
        let a = system.get(&alice, &path, None).await;
        let items = a.body["items"].as_array().cloned().unwrap_or_default();
        (items.iter().find(|m| m["userID"] == frank.as_str())?["role"] == "member").then_some(())
    })
    .await;

    for _ in 0..3 {
        let ws = system.create_workspace(&alice, &org.id, "w").await;
        system.create_session(&alice, &ws.id).await;
    }
    assert_bus_matches_store(&system).await;
}

#[tokio::test]
async fn a_frozen_relay_leaves_the_outbox_to_another_instance() {
    let mut system = System::start().await;
    let second = system.start_command(true).await;
    system.command.push(second);
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    // The instance whose relay is active (its connection holds the relay's lock).
    let relays = |i: usize| {
        let ops = system.command[i].ops_url.clone();
        let system = &system;
        async move { system.metric(&ops, "outbox_relay_active").await == Some(1.0) }
    };
    let active = eventually("one instance relays", WAIT, || async {
        let (first, second) = (relays(0).await, relays(1).await);
        (first != second).then_some(if first { 0 } else { 1 })
    })
    .await;
    let other = 1 - active;

    // Frozen, it keeps its database connection (and so the lock) open: nothing closes it but
    // the server's idle timeout. The other instance must take the outbox over.
    system.command[active].proc.signal(Signal::SIGSTOP);
    let prompt = |through: usize| {
        let url = format!("{}/session/{}/prompt_async", system.command[through].url, session.id);
        let body =
            serde_json::json!({ "parts": [{ "type": "text", "text": "[[fake tokens=4]]" }] });
        system.http.post(url).bearer_auth(&alice).json(&body).send()
    };
    let sent = prompt(other).await.unwrap();
    assert_eq!(sent.status(), 202, "prompt through the instance that is not frozen");
    let accepted: serde_json::Value = sent.json().await.unwrap();
    let events = stream.until(WAIT, is_idle).await;
    system.command[active].proc.signal(Signal::SIGCONT);
    let assistant = accepted["assistantMessageID"].as_str().unwrap();
    assert_eq!(reply_text(&events, assistant), fake_text(4), "the reply, relayed by the other");
    assert!(relays(other).await, "the instance that was not frozen relays now");

    // Woken, the first finds its lock gone and leaves the relaying to the other.
    eventually("the woken instance stands down", WAIT, || async {
        (!relays(active).await).then_some(())
    })
    .await;
    let sent = prompt(active).await.unwrap();
    assert_eq!(sent.status(), 202, "prompt through the woken instance");
    let accepted: serde_json::Value = sent.json().await.unwrap();
    let events = stream.until(WAIT, is_idle).await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap();
    assert_eq!(reply_text(&events, assistant), fake_text(4));
    assert!(relays(other).await && !relays(active).await, "one relay at a time");
    assert_bus_matches_store(&system).await;
}
