//! The tests' NATS: one server with JetStream, or a cluster of three (each its own port, route
//! port and store), optionally with the services' users and permissions.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{Proc, free_port, repo_root};

/// The NATS user of each service, the environment variable its password is set from in
/// compose/nats/permissions.conf, and the password the tests give it.
pub const NATS_USERS: [(&str, &str, &str); 4] = [
    ("command-service", "OC_NATS_COMMAND_PASSWORD", "test-command-secret"),
    ("llm-worker", "OC_NATS_WORKER_PASSWORD", "test-worker-secret"),
    ("projector", "OC_NATS_PROJECTOR_PASSWORD", "test-projector-secret"),
    ("query-service", "OC_NATS_QUERY_PASSWORD", "test-query-secret"),
];

fn nats_server() -> String {
    std::env::var("OC_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

struct Node {
    proc: Proc,
    port: u16,
    route_port: u16,
    /// The server's monitoring endpoint (`/connz`, `/jsz`, …).
    monitor_port: u16,
    dir: PathBuf,
}

/// Running NATS servers; killed, and their stores removed, when dropped.
pub struct NatsServers {
    nodes: Vec<Node>,
    auth: bool,
}

impl NatsServers {
    /// `count` servers (1, or 3 for a cluster), storing under `base` + node number.
    pub fn start(count: usize, auth: bool, base: &Path) -> Self {
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, route_port))| {
                let dir = base.with_extension(format!("n{i}"));
                let monitor_port = free_port();
                let proc = spawn(i, (port, route_port, monitor_port), &dir, auth, &ports);
                Node { proc, port, route_port, monitor_port, dir }
            })
            .collect();
        Self { nodes, auth }
    }

    /// Every server's URL, comma separated (what `OC_NATS_URL` takes).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect()
    }

    /// Server `i`'s monitoring endpoint, e.g. `{…}/connz` for its connections' traffic.
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].monitor_port)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every server's process id.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.proc.pid()).collect()
    }

    /// SIGKILL the first server.
    pub fn kill(&mut self) {
        self.kill_node(0);
    }

    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].proc.kill();
    }

    /// Freeze server `i` (SIGSTOP): its connections stay open, nothing on them is answered, as
    /// when the network to it is cut.
    pub fn freeze_node(&mut self, i: usize) {
        self.nodes[i].proc.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Thaw a frozen server (SIGCONT).
    pub fn thaw_node(&mut self, i: usize) {
        self.nodes[i].proc.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// Start server `i` again on its port and store.
    pub fn restart_node(&mut self, i: usize) {
        let ports: Vec<(u16, u16)> = self.nodes.iter().map(|n| (n.port, n.route_port)).collect();
        let node = &mut self.nodes[i];
        let node_ports = (node.port, node.route_port, node.monitor_port);
        node.proc = spawn(i, node_ports, &node.dir, self.auth, &ports);
    }

    /// Which server (by index) runs as `name` (`n0`, `n1`, …: what JetStream reports leaders by).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')?.parse().ok().filter(|i| *i < self.nodes.len())
    }
}

impl Drop for NatsServers {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.proc.kill();
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}

/// Start server `i` on its (client, route, monitoring) ports.
fn spawn(i: usize, ports: (u16, u16, u16), dir: &Path, auth: bool, all: &[(u16, u16)]) -> Proc {
    let (port, route_port, monitor_port) = ports;
    let mut cmd = Command::new(nats_server());
    if auth {
        cmd.arg("-c").arg(repo_root().join("compose/nats/single.conf"));
        for (_, var, password) in NATS_USERS {
            cmd.env(var, password);
        }
    } else {
        cmd.arg("-c").arg(repo_root().join("compose/nats/liveness.conf"));
    }
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor_port.to_string()]);
    cmd.args(["-js", "-sd"]).arg(dir);
    if all.len() > 1 {
        let routes: Vec<String> =
            all.iter().map(|(_, r)| format!("nats://127.0.0.1:{r}")).collect();
        cmd.args(["-n", &format!("n{i}"), "--cluster_name", "oc-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{route_port}")])
            .args(["--routes", &routes.join(",")]);
    }
    Proc::spawn(&format!("nats-server-{i}"), cmd)
}
