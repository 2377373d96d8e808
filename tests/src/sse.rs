//! An SSE client for the session event stream.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::Value;

/// One received event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event: String,
    pub data: Value,
}

impl Event {
    pub fn seq(&self) -> u64 {
        self.id.parse().expect("numeric event id")
    }
}

/// The HTTP client streams are opened with, built once: building one (its TLS configuration with
/// every root certificate) costs milliseconds of CPU, which a burst of new streams would add to
/// what it measures. It keeps no idle connection, so no connection outlives the test's runtime.
fn streams_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("an HTTP client")
        })
        .clone()
}

pub type Inner = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

pub struct SseClient {
    inner: Inner,
}

impl SseClient {
    /// A client reading `events`, however they arrive (another HTTP client, another protocol).
    pub fn from_events(events: Inner) -> SseClient {
        SseClient { inner: events }
    }

    /// Open `url` (a full stream URL), optionally resuming after `last_event_id`.
    pub async fn connect(
        url: &str,
        bearer: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseClient, (u16, Value)> {
        let mut req = streams_client().get(url).bearer_auth(bearer);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        Self::open(req).await
    }

    /// Open a stream with a request made by the caller (cookies, other headers). An instance
    /// that cannot be reached answers status 0.
    pub async fn open(req: reqwest::RequestBuilder) -> Result<SseClient, (u16, Value)> {
        let req = req.header("accept", "text/event-stream");
        let res = match req.send().await {
            Ok(res) => res,
            Err(e) => return Err((0, Value::String(format!("query service unreachable: {e}")))),
        };
        if !res.status().is_success() {
            let status = res.status().as_u16();
            return Err((status, res.json().await.unwrap_or(Value::Null)));
        }
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with("text/event-stream"), "content type {ct}");
        let inner = res.bytes_stream().eventsource().map(|r| r.map_err(|e| e.to_string())).boxed();
        Ok(SseClient { inner })
    }

    /// The next event, or panic after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Event {
        loop {
            let item = tokio::time::timeout(timeout, self.inner.next())
                .await
                .expect("an SSE event in time")
                .expect("stream still open")
                .expect("well-formed SSE");
            if item.event.is_empty() && item.data.is_empty() {
                continue;
            }
            return Event {
                id: item.id,
                event: item.event,
                data: serde_json::from_str(&item.data).unwrap_or(Value::String(item.data)),
            };
        }
    }

    /// Events up to and including the first one matching `done`.
    pub async fn until(&mut self, timeout: Duration, done: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let e = self.next(timeout).await;
            if std::env::var_os("OC_TEST_LOGS").is_some() {
                eprintln!("sse: {} {} {}", e.id, e.event, e.data);
            }
            let stop = done(&e);
            events.push(e);
            if stop {
                return events;
            }
        }
    }

    /// Whether the server ended the stream within `timeout`.
    /// The next event within `timeout`, or `None` if the stream ended, broke or stayed silent
    /// (a client would then reconnect with `Last-Event-ID`).
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Event> {
        loop {
            let item = tokio::time::timeout(timeout, self.inner.next()).await.ok()??.ok()?;
            if item.event.is_empty() && item.data.is_empty() {
                continue;
            }
            return Some(Event {
                id: item.id,
                event: item.event,
                data: serde_json::from_str(&item.data).unwrap_or(Value::String(item.data)),
            });
        }
    }

    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.inner.next()).await,
            Ok(None) | Ok(Some(Err(_)))
        )
    }
}

/// The concatenated text of the deltas of `message`'s text part in `events`, as a client would
/// build it: a `message.started` with a higher attempt discards what was built so far (attempts
/// only go up; an older one's events are a superseded worker's).
pub fn reply_text(events: &[Event], message: &str) -> String {
    let mut text = String::new();
    let mut attempt = 0;
    let mut part = serde_json::Value::Null;
    for e in events {
        let p = &e.data["properties"];
        if p["messageID"] != message {
            continue;
        }
        match e.event.as_str() {
            "message.started" => {
                // Attempts only go up: a started event of an attempt older than one already seen
                // is a superseded worker's, published late, and is ignored.
                let a = p["attempt"].as_u64().unwrap_or(0);
                if a > attempt {
                    part = p["partID"].clone();
                    attempt = a;
                    text.clear();
                }
            }
            "message.part.delta" if p["partID"] == part => {
                text.push_str(p["delta"].as_str().unwrap_or_default())
            }
            _ => {}
        }
    }
    text
}

/// The concatenated deltas of part `part` in `events`.
pub fn part_text(events: &[Event], part: &str) -> String {
    events
        .iter()
        .filter(|e| e.event == "message.part.delta" && e.data["properties"]["partID"] == part)
        .filter_map(|e| e.data["properties"]["delta"].as_str())
        .collect()
}

/// Whether `e` says the session became idle (a reply ended).
pub fn is_idle(e: &Event) -> bool {
    e.event == "session.status" && e.data["properties"]["status"]["type"] == "idle"
}

impl SseClient {
    /// Open a stream whose socket accepts only a few kilobytes unread, like a client on a slow
    /// link: the server must then either hold what it cannot send or let the client go.
    pub async fn connect_slow(url: &str, bearer: &str) -> SseClient {
        use http_body_util::BodyExt;
        let url = reqwest::Url::parse(url).expect("a URL");
        let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()).parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let target = format!("{}?{}", url.path(), url.query().unwrap_or_default());
        let req = hyper::Request::get(target)
            .header("host", format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()))
            .header("authorization", format!("Bearer {bearer}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.expect("response");
        assert_eq!(res.status(), 200);
        let body = res.into_body().into_data_stream();
        let inner = body.eventsource().map(|r| r.map_err(|e| e.to_string())).boxed();
        SseClient { inner }
    }
}
