//! A `redis-server` of our own on a free loopback port, without persistence,
//! killed when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tower_quota::BoxError;

pub(crate) struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    /// `Ok(None)` when `redis-server` is not on PATH.
    pub(crate) async fn start() -> Result<Option<RedisServer>, BoxError> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            eprintln!("redis-server is not on PATH: skipping the Redis measurements");
            return Ok(None);
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = RedisServer { port, child };
        let client = redis::Client::open(server.url())?;
        for _ in 0..250 {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
            {
                return Ok(Some(server));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("redis-server on port {port} did not start").into())
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
