//! Typed calls to the REST API, as a client makes them.

use serde_json::{Value, json};

use crate::System;

/// An HTTP answer: status, content type and JSON body (Null if none).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl Answer {
    pub fn is_problem(&self, status: u16) -> bool {
        self.status == status && self.content_type.starts_with("application/problem+json")
    }
}

/// A request as OpenCode's clients send it: Basic with an API key (user name `opencode`), and the
/// directory, if any, percent-encoded in `x-opencode-directory`.
fn as_opencode(
    req: reqwest::RequestBuilder,
    key: &str,
    directory: Option<&str>,
) -> reqwest::RequestBuilder {
    let req = req.basic_auth("opencode", Some(key));
    match directory {
        Some(d) => {
            let encoded =
                percent_encoding::utf8_percent_encode(d, percent_encoding::NON_ALPHANUMERIC);
            req.header("x-opencode-directory", encoded.to_string())
        }
        None => req,
    }
}

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = res.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, content_type, body }
}

/// Every message of `session` (oldest first), read from the query service at `base` page by
/// page, following each answer's `Link: <…>; rel="next"` to older pages; None if a read fails.
pub async fn messages_of(
    http: &reqwest::Client,
    base: &str,
    bearer: &str,
    session: &str,
) -> Option<Vec<Value>> {
    let mut next = Some(format!("/session/{session}/message?limit=200"));
    let mut pages: Vec<Vec<Value>> = Vec::new();
    while let Some(path) = next.take() {
        let res = http.get(format!("{base}{path}")).bearer_auth(bearer).send().await.ok()?;
        if !res.status().is_success() {
            return None;
        }
        let link = res.headers().get("link").and_then(|v| v.to_str().ok()).map(str::to_owned);
        next = link.and_then(|l| {
            let (target, rel) = l.split_once(';')?;
            rel.contains("rel=\"next\"").then(|| target.trim().trim_matches(['<', '>']).to_owned())
        });
        pages.push(res.json().await.ok()?);
    }
    Some(pages.into_iter().rev().flatten().collect())
}

/// A created resource's id and consistency token.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub token: String,
}

impl System {
    /// Every message of `session`, oldest first (`messages_of` on the first query instance).
    pub async fn messages(&self, bearer: &str, session: &str) -> Option<Vec<Value>> {
        messages_of(&self.http, self.query_url(), bearer, session).await
    }

    pub async fn post(&self, bearer: &str, path: &str, body: Value) -> Answer {
        let res = self
            .http
            .post(format!("{}{path}", self.command_url()))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .expect("command service reachable");
        answer(res).await
    }

    /// POST a raw body with a content type (for malformed input).
    pub async fn post_raw(
        &self,
        bearer: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        let res = self
            .http
            .post(format!("{}{path}", self.command_url()))
            .bearer_auth(bearer)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("command service reachable");
        answer(res).await
    }

    /// GET from query-service instance `instance`, optionally with a consistency token.
    pub async fn get_on(
        &self,
        instance: usize,
        bearer: &str,
        path: &str,
        consistency: Option<&str>,
    ) -> Answer {
        self.get_at(&self.query[instance].url, bearer, path, consistency).await
    }

    /// GET `path` of the query service as OpenCode's clients do: HTTP Basic with an API key
    /// (user name `opencode`), and the directory, if any, in `x-opencode-directory`
    /// (percent-encoded, as they send it).
    pub async fn get_as_opencode(&self, key: &str, path: &str, directory: Option<&str>) -> Answer {
        let req = self.http.get(format!("{}{path}", self.query_url()));
        let req = as_opencode(req, key, directory);
        answer(req.send().await.expect("query service reachable")).await
    }

    /// POST `body` to `path` of the command service as OpenCode's clients do (see
    /// `get_as_opencode`).
    pub async fn post_as_opencode(
        &self,
        key: &str,
        path: &str,
        directory: Option<&str>,
        body: Value,
    ) -> Answer {
        let req = self.http.post(format!("{}{path}", self.command_url())).json(&body);
        let req = as_opencode(req, key, directory);
        answer(req.send().await.expect("command service reachable")).await
    }

    pub async fn get(&self, bearer: &str, path: &str, consistency: Option<&str>) -> Answer {
        self.get_at(self.query_url(), bearer, path, consistency).await
    }

    /// GET `path` from `base` (a query instance or the front).
    async fn get_at(
        &self,
        base: &str,
        bearer: &str,
        path: &str,
        consistency: Option<&str>,
    ) -> Answer {
        let mut req = self.http.get(format!("{base}{path}")).bearer_auth(bearer);
        if let Some(t) = consistency {
            req = req.header("X-Consistency-Token", t);
        }
        answer(req.send().await.expect("query service reachable")).await
    }

