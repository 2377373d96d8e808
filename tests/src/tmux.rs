//! A terminal program driven as a person would: started in a tmux session of its own (its own
//! tmux server socket, so tests do not see each other), its screen read as text, keys typed.

use std::process::Command;
use std::time::Duration;

use crate::process::free_port;

pub struct Tmux {
    socket: String,
    target: String,
}

impl Tmux {
    /// Run `program` with `args` and `env` in a new terminal of `cols`×`rows`.
    pub fn start(program: &str, args: &[&str], env: &[(&str, &str)], size: (u16, u16)) -> Tmux {
        let socket = format!("oc-e2e-{}-{}", std::process::id(), free_port());
        let target = "t".to_owned();
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &socket, "-f", "/dev/null", "new-session", "-d", "-s", &target]).args([
            "-x",
            &size.0.to_string(),
            "-y",
            &size.1.to_string(),
        ]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        cmd.arg("--").arg(program).args(args);
        let status = cmd.status().expect("tmux runs (apt install tmux)");
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket, target }
    }

    /// The screen as text, without colours.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", &self.target])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Type `text` literally.
    pub fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", &self.target, "-l", text]);
    }

    /// Press keys by tmux's names (`Enter`, `Escape`, `C-x`, …).
    pub fn press(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.target];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    fn tmux(&self, args: &[&str]) {
        let status = Command::new("tmux").args(["-L", &self.socket]).args(args).status();
        assert!(status.expect("tmux runs").success(), "tmux {args:?} failed");
    }

    /// Wait until the screen satisfies `seen`; panic with the screen after `timeout`.
    pub async fn until(
        &self,
        what: &str,
        timeout: Duration,
        seen: impl Fn(&str) -> bool,
    ) -> String {
        let found = crate::within(timeout, || async {
            let screen = self.screen();
            seen(&screen).then_some(screen)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!("timed out waiting for {what}; the screen:\n{}", self.screen())
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}
