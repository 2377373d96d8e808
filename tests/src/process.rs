//! Child processes that are killed when dropped, and free ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running process, killed (SIGKILL) when dropped unless stopped before.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    /// Where the output goes when nobody asked for it: kept so that a process that dies early
    /// can say why, removed when the process is dropped.
    scratch_log: Option<PathBuf>,
    log: Option<PathBuf>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: Command) -> Proc {
        Self::spawn_logging(name, cmd, None)
    }

    /// Start `cmd`, its output appended to `log` if given (for tests that search the logs),
    /// else shown with OC_TEST_LOGS=1 and discarded otherwise.
    pub fn spawn_logging(name: &str, mut cmd: Command, log: Option<&Path>) -> Proc {
        let show = std::env::var_os("OC_TEST_LOGS").is_some();
        let scratch_log = (log.is_none() && !show).then(|| scratch_path(name));
        let log = log.map(Path::to_path_buf).or_else(|| scratch_log.clone());
        let out = || match &log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_or_else(|_| Stdio::null(), Stdio::from),
            None => Stdio::inherit(),
        };
        cmd.stdout(out()).stderr(out()).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_owned(), child: Some(child), scratch_log, log }
    }

    /// `Some(why)` once the process has exited by itself: its status and the end of its output.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        let output = self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        let tail: String = output
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Some(format!("{} exited ({status}); its last output:\n{tail}", self.name))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit by itself.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("process already stopped");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        c.wait().expect("wait")
    }

    /// Send `signal` (SIGSTOP and SIGCONT freeze and thaw the process: a server that stops
    /// answering without closing its connections, as behind a network partition).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("{signal} {}: {e}", self.name));
    }

    /// Wait for the process to exit by itself (after a signal that ends it).
    pub fn wait(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if let Some(path) = &self.scratch_log {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A fresh file for the output of a process nobody asked to see.
fn scratch_path(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join("oc-e2e-output");
    let _ = std::fs::create_dir_all(&dir);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("{name}-{}-{n}.log", std::process::id()))
}

/// A port for a process this test starts, reserved until the test process exits.
///
/// Asking the kernel for port 0 and closing it again races: until the child binds, the port can
/// go to another test (tests run in parallel) or to any outgoing connection, and the child then
/// fails to start or, worse, the test talks to another test's server. So ports come from below
/// the kernel's ephemeral range (outgoing connections never use those) and each is claimed with a
/// lock file every test process honours; the lock is released when the process exits.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("oc-e2e-ports");
    std::fs::create_dir_all(&dir).expect("port lock directory");
    let low = 15_000u32;
    let high = ephemeral_start().max(low + 1_000);
    let span = high - low;
    let seed = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for i in 0..span {
        let port = (low + seed.wrapping_add(i) % span) as u16;
        let Ok(file) = std::fs::File::create(dir.join(format!("{port}.lock"))) else { continue };
        if file.try_lock().is_err() {
            continue; // another test holds it
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD_PORTS.lock().unwrap_or_else(|e| e.into_inner()).push(file);
            return port;
        }
    }
    panic!("no free port between {low} and {high}")
}

/// Lock files of the ports this process reserved; kept open (and so locked) until it exits.
static HELD_PORTS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// The first port the kernel hands out for outgoing connections (Linux; 32768 elsewhere).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Where cargo put the workspace's binaries (next to this test binary's `deps/`), unless
/// `OC_TEST_BIN_<NAME>` (e.g. `OC_TEST_BIN_QUERY_SERVICE`) names another build to run instead:
/// how a benchmark compares a change with the build before it.
pub fn bin(name: &str) -> PathBuf {
    let other = format!("OC_TEST_BIN_{}", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(other).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// Resident memory of a process in KB (Linux `VmRSS`; 0 where unknown). For benchmarks.
pub fn resident_kb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map_or(0.0, |v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0.0))
}

/// User plus system CPU time a process has used, in seconds (Linux; 0 where unknown).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// The processes whose parent is `pid` (Linux).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let parent = pid.to_string();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // After the command name: the state, then the parent's id.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            rest.split_whitespace().nth(1) == Some(parent.as_str())
        })
        .collect()
}

/// Busy CPU time of the whole machine, in seconds (Linux `/proc/stat`, all but idle and iowait).
pub fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    (ticks.iter().sum::<f64>() - idle) / 100.0
}
