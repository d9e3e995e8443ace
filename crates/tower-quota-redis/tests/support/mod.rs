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
    /// Arguments beside the port and the no-persistence settings.
    args: Vec<String>,
    /// The program: `redis-server` or `redis-sentinel`.
    program: &'static str,
    /// Whether it is a Sentinel: its first argument is its configuration file.
    sentinel: bool,
    /// Whether it speaks TLS only: then readiness is an open port.
    tls: bool,
}

/// The binary, or `None` (with a loud message) when it is missing outside CI.
fn redis_server_binary() -> Option<&'static str> {
    require("redis-server", "redis-server").then_some("redis-server")
}

/// Whether `tool` runs (`tool --version`; `openssl version`). When it does not: a panic when
/// `CI=true` (the Redis tests must run in CI), otherwise `false` and a loud
/// message saying the test is skipped.
pub fn require(tool: &str, package: &str) -> bool {
    let found = Command::new(tool)
        .arg(if tool == "openssl" {
            "version"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{tool} is not on PATH and CI=true: the Redis tests must run in CI");
    }
    // Written to stderr directly, past the test harness's output capture.
    let _ = std::io::stderr().write_all(
        format!(
            "\n!!!!! SKIPPING REDIS TEST: {tool} is not on PATH !!!!!\n\
             !!!!! install it (apt-get install {package}) or run scripts/test !!!!!\n"
        )
        .as_bytes(),
    );
    false
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
        Self::start_with(free_port(), Vec::new())
    }

    /// Starts a server on `port` with extra arguments (`["--replicaof",
    /// ...]`); `None` when redis-server is missing outside CI.
    pub fn start_with(port: u16, args: Vec<String>) -> Option<RedisServer> {
        redis_server_binary()?;
        let mut server = RedisServer {
            port,
            child: None,
            args,
            program: "redis-server",
            sentinel: false,
            tls: false,
        };
        server.spawn();
        Some(server)
    }

    /// Starts a server that speaks TLS only, on `tls_port`, with the
    /// certificate files of `certificates`.
    pub fn start_tls(certificates: &TestCertificates) -> Option<RedisServer> {
        redis_server_binary()?;
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            args: certificates.server_args(),
            program: "redis-server",
            sentinel: false,
            tls: true,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let mut command = Command::new(self.program);
        if self.sentinel {
            // The configuration file (which a Sentinel rewrites) comes first.
            command
                .args(&self.args)
                .args(["--port", &self.port.to_string()]);
        } else if self.tls {
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(&self.args);
        } else {
            command
                .args(["--port", &self.port.to_string()])
                .args(&self.args);
        }
        if !self.sentinel {
            command
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--enable-debug-command", "local"]);
            if !self.args.iter().any(|arg| arg == "--dir") {
                command.args(["--dir", &std::env::temp_dir().to_string_lossy()]);
            }
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
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
        if self.tls {
            return TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
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

    /// Waits (on tokio's clock, five seconds at most) until the sorted set
    /// `key` holds `count` members with a finite score: what a store's
    /// calls have recorded (the anchor log's signature is scored `+inf`).
    pub async fn wait_for_members(&self, key: &str, count: usize) {
        let mut connection = self.connection();
        for _ in 0..2_500 {
            let members: usize = redis::cmd("ZCOUNT")
                .arg(key)
                .arg("-inf")
                .arg("(+inf")
                .query(&mut connection)
                .expect("ZCOUNT");
            if members == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{key} never held {count} members");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port whose cluster bus port (`port + 10000`) is free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A fresh directory under the temporary directory, removed by its owner.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tq-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Sends one command to `port` and reads the reply.
pub fn query<T: redis::FromRedisValue>(port: u16, command: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
    connection.set_read_timeout(Some(Duration::from_secs(2)))?;
    command.query(&mut connection)
}

/// A field of `INFO section`, or `""`.
pub fn info_field(port: u16, section: &str, field: &str) -> String {
    let info: String = query(port, redis::cmd("INFO").arg(section)).unwrap_or_default();
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A Redis Cluster of 3 masters with one replica each, on free loopback
/// ports, without persistence; every node is stopped (and its directory
/// removed) when dropped, also when a test panics, and the watchdogs stop
/// them when the test process exits. Nodes time out after 1 s, so a killed
/// master's replica is promoted within a few seconds.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts six nodes and joins them with `redis-cli --cluster create`;
    /// `None` when redis-server is missing outside CI.
    pub fn start() -> Option<RedisCluster> {
        redis_server_binary()?;
        if !require("redis-cli", "redis-tools") {
            return None;
        }
        let dir = scratch_dir("cluster");
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                let port = free_cluster_port();
                let args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-replica-validity-factor",
                    "0",
                    "--dir",
                    &dir.to_string_lossy(),
                ];
                RedisServer::start_with(port, args.iter().map(|arg| arg.to_string()).collect())
                    .expect("redis-server is present")
            })
            .collect();
        let cluster = RedisCluster { nodes, dir };
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        cluster.wait_healthy(Duration::from_secs(20));
        Some(cluster)
    }

    /// Waits until every live node says the cluster is ok, three masters
    /// serve all slots and each has an online replica.
    pub fn wait_healthy(&self, timeout: Duration) {
        wait_until("a healthy cluster", timeout, || {
            let live: Vec<u16> = self.live_ports();
            live.iter().all(|port| info_field_cluster(*port) == "ok")
                && self.masters().len() == 3
                && self.masters().iter().all(|port| {
                    info_field(*port, "replication", "connected_slaves") == "1"
                        && info_field(*port, "replication", "slave0").contains("state=online")
                })
        });
    }

    /// Waits until every live node says the cluster is ok (after a master
    /// was killed: its replica was promoted).
    pub fn wait_ok(&self, timeout: Duration) {
        wait_until("the cluster state ok", timeout, || {
            self.live_ports()
                .iter()
                .all(|port| info_field_cluster(*port) == "ok")
        });
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    /// `redis://127.0.0.1:port` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The ports of the live masters that serve slots.
    pub fn masters(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|port| {
                info_field(*port, "replication", "role") == "master"
                    && !self.slots_of(*port).is_empty()
            })
            .collect()
    }

    /// The slot ranges `port` serves, from `CLUSTER SHARDS` of any live node.
    fn slots_of(&self, port: u16) -> Vec<(u16, u16)> {
        let Some(line) = self.nodes_line(port) else {
            return Vec::new();
        };
        line.split_whitespace()
            .skip(8)
            .filter_map(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                Some((start.parse().ok()?, end.parse().ok()?))
            })
            .collect()
    }

    /// The line of `CLUSTER NODES` (asked of a live node) about `port`.
    fn nodes_line(&self, port: u16) -> Option<String> {
        let asked = *self.live_ports().first()?;
        let nodes: String = query(asked, &redis::cmd("CLUSTER").arg("NODES").clone()).ok()?;
        nodes
            .lines()
            .find(|line| {
                line.split_whitespace()
                    .nth(1)
                    .is_some_and(|address| address.starts_with(&format!("127.0.0.1:{port}@")))
                    && line.contains("master")
                    && !line.contains("fail")
            })
            .map(str::to_owned)
    }

    /// The port of the master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        self.masters().into_iter().find(|port| {
            self.slots_of(*port)
                .iter()
                .any(|(start, end)| (*start..=*end).contains(&slot))
        })
    }

    /// The hash slot of `redis_key`, as the cluster computes it.
    pub fn slot_of(&self, redis_key: &str) -> u16 {
        let port = self.live_ports()[0];
        query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(redis_key)).expect("CLUSTER KEYSLOT")
    }

    /// Kills the node on `port` (SIGKILL): what it did not replicate is lost.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|node| node.port == port) {
            node.kill();
        }
    }

    /// Moves `slot` and its keys from the master on `from` to the master on
    /// `to`, as `redis-cli --cluster reshard` does: `IMPORTING` and
    /// `MIGRATING` (clients meet `ASK`), `MIGRATE` of the keys, then the
    /// slot's new owner on every master (clients meet `MOVED`). Each step
    /// waits `pause`, so that clients run between them.
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16, pause: Duration) {
        let id = |port: u16| -> String {
            query(port, &redis::cmd("CLUSTER").arg("MYID").clone()).expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from), id(to));
        let setslot = |port: u16, state: &str, node: &str| {
            let () = query(
                port,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(state)
                    .arg(node),
            )
            .expect("CLUSTER SETSLOT");
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        std::thread::sleep(pause);
        loop {
            let keys: Vec<String> = query(
                from,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )
            .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let () = query(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&keys),
            )
            .expect("MIGRATE");
            std::thread::sleep(pause);
        }
        for port in self.masters() {
            let () = query(
                port,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&to_id),
            )
            .expect("CLUSTER SETSLOT NODE");
        }
    }
}

