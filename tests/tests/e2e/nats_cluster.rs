//! On a NATS cluster of three, the event stream and its consumers are kept on all three
//! (`OC_STREAM_REPLICAS=3`), and the system goes on answering and streaming while the node
//! that leads the stream is down, and after it is back.

use e2e_tests::sse::{SseClient, is_idle, reply_text};
use e2e_tests::{System, SystemOptions, eventually, fake_text};
use schemas::subjects;

use crate::WAIT;

/// Prompt in a new session of alice's and follow its stream until the reply completes; the
/// reply's streamed text. While the cluster elects a new leader (a few seconds), the session
/// reaches the read models late and the stream answers 503: the client tries again, as
/// clients do.
async fn answered(system: &System, ws: &str, tokens: usize) -> String {
    let alice = system.token("alice").await;
    let session = system.create_session(&alice, ws).await;
    let url = system.stream_url(0, &session);
    let mut stream = eventually("the stream to open", WAIT, || async {
        match SseClient::connect(&url, &alice, None).await {
            Ok(stream) => Some(stream),
            Err((503, _)) => None,
            Err(other) => panic!("the stream refused: {other:?}"),
        }
    })
    .await;
    let accepted = system.prompt(&alice, &session.id, &format!("[[fake tokens={tokens}]]")).await;
    let events = stream.until(WAIT, is_idle).await;
    reply_text(&events, accepted["assistantMessageID"].as_str().unwrap())
}

#[tokio::test]
async fn replies_go_on_while_the_stream_leader_of_three_nats_nodes_is_down() {
    let mut system =
        System::start_with(SystemOptions { nats_cluster: true, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Clustered").await;
    let ws = system.create_workspace(&alice, &org.id, "w").await;
    // A new cluster elects its JetStream leaders first; the first write reaches the read
    // models once it has.
    let path = format!("/workspace/{}", ws.id);
    eventually("the cluster to carry the first write", WAIT, || async {
        let a = system.get(&alice, &path, Some(&ws.token)).await;
        (a.status == 200).then_some(())
    })
    .await;
    assert_eq!(answered(&system, &ws.id, 5).await, fake_text(5));

    // The stream lives on all three nodes.
    let js = async_nats::jetstream::new(system.nats().await);
    let mut stream = js.get_stream(subjects::STREAM).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3);
    let cluster = info.cluster.expect("clustered");
    assert_eq!(cluster.replicas.len(), 2, "{cluster:?}");
    let leader = cluster.leader.expect("a leader");
    let leader = system.nats.index_of(&leader).expect("the leader is one of ours");

    // The leader goes; replies go on.
    system.nats.kill_node(leader);
    for tokens in [4, 6] {
        assert_eq!(answered(&system, &ws.id, tokens).await, fake_text(tokens));
    }
    let js = async_nats::jetstream::new(system.nats().await);
    let new_leader = eventually("another leader", WAIT, || async {
        let mut stream = js.get_stream(subjects::STREAM).await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster.as_ref()?.leader.clone()
    })
    .await;
    assert_ne!(system.nats.index_of(&new_leader), Some(leader));

    // It comes back and catches up; replies go on.
    system.nats.restart_node(leader);
    assert_eq!(answered(&system, &ws.id, 3).await, fake_text(3));
}
