//! Faults under load: sessions prompt and stream without pause, their clients drop and resume at
//! random on either query instance, while
//! - service instances of every kind are SIGKILLed one after another and started again on the
//!   same port (one NATS server, the machine's PostgreSQL);
//! - on a three-node NATS cluster and a PostgreSQL of the test's own: a NATS node is SIGKILLed
//!   and restarted, PostgreSQL crashes and restarts, the node leading the stream is SIGKILLed
//!   and restarted, a node is frozen (partitioned) for longer than the client timeouts.
//!
//! Afterwards: every prompt answered 202 got exactly one completed reply; every client saw each
//! reply's final attempt equal to the stored text, and no event twice or out of order; the read
//! models equal a rebuild; the organization's spend counted every completed reply's cost once,
//! and no completed reply still holds budget (its prompts run on a priced model, under a
//! budget). The infrastructure test reports how soon the system served again
//! after each kind of fault (the first reply to a prompt accepted after it).
//!
//! `OC_CHAOS_PROMPTS` sets how many prompts per test (default 48 and 80: the short profile
//! `make test` runs; `make chaos` runs 1,000).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::sse::{Event, SseClient, reply_text};
use e2e_tests::{System, SystemOptions, eventually, within};
use serde_json::{Value, json};

use crate::budgets::{Org, org_budget, priced_org, set_budget};

/// How long one prompt may take to be answered, kills included.
const REPLY_WAIT: Duration = Duration::from_secs(90);
const SESSIONS: usize = 8;
/// Replies answered between two kills (about a second and a half of load here).
const REPLIES_BETWEEN_KILLS: usize = 8;