fn info_field_cluster(port: u16) -> String {
    let info: String = query(port, &redis::cmd("CLUSTER").arg("INFO").clone()).unwrap_or_default();
    info.lines()
        .find_map(|line| line.strip_prefix("cluster_state:"))
        .unwrap_or("")
        .trim()
        .to_owned()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The master name the Sentinel set-up monitors.
pub const SENTINEL_MASTER: &str = "tq-master";

/// A master, one replica and three Sentinels (quorum 2) on free loopback
/// ports, without persistence. A master is considered down after 500 ms,
/// so a killed master's replica is promoted within a few seconds. Stopped
/// when dropped (also when a test panics) and when the test process exits.
pub struct SentinelSetup {
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

/// `redis-sentinel` (the Debian package), or `redis-server` with
/// `--sentinel` when only the server is installed.
fn sentinel_program() -> (&'static str, bool) {
    let found = Command::new("redis-sentinel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        ("redis-sentinel", false)
    } else {
        ("redis-server", true)
    }
}

impl SentinelSetup {
    /// Starts the set-up and waits until every Sentinel knows the replica
    /// and the other Sentinels; `None` when redis-server is missing
    /// outside CI.
    pub fn start() -> Option<SentinelSetup> {
        redis_server_binary()?;
        let dir = scratch_dir("sentinel");
        let master = RedisServer::start()?;
        let replica = RedisServer::start_with(
            free_port(),
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        )?;
        let (program, with_flag) = sentinel_program();
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let config = dir.join(format!("sentinel-{port}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "dir {dir}
                         sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 2
                         sentinel down-after-milliseconds {SENTINEL_MASTER} 500
                         sentinel failover-timeout {SENTINEL_MASTER} 5000
                         sentinel parallel-syncs {SENTINEL_MASTER} 1
",
                        dir = dir.to_string_lossy(),
                        master = master.port,
                    ),
                )
                .expect("a Sentinel configuration file");
                let mut args = vec![config.to_string_lossy().into_owned()];
                if with_flag {
                    args.push("--sentinel".into());
                }
                let mut sentinel = RedisServer {
                    port,
                    child: None,
                    args,
                    program,
                    sentinel: true,
                    tls: false,
                };
                sentinel.spawn();
                sentinel
            })
            .collect();
        let setup = SentinelSetup {
            servers: vec![master, replica],
            sentinels,
            dir,
        };
        setup.wait_ready(Duration::from_secs(20));
        Some(setup)
    }

    fn wait_ready(&self, timeout: Duration) {
        wait_until(
            "Sentinels that know each other and the replica",
            timeout,
            || {
                info_field(self.servers[0].port, "replication", "slave0").contains("state=online")
                    && self.sentinels.iter().all(|sentinel| {
                        let fields: Vec<String> = query(
                            sentinel.port,
                            redis::cmd("SENTINEL").arg("MASTER").arg(SENTINEL_MASTER),
                        )
                        .unwrap_or_default();
                        let field = |name: &str| {
                            fields
                                .iter()
                                .position(|field| field == name)
                                .and_then(|index| fields.get(index + 1))
                                .cloned()
                                .unwrap_or_default()
                        };
                        field("num-other-sentinels") == "2" && field("num-slaves") == "1"
                    })
            },
        );
    }

    /// `redis://127.0.0.1:port` of each Sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The port of the server the Sentinels name as master.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|sentinel| {
            let (_, port): (String, u16) = query(
                sentinel.port,
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(SENTINEL_MASTER),
            )
            .ok()?;
            Some(port)
        })
    }

    /// The ports of the Redis servers (not the Sentinels) still running.
    pub fn live_servers(&self) -> Vec<u16> {
        self.servers
            .iter()
            .filter(|server| server.child.is_some())
            .map(|server| server.port)
            .collect()
    }

    /// Kills the server on `port` (SIGKILL): what it did not replicate is lost.
    pub fn kill(&mut self, port: u16) {
        if let Some(server) = self.servers.iter_mut().find(|server| server.port == port) {
            server.kill();
        }
    }
}

