//! Commands on different aggregates that commit at the same instant on one instance share one
//! statement: each must still be written once, checked against the states it was decided from,
//! and refused or decided again on its own when another instance committed first, whatever else
//! shared its statement.

use std::time::Duration;

use e2e_tests::api::Created;
use e2e_tests::{System, SystemOptions, eventually};
use futures::future::join_all;
use serde_json::json;

use crate::WAIT;

/// Sessions prompted at once through both instances.
const SESSIONS: usize = 40;

/// Every session is prompted through both command instances at the same instant, both holding
/// it as it is: the two instances' commits on one session race for the same sequence (a loser
/// whose statement ran first finds the winner's event and decides again; one whose statement
/// ran at the same time fails on the primary key, with the commits sharing its statement, and
/// each of them goes again alone); every fifth prompt is too large to share a statement and is
/// written alone, in the same race. Each session takes exactly one of its two prompts (the
/// other is refused 409: the session is busy with the first), each accepted prompt is stored,
/// published and answered once, and nothing is left in the outbox.
#[tokio::test]
async fn commits_sharing_a_statement_each_land_once_or_lose_alone() {
    let system = System::start().await;
    let second = system.start_command(false).await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let ws = system.create_workspace(&alice, &org.id, "main").await;
    let sessions = join_all((0..SESSIONS).map(|_| system.create_session(&alice, &ws.id))).await;

    let post = |url: &str, path: String, body: serde_json::Value| {
        let req = system.http.post(format!("{url}{path}")).bearer_auth(&alice).json(&body);
        async move { req.send().await.expect("command service reachable").status().as_u16() }
    };
    // An abort with no reply running is refused (409), after the second instance has brought
    // the session it held as new up to date: from then on both instances hold every session
    // as it is, and their prompts below race for the same sequence.
    let refused = join_all(
        sessions.iter().map(|s| post(&second.url, format!("/session/{}/abort", s.id), json!({}))),
    )
    .await;
    assert!(refused.iter().all(|s| *s == 409), "nothing to abort yet: {refused:?}");
    let prompt = |url: &str, session: &str, text: &str| {
        let body = json!({ "parts": [{ "type": "text", "text": text }] });
        post(url, format!("/session/{session}/prompt_async"), body)
    };
    // Every fifth prompt too large to share a statement: written alone, in the same race.
    let large = format!("{} [[fake tokens=3 hold=group]]", "x".repeat(100_000));
    let both = sessions.iter().enumerate().map(|(i, s)| {
        let text = if i % 5 == 0 { large.as_str() } else { "hi [[fake tokens=3 hold=group]]" };
        let first = prompt(system.command_url(), &s.id, text);
        let other = prompt(&second.url, &s.id, text);
        async move {
            let (a, b) = tokio::join!(first, other);
            let mut answers = [a, b];
            answers.sort_unstable();
            answers
        }
    });
    let answers = join_all(both).await;
    for (session, answer) in sessions.iter().zip(&answers) {
        assert_eq!(answer, &[202, 409], "session {}: one prompt taken, one busy", session.id);
    }
    let name = "commits_sharing_a_statement_total";
    let mut shared = 0.0;
    for ops_url in [&system.command[0].ops_url, &second.ops_url] {
        shared += system.metric(ops_url, name).await.unwrap_or(0.0);
    }
    assert!(shared > 0.0, "some commits went in a statement with others (this test's premise)");

    // Each session's one prompt is stored once, and each reply completes once released.
    let db = system.db().await;
    let stored = db
        .query(
            "SELECT aggregate_id, count(*) FROM events WHERE aggregate_type = 'session' \
             AND event_type = 'session.prompted' GROUP BY aggregate_id",
            &[],
        )
        .await
        .expect("the event store");
    assert_eq!(stored.len(), SESSIONS, "every session has its prompt stored");
    assert!(stored.iter().all(|row| row.get::<_, i64>(1) == 1), "each stored once");
    system.http.post(format!("{}/release/group", system.provider_url)).send().await.unwrap();
    join_all(sessions.iter().map(|s| {
        eventually("the session's reply to complete", WAIT, || async {
            let messages = system.messages(&alice, &s.id).await?;
            let done =
                messages.len() == 2 && messages[1]["info"]["time"]["completed"].as_i64().is_some();
            done.then_some(())
        })
    }))
    .await;
    eventually("the outbox to empty", Duration::from_secs(30), || async {
        let row = db.query_one("SELECT count(*) FROM outbox", &[]).await.ok()?;
        (row.get::<_, i64>(0) == 0).then_some(())
    })
    .await;
}

/// Sessions whose commits share the statement that loses the race below.
const ALONGSIDE: usize = 5;

/// The next event of `session` (an idle status, which changes nothing), written in a
/// transaction of the test's own that stays open: a commit of the same sequence waits for it.
async fn hold_next_sequence(system: &System, session: &str) -> tokio_postgres::Client {
    let db = system.db().await;
    db.batch_execute("BEGIN").await.unwrap();
    let written = db
        .execute(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload, metadata) \
             SELECT aggregate_type, aggregate_id, sequence + 1, 'session.status', event_version, \
                 json_build_object('type', 'session.status', 'properties', json_build_object( \
                     'sessionID', aggregate_id, 'status', json_build_object('type', 'idle'))), \
                 metadata \
             FROM events WHERE aggregate_type = 'session' AND aggregate_id = $1 AND sequence = 1",
            &[&session],
        )
        .await
        .unwrap();
    assert_eq!(written, 1);
    db
}

