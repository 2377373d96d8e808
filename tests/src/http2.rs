//! A cleartext HTTP/2 client (prior knowledge), as a front that multiplexes upstream (Envoy,
//! HAProxy, Caddy) speaks to the API services: many requests and event streams over one
//! connection.

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::sse::SseClient;

/// One HTTP/2 connection to a service; clones share it.
#[derive(Clone)]
pub struct Http2 {
    send: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Http2 {
    /// Connect to `base_url` (`http://host:port`), or `None` if the service does not answer
    /// HTTP/2 there (a first request, to an unknown path, must be answered).
    pub async fn connect(base_url: &str) -> Option<Http2> {
        Self::connect_from(base_url, None).await
    }

    /// As `connect`, from loopback source address `source` (`127.0.0.n`) when given.
    pub async fn connect_from(base_url: &str, source: Option<std::net::IpAddr>) -> Option<Http2> {
        let url = reqwest::Url::parse(base_url).expect("a URL");
        let authority = format!("{}:{}", url.host_str()?, url.port()?);
        let addr = tokio::net::lookup_host(&authority).await.ok()?.next()?;
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        if let Some(source) = source {
            socket.bind((source, 0).into()).ok()?;
        }
        let tcp = socket.connect(addr).await.ok()?;
        tcp.set_nodelay(true).ok()?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .ok()?;
        tokio::spawn(conn);
        let http2 = Http2 { send, authority };
        let probe = http2.request("GET", "/", "none", None);
        http2.send.clone().send_request(probe).await.ok()?;
        Some(http2)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> hyper::Request<Full<Bytes>> {
        let builder = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.authority))
            .header("authorization", format!("Bearer {bearer}"));
        match body {
            Some(body) => builder
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string()))),
            None => builder.body(Full::new(Bytes::new())),
        }
        .expect("a request")
    }

    /// Send `method path` with a JSON `body`: the status and the JSON answer (`Null` if none).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.answer(self.request(method, path, bearer, body)).await
    }

    /// GET `path` as of `consistency` (a consistency token): the status and the JSON answer.
    pub async fn get(&self, path: &str, bearer: &str, consistency: &str) -> (u16, Value) {
        let mut req = self.request("GET", path, bearer, None);
        req.headers_mut().insert("x-consistency-token", consistency.parse().expect("a token"));
        self.answer(req).await
    }

    async fn answer(&self, req: hyper::Request<Full<Bytes>>) -> (u16, Value) {
        let res = self.send.clone().send_request(req).await.expect("an HTTP/2 response");
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.expect("the body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Open the event stream at `path` on this connection, or its status and problem.
    pub async fn stream(&self, path: &str, bearer: &str) -> Result<SseClient, (u16, Value)> {
        let mut req = self.request("GET", path, bearer, None);
        req.headers_mut().insert("accept", "text/event-stream".parse().unwrap());
        let res = self.send.clone().send_request(req).await.expect("an HTTP/2 response");
        if !res.status().is_success() {
            let status = res.status().as_u16();
            let bytes = res.into_body().collect().await.expect("the body").to_bytes();
            return Err((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)));
        }
        let events = res.into_body().into_data_stream().eventsource();
        Ok(SseClient::from_events(events.map(|r| r.map_err(|e| e.to_string())).boxed()))
    }
}
