//! Test support: a real `redis-server` from PATH on a free loopback port,
//! without persistence, stopped at the end.
//!
//! [`shared`] starts one server per test binary, on first use; a watchdog
//! stops it when the test process exits (statics are never dropped).
//! [`RedisServer::start`] starts a server owned by one test, for tests that
//! kill, restart or block it; it is stopped when dropped.
//!
//! When `redis-server` is not on PATH, tests skip with a loud message,
//! unless `CI=true`: then they fail.
// Starting and stopping a server is blocking process management, run once
// per server and never under a paused clock: std's clock and sleep are right.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A `redis-server` child process on `127.0.0.1:port`.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

/// The binary, or `None` (with a loud message) when it is missing outside CI.
fn redis_server_binary() -> Option<&'static str> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return Some("redis-server");
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("redis-server is not on PATH and CI=true: the Redis tests must run in CI");
    }
    // Written to stderr directly, past the test harness's output capture.
    let _ = std::io::stderr().write_all(
        b"\n!!!!! SKIPPING REDIS TEST: redis-server is not on PATH !!!!!\n\
          !!!!! install it (apt-get install redis-server) or run scripts/test !!!!!\n",
    );
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// Starts a server owned by the caller; `None` when redis-server is
    /// missing outside CI.
    pub fn start() -> Option<RedisServer> {
        redis_server_binary()?;
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .args(["--enable-debug-command", "local"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        // Stops the server when this test process exits, whatever happens.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {test} 2>/dev/null && kill -0 {redis} 2>/dev/null; do sleep 0.2; done; kill {redis} 2>/dev/null",
                test = std::process::id(),
                redis = child.id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): everything it held is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A new plain connection, for commands the test sends itself.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .expect("a connection to the test redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server of this test binary, started on first use.
pub fn shared() -> Option<&'static RedisServer> {
    static SHARED: OnceLock<Option<RedisServer>> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start).as_ref()
}

/// A key no other test uses.
pub fn unique_key(name: &str) -> String {
    format!("{name}-{}", rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Calls per command since the server started (or since `CONFIG
/// RESETSTAT`), from `INFO commandstats`: `evalsha`, `set`, ...
pub fn command_calls(server: &RedisServer) -> std::collections::HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.connection())
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}