/// One session's client: prompts one after another, following its stream across reconnections.
struct Client {
    http: reqwest::Client,
    bearer: String,
    session: String,
    commands: Vec<String>,
    queries: Vec<String>,
    /// Replies answered by every client so far: what paces the kills.
    progress: Arc<AtomicUsize>,
    /// (accepted, completed) of every reply answered so far.
    answered: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

/// What a client saw: the assistant message ids it was promised, and every event it received.
struct Seen {
    session: String,
    replies: Vec<String>,
    events: Vec<Event>,
    reconnects: usize,
}

impl Client {
    async fn run(self, prompts: usize, token: String) -> Seen {
        let mut seen = Seen {
            session: self.session.clone(),
            replies: Vec::new(),
            events: Vec::new(),
            reconnects: 0,
        };
        // The id to resume after: the last event seen, or the `server.connected` of a new stream
        // (its position on the stream) before any.
        let mut last: Option<String> = None;
        let mut stream = self.open(&token, &mut last, &mut seen).await;
        for i in 0..prompts {
            let reply = self.prompt(i).await;
            let accepted = Instant::now();
            let deadline = Instant::now() + REPLY_WAIT;
            // (a prompt whose answer was lost may have been answered already)
            let completed = |e: &Event| {
                e.event == "message.completed"
                    && e.data["properties"]["message"]["id"] == reply.as_str()
            };
            while !seen.events.iter().any(completed) {
                assert!(Instant::now() < deadline, "no reply to {reply} in time");
                // Now and then the client drops its stream and resumes from the last id it saw.
                if rand::random_ratio(1, 12) {
                    stream = self.open(&token, &mut last, &mut seen).await;
                }
                match stream.next_within(Duration::from_secs(2)).await {
                    // The server's own notices (`server.lagged` before it ends the stream) are
                    // not session events.
                    Some(event) if event.event.starts_with("server.") => {}
                    Some(event) => {
                        last = Some(event.id.clone());
                        seen.events.push(event);
                    }
                    None => {
                        // The stream ended or went quiet (its query instance was killed):
                        // resume from the last event seen, on any instance.
                        stream = self.open(&token, &mut last, &mut seen).await;
                    }
                }
            }
            seen.replies.push(reply);
            self.answered.lock().unwrap().push((accepted, Instant::now()));
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        seen
    }

    /// Open the session's stream on a random query instance, resuming after `last` (or, for a
    /// new stream, setting `last` to where it starts); retried while instances restart.
    async fn open(&self, token: &str, last: &mut Option<String>, seen: &mut Seen) -> SseClient {
        seen.reconnects += 1;
        let why = std::sync::Mutex::new(String::new());
        let resume = last.clone();
        let opened = within(REPLY_WAIT, || async {
            let i = rand::random_range(0..self.queries.len());
            let url =
                format!("{}/session/{}/event?consistency={}", self.queries[i], self.session, token);
            match SseClient::connect(&url, &self.bearer, resume.as_deref()).await {
                // A resumed stream replays from `last`; a new one is live from `server.connected`
                // on (nothing before it is sent), so it is awaited before anything is prompted.
                Ok(stream) if resume.is_some() => Some((stream, None)),
                Ok(mut stream) => match stream.next_within(Duration::from_secs(5)).await {
                    Some(hello) if hello.event == "server.connected" => {
                        Some((stream, Some(hello.id)))
                    }
                    other => {
                        *why.lock().unwrap() = format!("first event {other:?}");
                        None
                    }
                },
                Err(e) => {
                    *why.lock().unwrap() = format!("{e:?}");
                    None
                }
            }
        });
        let Some((stream, start)) = opened.await else {
            panic!("the stream of {} never opened: {}", self.session, why.lock().unwrap());
        };
        if start.is_some() {
            *last = start;
        }
        stream
    }

    /// Send prompt `i` to a command instance (the other one while one restarts); the reply's id.
    /// The prompt carries its own message id, as OpenCode's clients do: when an attempt's answer
    /// is lost (its instance died), the prompt may have been accepted anyway, and the session's
    /// messages say so (the reply's `parentID` is the prompt's id), instead of prompting twice.
    async fn prompt(&self, i: usize) -> String {
        let id = schemas::ids::MessageId::new().to_string();
        let body = json!({ "messageID": id,
            "parts": [{ "type": "text", "text": format!("q{i} [[fake tokens=15 delay_ms=20]]") }] });
        let attempt = AtomicUsize::new(i);
        let answer_lost = std::sync::atomic::AtomicBool::new(false);
        let accepted = within(REPLY_WAIT, || async {
            let instance =
                &self.commands[attempt.fetch_add(1, Ordering::Relaxed) % self.commands.len()];
            let url = format!("{instance}/session/{}/prompt_async", self.session);
            match self.http.post(url).bearer_auth(&self.bearer).json(&body).send().await {
                Ok(r) if r.status() == 202 => {
                    let accepted: Value = r.json().await.unwrap();
                    accepted["assistantMessageID"].as_str().map(str::to_owned)
                }
                // 409: the previous reply is not completed yet where this instance looks (its
                // aggregate is behind), or this very prompt was accepted by a lost attempt;
                // 503 and connection errors: an instance restarting. A 503 may be a lost answer
                // too: the database can commit a statement and drop the connection before its
                // reply (a restart), and the instance cannot tell.
                Ok(r) if [409, 503].contains(&r.status().as_u16()) => {
                    if r.status() == 503 {
                        answer_lost.store(true, Ordering::Relaxed);
                    }
                    match answer_lost.load(Ordering::Relaxed) {
                        true => self.reply_to(&id).await,
                        false => None,
                    }
                }
                Ok(r) => panic!("prompt refused: {} {}", r.status(), r.text().await.unwrap()),
                Err(_) => {
                    answer_lost.store(true, Ordering::Relaxed);
                    None
                }
            }
        });
        accepted.await.unwrap_or_else(|| panic!("no instance accepted prompt {i}"))
    }

    /// The reply owed to prompt `id`, if the session holds that prompt.
    async fn reply_to(&self, id: &str) -> Option<String> {
        let messages =
            e2e_tests::api::messages_of(&self.http, &self.queries[0], &self.bearer, &self.session);
        let messages = messages.await?;
        let reply = messages.iter().find(|m| m["info"]["parentID"] == id)?;
        reply["info"]["id"].as_str().map(str::to_owned)
    }
}

/// Sessions prompting and streaming without pause on the system, one client each.
struct Load {
    clients: Vec<tokio::task::JoinHandle<Seen>>,
    /// Replies answered so far.
    progress: Arc<AtomicUsize>,
    /// When each answered reply's prompt was accepted, and when it completed on its stream.
    answered: Arc<Mutex<Vec<(Instant, Instant)>>>,
    bearer: String,
    organization: String,
    prompts: usize,
}

impl Load {
    async fn start(system: &System, prompts: usize) -> Load {
        let alice = system.token("alice").await;
        // A priced model by default, under a budget far above what the load spends: every prompt
        // is admitted against it and every reply's cost counted.
        let Org { org, ws, .. } = priced_org(system, &[]).await;
        set_budget(system, &org, org_budget(1_000.0, "month")).await;
        let progress = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for _ in 0..SESSIONS {
            let session = system.create_session(&alice, &ws.id).await;
            let client = Client {
                http: system.http.clone(),
                bearer: alice.clone(),
                session: session.id.clone(),
                commands: system.command.iter().map(|s| s.url.clone()).collect(),
                queries: system.query.iter().map(|s| s.url.clone()).collect(),
                progress: progress.clone(),
                answered: answered.clone(),
            };
            clients.push(tokio::spawn(client.run(prompts / SESSIONS, session.token)));
        }
        let prompts = prompts / SESSIONS * SESSIONS;
        Load { clients, progress, answered, bearer: alice, organization: org.id, prompts }
    }

