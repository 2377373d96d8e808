//! A PostgreSQL server of one test's own (initdb in a scratch directory, the machine's
//! PostgreSQL binaries), for tests that restart PostgreSQL: the machine's shared server must not
//! be restarted under the other tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::{Proc, free_port};

pub struct OwnPostgres {
    proc: Proc,
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl OwnPostgres {
    /// A new, empty server (trust authentication, superuser `postgres`), started and answering.
    pub async fn start() -> Self {
        let bin = bin_dir();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("oc-e2e-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        own(&dir);
        let mut initdb = as_postgres(Command::new(bin.join("initdb")));
        initdb.args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(&dir);
        let out = initdb.output().expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let proc = spawn(&bin, &dir, port);
        let pg = Self { proc, dir, port, bin };
        pg.until_answering().await;
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop at once, as in a crash (SIGQUIT: every backend ends without a checkpoint, and the
    /// next start recovers from the write-ahead log), and start again on the same port and data.
    pub async fn restart(&mut self) {
        self.proc.signal(Signal::SIGQUIT);
        self.proc.wait();
        self.proc = spawn(&self.bin, &self.dir, self.port);
        self.until_answering().await;
    }

    async fn until_answering(&self) {
        let url = self.admin_url();
        let up = crate::within(Duration::from_secs(60), || async {
            tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok().map(|_| ())
        });
        assert!(up.await.is_some(), "PostgreSQL on port {} did not start", self.port);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest PostgreSQL installed from Debian's packages, or `OC_TEST_POSTGRES_BIN`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OC_TEST_POSTGRES_BIN") {
        return dir.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries under /usr/lib/postgresql (or OC_TEST_POSTGRES_BIN)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0)
    });
    versions.pop().expect("a PostgreSQL installation")
}

fn spawn(bin: &Path, dir: &Path, port: u16) -> Proc {
    let mut cmd = as_postgres(Command::new(bin.join("postgres")));
    cmd.arg("-D").arg(dir).args(["-p", &port.to_string(), "-k"]).arg(dir);
    // A test server: no durability beyond the process (a crash of the process loses nothing;
    // only the machine's would), room for every service's pool.
    for setting in ["listen_addresses=127.0.0.1", "fsync=off", "max_connections=200"] {
        cmd.args(["-c", setting]);
    }
    Proc::spawn("postgres", cmd)
}

/// PostgreSQL refuses to run as root: when the tests are root, run it as the `postgres` user.
fn as_postgres(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = postgres_user().filter(|_| running_as_root()) {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn own(dir: &Path) {
    if let Some((uid, gid)) = postgres_user().filter(|_| running_as_root()) {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown the scratch directory");
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The `postgres` user's (uid, gid), from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}
