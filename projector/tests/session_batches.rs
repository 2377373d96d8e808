//! A batch of session events projected together (one statement per kind) leaves the read models
//! exactly as projecting the same events one at a time does. Against a real PostgreSQL
//! (`OC_TEST_POSTGRES_URL`, default the local server), in a database of its own.

use deadpool_postgres::{Manager, Pool};
use projector::projection::{self, Outcome};
use schemas::envelope::{Envelope, aggregate};
use schemas::events::{AssistantCompletion, EventName, SessionEvent, UserMessage};
use schemas::ids::{
    ConnectionId, MessageId, OrganizationId, PartId, SessionId, UserId, WorkspaceId,
};
use schemas::message::{CacheUsage, FinishReason, ModelRef, Part, SessionStatus, TokenUsage};
use serde_json::Value;
use tokio_postgres::NoTls;

/// Builds one organization's session events, each with its session's next sequence.
struct Events {
    org: OrganizationId,
    workspace: WorkspaceId,
    user: UserId,
    sequences: std::collections::HashMap<SessionId, u64>,
    time: i64,
}

impl Events {
    fn new() -> Self {
        Self {
            org: OrganizationId::new(),
            workspace: WorkspaceId::new(),
            user: UserId::new(),
            sequences: Default::default(),
            // 120 ms before a midnight (UTC): the replies below count on two days.
            time: 1_764_547_200_000 - 120,
        }
    }

    fn event(&mut self, event: SessionEvent) -> Envelope<Value> {
        let session = event.session_id().clone();
        let sequence = self.sequences.entry(session.clone()).or_default();
        *sequence += 1;
        self.time += 7;
        Envelope {
            id: format!("{session}:{sequence}"),
            organization_id: self.org.clone(),
            aggregate_type: aggregate::SESSION.into(),
            aggregate_id: session.to_string(),
            sequence: Some(*sequence),
            event_type: event.event_type().into(),
            event_version: event.event_version().into(),
            time: self.time,
            actor: Some(self.user.to_string()),
            correlation_id: None,
            causation_id: None,
            payload: serde_json::to_value(&event).unwrap(),
        }
    }

    fn created(&mut self, session: &SessionId) -> Envelope<Value> {
        self.event(SessionEvent::Created {
            session_id: session.clone(),
            organization_id: self.org.clone(),
            workspace_id: self.workspace.clone(),
            project_id: None,
            title: format!("session {session}"),
            created_by: self.user.clone(),
            time: self.time,
        })
    }

    fn status(&mut self, session: &SessionId, status: SessionStatus) -> Envelope<Value> {
        self.event(SessionEvent::StatusChanged { session_id: session.clone(), status })
    }

    /// A prompt: its events, and the reply it owes.
    fn prompted(&mut self, session: &SessionId, text: &str) -> (Envelope<Value>, MessageId) {
        let (id, reply) = (MessageId::new(), MessageId::new());
        let message = UserMessage {
            id: id.clone(),
            user_id: self.user.clone(),
            parts: vec![Part::Text { id: PartId::new(), message_id: id, text: text.into() }],
            model: model(),
            time: self.time,
        };
        let event = SessionEvent::Prompted {
            session_id: session.clone(),
            message,
            assistant_message_id: reply.clone(),
            connection: None,
            api_key_id: None,
        };
        (self.event(event), reply)
    }

    fn aborted(&mut self, session: &SessionId, reply: &MessageId) -> Envelope<Value> {
        self.event(SessionEvent::AbortRequested {
            session_id: session.clone(),
            message_id: reply.clone(),
            requested_by: self.user.clone(),
            time: self.time,
        })
    }

    fn completed(
        &mut self,
        session: &SessionId,
        reply: &MessageId,
        text: &str,
        connection: Option<&ConnectionId>,
        finish: FinishReason,
    ) -> Envelope<Value> {
        let message = AssistantCompletion {
            id: reply.clone(),
            parent_id: MessageId::new(),
            parts: vec![Part::Text {
                id: PartId::new(),
                message_id: reply.clone(),
                text: text.into(),
            }],
            finish,
            error: None,
            tokens: TokenUsage {
                input: 11,
                output: 7,
                reasoning: 2,
                cache: CacheUsage { read: 3, write: 1 },
            },
            model: model(),
            connection_id: connection.cloned(),
            user_id: Some(self.user.clone()),
            workspace_id: Some(self.workspace.clone()),
            cost: Some(schemas::events::ReplyCost { micro_dollars: 1_250, prices: None }),
            own_key: connection.is_some(),
            api_key_id: None,
            attempt: 1,
            time: self.time,
        };
        self.event(SessionEvent::MessageCompleted { session_id: session.clone(), message })
    }
}

fn model() -> ModelRef {
    ModelRef { provider_id: "fake".into(), model_id: "fake-1".into() }
}

