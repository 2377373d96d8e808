//! The bus is not open to everyone: each service connects to NATS as itself, with only what it
//! needs (compose/nats/permissions.conf). With those users the system works as usual; a client
//! without credentials is refused; a client holding the query service's credentials (a stolen
//! connection) can neither publish a domain event, nor send a completion report, nor purge the
//! stream.

use std::time::Duration;

use async_nats::ConnectOptions;
use e2e_tests::sse::is_idle;
use e2e_tests::{System, SystemOptions};
use schemas::subjects;

use crate::WAIT;

fn as_service(user: &str, password: &str) -> ConnectOptions {
    ConnectOptions::with_user_and_password(user.into(), password.into())
        .custom_inbox_prefix(format!("_INBOX_{}", user.replace('-', "_")))
        .request_timeout(Some(Duration::from_secs(2)))
        .connection_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn only_the_services_that_write_events_can_publish_them() {
    let system = System::start_with(SystemOptions { nats_auth: true, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let (org, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    system.prompt(&alice, &session.id, "[[fake tokens=3]]").await;
    let events = stream.until(WAIT, is_idle).await;
    assert!(events.iter().any(|e| e.event == "message.completed"), "{events:?}");
    let stored = system.event_count().await;

    // Without credentials: refused.
    let anonymous = ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(&system.nats_url)
        .await;
    assert!(anonymous.is_err(), "an anonymous client connected");

    // With the query service's credentials: no domain event lands in the stream…
    let stolen = as_service("query-service", "test-query-secret");
    let stolen = stolen.connect(&system.nats_url).await.expect("the query service's user");
    let js = async_nats::jetstream::new(stolen.clone());
    let forged = format!("oc.evt.{}._._.organization_renamed", org.id);
    let published = match js.publish(forged.clone(), "{}".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!published, "the query service's user published a domain event");
    let reader = as_service("projector", "test-projector-secret");
    let reader = async_nats::jetstream::new(reader.connect(&system.nats_url).await.unwrap());
    let events = reader.get_stream(subjects::STREAM).await.unwrap();
    assert!(events.get_last_raw_message_by_subject(&forged).await.is_err(), "forged event stored");

    // …no completion report nor retry reaches the command service…
    for command in [subjects::CMD_COMPLETE_MESSAGE, subjects::CMD_RETRY_REPLY] {
        let report = stolen.request(command, "{}".into()).await;
        assert!(report.is_err(), "{command} was answered: {report:?}");
    }

    // …and the stream cannot be purged.
    let mut target = js.get_stream(subjects::STREAM).await.expect("the stream can be read");
    assert!(target.purge().await.is_err(), "the query service's user purged the stream");
    assert!(target.info().await.unwrap().state.messages > 0);
    assert_eq!(system.event_count().await, stored, "nothing was written");

    // The system still answers.
    system.prompt(&alice, &session.id, "[[fake tokens=2]]").await;
    stream.until(WAIT, is_idle).await;
}
