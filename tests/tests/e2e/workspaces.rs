//! Workspaces: Git projects, sessions on a project, members with workspace roles, archiving.

use e2e_tests::System;
use e2e_tests::SystemOptions;
use serde_json::json;

#[tokio::test]
async fn a_workspace_holds_projects_members_and_sessions_until_archived() {
    let system = System::start_with(SystemOptions { worker: false, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let (_, ws, _) = system.session_for("alice").await;

    for bad in [
        json!({ "repositoryURL": "file:///etc" }),
        json!({ "repositoryURL": "https://x/y", "defaultBranch": "a b" }),
    ] {
        let a = system.post(&alice, &format!("/workspace/{}/project", ws.id), bad.clone()).await;
        assert!(a.is_problem(400), "{bad}: {a:?}");
    }
    let url = "git@github.com:anomalyco/opencode.git";
    let project = system
        .post(
            &alice,
            &format!("/workspace/{}/project", ws.id),
            json!({ "repositoryURL": url, "defaultBranch": "dev" }),
        )
        .await;
    assert_eq!(project.status, 201, "{project:?}");
    let again = system
        .post(&alice, &format!("/workspace/{}/project", ws.id), json!({ "repositoryURL": url }))
        .await;
    assert!(again.is_problem(409), "a repository is a project once: {again:?}");
    let project_id = project.body["id"].as_str().unwrap();

    let unknown = system
        .post(
            &alice,
            &format!("/workspace/{}/session", ws.id),
            json!({ "projectID": schemas::ids::ProjectId::new() }),
        )
        .await;
    assert!(unknown.is_problem(400), "{unknown:?}");
    let session = system
        .post(
            &alice,
            &format!("/workspace/{}/session", ws.id),
            json!({ "projectID": project_id, "title": "fix" }),
        )
        .await;
    assert_eq!(session.status, 201, "{session:?}");
    let token = session.body["consistencyToken"].as_str().unwrap();
    let s = system
        .get(&alice, &format!("/session/{}", session.body["id"].as_str().unwrap()), Some(token))
        .await;
    assert_eq!(s.body["projectID"], project_id);

    let detail = system.get(&alice, &format!("/workspace/{}", ws.id), None).await;
    assert_eq!(detail.body["projects"][0]["repositoryURL"], url);
    assert_eq!(detail.body["projects"][0]["defaultBranch"], "dev");
    assert_eq!(detail.body["members"][0]["role"], "admin", "the creator administers it");
    assert_eq!(detail.body["archived"], false);

    let archived = system.post(&alice, &format!("/workspace/{}/archive", ws.id), json!({})).await;
    assert_eq!(archived.status, 200);
    let token = archived.body["consistencyToken"].as_str().unwrap();
    let detail = system.get(&alice, &format!("/workspace/{}", ws.id), Some(token)).await;
    assert_eq!(detail.body["archived"], true);
    let late = system.post(&alice, &format!("/workspace/{}/session", ws.id), json!({})).await;
    assert!(late.is_problem(409), "{late:?}");
    let prompt = system
        .post(
            &alice,
            &format!("/session/{}/prompt_async", session.body["id"].as_str().unwrap()),
            json!({ "parts": [{ "type": "text", "text": "hi" }] }),
        )
        .await;
    assert!(prompt.is_problem(409), "archived workspaces take no prompts: {prompt:?}");
}
