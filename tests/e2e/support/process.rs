//! The `service-accounts` binary as a child process: start it, wait for SERVING, SIGTERM it and
//! wait (with a bound) for it to exit.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tonic::transport::Channel;

use super::clients::{connect_when_serving, serving};
use super::wait::Wait;

pub const BINARY: &str = env!("CARGO_BIN_EXE_service-accounts");

/// How long a terminated server may take to exit (its shutdown grace plus slack).
const EXIT_BOUND: Duration = Duration::from_secs(30);

/// An admin JWT from the binary's `admin-token`, signed with the development key that a server
/// started with `data_dir` created there (so: once that server serves).
pub fn admin_token(data_dir: &std::path::Path, org_id: &str, user_id: &str) -> String {
    let output = Command::new(BINARY)
        .args([
            "admin-token",
            "--org-id",
            org_id,
            "--user-id",
            user_id,
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .expect("run admin-token");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A port nothing listens on right now, for a server that binds it later. Chosen below the
/// kernel's ephemeral range (32768 and up on Linux): a port from that range can be handed out
/// again, before the server binds it, to any test's `bind(0)` or outgoing connection.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread over the range by process, so that test binaries running at once rarely meet.
    let start = std::process::id().wrapping_mul(7919);
    loop {
        let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
        let port = 20_000 + (n % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A server process on `port`; killed if the test ends without terminating it.
pub struct ServerProcess {
    pub port: u16,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

/// How a terminated server ended, with everything it wrote to stderr (its logs).
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

impl ServerProcess {
    /// Starts the binary listening on a free port; `configure` adds the other arguments.
    pub fn start(configure: impl FnOnce(&mut Command)) -> Self {
        let port = free_port();
        let mut command = Command::new(BINARY);
        command.args(["--listen", &format!("127.0.0.1:{port}")]);
        configure(&mut command);
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the service-accounts binary");
        // Read stderr as it comes so a chatty server never blocks on a full pipe.
        let stderr = Arc::<Mutex<Vec<u8>>>::default();
        let mut pipe = child.stderr.take().unwrap();
        let reader = std::thread::spawn({
            let stderr = stderr.clone();
            move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    stderr.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }
        });
        Self {
            port,
            child: Some(child),
            stderr,
            reader: Some(reader),
        }
    }

    /// A channel to the server once its health says SERVING; panics if it exits first.
    pub async fn connect_when_serving(&mut self) -> Channel {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let child = self.child.as_mut().unwrap();
        let stderr = &self.stderr;
        Wait::new("the server process is SERVING")
            .every(Duration::from_millis(50))
            .until(async || {
                if let Some(status) = child.try_wait().expect("poll the server") {
                    let logs = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
                    panic!("the server exited during start ({status}): {logs}");
                }
                serving(addr).await
            })
            .await;
        connect_when_serving(self.port).await
    }

    /// The process id, to send it signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(mut self) -> Exited {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success(), "kill -TERM {pid}: {killed}");
        let child = self.child.as_mut().unwrap();
        let status = Wait::new(format!("the server (pid {pid}) exits after SIGTERM"))
            .within(EXIT_BOUND)
            .every(Duration::from_millis(25))
            .until(async || child.try_wait().expect("wait for the server"))
            .await;
        self.child = None;
        // The pipe closes with the process, so the reader finishes.
        self.reader.take().unwrap().join().unwrap();
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        Exited { status, stderr }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
