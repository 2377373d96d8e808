//! Provider connections: the organization's keys and members' own, resolved per prompt, rotated
//! and deleted without restarts — and no key ever readable outside the worker that uses it.

use e2e_tests::api::Answer;
use e2e_tests::sse::is_idle;
use e2e_tests::{System, SystemOptions, eventually};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::WAIT;

const ORG_KEY: &str = "sk-org-first-key-AAAA1111";
const ORG_KEY_ROTATED: &str = "sk-org-second-key-CCCC3333";
const BOB_KEY: &str = "sk-bob-own-key-BBBB2222";

/// Every answer the test received, to search for keys at the end.
#[derive(Default)]
struct Seen(String);

impl Seen {
    fn keep(&mut self, a: Answer) -> Answer {
        self.0.push_str(&a.body.to_string());
        a
    }
}

/// The key the fake provider saw on the last completion request.
async fn last_key_used(system: &System) -> (String, Value) {
    let seen = system.provider_requests().await;
    let last = seen.last().expect("a request reached the provider").clone();
    (last["authorization"].as_str().unwrap_or_default().to_owned(), last)
}

/// Prompt `model` in `session` as `bearer` and wait until the reply is done.
async fn ask(
    system: &System,
    bearer: &str,
    session: &e2e_tests::api::Created,
    model: Value,
    seen: &mut Seen,
) -> Value {
    let mut stream = system.watch(bearer, session).await;
    let body =
        json!({ "model": model, "parts": [{ "type": "text", "text": "hi [[fake tokens=2]]" }] });
    let a = seen
        .keep(system.post(bearer, &format!("/session/{}/prompt_async", session.id), body).await);
    assert_eq!(a.status, 202, "{a:?}");
    let events = stream.until(WAIT, is_idle).await;
    for e in &events {
        seen.0.push_str(&e.data.to_string());
    }
    let done = events.iter().find(|e| e.event == "message.completed").expect("a completion");
    done.data["properties"]["message"].clone()
}

