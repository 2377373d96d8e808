//! A burst of one organization's prompts is admitted in one statement (`prompt_admit_all`,
//! migrations/0030): it must decide exactly what admitting them one at a time, in order, with
//! `prompt_admit` decides (budgets, rates, a prompt asked twice), and batches running at once
//! must neither overlap their holds nor deadlock. A batch the database refuses fails only the
//! admission it refuses.

use e2e_tests::{System, SystemOptions, eventually};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::WAIT;
use crate::budgets::{org_budget, priced_org, set_budget};

/// `prompt_admit` for one admission given as `prompt_admit_all` takes it.
const ADMIT_ONE: &str = "SELECT 1, * FROM prompt_admit($1::jsonb ->> 'session', $1::jsonb ->> 'message', \
    $1::jsonb ->> 'organization', jsonb_texts($1::jsonb -> 'heldIn'), ($1::jsonb ->> 'ownKey')::boolean, \
    ($1::jsonb ->> 'amount')::bigint, jsonb_texts($1::jsonb -> 'rateKeys'), \
    jsonb_texts($1::jsonb -> 'rateCosts')::float8[], jsonb_texts($1::jsonb -> 'rateWindows')::float8[], \
    jsonb_texts($1::jsonb -> 'budgetIds'), jsonb_texts($1::jsonb -> 'budgetScopes'), \
    jsonb_texts($1::jsonb -> 'budgetAmounts')::bigint[], jsonb_texts($1::jsonb -> 'budgetPeriods'), \
    jsonb_texts($1::jsonb -> 'budgetHours')::integer[], jsonb_texts($1::jsonb -> 'budgetIncludeOwn')::boolean[])";

/// A budget: id, scope (without the organization), amount, period, hours, own keys count.
type Budget = (&'static str, String, i64, &'static str, i32, bool);

/// The `n`th prompt of a made-up sequence in organization `org`: three members in two
/// workspaces, some on their own keys, budgets on the organization, a workspace and a member,
/// a prompt rate per member and one for the organization, and every seventh prompt asked again.
fn admission(org: &str, n: u64) -> Value {
    let seed = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33;
    let member = format!("usr_{}", seed % 3);
    let ws = format!("ws_{}", seed / 3 % 2);
    let own = (seed / 6).is_multiple_of(4);
    let amount = 50_000 + (seed / 24 % 3) as i64 * 50_000;
    let message = if n % 7 == 6 { format!("msg_{}", n - 3) } else { format!("msg_{n}") };
    let mut budgets: Vec<Budget> = vec![("bdg_org", "org:".into(), 2_000_000, "month", 0, false)];
    if ws == "ws_0" {
        budgets.push(("bdg_ws", format!("ws:{ws}"), 1_000_000, "day", 0, true));
    }
    if member == "usr_1" {
        budgets.push(("bdg_member", format!("member:{member}"), 700_000, "rolling", 2, true));
    }
    let scope = |s: &str| match s.split_once(':') {
        Some(("org", _)) => format!("org:{org}"),
        Some(("member", m)) => format!("member:{org}:{m}"),
        // (Workspace ids are unique across tenants; here each organization gets its own.)
        Some(("ws", w)) => format!("ws:{org}_{w}"),
        _ => s.to_owned(),
    };
    let scopes: Vec<String> = budgets.iter().map(|b| scope(&b.1)).collect();
    let mut held = scopes.clone();
    held.sort();
    held.dedup();
    json!({
        "session": format!("ses_{org}_{}", message), "message": message, "organization": org,
        "heldIn": held, "ownKey": own, "amount": amount,
        // Fourteen at once per member, thirty-six for the organization.
        "rateKeys": [format!("prompts:{org}:{member}"), format!("prompts:{org}")],
        "rateCosts": [1.0, 1.0], "rateWindows": [14.0, 36.0],
        "budgetIds": budgets.iter().map(|b| b.0).collect::<Vec<_>>(),
        "budgetScopes": scopes,
        "budgetAmounts": budgets.iter().map(|b| b.2).collect::<Vec<_>>(),
        "budgetPeriods": budgets.iter().map(|b| b.3).collect::<Vec<_>>(),
        "budgetHours": budgets.iter().map(|b| b.4).collect::<Vec<_>>(),
        "budgetIncludeOwn": budgets.iter().map(|b| b.5).collect::<Vec<_>>(),
    })
}