/// A fresh database with the migrations applied, connected as the projector connects; dropped
/// with the returned guard.
async fn database() -> (Pool, Dropped) {
    database_with(platform::db::KEYED_BATCH_PLANS).await
}

/// The same, with `options` (server settings) for its connections.
async fn database_with(options: &str) -> (Pool, Dropped) {
    let admin_url = std::env::var("OC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name =
        format!("oc_projector_{}", SessionId::new().as_str().to_lowercase().replace("ses_", ""));
    admin(&admin_url, &format!("CREATE DATABASE {name}")).await;
    let (base, _) = admin_url.rsplit_once('/').expect("a URL ending in a database name");
    let url = format!("{base}/{name}");
    platform::db::migrate(&url).await.expect("migrations");
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.options(options);
    let pool = Pool::builder(Manager::new(config, NoTls)).max_size(2).build().unwrap();
    (pool, Dropped { admin_url, name })
}

async fn admin(url: &str, sql: &str) {
    let (admin, connection) = tokio_postgres::connect(url, NoTls).await.expect("PostgreSQL");
    tokio::spawn(connection);
    admin.batch_execute(sql).await.expect(sql);
}

/// Drops the test's database when the test ends, passed or not.
struct Dropped {
    admin_url: String,
    name: String,
}

impl Drop for Dropped {
    fn drop(&mut self) {
        let url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // The test's runtime cannot be blocked on: a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(admin(&url, &sql));
        })
        .join();
    }
}

/// Every read model the session events touch, as text.
const READ_MODELS: &str = "SELECT json_build_array( \
     (SELECT json_agg(s ORDER BY s.session_id) FROM rm_sessions s), \
     (SELECT json_agg(m ORDER BY m.session_id, m.message_id) FROM rm_messages m), \
     (SELECT json_agg(u ORDER BY u.day, u.connection_id, u.own_key) FROM rm_usage u), \
     (SELECT json_agg(p ORDER BY p.aggregate_id) FROM rm_positions p))::text";

#[tokio::test]
async fn a_batch_of_session_events_projects_as_they_do_one_at_a_time() {
    let (pool, _dropped) = database().await;
    let mut ev = Events::new();
    let own = ConnectionId::new();
    let (a, b, c, before) =
        (SessionId::new(), SessionId::new(), SessionId::new(), SessionId::new());

    // Already projected: a session with one reply (its usage row exists), and a member's own
    // connection (its replies count as their own key's).
    let mut client = pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO rm_connections (connection_id, organization_id, owner_id, kind, provider_id, name, \
             base_url, headers, models, enabled, fingerprint, key_last4, updated_at) \
             VALUES ($1, $2, $3, 'personal', 'fake', 'mine', 'http://x', '{}', '[]', true, 'f', '1234', 0)",
            &[&own.to_string(), &ev.org.to_string(), &ev.user.to_string()],
        )
        .await
        .unwrap();
    let mut earlier = vec![ev.created(&before), ev.status(&before, SessionStatus::Busy)];
    let (prompt, reply) = ev.prompted(&before, "hello");
    earlier.push(prompt);
    earlier.push(ev.completed(&before, &reply, "hi", None, FinishReason::Stop));
    earlier.push(ev.status(&before, SessionStatus::Idle));
    let tx = client.transaction().await.unwrap();
    let earlier_refs: Vec<&Envelope<Value>> = earlier.iter().collect();
    assert!(projection::apply_pipelined(&tx, &earlier_refs).await.unwrap());
    tx.commit().await.unwrap();

    // The batch: three sessions interleaved; replies before and after midnight, one on the
    // member's own connection; an abort; a session whose status changes three times; a prompt
    // and a reply of a session this projector never saw created; a follow-up on the earlier one.
    let mut batch = vec![ev.created(&a), ev.created(&b), ev.status(&a, SessionStatus::Busy)];
    let (prompt, a1) = ev.prompted(&a, "one");
    batch.push(prompt);
    batch.push(ev.status(&b, SessionStatus::Busy));
    let (prompt, b1) = ev.prompted(&b, "two");
    batch.push(prompt);
    batch.push(ev.completed(&a, &a1, "first reply", None, FinishReason::Stop));
    batch.push(ev.status(&a, SessionStatus::Idle));
    batch.push(ev.status(&a, SessionStatus::Busy));
    let (prompt, a2) = ev.prompted(&a, "three");
    batch.push(prompt);
    batch.push(ev.aborted(&b, &b1));
    batch.push(ev.completed(&b, &b1, "cut short", None, FinishReason::Aborted));
    batch.push(ev.status(&b, SessionStatus::Idle));
    batch.push(ev.completed(&a, &a2, "second reply", Some(&own), FinishReason::Stop));
    batch.push(ev.status(&a, SessionStatus::Idle));
    batch.push(ev.status(&before, SessionStatus::Busy));
    let (prompt, again) = ev.prompted(&before, "again");
    batch.push(prompt);
    batch.push(ev.completed(&before, &again, "once more", None, FinishReason::Stop));
    batch.push(ev.status(&before, SessionStatus::Idle));
    batch.push(ev.status(&c, SessionStatus::Busy));
    let (prompt, c1) = ev.prompted(&c, "unknown");
    batch.push(prompt);
    batch.push(ev.completed(&c, &c1, "nowhere", None, FinishReason::Stop));
    let refs: Vec<&Envelope<Value>> = batch.iter().collect();

    let tx = client.transaction().await.unwrap();
    assert!(projection::apply_pipelined(&tx, &refs).await.unwrap(), "applied as one batch");
    let together: String = tx.query_one(READ_MODELS, &[]).await.unwrap().get(0);
    tx.rollback().await.unwrap();

    let tx = client.transaction().await.unwrap();
    for env in &refs {
        assert_eq!(projection::apply(&tx, env).await.unwrap(), Outcome::Applied, "{}", env.id);
    }
    let one_by_one: String = tx.query_one(READ_MODELS, &[]).await.unwrap().get(0);
    tx.rollback().await.unwrap();

    assert_eq!(together, one_by_one);
    // And the batch did what a reader expects (so the two are not equal by both doing nothing).
    let models: Value = serde_json::from_str(&together).unwrap();
    let sessions = models[0].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "before, a, b (c was never created here)");
    assert!(sessions.iter().all(|s| s["status"] == "idle"), "{sessions:?}");
    let messages = models[1].as_array().unwrap();
    assert_eq!(messages.len(), 2 + 2 * 4, "two messages per prompt of a known session");
    let cut = messages.iter().find(|m| m["message_id"] == b1.to_string()).unwrap();
    assert_eq!(cut["info"]["abortRequested"], true);
    assert_eq!(cut["info"]["finish"], "aborted");
    let usage = models[2].as_array().unwrap();
    let requests: Vec<(i64, bool)> = usage
        .iter()
        .map(|u| (u["requests"].as_i64().unwrap(), u["own_key"].as_bool().unwrap()))
        .collect();
    assert_eq!(requests.iter().map(|r| r.0).sum::<i64>(), 5, "one per reply of a known session");
    assert!(requests.contains(&(1, true)), "the reply on the member's own connection: {usage:?}");
    assert_eq!(usage.len(), 3, "the day before and after midnight, the own key apart: {usage:?}");
    assert!(requests.contains(&(3, false)), "the earlier reply and two of the batch: {usage:?}");
}

