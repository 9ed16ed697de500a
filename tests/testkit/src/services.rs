//! Real backing services for tests: `redis-server`, `nats-server -js`,
//! PostgreSQL and an S3-compatible server (moto), each a
//! process of its own on a free loopback port with its data in a temp dir,
//! stopped by PID when dropped.
//!
//! A missing binary is a test failure that names the Debian package
//! (`scripts/setup.sh` installs both); nothing is skipped.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! server runs as the `postgres` user that Debian's package creates.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a service may take to accept connections.
const STARTUP: Duration = Duration::from_secs(30);

pub use crate::registry::free_port;

fn wait_until_accepting(child: &mut Child, addr: SocketAddr, what: &str, log: &Path) {
    let started = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before accepting on {addr}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < STARTUP,
            "{what} did not accept on {addr} within {STARTUP:?}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn require(binary: &Path, package: &str) {
    assert!(
        binary.is_file(),
        "{} is missing: install the Debian package `{package}` (scripts/setup.sh does)",
        binary.display()
    );
}

fn stop(child: &mut Option<Child>, signal: &str) {
    if let Some(mut child) = child.take() {
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A `redis-server` keeping nothing on disk.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it accepts.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts one on `port` and waits until it accepts.
    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port,
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL): it is down until [`RedisServer::restart`].
    pub fn kill(&mut self) {
        stop(&mut self.child, "-KILL");
    }

    /// Starts it again on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        let binary = Path::new("/usr/bin/redis-server");
        require(binary, "redis-server");
        let log = self.dir.path().join("redis.log");
        let mut child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until_accepting(&mut child, addr, "redis-server", &log);
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server -js` with JetStream's file store in a temp dir, so a
/// restart keeps every stream and consumer (what a broker outage test needs).
pub struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one on a free port and waits until it accepts.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer {
            port: free_port(),
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): it is down until [`NatsServer::restart`].
    pub fn kill(&mut self) {
        stop(&mut self.child, "-KILL");
    }

    /// Starts it again on the same port and store dir.
    pub fn restart(&mut self) {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .unwrap_or(Path::new("/usr/sbin/nats-server"));
        require(binary, "nats-server");
        let log = self.dir.path().join("nats.log");
        let mut child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("jetstream"))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until_accepting(&mut child, addr, "nats-server", &log);
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An S3-compatible server of its own: moto's standalone server
/// (`moto_server`, installed by `scripts/setup.sh` into
/// `target/tools/moto`), keeping its buckets in memory. Any access key is
/// accepted; requests are SigV4-signed as against AWS.
pub struct S3Server {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    /// The access key and secret the server accepts (any would do).
    pub const CREDENTIALS: (&'static str, &'static str) = ("hearth", "hearth-secret");
    /// The region clients sign for.
    pub const REGION: &'static str = "us-east-1";

    /// Starts one on a free port and waits until it accepts.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = S3Server {
            port: free_port(),
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name` (moto accepts an unsigned `PUT /NAME`).
    pub fn create_bucket(&self, name: &str) {
        use std::io::{Read, Write};
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto_server");
        write!(
            stream,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send to moto_server");
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .expect("read moto_server's reply");
        assert!(
            reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
            "creating bucket {name}: {}",
            reply.lines().next().unwrap_or_default()
        );
    }

    /// Kills the server (SIGKILL): it is down (and its data gone) until
    /// [`S3Server::restart`].
    pub fn kill(&mut self) {
        stop(&mut self.child, "-KILL");
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        let binary = std::env::var_os("HEARTH_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../target/tools/moto/bin/moto_server")
            });
        assert!(
            binary.is_file(),
            "{} is missing: the S3 tests need moto's server (scripts/setup.sh installs it; \
             HEARTH_MOTO_SERVER may name another)",
            binary.display()
        );
        let log = self.dir.path().join("moto.log");
        let log_file = std::fs::File::create(&log).expect("moto log");
        let mut child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("spawn moto_server");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until_accepting(&mut child, addr, "moto_server", &log);
        self.child = Some(child);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster of its own (initdb into a temp dir, trust auth).
pub struct PostgresServer {
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PostgresServer {
    /// Creates a cluster and starts its server on a free port.
    pub fn start() -> Self {
        let bin = postgres_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("hearth-pg")
            .tempdir()
            .expect("temp dir");
        let run_as = crate::containerd::nix_is_root().then(postgres_user);
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        std::fs::create_dir(dir.path().join("socket")).expect("socket dir");
        if let Some((uid, gid)) = run_as {
            // The postgres user must reach the temp dir and own the data
            // and socket dirs.
            chmod(dir.path(), 0o755);
            chown(&data, uid, gid);
            chmod(&data, 0o700);
            chown(&dir.path().join("socket"), uid, gid);
        }
        let log = dir.path().join("initdb.log");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data)
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            );
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let status = initdb.status().expect("run initdb");
        assert!(
            status.success(),
            "initdb failed ({status}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let mut server = PostgresServer {
            port: free_port(),
            dir,
            bin,
            run_as,
            child: None,
        };
        server.restart();
        server
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (SIGQUIT, immediate shutdown): it is down
    /// until [`PostgresServer::restart`]; committed data stays.
    pub fn kill(&mut self) {
        stop(&mut self.child, "-QUIT");
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        let log = self.dir.path().join("postgres.log");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().join("socket").display()
            ))
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let mut child = command.spawn().expect("spawn postgres");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until_accepting(&mut child, addr, "postgres", &log);
        // It accepts connections before it takes queries ("the database
        // system is starting up"); pg_isready tells when it does.
        let started = Instant::now();
        while !Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|status| status.success())
        {
            assert!(
                started.elapsed() < STARTUP,
                "postgres did not become ready within {STARTUP:?}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        self.child = Some(child);
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    let bin = versions
        .pop()
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/NN/bin"));
    require(&bin.join("initdb"), "postgresql");
    bin
}

fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres")).then(|| {
                (
                    fields[2].parse().expect("uid"),
                    fields[3].parse().expect("gid"),
                )
            })
        })
        .expect(
            "the tests run as root and PostgreSQL refuses root: the `postgres` user is missing \
             (install the Debian package `postgresql`; scripts/setup.sh does)",
        )
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
}