/// An answer: place, refusing budget, its spent and reserved, whether to retry in 5 s, rate.
type Answer = (i32, Option<String>, Option<i64>, Option<i64>, bool, Option<i32>);

fn answer(row: &tokio_postgres::Row, place: i32) -> Answer {
    let retry: f64 = row.get(4);
    let budget: Option<String> = row.get(1);
    (place, budget.clone(), row.get(2), row.get(3), budget.is_some() && retry == 5.0, row.get(5))
}

/// What the ledger holds for `org` afterwards: counters (scope without the organization) and
/// reservations.
async fn ledger(db: &tokio_postgres::Client, org: &str) -> (Vec<String>, Vec<String>) {
    let counters = db
        .query(
            "SELECT replace(scope, $1, 'ORG') || ' ' || granularity::text || ' ' || own_key || ' ' \
             || spent || ' ' || reserved FROM spend_counters WHERE organization_id = $1 \
             AND reserved <> 0 ORDER BY 1",
            &[&org],
        )
        .await
        .unwrap();
    let held = db
        .query(
            "SELECT message_id || ' ' || amount || ' ' || own_key || ' ' \
             || replace(array_to_string(scopes, ','), $1, 'ORG') \
             FROM spend_reservations WHERE organization_id = $1 ORDER BY 1",
            &[&org],
        )
        .await
        .unwrap();
    (counters.iter().map(|r| r.get(0)).collect(), held.iter().map(|r| r.get(0)).collect())
}

#[tokio::test]
async fn a_batch_decides_what_one_at_a_time_would() {
    let system = System::start().await;
    let db = system.db().await;
    let count = 60;
    let mut one_by_one = Vec::new();
    for n in 0..count {
        let rows = db.query(ADMIT_ONE, &[&admission("org_a", n)]).await.unwrap();
        one_by_one.extend(rows.iter().map(|row| answer(row, n as i32 + 1)));
    }
    let batch: Vec<Value> = (0..count).map(|n| admission("org_b", n)).collect();
    let rows = db.query("SELECT * FROM prompt_admit_all($1)", &[&json!(batch)]).await.unwrap();
    let together: Vec<Answer> = rows.iter().map(|row| answer(row, row.get(0))).collect();

    assert_eq!(together, one_by_one);
    let refused_by = |f: fn(&Answer) -> bool| one_by_one.iter().filter(|a| f(a)).count();
    assert!(refused_by(|a| a.1.is_some()) > 0, "some budget refused: {one_by_one:?}");
    assert!(refused_by(|a| a.5.is_some()) > 0, "some rate refused: {one_by_one:?}");
    assert!(one_by_one.len() < count as usize - 10, "most were admitted: {one_by_one:?}");
    assert_eq!(ledger(&db, "org_b").await, ledger(&db, "org_a").await);
}

#[tokio::test]
async fn batches_at_the_same_instant_never_overlap_their_holds() {
    // Ten connections at once, each with a batch of three prompts holding $0.10 each of one
    // $0.50 budget: five are admitted in all, whatever the interleaving, and no batch deadlocks.
    let system = System::start().await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(system.db().await);
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
    let batches = clients.into_iter().enumerate().map(|(i, db)| {
        let start = start.clone();
        async move {
            let batch: Vec<Value> = (0..3)
                .map(|j| {
                    json!({ "session": format!("ses_{i}_{j}"), "message": "msg", "organization": "org_z",
                        "heldIn": ["org:org_z"], "ownKey": false, "amount": 100000,
                        "rateKeys": [], "rateCosts": [], "rateWindows": [],
                        "budgetIds": ["bdg_z"], "budgetScopes": ["org:org_z"],
                        "budgetAmounts": [500000], "budgetPeriods": ["day"], "budgetHours": [0],
                        "budgetIncludeOwn": [true] })
                })
                .collect();
            let batch = json!(batch);
            start.wait().await;
            let rows = db.query("SELECT n FROM prompt_admit_all($1)", &[&batch]).await;
            3 - rows.unwrap().len()
        }
    });
    assert_eq!(join_all(batches).await.into_iter().sum::<usize>(), 5);
}

