//! A throwaway `redis-server` for tests (this crate's and the end-to-end suite's): started on a given
//! loopback port with nothing persisted, its files in a temp folder of its own; killed and the folder
//! removed when dropped. Never a system service: each test gets its own server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a server may take to answer `PING` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// The `redis-server` to run: `REDIS_SERVER` if set, else the first on `PATH`, else Debian's
    /// (`/usr/bin/redis-server`); `None` if there is none.
    pub fn binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("REDIS_SERVER").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    }

    /// Starts a server on `127.0.0.1:port` and waits until it answers `PING`; fails (with its log) if it
    /// exits first, e.g. because the port is taken.
    pub fn start(port: u16) -> Result<RedisServer> {
        let binary = RedisServer::binary()
            .context("no redis-server (install Debian's: apt-get install redis-server)")?;
        let dir = std::env::temp_dir().join(format!(
            "redis-{port}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // Nothing persisted, nothing shared: no RDB snapshots, no AOF, no replicas.
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let mut server = RedisServer { child, port, dir };
        server.wait_until_ready()?;
        Ok(server)
    }

    /// Starts a server on a free loopback port (one the system just handed out, tried again on another if
    /// it was taken meanwhile).
    pub fn start_on_a_free_port() -> Result<RedisServer> {
        let mut last = None;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            match RedisServer::start(port) {
                Ok(server) => return Ok(server),
                Err(err) => last = Some(err),
            }
        }
        Err(last.expect("five attempts"))
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "redis-server on port {} exited ({status}) before it served:\n{}",
                    self.port,
                    self.log()
                );
            }
            if ping(self.addr()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>`, as a runtime config's `url` takes it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The folder the server runs in (its log, `redis.log`, is there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

/// Whether a Redis answers `PING` at `addr`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
