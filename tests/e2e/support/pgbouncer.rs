//! A real PgBouncer (Debian's `pgbouncer`) in transaction (or session) pooling in front of the
//! test PostgreSQL server, as a child process the test can stop and start again on the same port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::process::free_port;
use super::wait::Wait;

/// Server connections PgBouncer keeps per database: fewer than the replicas' pools together, so
/// that their transactions share server connections.
pub const POOL_SIZE: usize = 2;

pub struct PgBouncer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

/// The `pgbouncer` binary, or `None` to skip (never under `CI`, whose script installs it).
pub fn pgbouncer_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but pgbouncer is not installed: the PgBouncer tests must run in CI"
        );
        eprintln!("skipping PgBouncer test: pgbouncer is not installed");
    }
    found
}

impl PgBouncer {
    /// Starts PgBouncer in transaction pooling in front of the server of `admin_url` (host:port,
    /// trust authentication).
    pub async fn start(admin_url: &str) -> Option<Self> {
        Self::start_pooling(admin_url, "transaction").await
    }

    /// The same in session pooling, where LISTEN works.
    pub async fn start_session_pooling(admin_url: &str) -> Option<Self> {
        Self::start_pooling(admin_url, "session").await
    }

    async fn start_pooling(admin_url: &str, mode: &str) -> Option<Self> {
        pgbouncer_binary()?;
        let (host, port) = host_port(admin_url);
        let dir = tempfile::tempdir().expect("temp dir");
        // PgBouncer refuses to run as root; it switches to `postgres` (below), which must be
        // able to write its log here.
        set_mode(dir.path(), 0o777);
        let listen_port = free_port();
        let config = format!(
            "[databases]\n\
             * = host={host} port={port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen_port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = {mode}\n\
             default_pool_size = {POOL_SIZE}\n\
             max_client_conn = 500\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config).unwrap();
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        for file in ["pgbouncer.ini", "users.txt"] {
            set_mode(&dir.path().join(file), 0o644);
        }
        let mut bouncer = Self {
            port: listen_port,
            dir,
            child: None,
        };
        bouncer.start_again().await;
        Some(bouncer)
    }

    /// `database_url` (on the server of `start`'s URL) rewritten to go through PgBouncer.
    pub fn url_for(&self, database_url: &str) -> String {
        let (host, port) = host_port(database_url);
        let through = database_url.replacen(
            &format!("{host}:{port}"),
            &format!("127.0.0.1:{}", self.port),
            1,
        );
        assert_ne!(through, database_url, "the URL must name host:port");
        through
    }

    /// Stops PgBouncer at once (SIGTERM: its immediate shutdown), dropping every connection.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Starts PgBouncer again on the same port and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "PgBouncer is already running");
        let mut command = Command::new(pgbouncer_binary().unwrap());
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(self.dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        self.child = Some(child);
        let (port, log) = (self.port, self.dir.path().join("pgbouncer.log"));
        Wait::new("PgBouncer accepts connections")
            .within(Duration::from_secs(10))
            .every(Duration::from_millis(20))
            .until(async || {
                let up = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok();
                if !up && let Some(child) = self.child.as_mut() {
                    let exited = child.try_wait().unwrap();
                    assert!(
                        exited.is_none(),
                        "pgbouncer exited: {exited:?}\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                up
            })
            .await;
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn host_port(url: &str) -> (String, u16) {
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    match host_port.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().unwrap()),
        None => (host_port.to_owned(), 5432),
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