#[tokio::test]
async fn connections_resolve_per_prompt_rotate_and_delete_and_their_keys_never_leak() {
    let system =
        System::start_with(SystemOptions { capture_logs: true, ..Default::default() }).await;
    let mut seen = Seen::default();
    let alice = system.token("alice").await;
    let (org, ws, session) = system.session_for("alice").await;
    let (bob, carol) = (system.token("bob").await, system.token("carol").await);
    for (who, role) in [(&bob, "member"), (&carol, "viewer")] {
        let id = system.get(who, "/me", None).await.body["userID"].as_str().unwrap().to_owned();
        let a = system
            .post(&alice, &format!("/org/{}/member", org.id), json!({ "userID": id, "role": role }))
            .await;
        assert_eq!(a.status, 201);
    }
    let set_ws = system
        .http
        .put(format!(
            "{}/workspace/{}/member/{}",
            system.command_url(),
            ws.id,
            system.get(&bob, "/me", None).await.body["userID"].as_str().unwrap()
        ))
        .bearer_auth(&alice)
        .json(&json!({ "role": "member" }))
        .send()
        .await
        .unwrap();
    assert!(set_ws.status().is_success());
    let providers = format!("/org/{}/provider", org.id);
    let connection = |key: &str, personal: bool| {
        json!({
            "kind": "openai-compatible", "providerID": "acme-llm", "name": "Acme LLM",
            "baseURL": format!("{}/v1", system.provider_url), "apiKey": key,
            "headers": { "x-tenant": "acme" }, "models": ["fast", "smart"], "personal": personal,
        })
    };

    // Only owners and admins add the organization's connections.
    for who in [&carol, &bob] {
        let a = seen.keep(system.post(who, &providers, connection(ORG_KEY, false)).await);
        assert!(a.is_problem(403), "{a:?}");
    }
    let created = seen.keep(system.post(&alice, &providers, connection(ORG_KEY, false)).await);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["keyLast4"], "1111");
    let org_connection = created.body["id"].as_str().unwrap().to_owned();

    // A member's prompt uses the organization's key, with the connection's headers and model.
    let model = json!({ "providerID": "acme-llm", "modelID": "fast" });
    let done = ask(&system, &bob, &session, model.clone(), &mut seen).await;
    assert_eq!(done["finish"], "stop", "{done}");
    assert_eq!(done["connectionID"], org_connection.as_str());
    let (key, request) = last_key_used(&system).await;
    assert_eq!(key, format!("Bearer {ORG_KEY}"));
    assert_eq!(
        (request["headers"]["x-tenant"].as_str(), request["model"].as_str()),
        (Some("acme"), Some("fast"))
    );

    // Unknown models and providers are refused when the prompt is sent; nothing is written.
    let before = system.event_count().await;
    for bad in [
        json!({ "providerID": "acme-llm", "modelID": "huge" }),
        json!({ "providerID": "nobody", "modelID": "x" }),
    ] {
        let body = json!({ "model": bad, "parts": [{ "type": "text", "text": "hi" }] });
        let a = seen
            .keep(system.post(&bob, &format!("/session/{}/prompt_async", session.id), body).await);
        assert!(a.is_problem(422), "{a:?}");
    }
    assert_eq!(system.event_count().await, before);

    // Bringing one's own key: refused until the organization allows it, then used for its
    // owner's prompts only.
    let a = seen.keep(system.post(&bob, &providers, connection(BOB_KEY, true)).await);
    assert!(a.is_problem(403), "{a:?}");
    let allow = system
        .http
        .put(format!("{}/org/{}/byok", system.command_url(), org.id))
        .bearer_auth(&alice)
        .json(&json!({ "allowed": true, "providers": ["acme-llm"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(allow.status(), 200);
    let bobs = seen.keep(system.post(&bob, &providers, connection(BOB_KEY, true)).await);
    assert_eq!(bobs.status, 201, "{bobs:?}");
    let done = ask(&system, &bob, &session, model.clone(), &mut seen).await;
    assert_eq!(done["connectionID"], bobs.body["id"]);
    assert_eq!(last_key_used(&system).await.0, format!("Bearer {BOB_KEY}"));
    ask(&system, &alice, &session, model.clone(), &mut seen).await;
    assert_eq!(last_key_used(&system).await.0, format!("Bearer {ORG_KEY}"), "bob's key is bob's");

    // Alice sees the organization's connection, not bob's; bob sees both; nobody sees a key.
    let token = bobs.body["consistencyToken"].as_str().unwrap();
    let listed = |who: String| {
        let (system, providers, token) = (&system, providers.clone(), token.to_owned());
        async move { system.get(&who, &providers, Some(&token)).await }
    };
    let alices = seen.keep(listed(alice.clone()).await);
    assert_eq!(alices.body["items"].as_array().unwrap().len(), 1, "{alices:?}");
    assert_eq!(alices.body["byok"]["allowed"], true);
    let bobs_view = seen.keep(listed(bob.clone()).await);
    assert_eq!(bobs_view.body["items"].as_array().unwrap().len(), 2);

    // A new organization key is used by the next prompt, with no restart anywhere.
    let rotate = system
        .http
        .put(format!("{}/org/{}/provider/{org_connection}/key", system.command_url(), org.id))
        .bearer_auth(&alice)
        .json(&json!({ "apiKey": ORG_KEY_ROTATED }))
        .send()
        .await
        .unwrap();
    assert_eq!(rotate.status(), 200);
    seen.0.push_str(&rotate.text().await.unwrap());
    ask(&system, &alice, &session, model.clone(), &mut seen).await;
    assert_eq!(last_key_used(&system).await.0, format!("Bearer {ORG_KEY_ROTATED}"));

    // A disabled connection, then a deleted one, takes no prompts; the deleted key is shredded.
    let url = format!("{}/org/{}/provider/{org_connection}", system.command_url(), org.id);
    let off = system
        .http
        .patch(&url)
        .bearer_auth(&alice)
        .json(&json!({ "enabled": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 200);
    let body = json!({ "model": model, "parts": [{ "type": "text", "text": "hi" }] });
    let refused = seen.keep(
        system.post(&alice, &format!("/session/{}/prompt_async", session.id), body.clone()).await,
    );
    assert!(refused.is_problem(422), "{refused:?}");
    assert_eq!(system.http.delete(&url).bearer_auth(&alice).send().await.unwrap().status(), 200);
    let db = system.db().await;
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM provider_secrets WHERE connection_id = $1",
            &[&org_connection],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the deleted connection's key is destroyed");
    let refused = seen
        .keep(system.post(&alice, &format!("/session/{}/prompt_async", session.id), body).await);
    assert!(refused.is_problem(422), "{refused:?}");
    // Bob cannot touch alice's connections, nor alice bob's own.
    let bobs_url = format!(
        "{}/org/{}/provider/{}",
        system.command_url(),
        org.id,
        bobs.body["id"].as_str().unwrap()
    );
    assert_eq!(
        system.http.delete(&bobs_url).bearer_auth(&alice).send().await.unwrap().status(),
        404
    );

    // The hard way: no key in the event store, the read models, the stream, the logs, or any
    // answer this test received.
    let mut haystack = seen.0;
    let events: String = db
        .query_one(
            "SELECT coalesce(string_agg(payload::text || metadata::text, ' '), '') FROM events",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    haystack.push_str(&events);
    let tables = db
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'provider_secrets'", &[])
        .await
        .unwrap();
    for row in tables {
        let table: String = row.get(0);
        let text: String = db
            .query_one(
                &format!("SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} t"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        haystack.push_str(&text);
    }
    let js = async_nats::jetstream::new(system.nats().await);
    let mut stream = js.get_stream(schemas::subjects::STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut read = 0;
    while read < last {
        let msg = tokio::time::timeout(WAIT, messages.next()).await.unwrap().unwrap().unwrap();
        haystack.push_str(&String::from_utf8_lossy(&msg.payload));
        read += 1;
    }
    let logs = eventually("the service logs", WAIT, || async {
        let mut all = String::new();
        for entry in std::fs::read_dir(&system.log_dir).ok()? {
            all.push_str(&std::fs::read_to_string(entry.ok()?.path()).ok()?);
        }
        (!all.is_empty()).then_some(all)
    })
    .await;
    haystack.push_str(&logs);
    assert!(haystack.len() > 10_000, "there was something to search");
    assert!(
        haystack.contains("1111") && logs.contains("INFO"),
        "events, reads and logs were searched"
    );
    for key in [ORG_KEY, ORG_KEY_ROTATED, BOB_KEY] {
        assert!(!haystack.contains(key), "the key {key} leaked");
        // Not even most of it.
        assert!(!haystack.contains(&key[..key.len() - 4]), "most of {key} leaked");
    }
}

#[tokio::test]
async fn a_catalog_describes_models_defaults_choose_one_and_the_context_limit_trims_history() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (org, ws, _) = system.session_for("alice").await;
    let body = json!({
        "kind": "openai-compatible", "providerID": "oa", "name": "OA",
        "baseURL": format!("{}/v1", system.provider_url), "apiKey": "k", "models": ["fast"],
    });
    let created = system.post(&alice, &format!("/org/{}/provider", org.id), body).await;
    let connection = created.body["id"].as_str().unwrap().to_owned();
    // A models.dev provider entry, imported as it is (unknown fields ignored).
    let catalog = json!({ "models": {
        "fast": { "id": "fast", "name": "Fast", "reasoning": true, "release_date": "2026-01-01",
                  "limit": { "context": 1000, "output": 100 }, "cost": { "input": 0.075, "output": 0.3 } },
        "smart": { "name": "Smart", "limit": { "context": 200000, "output": 8192 } },
    }});
    let url = format!("{}/org/{}/provider/{connection}/catalog", system.command_url(), org.id);
    let imported = system.http.put(&url).bearer_auth(&alice).json(&catalog).send().await.unwrap();
    assert_eq!(imported.status(), 200);
    let token =
        imported.json::<Value>().await.unwrap()["consistencyToken"].as_str().unwrap().to_owned();
    let listed = system.get(&alice, &format!("/org/{}/model", org.id), Some(&token)).await;
    assert_eq!(listed.body["connected"], json!(["oa"]), "{listed:?}");
    let fast = &listed.body["all"][0]["models"]["fast"];
    assert_eq!(
        (fast["limit"]["context"].as_u64(), fast["cost"]["input"].as_f64()),
        (Some(1000), Some(0.075))
    );
    assert_eq!(listed.body["all"][0]["models"]["smart"]["name"], "Smart");

    let prompt_without_model = |session: String, text: String| {
        let (system, alice) = (&system, alice.clone());
        async move {
            let body = json!({ "parts": [{ "type": "text", "text": text }] });
            let a = system.post(&alice, &format!("/session/{session}/prompt_async"), body).await;
            assert_eq!(a.status, 202, "{a:?}");
            a.body["assistantMessageID"].as_str().unwrap().to_owned()
        }
    };
    // The model that answered reply `reply` of `session`.
    let model_of = |session: String, reply: String| {
        let (system, alice) = (&system, alice.clone());
        async move {
            eventually("the reply", WAIT, || async {
                let a = system
                    .get(&alice, &format!("/session/{session}/message?limit=200"), None)
                    .await;
                let items = a.body.as_array()?.clone();
                let last = items.iter().find(|m| m["info"]["id"] == reply.as_str())?.clone();
                (last["info"]["finish"].is_string())
                    .then(|| last["info"]["modelID"].as_str().map(str::to_owned))?
            })
            .await
        }
    };
    // The organization's default, then the workspace's, apply to prompts that name no model.
    let put = |url: String, body: Value| {
        let (system, alice) = (&system, alice.clone());
        async move { system.http.put(url).bearer_auth(alice).json(&body).send().await.unwrap().status() }
    };
    let fast_model = json!({ "model": { "providerID": "oa", "modelID": "fast" } });
    assert_eq!(
        put(format!("{}/org/{}/default-model", system.command_url(), org.id), fast_model).await,
        200
    );
    let first = system.create_session(&alice, &ws.id).await;
    let reply = prompt_without_model(first.id.clone(), "hi [[fake tokens=1]]".into()).await;
    assert_eq!(model_of(first.id.clone(), reply).await, "fast");
    let smart_model = json!({ "model": { "providerID": "oa", "modelID": "smart" } });
    assert_eq!(
        put(format!("{}/workspace/{}/default-model", system.command_url(), ws.id), smart_model)
            .await,
        200
    );
    let second = system.create_session(&alice, &ws.id).await;
    let reply = prompt_without_model(second.id.clone(), "hi [[fake tokens=1]]".into()).await;
    assert_eq!(model_of(second.id.clone(), reply).await, "smart");
    // A session remembers the model it last used.
    let reply = prompt_without_model(first.id.clone(), "again [[fake tokens=1]]".into()).await;
    assert_eq!(model_of(first.id.clone(), reply).await, "fast");
    // A model nobody offers cannot be a default.
    let nobody = json!({ "model": { "providerID": "oa", "modelID": "huge" } });
    assert_eq!(
        put(format!("{}/org/{}/default-model", system.command_url(), org.id), nobody).await,
        422
    );

    // `fast` takes 1,000 tokens, 100 of them for the reply: older turns are left out.
    let words = "w ".repeat(100);
    for _ in 0..20 {
        let body =
            json!({ "parts": [{ "type": "text", "text": format!("{words}[[fake tokens=1]]") }] });
        let a = system.post(&alice, &format!("/session/{}/prompt_async", first.id), body).await;
        assert_eq!(a.status, 202, "{a:?}");
        let token = a.body["consistencyToken"].as_str().unwrap().to_owned();
        eventually("the reply", WAIT, || async {
            let a = system.get(&alice, &format!("/session/{}", first.id), Some(&token)).await;
            (a.body["status"]["type"] == "idle").then_some(())
        })
        .await;
    }
    let a = system.get(&alice, &format!("/session/{}/message?limit=200", first.id), None).await;
    let last = a.body.as_array().unwrap().last().unwrap().clone();
    let input = last["info"]["tokens"]["input"].as_u64().unwrap();
    // 900 tokens at four bytes is 3,600 bytes: about 1,800 of the fake's two-byte words.
    assert!((200..=1_900).contains(&input), "history trimmed to the model's context: {input}");
}

#[tokio::test]
async fn a_key_encryption_key_rotates_by_rewrapping_and_then_the_old_one_can_go() {
    let mut system = System::start().await;
    let alice = system.token("alice").await;
    let (org, _, session) = system.session_for("alice").await;
    let body = json!({
        "kind": "openai-compatible", "providerID": "oa", "name": "OA",
        "baseURL": format!("{}/v1", system.provider_url), "apiKey": "sk-rotating-kek-9876", "models": ["m"],
    });
    assert_eq!(system.post(&alice, &format!("/org/{}/provider", org.id), body).await.status, 201);

    // A new key-encryption key: every data key is re-wrapped under it, ciphertexts untouched.
    let new_kek = {
        use base64::Engine;
        let key: [u8; 32] = rand::random();
        format!("new:{}", base64::engine::general_purpose::STANDARD.encode(key))
    };
    let db = system.db().await;
    let before: Vec<u8> =
        db.query_one("SELECT ciphertext FROM provider_secrets", &[]).await.unwrap().get(0);
    let out = tokio::process::Command::new(e2e_tests::process::bin("command-service"))
        .arg("rewrap-keys")
        .env("OC_DATABASE_URL", &system.db_url)
        .env("OC_PROVIDER_KEKS", format!("{},{new_kek}", system.keks))
        .env("OC_PROVIDER_KEK_ID", "new")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-wrapped 1"));
    let row = db.query_one("SELECT kek_id, ciphertext FROM provider_secrets", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "new");
    assert_eq!(row.get::<_, Vec<u8>>(1), before, "the ciphertext is untouched");

    // A worker that knows only the new key-encryption key uses the key.
    system.workers.clear();
    let worker = system
        .start_service("llm-worker", "OC_WORKER_ADDR", &[("OC_PROVIDER_KEKS", &new_kek)])
        .await;
    system.workers.push(worker);
    let mut seen = Seen::default();
    let done =
        ask(&system, &alice, &session, json!({ "providerID": "oa", "modelID": "m" }), &mut seen)
            .await;
    assert_eq!(done["finish"], "stop", "{done}");
    assert_eq!(last_key_used(&system).await.0, "Bearer sk-rotating-kek-9876");
}

#[tokio::test]
async fn a_connection_cannot_point_into_the_private_network_unless_allowed() {
    let system = System::start_with(SystemOptions {
        worker: false,
        service_env: vec![("OC_PROVIDER_ALLOW_PRIVATE_URLS", "false".into())],
        ..Default::default()
    })
    .await;
    let alice = system.token("alice").await;
    let (org, _, _) = system.session_for("alice").await;
    let create = |url: &str| {
        json!({ "kind": "openai-compatible", "providerID": format!("p{}", url.len()), "name": "x",
                "baseURL": url, "apiKey": "k", "models": ["m"] })
    };
    for url in [
        "http://127.0.0.1:9/v1",
        "http://169.254.169.254/latest",
        "http://10.1.2.3/v1",
        "http://[::1]/v1",
        "http://localhost/v1",
    ] {
        let a = system.post(&alice, &format!("/org/{}/provider", org.id), create(url)).await;
        assert!(a.is_problem(422), "{url}: {a:?}");
    }
    let public = system
        .post(&alice, &format!("/org/{}/provider", org.id), create("https://api.example.com/v1"))
        .await;
    assert_eq!(public.status, 201, "{public:?}");
}