    fn created(a: Answer, what: &str) -> Created {
        assert_eq!(a.status, 201, "creating {what}: {a:?}");
        Created {
            id: a.body["id"].as_str().unwrap().to_owned(),
            token: a.body["consistencyToken"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn create_org(&self, bearer: &str, name: &str) -> Created {
        Self::created(self.post(bearer, "/org", json!({ "name": name })).await, "an organization")
    }

    pub async fn create_workspace(&self, bearer: &str, org: &str, name: &str) -> Created {
        let a = self.post(bearer, &format!("/org/{org}/workspace"), json!({ "name": name })).await;
        Self::created(a, "a workspace")
    }

    pub async fn create_session(&self, bearer: &str, workspace: &str) -> Created {
        let a = self.post(bearer, &format!("/workspace/{workspace}/session"), json!({})).await;
        Self::created(a, "a session")
    }

    /// An organization, workspace and session owned by `user`; returns (org, workspace, session).
    pub async fn session_for(&self, user: &str) -> (Created, Created, Created) {
        let token = self.token(user).await;
        let org = self.create_org(&token, &format!("{user}'s org")).await;
        let ws = self.create_workspace(&token, &org.id, "main").await;
        let session = self.create_session(&token, &ws.id).await;
        (org, ws, session)
    }

    /// Prompt; expects 202 and returns the body (`userMessageID`, `assistantMessageID`, …).
    pub async fn prompt(&self, bearer: &str, session: &str, text: &str) -> Value {
        let body = json!({ "parts": [{ "type": "text", "text": text }] });
        let a = self.post(bearer, &format!("/session/{session}/prompt_async"), body).await;
        assert_eq!(a.status, 202, "prompt: {a:?}");
        a.body
    }

    /// The caller's `usr_…` id.
    pub async fn user_id(&self, bearer: &str) -> String {
        let me = self.get(bearer, "/me", None).await;
        me.body["userID"].as_str().expect("GET /me names the user").to_owned()
    }

    /// Make `member` (a bearer token) a member of `org` with `role`, added by `owner`; and, if
    /// `workspace` is given, a member of that workspace too. Returns the member's user id.
    pub async fn add_member(
        &self,
        owner: &str,
        org: &str,
        member: &str,
        role: &str,
        workspace: Option<&str>,
    ) -> String {
        let id = self.user_id(member).await;
        let body = json!({ "userID": id, "role": role });
        let a = self.post(owner, &format!("/org/{org}/member"), body).await;
        assert_eq!(a.status, 201, "adding a member: {a:?}");
        if let Some(ws) = workspace {
            let url = format!("{}/workspace/{ws}/member/{id}", self.command_url());
            let res = self
                .http
                .put(url)
                .bearer_auth(owner)
                .json(&json!({ "role": "member" }))
                .send()
                .await
                .expect("command service reachable");
            assert!(res.status().is_success(), "setting a workspace member: {res:?}");
        }
        id
    }

    /// The requests the fake provider received, oldest first: each one's credential, extra
    /// headers, model and prompt.
    pub async fn provider_requests(&self) -> Vec<Value> {
        let url = format!("{}/requests", self.provider_url);
        self.http.get(url).send().await.expect("fake provider").json().await.expect("JSON")
    }

    /// Run `projector rebuild` on this system's database; returns what it printed.
    pub async fn rebuild(&self) -> String {
        let out = tokio::process::Command::new(crate::process::bin("projector"))
            .arg("rebuild")
            .env("OC_DATABASE_URL", &self.db_url)
            .output()
            .await
            .expect("projector runs");
        assert!(out.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The read models as one comparable value (every `rm_` table, rows in a fixed order).
    pub async fn read_models(&self) -> Value {
        let db = self.db().await;
        let mut all = serde_json::Map::new();
        // Every read model, by the `rm_` naming rule (the rebuild uses the same rule).
        let tables = db
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'rm\\_%'",
                &[],
            )
            .await
            .unwrap();
        assert!(tables.len() >= 10, "the read models are found");
        for row in tables {
            let table: String = row.get(0);
            let sql =
                format!("SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM {table} t");
            let text: String = db.query_one(&sql, &[]).await.unwrap().get(0);
            all.insert(table, serde_json::from_str(&text).unwrap());
        }
        all.into()
    }

    /// How many events the event store holds.
    pub async fn event_count(&self) -> i64 {
        self.db().await.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0)
    }
}

impl System {
    /// The event stream URL of `session` on query-service `instance`. It carries the session's
    /// consistency token, so opening it right after creating the session finds it.
    pub fn stream_url(&self, instance: usize, session: &Created) -> String {
        stream_url_at(&self.query[instance].url, session)
    }

    /// The sum of every series of metric `name` a service reports at `ops_url`, if it reports it.
    pub async fn metric(&self, ops_url: &str, name: &str) -> Option<f64> {
        let text =
            self.http.get(format!("{ops_url}/metrics")).send().await.ok()?.text().await.ok()?;
        let values = text.lines().filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name).then(|| value.parse::<f64>().ok()).flatten()
        });
        values.fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
    }

    /// Open `session`'s event stream as `bearer` (on the first query instance, or through the
    /// front when there is one) and read past `server.connected`.
    pub async fn watch(&self, bearer: &str, session: &Created) -> crate::sse::SseClient {
        let url = stream_url_at(self.query_url(), session);
        let mut stream =
            crate::sse::SseClient::connect(&url, bearer, None).await.expect("the stream opens");
        let hello = stream.next(std::time::Duration::from_secs(30)).await;
        assert_eq!(hello.event, "server.connected");
        stream
    }
}

/// The event stream URL of `session` at `base` (an instance or the front).
fn stream_url_at(base: &str, session: &Created) -> String {
    format!("{base}/session/{}/event?consistency={}", session.id, session.token)
}
