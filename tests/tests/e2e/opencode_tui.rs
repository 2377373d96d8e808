//! OpenCode's terminal UI (`opencode attach`, npm `opencode-ai` pinned in tests/opencode),
//! unmodified, against the service through the deployment's front, driven in tmux as a person
//! would: it lists the workspace's sessions, opens one with its history, sends a prompt and
//! shows the streamed answer, and interrupts a reply with its own key (Escape, twice).

use e2e_tests::front::Front;
use e2e_tests::opencode::{MODEL, OpenCodeUser, opencode_bin};
use e2e_tests::tmux::Tmux;
use e2e_tests::{System, eventually, fake_text};
use serde_json::json;

use crate::WAIT;

#[tokio::test]
async fn the_opencode_terminal_ui_lists_opens_prompts_streams_and_interrupts() {
    let system = System::start().await;
    let front = Front::start(&system).await;
    let user = OpenCodeUser::start(&system, "alice", true).await;
    // A session from earlier, with one question answered.
    let created =
        system.post_as_opencode(&user.key, "/session", None, json!({ "title": "earlier work" }));
    let session = created.await.body["id"].as_str().unwrap().to_owned();
    system.prompt(&user.bearer, &session, "an earlier question [[fake tokens=3]]").await;
    eventually("the earlier answer stored", WAIT, || async {
        let messages = system.messages(&user.bearer, &session).await?;
        (messages.len() == 2 && !messages[1]["info"]["finish"].is_null()).then_some(())
    })
    .await;

    let home = user.home.display().to_string();
    let tui = Tmux::start(
        &opencode_bin(),
        &["attach", &front.url, "-p", &user.key],
        &[("HOME", &home), ("OPENCODE_DISABLE_AUTOUPDATE", "true"), ("TERM", "xterm-256color")],
        (140, 40),
    );
    // Ready to prompt, on the organization's model.
    tui.until("the prompt box with the organization's model", WAIT, |s| {
        s.contains(&format!("Build · {MODEL}"))
    })
    .await;

    // The session list (ctrl+x l) shows the earlier session; opening it shows its history.
    tui.press(&["C-x"]);
    tui.press(&["l"]);
    tui.until("the session list", WAIT, |s| s.contains("earlier work")).await;
    tui.press(&["Enter"]);
    tui.until("the earlier conversation", WAIT, |s| {
        s.contains("an earlier question") && s.contains(fake_text(3).trim())
    })
    .await;

    // A prompt: the answer streams onto the screen, and is what the service stored.
    tui.type_text("a new question [[fake tokens=12 delay_ms=50]]");
    tui.press(&["Enter"]);
    tui.until("the streamed answer", WAIT, |s| s.contains(fake_text(12).trim())).await;
    let stored = eventually("the answer stored", WAIT, || async {
        let messages = system.messages(&user.bearer, &session).await?;
        let reply = messages.get(3)?;
        (!reply["info"]["finish"].is_null()).then(|| reply["parts"][0]["text"].clone())
    })
    .await;
    assert_eq!(stored, fake_text(12));

    // A long reply, interrupted with the UI's own key.
    tui.type_text("a long one [[fake tokens=600 delay_ms=100]]");
    tui.press(&["Enter"]);
    // (a token of its own: the earlier answers had fewer)
    let streaming = |s: &str| s.split_whitespace().any(|w| w == "t20");
    tui.until("the long answer streaming", WAIT, streaming).await;
    tui.press(&["Escape"]);
    tui.until("the UI asking for a second Escape", WAIT, |s| s.contains("esc again")).await;
    tui.press(&["Escape"]);
    tui.until("the reply shown interrupted", WAIT, |s| s.contains("interrupted")).await;
    let error = eventually("the interrupted reply stored", WAIT, || async {
        let messages = system.messages(&user.bearer, &session).await?;
        let reply = messages.get(5)?;
        reply["info"]["error"]["name"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(error, "MessageAbortedError");
}
