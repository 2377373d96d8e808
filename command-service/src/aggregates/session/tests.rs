//! The session aggregate's decisions, given its past events.

use std::sync::Arc;

use cqrs_es::test::TestFramework;
use schemas::events::Role;
use schemas::ids::PartId;
use schemas::message::ModelRef;
use schemas::message::{FinishReason, TokenUsage};

use super::*;
use crate::directory::fake::FakeDirectory;

struct World {
    services: Services,
    org: OrganizationId,
    ws: WorkspaceId,
    session: SessionId,
    alice: UserId,
}

fn world() -> World {
    let (org, ws, alice) = (OrganizationId::new(), WorkspaceId::new(), UserId::new());
    let directory = FakeDirectory::default();
    directory.roles.lock().unwrap().insert((org.clone(), alice.clone()), Role::Member);
    directory.workspaces.lock().unwrap().insert(
        ws.clone(),
        WorkspaceView {
            organization_id: org.clone(),
            archived: false,
            members: [(alice.clone(), schemas::events::WorkspaceRole::Member)].into(),
            projects: Default::default(),
            default_model: None,
        },
    );
    World {
        services: Services {
            directory: Arc::new(directory),
            spend: Arc::new(crate::spend::NoBudgets),
        },
        org,
        ws,
        session: SessionId::new(),
        alice,
    }
}

fn created(w: &World) -> SessionEvent {
    SessionEvent::Created {
        session_id: w.session.clone(),
        organization_id: w.org.clone(),
        workspace_id: w.ws.clone(),
        project_id: None,
        title: "t".into(),
        created_by: w.alice.clone(),
        time: 0,
    }
}

fn user_message(user: &UserId) -> UserMessage {
    let id = MessageId::new();
    UserMessage {
        parts: vec![Part::Text { id: PartId::new(), message_id: id.clone(), text: "hi".into() }],
        id,
        user_id: user.clone(),
        model: ModelRef { provider_id: "default".into(), model_id: "default".into() },
        time: 0,
    }
}

/// A prompt of `user`'s and its completed reply, as events.
/// The prompt `user` with its reply `assistant` owed.
fn prompted(w: &World, user: &UserMessage, assistant: &MessageId) -> SessionEvent {
    SessionEvent::Prompted {
        session_id: w.session.clone(),
        message: user.clone(),
        assistant_message_id: assistant.clone(),
        connection: None,
        api_key_id: None,
    }
}

fn answered(w: &World, user: &UserMessage) -> [SessionEvent; 2] {
    let assistant = MessageId::new();
    [
        prompted(w, user, &assistant),
        SessionEvent::MessageCompleted {
            session_id: w.session.clone(),
            message: AssistantCompletion {
                id: assistant,
                parent_id: user.id.clone(),
                parts: vec![],
                finish: FinishReason::Stop,
                error: None,
                tokens: TokenUsage::default(),
                model: user.model.clone(),
                connection_id: None,
                user_id: None,
                workspace_id: None,
                cost: None,
                own_key: false,
                api_key_id: None,
                attempt: 1,
                time: 0,
            },
        },
    ]
}

fn report(w: &World, user: &UserMessage, assistant: &MessageId) -> CompleteMessage {
    CompleteMessage {
        organization_id: w.org.clone(),
        workspace_id: w.ws.clone(),
        session_id: w.session.clone(),
        message_id: assistant.clone(),
        part_id: PartId::new(),
        text: "hello".into(),
        reasoning: None,
        finish: FinishReason::Stop,
        error: None,
        tokens: TokenUsage::default(),
        model: user.model.clone(),
        connection_id: None,
        provider_cost_micro_dollars: None,
        user_id: None,
        attempt: 1,
        causation_id: "x".into(),
    }
}

#[test]
fn a_prompt_makes_the_session_busy_and_a_second_prompt_waits() {
    let w = world();
    let first = user_message(&w.alice);
    let assistant = MessageId::new();
    let events = TestFramework::<Session>::with(w.services.clone())
        .given(vec![created(&w)])
        .when(SessionCommand::Prompt {
            message: first.clone(),
            assistant_message_id: assistant.clone(),
            model: None,
            api_key: None,
        })
        .inspect_result()
        .unwrap();
    assert!(matches!(events[0], SessionEvent::StatusChanged { status: SessionStatus::Busy, .. }));
    assert!(matches!(events[1], SessionEvent::Prompted { .. }), "the worker's trigger is last");
    assert_eq!(events.len() as u64, schemas::events::PROMPT_COMMIT_EVENTS);
    let mut history = vec![created(&w)];
    history.extend(events);
    TestFramework::<Session>::with(w.services.clone())
        .given(history)
        .when(SessionCommand::Prompt {
            message: user_message(&w.alice),
            assistant_message_id: MessageId::new(),
            model: None,
            api_key: None,
        })
        .then_expect_error(DomainError::WrongState(
            "the session is busy: wait for the reply or abort it".into(),
        ));
}