    /// Wait until the load has answered `replies` more prompts (true), or has ended (false).
    async fn answers(&self, replies: usize) -> bool {
        let next = self.progress.load(Ordering::Relaxed) + replies;
        let ended = within(REPLY_WAIT, || async {
            let ended = self.clients.iter().all(|c| c.is_finished());
            (ended || self.progress.load(Ordering::Relaxed) >= next).then_some(ended)
        });
        !ended.await.expect("the load answered no prompt in time")
    }

    /// How long after `fault` the system served again: the first reply to a prompt accepted
    /// after it completed.
    fn served_again(&self, fault: Instant) -> Option<Duration> {
        let answered = self.answered.lock().unwrap();
        answered
            .iter()
            .filter(|(accepted, _)| *accepted >= fault)
            .map(|(_, done)| *done - fault)
            .min()
    }

    /// Wait for every client, then check every promise was kept once and every client saw
    /// exactly what was stored; the read models equal a rebuild. Returns (answered, reconnects).
    async fn check(self, system: &mut System) -> (usize, usize) {
        let mut seen = Vec::new();
        for client in self.clients {
            seen.push(client.await.expect("a client failed"));
        }
        let mut answered = 0;
        for s in &seen {
            let ids: Vec<u64> = s.events.iter().map(Event::seq).collect();
            if let Some(at) = ids.windows(2).position(|w| w[0] >= w[1]) {
                let around: Vec<String> = s.events[at.saturating_sub(3)..(at + 4).min(ids.len())]
                    .iter()
                    .map(|e| format!("{} {}", e.id, e.event))
                    .collect();
                panic!("{}: an event twice or out of order: {around:?}", s.session);
            }
            let stored = stored_replies(system, &self.bearer, &s.session, s.replies.len()).await;
            assert_eq!(stored.len(), s.replies.len(), "{}: one stored reply per prompt", s.session);
            for reply in &s.replies {
                let text = stored.get(reply).unwrap_or_else(|| panic!("{reply} was never stored"));
                let about: Vec<String> = s
                    .events
                    .iter()
                    .take(8)
                    .map(|e| format!("{} {} {}", e.id, e.event, e.data["properties"]["attempt"]))
                    .collect();
                let of_reply: Vec<String> = s
                    .events
                    .iter()
                    .filter(|e| e.data.to_string().contains(reply.as_str()))
                    .map(|e| format!("{} {}", e.id, e.event))
                    .collect();
                assert_eq!(
                    &reply_text(&s.events, reply),
                    text,
                    "{reply}: streamed ≠ stored; seen {about:?}; of the reply {of_reply:?}"
                );
                answered += 1;
            }
        }
        assert_eq!(answered, self.prompts);
        spend_counted_once(system, &self.organization).await;
        let live = system.read_models().await;
        system.rebuild().await;
        assert_eq!(system.read_models().await, live, "the read models equal a rebuild");
        (answered, seen.iter().map(|s| s.reconnects).sum())
    }
}

/// The organization's spend counters hold the cost of every completed reply stored, once, and
/// no completed reply's hold is left (holds of prompts whose command died before it committed
/// are the sweep's).
async fn spend_counted_once(system: &System, org: &str) {
    let db = system.db().await;
    let completed = "FROM events WHERE event_type = 'message.completed' \
                     AND metadata ->> 'organization_id' = $1";
    let row = db
        .query_one(
            &format!(
                "SELECT (SELECT coalesce(sum(spent), 0)::bigint FROM spend_counters \
                         WHERE scope = 'org:' || $1 AND granularity = 'd'), \
                        (SELECT coalesce(sum((payload::jsonb #>> \
                             '{{properties,message,cost,microDollars}}')::bigint), 0)::bigint {completed}), \
                        (SELECT count(*) {completed}), \
                        (SELECT count(*) FROM spend_reservations r WHERE EXISTS (SELECT 1 {completed} \
                             AND aggregate_id = r.session_id \
                             AND payload::jsonb #>> '{{properties,message,id}}' = r.message_id))"
            ),
            &[&org],
        )
        .await
        .unwrap();
    let (counted, cost, replies, held): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!(replies > 0 && cost > 0, "replies were priced: {replies} replies, {cost} µ$");
    assert_eq!(counted, cost, "every completed reply's cost counted once");
    assert_eq!(held, 0, "no completed reply still holds budget");
    eprintln!("chaos: {replies} completed replies, {counted} µ$ counted, as their events say");
}

fn prompts(short: usize) -> usize {
    std::env::var("OC_CHAOS_PROMPTS").ok().and_then(|v| v.parse().ok()).unwrap_or(short)
}

/// The topology both fault tests run: two instances of every service.
fn options(nats_cluster: bool) -> SystemOptions {
    SystemOptions {
        query_instances: 2,
        // A dead worker's prompt goes to another within seconds.
        worker_ack_wait_secs: 3,
        worker_env: vec![("OC_WORKER_MAX_DELIVER", "20".into())],
        // One user holds every session here; a killed query instance's stream leases lapse only
        // after their time to live.
        service_env: vec![("OC_SSE_STREAMS_PER_USER", "1000".into())],
        nats_cluster,
        own_postgres: nats_cluster,
        ..Default::default()
    }
}

async fn second_instances(system: &mut System) {
    let second = system.start_command(true).await;
    system.command.push(second);
    let worker = system.start_worker().await;
    system.workers.push(worker);
}

#[tokio::test]
async fn prompts_survive_service_instances_killed_under_load() {
    let mut system = System::start_with(options(false)).await;
    second_instances(&mut system).await;
    let load = Load::start(&system, prompts(48)).await;

    // Kill an instance of each kind in turn, and start it again on its port, each time the load
    // has answered a few more prompts, until it ends.
    let mut kills = 0;
    let mut turn = 0;
    while load.answers(REPLIES_BETWEEN_KILLS).await {
        let victims = ["worker", "command", "query", "projector"];
        let kind = victims[turn % victims.len()];
        turn += 1;
        let (victim, name, addr) = match kind {
            "worker" => (&mut system.workers[turn % 2], "llm-worker", "OC_WORKER_ADDR"),
            "command" => (&mut system.command[turn % 2], "command-service", "OC_COMMAND_ADDR"),
            "query" => (&mut system.query[turn % 2], "query-service", "OC_QUERY_ADDR"),
            _ => (system.projector.as_mut().unwrap(), "projector", "OC_PROJECTOR_ADDR"),
        };
        let port = port_of(&victim.url);
        victim.proc.kill();
        kills += 1;
        let extra: Vec<(&str, &str)> = match kind {
            "command" => vec![("OC_RELAY_ENABLED", "true")],
            "worker" => vec![("OC_WORKER_MAX_DELIVER", "20")],
            _ => vec![],
        };
        let restarted = system.start_service_at(name, addr, port, &extra).await;
        match kind {
            "worker" => system.workers[turn % 2] = restarted,
            "command" => system.command[turn % 2] = restarted,
            "query" => system.query[turn % 2] = restarted,
            _ => system.projector = Some(restarted),
        }
    }
    let (answered, reconnects) = load.check(&mut system).await;
    eprintln!(
        "chaos: {answered} prompts answered, {kills} instances killed, {reconnects} stream (re)connections, 0 lost"
    );
}

/// The faults of the infrastructure, in the order the test injects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fault {
    /// SIGKILL a NATS node that does not lead the stream; start it again on its store.
    NatsNode,
    /// SIGKILL the node that leads the stream; start it again on its store.
    NatsLeader,
    /// Crash PostgreSQL (immediate stop) and start it again.
    Postgres,
    /// Freeze one NATS node (SIGSTOP: it neither answers nor closes its connections) for longer
    /// than every client timeout, then thaw it.
    NatsPartition,
}

/// How long a partitioned node stays frozen: past the services' JetStream request timeout
/// (5 s) and connection timeout (2 s), and long enough for the cluster to elect a new leader.
const PARTITION: Duration = Duration::from_secs(8);

#[tokio::test]
async fn prompts_survive_nats_nodes_lost_partitioned_and_postgres_restarted_under_load() {
    let mut system = System::start_with(options(true)).await;
    second_instances(&mut system).await;
    let load = Load::start(&system, prompts(80)).await;
    let faults = [Fault::NatsNode, Fault::Postgres, Fault::NatsLeader, Fault::NatsPartition];
    let mut injected: Vec<(Fault, Instant)> = Vec::new();
    let mut turn = 0;
    while load.answers(REPLIES_BETWEEN_KILLS).await {
        let fault = faults[turn % faults.len()];
        turn += 1;
        let at = Instant::now();
        eprintln!("chaos: {fault:?} after {} replies", load.progress.load(Ordering::Relaxed));
        match fault {
            Fault::Postgres => system.restart_postgres().await,
            Fault::NatsNode | Fault::NatsLeader | Fault::NatsPartition => {
                let leader = stream_leader(&system).await;
                let node = match fault {
                    Fault::NatsNode => (leader + 1) % system.nats.len(),
                    _ => leader,
                };
                if fault == Fault::NatsPartition {
                    system.nats.freeze_node(node);
                } else {
                    system.nats.kill_node(node);
                }
                // The system serves on with one node of three gone, then gets it back.
                let still = load.answers(REPLIES_BETWEEN_KILLS);
                let partitioned = tokio::time::sleep(if fault == Fault::NatsPartition {
                    PARTITION
                } else {
                    Duration::ZERO
                });
                let (_, ongoing) = tokio::join!(partitioned, still);
                if fault == Fault::NatsPartition {
                    system.nats.thaw_node(node);
                } else {
                    system.nats.restart_node(node);
                }
                // One fault at a time, as operators would have it: the node is back in step
                // before the next (else two nodes of three would be out, and no quorum left).
                all_nodes_current(&system).await;
                if !ongoing {
                    injected.push((fault, at));
                    break;
                }
            }
        }
        injected.push((fault, at));
    }
    let mut recovery: HashMap<Fault, Vec<f64>> = HashMap::new();
    for (fault, at) in &injected {
        if let Some(took) = load.served_again(*at) {
            recovery.entry(*fault).or_default().push(took.as_secs_f64());
        }
    }
    let (answered, reconnects) = load.check(&mut system).await;
    for fault in faults {
        let mut took = recovery.remove(&fault).unwrap_or_default();
        took.sort_by(f64::total_cmp);
        let worst = took.last().copied().unwrap_or(0.0);
        let median = took.get(took.len() / 2).copied().unwrap_or(0.0);
        eprintln!(
            "chaos: {fault:?} ×{}: served again after {median:.1} s (median), {worst:.1} s (worst)",
            took.len()
        );
    }
    eprintln!(
        "chaos: {answered} prompts answered through {} faults, {reconnects} stream (re)connections, 0 lost",
        injected.len()
    );
}

/// Wait until the event stream has a leader and both its replicas are current.
async fn all_nodes_current(system: &System) {
    eventually("every NATS node in step", REPLY_WAIT, || async {
        let js = async_nats::jetstream::new(system.nats().await);
        let mut stream = js.get_stream(schemas::subjects::STREAM).await.ok()?;
        let info = stream.info().await.ok()?;
        let cluster = info.cluster.as_ref()?;
        let replicas = &cluster.replicas;
        (cluster.leader.is_some() && replicas.len() == 2 && replicas.iter().all(|r| r.current))
            .then_some(())
    })
    .await;
}

/// Which NATS node leads the event stream.
async fn stream_leader(system: &System) -> usize {
    eventually("the stream's leader", REPLY_WAIT, || async {
        let js = async_nats::jetstream::new(system.nats().await);
        let mut stream = js.get_stream(schemas::subjects::STREAM).await.ok()?;
        let info = stream.info().await.ok()?;
        system.nats.index_of(info.cluster.as_ref()?.leader.as_ref()?)
    })
    .await
}

/// The session's assistant replies once all `count` are stored: id → text.
async fn stored_replies(
    system: &System,
    bearer: &str,
    session: &str,
    count: usize,
) -> HashMap<String, String> {
    eventually("every reply stored", REPLY_WAIT, || async {
        let mut replies = HashMap::new();
        for m in system.messages(bearer, session).await? {
            // (a reply is stored once the read models have its completion; they may lag)
            if m["info"]["role"] != "assistant" || m["info"]["finish"].is_null() {
                continue;
            }
            let text = m["parts"].as_array().into_iter().flatten().find(|p| p["type"] == "text");
            let text = text.and_then(|p| p["text"].as_str()).unwrap_or_default();
            let id = m["info"]["id"].as_str().unwrap_or_default().to_owned();
            replies.insert(id, text.to_owned());
        }
        (replies.len() >= count).then_some(replies)
    })
    .await
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}