/// Times each read model was read whole, by the statistics this connection has sent.
async fn table_scans(client: &tokio_postgres::Client) -> Vec<(String, i64)> {
    // This backend's counts go out when it is next idle; the next statement sees them.
    client.execute("SELECT pg_stat_force_next_flush()", &[]).await.unwrap();
    let rows = client
        .query(
            "SELECT relname::text, seq_scan FROM pg_stat_user_tables \
             WHERE relname IN ('rm_sessions', 'rm_messages', 'rm_positions', 'rm_usage') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Planned while the read models were empty and kept as they grow (a connection may keep one
/// generic plan per statement: forced here so the test does not hang on when it would), a
/// batch still finds its rows by their keys instead of reading whole tables.
#[tokio::test]
async fn batches_find_their_rows_by_key_with_plans_made_while_the_tables_were_empty() {
    let options =
        format!("{} -c plan_cache_mode=force_generic_plan", platform::db::KEYED_BATCH_PLANS);
    let (pool, _dropped) = database_with(&options).await;
    let mut client = pool.get().await.unwrap();
    let mut ev = Events::new();
    let before = table_scans(&client).await;
    for _ in 0..20 {
        let mut batch = Vec::new();
        for _ in 0..20 {
            let session = SessionId::new();
            batch.push(ev.created(&session));
            batch.push(ev.status(&session, SessionStatus::Busy));
            let (prompt, reply) = ev.prompted(&session, "hello");
            batch.push(prompt);
            batch.push(ev.completed(&session, &reply, "hi", None, FinishReason::Stop));
            batch.push(ev.status(&session, SessionStatus::Idle));
        }
        let refs: Vec<&Envelope<Value>> = batch.iter().collect();
        let tx = client.transaction().await.unwrap();
        assert!(projection::apply_pipelined(&tx, &refs).await.unwrap(), "applied as one batch");
        tx.commit().await.unwrap();
    }
    assert_eq!(table_scans(&client).await, before, "read models read whole by a batch");
    let completed: i64 = client
        .query_one("SELECT count(*) FROM rm_messages WHERE info ? 'finish'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(completed, 400, "every reply completed in its row");
}