impl Drop for SentinelSetup {
    fn drop(&mut self) {
        for server in self.sentinels.iter_mut().chain(&mut self.servers) {
            server.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate authority and a server certificate for `localhost` and
/// `127.0.0.1`, made with the `openssl` command in a fresh directory
/// (removed when dropped).
pub struct TestCertificates {
    dir: std::path::PathBuf,
}

impl TestCertificates {
    /// Generates the files; `None` when `openssl` is missing outside CI.
    pub fn generate() -> Option<TestCertificates> {
        if !require("openssl", "openssl") {
            return None;
        }
        let dir = scratch_dir("tls");
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("openssl runs (apt-get install openssl)");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tower-quota test CA",
        ]);
        for name in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                "/CN=localhost",
            ]);
            std::fs::write(
                dir.join("ext.cnf"),
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
            )
            .expect("an extension file");
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ]);
        }
        Some(TestCertificates { dir })
    }

    /// The PEM contents of one of the files (`ca.crt`, `client.crt`, ...).
    pub fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).expect("a generated certificate file")
    }

    /// A second, unrelated CA's certificate, that signed nothing here.
    pub fn other_ca(&self) -> Vec<u8> {
        let output = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "other.key",
                "-out",
                "other.crt",
                "-days",
                "2",
                "-subj",
                "/CN=another CA",
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("openssl runs");
        assert!(output.status.success());
        self.pem("other.crt")
    }

    fn server_args(&self) -> Vec<String> {
        let file = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
        vec![
            "--tls-cert-file".into(),
            file("server.crt"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            "optional".into(),
        ]
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
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

/// Set once the layer admitted the request and handed it to the client.
#[derive(Clone, Default)]
pub struct Sent(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Sent {
    pub fn is_sent(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A hyper client over plain HTTP that marks a request's [`Sent`]
/// extension when it is called: for worker processes, which must tell a
/// request dropped while waiting for its slot (never sent) from one sent.
pub fn marking_client() -> impl tower::Service<
    http::Request<http_body_util::Empty<bytes::Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future: Send,
> + Clone
+ Send
+ 'static {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    tower::service_fn(
        move |request: http::Request<http_body_util::Empty<bytes::Bytes>>| {
            if let Some(sent) = request.extensions().get::<Sent>() {
                sent.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            client.request(request)
        },
    )
}