#[test]
fn a_reply_completes_once() {
    let w = world();
    let user = user_message(&w.alice);
    let assistant = MessageId::new();
    let given = vec![created(&w), prompted(&w, &user, &assistant)];
    let reasoned = CompleteMessage {
        reasoning: Some(schemas::api::ReasoningReport {
            part_id: PartId::new(),
            text: "thinking".into(),
        }),
        ..report(&w, &user, &assistant)
    };
    let done = TestFramework::<Session>::with(w.services.clone())
        .given(given.clone())
        .when(SessionCommand::Complete { report: Box::new(reasoned) })
        .inspect_result()
        .unwrap();
    assert!(matches!(done[0], SessionEvent::MessageCompleted { .. }));
    assert!(matches!(done[1], SessionEvent::StatusChanged { status: SessionStatus::Idle, .. }));
    assert_eq!(done.len() as u64, schemas::events::COMPLETE_COMMIT_EVENTS, "workers count on it");
    let SessionEvent::MessageCompleted { message, .. } = &done[0] else { unreachable!() };
    let text: String = message.parts.iter().map(|p| p.text()).collect();
    assert_eq!(text, "hello", "the reply's text as reported, reasoning apart");
    let mut after = given;
    after.extend(done);
    TestFramework::<Session>::with(w.services.clone())
        .given(after)
        .when(SessionCommand::Complete { report: Box::new(report(&w, &user, &assistant)) })
        .then_expect_error(DomainError::AlreadyDone);
}

#[test]
fn once_a_later_attempt_took_a_reply_over_an_earlier_one_cannot_complete_it() {
    let w = world();
    let user = user_message(&w.alice);
    let assistant = MessageId::new();
    let mut given = vec![created(&w), prompted(&w, &user, &assistant)];
    let retry = |attempt| SessionCommand::Retry { message_id: assistant.clone(), attempt };
    let retried = TestFramework::<Session>::with(w.services.clone())
        .given(given.clone())
        .when(retry(2))
        .inspect_result()
        .unwrap();
    assert!(matches!(retried[..], [SessionEvent::MessageRetried { attempt: 2, .. }]));
    given.extend(retried);
    let late = report(&w, &user, &assistant);
    TestFramework::<Session>::with(w.services.clone())
        .given(given.clone())
        .when(SessionCommand::Complete { report: Box::new(late) })
        .then_expect_error(DomainError::Superseded);
    TestFramework::<Session>::with(w.services.clone())
        .given(given.clone())
        .when(retry(1))
        .then_expect_error(DomainError::Superseded);
    // The same attempt asking again (its answer was lost) changes nothing.
    TestFramework::<Session>::with(w.services.clone())
        .given(given.clone())
        .when(retry(2))
        .then_expect_events(vec![]);
    let current = CompleteMessage { attempt: 2, ..report(&w, &user, &assistant) };
    let done = TestFramework::<Session>::with(w.services.clone())
        .given(given.clone())
        .when(SessionCommand::Complete { report: Box::new(current) })
        .inspect_result()
        .unwrap();
    given.extend(done);
    TestFramework::<Session>::with(w.services.clone())
        .given(given)
        .when(retry(3))
        .then_expect_error(DomainError::AlreadyDone);
}

#[test]
fn strangers_get_not_found_for_every_command() {
    let w = world();
    let mallory = UserId::new();
    TestFramework::<Session>::with(w.services.clone())
        .given(vec![created(&w)])
        .when(SessionCommand::Prompt {
            message: user_message(&mallory),
            assistant_message_id: MessageId::new(),
            model: None,
            api_key: None,
        })
        .then_expect_error(DomainError::NotFound);
    TestFramework::<Session>::with(w.services.clone())
        .given(vec![created(&w)])
        .when(SessionCommand::Abort { actor: mallory.clone() })
        .then_expect_error(DomainError::NotFound);
    TestFramework::<Session>::with(w.services)
        .given_no_previous_events()
        .when(SessionCommand::Create {
            id: SessionId::new(),
            workspace: WorkspaceId::new(),
            project: None,
            title: None,
            actor: mallory,
        })
        .then_expect_error(DomainError::NotFound);
}

#[test]
fn a_session_takes_no_prompt_past_its_turn_limit() {
    let w = world();
    let mut history = vec![created(&w)];
    for _ in 0..MAX_SESSION_TURNS {
        history.extend(answered(&w, &user_message(&w.alice)));
    }
    let result = TestFramework::<Session>::with(w.services.clone())
        .given(history)
        .when(SessionCommand::Prompt {
            message: user_message(&w.alice),
            assistant_message_id: MessageId::new(),
            model: None,
            api_key: None,
        })
        .inspect_result();
    assert!(matches!(result, Err(DomainError::TooLarge(_))), "{result:?}");
}

#[test]
fn a_message_id_must_be_new_in_the_session_and_not_from_the_future() {
    let w = world();
    let first = user_message(&w.alice);
    let mut given = vec![created(&w)];
    given.extend(answered(&w, &first));
    let mut reused = user_message(&w.alice);
    reused.id = first.id.clone();
    let result = TestFramework::<Session>::with(w.services.clone())
        .given(given.clone())
        .when(SessionCommand::Prompt {
            message: reused,
            assistant_message_id: MessageId::new(),
            model: None,
            api_key: None,
        })
        .inspect_result();
    assert!(matches!(result, Err(DomainError::WrongState(_))), "{result:?}");
    let mut future = user_message(&w.alice);
    future.id = "msg_7ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse().unwrap();
    let result = TestFramework::<Session>::with(w.services.clone())
        .given(given)
        .when(SessionCommand::Prompt {
            message: future,
            assistant_message_id: MessageId::new(),
            model: None,
            api_key: None,
        })
        .inspect_result();
    assert!(matches!(result, Err(DomainError::Invalid(_))), "{result:?}");
}

#[test]
fn abort_needs_a_running_reply() {
    let w = world();
    TestFramework::<Session>::with(w.services.clone())
        .given(vec![created(&w)])
        .when(SessionCommand::Abort { actor: w.alice.clone() })
        .then_expect_error(DomainError::WrongState("no reply is running".into()));
}
