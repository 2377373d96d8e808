//! NATS and JetStream: connecting, and the one stream every service shares.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use schemas::subjects;

use crate::config::CommonConfig;

/// How often the connection is checked for a server that no longer answers.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// Counts the moments at which core NATS deliveries to a client may have been lost: each
/// (re)connection, and each subscription that fell behind and had messages dropped. Whoever
/// relies on core subscriptions (the query service's session feeds) re-reads from JetStream
/// what it may have missed when it changes.
pub type DeliveryLosses = tokio::sync::watch::Receiver<u64>;

/// Connect to NATS. The first connection is retried in the background, so a service starts (and
/// reports not-ready) while NATS is down, and reconnects for ever after.
pub async fn connect(
    cfg: &CommonConfig,
    name: &str,
) -> anyhow::Result<(async_nats::Client, DeliveryLosses)> {
    let (losses, losses_rx) = tokio::sync::watch::channel(0u64);
    let losses = std::sync::Arc::new(losses);
    let mut options = async_nats::ConnectOptions::new();
    if let (Some(user), Some(password)) = (&cfg.nats_user, &cfg.nats_password) {
        use secrecy::ExposeSecret;
        options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
    }
    let servers: Vec<String> = cfg.nats_url.split(',').map(|s| s.trim().to_owned()).collect();
    let client = options
        .name(name)
        // Replies come to an inbox of this service's own, so that NATS permissions can keep
        // each service from reading another's (compose/nats/permissions.conf).
        .custom_inbox_prefix(format!("_INBOX_{}", name.replace('-', "_")))
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Retry soon after an outage ends: at most one second between attempts (the default
        // backs off to several seconds, which is how long recovery would then lag).
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .connection_timeout(Duration::from_secs(2))
        // A server that stops answering without closing the connection (frozen, or cut off by
        // the network) is given up after three unanswered pings, ~6 s, and another node of the
        // cluster is used: with the default (60 s) publishes time out for minutes meanwhile.
        .ping_interval(PING_INTERVAL)
        .event_callback(move |event| {
            let losses = losses.clone();
            async move {
                if matches!(
                    event,
                    async_nats::Event::Connected | async_nats::Event::SlowConsumer(_)
                ) {
                    losses.send_modify(|n| *n += 1);
                }
                tracing::info!(%event, "nats connection event");
            }
        })
        .connect(servers.as_slice())
        .await?;
    Ok((client, losses_rx))
}

/// A JetStream context whose calls fail after `timeout` instead of hanging.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(Duration::from_secs(5)).build(client)
}

/// Create the events stream, or bring an existing one's settings up to date.
pub async fn ensure_stream(js: &jetstream::Context, cfg: &CommonConfig) -> anyhow::Result<()> {
    let config = stream::Config {
        name: subjects::STREAM.into(),
        subjects: subjects::STREAM_SUBJECTS.iter().map(|s| s.to_string()).collect(),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(cfg.stream_max_age_secs),
        duplicate_window: Duration::from_secs(cfg.stream_duplicate_window_secs),
        allow_direct: true,
        num_replicas: cfg.stream_replicas.max(1),
        // Every stored event again on core NATS, for the query instances' live feeds.
        republish: Some(republish()),
        ..Default::default()
    };
    // get_or_create_stream ignores changed settings on an existing stream; this applies them.
    js.create_or_update_stream(config).await?;
    Ok(())
}

/// How the events stream republishes what it stored (`subjects::REPUBLISHED`): every subject.
pub fn republish() -> stream::Republish {
    stream::Republish {
        source: ">".into(),
        destination: subjects::republished(">"),
        headers_only: false,
    }
}

/// Whether the client is connected right now (for readiness).
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Publish the client's traffic as counters every second, for as long as the process runs:
/// `nats_received_bytes_total`, `nats_received_messages_total`, `nats_sent_bytes_total`,
/// `nats_sent_messages_total`, `nats_connects_total` (payload and headers, no protocol overhead).
pub fn report_traffic(client: &async_nats::Client) {
    let stats = client.statistics();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            use std::sync::atomic::Ordering::Relaxed;
            let (s, counter) = (&stats, |name| metrics::counter!(name));
            counter("nats_received_bytes_total").absolute(s.in_bytes.load(Relaxed));
            counter("nats_received_messages_total").absolute(s.in_messages.load(Relaxed));
            counter("nats_sent_bytes_total").absolute(s.out_bytes.load(Relaxed));
            counter("nats_sent_messages_total").absolute(s.out_messages.load(Relaxed));
            counter("nats_connects_total").absolute(s.connects.load(Relaxed));
        }
    });
}

/// Publish a durable consumer's backlog as gauges every few seconds, until shutdown:
/// `consumer_pending_messages` (not yet delivered) and `consumer_ack_pending_messages` (delivered,
/// not yet acknowledged).
pub fn report_consumer_lag(
    js: jetstream::Context,
    consumer: &'static str,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let consumer_info = async {
                let mut c: jetstream::consumer::PullConsumer =
                    js.get_consumer_from_stream(consumer, subjects::STREAM).await.ok()?;
                c.info().await.ok().cloned()
            };
            if let Some(info) = consumer_info.await {
                metrics::gauge!("consumer_pending_messages", "consumer" => consumer)
                    .set(info.num_pending as f64);
                metrics::gauge!("consumer_ack_pending_messages", "consumer" => consumer)
                    .set(info.num_ack_pending as f64);
            }
        }
    })
}
