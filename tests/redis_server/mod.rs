//! A real `redis-server` for the tests, on a free loopback port, with no persistence.
//!
//! Shared by every test file that needs Redis (tests/fleet.rs, tests/fleet_store.rs) and by
//! benches/fleet.rs (through `#[path]`): include it with `mod redis_server;` and change it
//! with all of them in mind.
//!
//! Each [`RedisServer`] is a process of its own, started by [`RedisServer::start`] and
//! killed when dropped, so that tests never share one and never need a Redis that the
//! machine runs. A machine without `redis-server` fails the test with a message saying how
//! to get one: a missing Redis is never a silent skip.

#![allow(dead_code)] // Each test file uses a part of it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server has to answer `PING`.
const START_LIMIT: Duration = Duration::from_secs(10);
/// Ports tried before a start gives up (another process may take a free port first).
const START_TRIES: usize = 5;

/// A `redis-server` process on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    ///
    /// Panics (failing the test) if `redis-server` is not installed or does not start.
    pub fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..START_TRIES {
            let port = free_port();
            let mut server = RedisServer { port, child: None };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// A port on which nothing listens: for a Redis that is not running at all.
    pub fn unused_url() -> String {
        format!("redis://127.0.0.1:{}/", free_port())
    }

    /// The URL to give a Redis client: `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The loopback port the server listens on (kept across [`Self::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running (not [`Self::kill`]ed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server at once (SIGKILL: no goodbye to its clients) and waits for it to
    /// exit. Its data is gone: it keeps none on disk.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a new, empty one on the same port and waits
    /// until it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        // The old socket may linger for a moment: try a few times.
        let mut last = String::new();
        for _ in 0..START_TRIES {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }

    /// Sends one command (its arguments, as Redis reads them) on a new connection and
    /// returns the raw reply, e.g. `server.command(&["INFO", "commandstats"])`.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .unwrap_or_else(|e| panic!("cannot connect to redis-server: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout can be set");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream
            .write_all(request.as_bytes())
            .expect("redis-server takes the command");
        read_reply(&mut stream)
    }

    /// How many times the server has run `command` (lower case, e.g. `"evalsha"`), from
    /// `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.command(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: run .ci/run, or apt-get install -y redis-server")
            }
            Err(e) => panic!("redis-server could not be started: {e}"),
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "it exited with {status} (port {} taken?)",
                    self.port
                ));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no PONG within {START_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.port())
        .expect("a free loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Reads one RESP reply whole: a simple string's or integer's text, an error's line, a bulk
/// string's bytes, or an array's elements flattened into lines.
fn read_reply(stream: &mut TcpStream) -> String {
    let line = read_line(stream);
    match line.as_bytes().first() {
        Some(b'$') => {
            let len: i64 = line[1..].trim().parse().unwrap_or(-1);
            if len < 0 {
                return String::new();
            }
            let mut body = vec![0; usize::try_from(len).unwrap_or(0) + 2];
            stream.read_exact(&mut body).expect("a whole bulk reply");
            body.truncate(body.len() - 2);
            String::from_utf8_lossy(&body).into_owned()
        }
        Some(b'*') => {
            let n: i64 = line[1..].trim().parse().unwrap_or(0);
            (0..n.max(0))
                .map(|_| read_reply(stream))
                .collect::<Vec<_>>()
                .join("\n")
        }
        // A simple string or an integer: its text. An error keeps its `-`.
        Some(b'+' | b':') => line[1..].trim_end().to_owned(),
        _ => line.trim_end().to_owned(),
    }
}

fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0];
    while !line.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).expect("a whole reply line");
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}
