//! The one HTTP origin OpenCode's clients talk to: Debian's nginx with the deployment's own
//! configuration (compose/nginx/nginx.conf), pointed at this test's command and query services.

use std::path::PathBuf;
use std::process::Command;

use crate::System;
use crate::process::{Proc, free_port, repo_root};

pub struct Front {
    pub url: String,
    proc: Proc,
    dir: PathBuf,
}

impl Front {
    /// Start nginx in front of `system`'s services (`OC_TEST_NGINX`, else `nginx` on PATH).
    pub async fn start(system: &System) -> Front {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("oc-e2e-front-{}-{port}", std::process::id()));
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("the front's directory");
        // nginx's workers may run as another user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let servers = |urls: Vec<&str>| {
            let hosts: Vec<String> =
                urls.iter().map(|u| u.trim_start_matches("http://").to_owned()).collect();
            hosts.join("; server ") + ";"
        };
        let commands = servers(system.command.iter().map(|s| s.url.as_str()).collect());
        let queries = servers(system.query.iter().map(|s| s.url.as_str()).collect());
        let d = dir.display();
        let conf = std::fs::read_to_string(repo_root().join("compose/nginx/nginx.conf"))
            .expect("compose/nginx/nginx.conf")
            .replace("command-service:8081;", &commands)
            .replace("query-service:8082;", &queries)
            .replace(
                "worker_processes auto;",
                &format!("worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;"),
            )
            .replace(
                "http {",
                &format!(
                    "http {{ access_log {d}/access.log; client_body_temp_path {d}/tmp/body; \
                     proxy_temp_path {d}/tmp/proxy; fastcgi_temp_path {d}/tmp/fcgi; \
                     uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;"
                ),
            )
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        std::fs::write(dir.join("nginx.conf"), conf).expect("the front's configuration");
        let nginx = std::env::var("OC_TEST_NGINX").unwrap_or_else(|_| "nginx".into());
        let mut cmd = Command::new(nginx);
        cmd.arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf")).args(["-g", "daemon off;"]);
        let proc = Proc::spawn("nginx", cmd);
        let url = format!("http://127.0.0.1:{port}");
        let up = crate::within(std::time::Duration::from_secs(30), || async {
            system.http.get(format!("{url}/global/health")).send().await.ok().map(|_| ())
        });
        assert!(up.await.is_some(), "the front did not start; see {d}/error.log");
        Front { url, proc, dir }
    }

    /// The master's process id and its workers'.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.proc.pid();
        let mut pids = vec![master];
        pids.extend(crate::process::children_of(master));
        pids
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would leave them holding the port).
        self.proc.signal(nix::sys::signal::Signal::SIGTERM);
        self.proc.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