/// Prompt `session` as `bearer` on the first command instance, in a task of its own: the status.
/// The request may be held for as long as the test's steps take (its commit waits for a
/// transaction of the test's), so it waits longer than the harness's usual 30 s: on a loaded
/// machine the steps have taken more, and a step that never comes fails on its own deadline.
/// Its reply is held by the fake provider for the rest of the test: a reply completing would
/// be one more commit in progress while the test counts them.
fn spawn_prompt(system: &System, bearer: &str, session: &str) -> tokio::task::JoinHandle<u16> {
    let text = "hi [[fake tokens=2 hold=never]]";
    let body = json!({ "parts": [{ "type": "text", "text": text }] });
    let url = format!("{}/session/{session}/prompt_async", system.command_url());
    let req = system.http.post(url).bearer_auth(bearer).json(&body).timeout(WAIT * 3);
    tokio::spawn(
        async move { req.send().await.expect("command service reachable").status().as_u16() },
    )
}

/// Wait until the instance has `n` commits being written or waiting for a statement.
async fn commits_in_progress(system: &System, n: f64) {
    let ops_url = &system.command[0].ops_url;
    eventually("commits in progress", WAIT, || async {
        (system.metric(ops_url, "commits_in_progress").await == Some(n)).then_some(())
    })
    .await;
}

/// Wait until `n` commit statements on this test's database wait for a lock (other tests' run
/// on databases of their own in the same PostgreSQL).
async fn commits_waiting(system: &System, n: i64) {
    let db = system.db().await;
    let start = "WITH newer AS ( SELECT k.c%";
    eventually("commit statements waiting for a lock", WAIT, || async {
        let row = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE $1",
                &[&start],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) == n).then_some(())
    })
    .await;
}

/// A statement shared by several commits fails when one of them loses its sequence to a writer
/// elsewhere (here a transaction of the test's own). The others must not fail with it: each
/// goes again alone and is written, and the one that lost decides again on what the winner
/// wrote. Every slot of the instance's commit statements is first held by commits waiting for
/// the test, so that the race's commits are gathered into one statement.
#[tokio::test]
async fn a_commit_losing_its_sequence_fails_none_of_those_sharing_its_statement() {
    // The four commits held below keep four of the event store's connections for the whole
    // test; with the tests' usual pool of four, anything else of the instance's that needs one
    // meanwhile would wait for them.
    let pool = vec![("OC_DATABASE_POOL_SIZE", "8".to_owned())];
    let system =
        System::start_with(SystemOptions { service_env: pool, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let ws = system.create_workspace(&alice, &org.id, "main").await;
    let create = |_| system.create_session(&alice, &ws.id);
    let blockers = join_all((0..4).map(create)).await;
    let loser = system.create_session(&alice, &ws.id).await;
    let others = join_all((0..ALONGSIDE).map(create)).await;

    // Four commits, one per statement slot, each waiting for a transaction of the test's.
    let mut holds = Vec::new();
    let mut prompts = Vec::new();
    for (n, session) in blockers.iter().enumerate() {
        holds.push(hold_next_sequence(&system, &session.id).await);
        prompts.push(spawn_prompt(&system, &alice, &session.id));
        commits_waiting(&system, n as i64 + 1).await;
    }
    // The race: the loser's sequence is taken, and its commit gathered with the others'.
    let winner = hold_next_sequence(&system, &loser.id).await;
    for session in std::iter::once(&loser).chain(&others) {
        prompts.push(spawn_prompt(&system, &alice, &session.id));
    }
    let racing = 1 + ALONGSIDE;
    commits_in_progress(&system, (blockers.len() + racing) as f64).await;
    // One slot is freed (its transaction rolled back, its commit answered): the gathered
    // commits take it as one statement, and wait for the loser's sequence (with the three
    // blockers left) until the winner commits.
    holds.remove(0).batch_execute("ROLLBACK").await.unwrap();
    commits_in_progress(&system, (blockers.len() - 1 + racing) as f64).await;
    commits_waiting(&system, blockers.len() as i64).await;
    winner.batch_execute("COMMIT").await.unwrap();
    for hold in holds {
        hold.batch_execute("ROLLBACK").await.unwrap();
    }
    for prompt in prompts {
        assert_eq!(prompt.await.unwrap(), 202, "every prompt taken");
    }
    let retried = system.metric(&system.command[0].ops_url, "commit_batches_retried_alone_total");
    assert_eq!(retried.await, Some(1.0), "the shared statement failed once, and went again");
    let db = system.db().await;
    let events_of = |session: &Created| {
        let db = &db;
        let id = session.id.clone();
        async move {
            let rows = db
                .query(
                    "SELECT event_type FROM events WHERE aggregate_type = 'session' \
                     AND aggregate_id = $1 ORDER BY sequence",
                    &[&id],
                )
                .await
                .unwrap();
            rows.iter().map(|row| row.get(0)).collect::<Vec<String>>()
        }
    };
    // The loser's prompt is stored after the winner's event, as every other session's is.
    let (lost, other) = (events_of(&loser).await, events_of(&others[0]).await);
    assert_eq!(lost[..2], ["session.created", "session.status"]);
    let prompted = |events: &[String]| events.iter().filter(|e| *e == "session.prompted").count();
    assert_eq!((prompted(&lost), prompted(&other)), (1, 1), "each prompt stored once");
    // (Replies may have completed since: compare up to the prompt.)
    let upto = |events: &[String]| events.iter().position(|e| e == "session.prompted").unwrap();
    assert_eq!(lost[2..=upto(&lost)], other[1..=upto(&other)], "the prompt's commit, as others'");
    for session in &others {
        let messages = eventually("the prompt on the read side", WAIT, || async {
            system.messages(&alice, &session.id).await.filter(|m| !m.is_empty())
        });
        assert_eq!(messages.await[0]["info"]["role"], "user");
    }
}