/// A prompt in `session`, sent at once: its status and problem type, when answered.
fn spawn_prompt(
    system: &System,
    bearer: &str,
    session: &str,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let body = json!({ "parts": [{ "type": "text", "text": "hi [[fake tokens=2]]" }] });
    let url = format!("{}/session/{session}/prompt_async", system.command_url());
    let req = system.http.post(url).bearer_auth(bearer).json(&body).timeout(WAIT * 3);
    tokio::spawn(async move {
        let res = req.send().await.expect("command service reachable");
        (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
    })
}

/// Wait until `n` lone admission statements on this test's database wait for a lock.
async fn admissions_waiting(system: &System, n: i64) {
    let db = system.db().await;
    eventually("admission statements waiting for a lock", WAIT, || async {
        let row = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE 'SELECT 1, * FROM prompt_admit(%'",
                &[],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) == n).then_some(())
    })
    .await;
}

/// How many `session.prompted` events `session` has.
async fn prompted(db: &tokio_postgres::Client, session: &str) -> i64 {
    let row = db
        .query_one(
            "SELECT count(*) FROM events WHERE aggregate_type = 'session' AND aggregate_id = $1 \
             AND event_type = 'session.prompted'",
            &[&session],
        )
        .await
        .unwrap();
    row.get(0)
}

/// The database refuses one prompt's hold (here a trigger of the test's; in life a constraint,
/// a deadlock) while that prompt shares its organization's admission statement with others:
/// the others must not fail with it. The statement goes again admission by admission, every
/// other prompt is accepted, and the refused one alone gets a 503 and writes nothing. The
/// organization's statement is first held by an admission waiting for a lock of the test's, so
/// that the rest are gathered into the next one.
#[tokio::test]
async fn a_batch_the_database_refuses_fails_only_the_admission_it_refuses() {
    let pool = vec![("OC_DATABASE_POOL_SIZE", "8".to_owned())];
    let system =
        System::start_with(SystemOptions { service_env: pool, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let o = priced_org(&system, &[]).await;
    set_budget(&system, &o.org, org_budget(100.0, "day")).await;
    let create = |_| system.create_session(&alice, &o.ws.id);
    let blocker = system.create_session(&alice, &o.ws.id).await;
    let refused = system.create_session(&alice, &o.ws.id).await;
    let others = join_all((0..5).map(create)).await;
    let db = system.db().await;
    db.batch_execute(&format!(
        "CREATE FUNCTION refuse_hold() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'this hold is refused'; END $$; \
         CREATE TRIGGER refuse_hold BEFORE INSERT ON spend_reservations FOR EACH ROW \
         WHEN (NEW.session_id = '{}') EXECUTE FUNCTION refuse_hold();",
        refused.id
    ))
    .await
    .unwrap();

    // The organization budget's lock, as every admission under it takes it first.
    let lock = system.db().await;
    let scope = format!("org:{}", o.org.id);
    lock.batch_execute("BEGIN").await.unwrap();
    lock.execute("SELECT pg_advisory_xact_lock(hashtext('spend'), hashtext($1))", &[&scope])
        .await
        .unwrap();
    let held = spawn_prompt(&system, &alice, &blocker.id);
    admissions_waiting(&system, 1).await;
    let gathered: Vec<_> = std::iter::once(&refused)
        .chain(&others)
        .map(|session| spawn_prompt(&system, &alice, &session.id))
        .collect();
    let in_progress = (2 + others.len()) as f64;
    let ops_url = &system.command[0].ops_url;
    eventually("every admission waiting", WAIT, || async {
        (system.metric(ops_url, "spend_admissions_in_progress").await == Some(in_progress))
            .then_some(())
    })
    .await;
    lock.batch_execute("COMMIT").await.unwrap();

    assert_eq!(held.await.unwrap().0, 202, "the held prompt is taken");
    let mut answers = Vec::new();
    for prompt in gathered {
        answers.push(prompt.await.unwrap());
    }
    let (status, problem) = &answers[0];
    assert_eq!(*status, 503, "the refused hold's prompt: {problem}");
    assert_eq!(problem["status"], 503, "a problem document: {problem}");
    for (status, body) in &answers[1..] {
        assert_eq!(*status, 202, "the others are taken: {body}");
    }
    let retried = system.metric(ops_url, "spend_admission_batches_retried_alone_total");
    assert_eq!(retried.await, Some(1.0), "the shared statement failed once, and went again");
    assert_eq!(prompted(&db, &refused.id).await, 0, "the refused prompt wrote nothing");
    for session in &others {
        assert_eq!(prompted(&db, &session.id).await, 1, "each other prompt stored once");
    }
    let holds = db
        .query_one("SELECT count(*) FROM spend_reservations WHERE session_id = $1", &[&refused.id])
        .await
        .unwrap();
    assert_eq!(holds.get::<_, i64>(0), 0, "nothing held for it");
}
