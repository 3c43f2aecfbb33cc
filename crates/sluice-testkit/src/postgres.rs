//! A real PostgreSQL server for tests: Debian's `postgresql` package (installed by
//! `scripts/install-deps.sh`), a fresh cluster in a temporary directory, listening on a loopback
//! port with password authentication, stopped and removed when dropped.
//!
//! PostgreSQL refuses to run as root, so when the tests do (CI containers) the server runs as the
//! `postgres` user the package creates, on a directory handed to that user.
//!
//! [`PgServer::start_tls`] makes a server that takes TLS connections only (a certificate for
//! `localhost` and `127.0.0.1` signed by a fresh CA, `ca.pem`; `pg_hba.conf` has `hostssl` lines
//! and no `host` line), so a client that connected at all spoke TLS.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser the cluster is created with.
pub const PG_USER: &str = "sluice";
/// Its password (the server asks for it: scram-sha-256).
pub const PG_PASSWORD: &str = "sluice-test-password";

/// A PostgreSQL server on a loopback port; stopped and deleted when dropped.
pub struct PgServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    tls: bool,
    /// Where clients connect.
    pub addr: SocketAddr,
}

impl PgServer {
    /// Creates a cluster and starts it on a free loopback port; waits until it takes queries.
    pub fn start() -> Self {
        Self::create(false)
    }

    /// As [`PgServer::start`], taking TLS connections only.
    pub fn start_tls() -> Self {
        Self::create(true)
    }

    fn create(tls: bool) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .expect("a temporary directory for the cluster");
        let owner = run_as();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).expect("writing the password file");
        std::fs::create_dir(dir.path().join("sock")).expect("the socket directory");
        if let Some((uid, gid)) = owner {
            for path in [dir.path(), &pwfile, &dir.path().join("sock")] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let data = dir.path().join("data");
        let out = as_owner(Command::new(bin.join("initdb")), owner)
            .arg("-D")
            .arg(&data)
            .args(["--username", PG_USER, "--auth", "scram-sha-256"])
            .arg("--pwfile")
            .arg(&pwfile)
            .args(["--encoding", "UTF8", "--locale", "C", "--no-sync"])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.join("initdb").display()));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            write_tls_files(dir.path(), &data, owner);
        }
        let mut server = PgServer {
            child: None,
            dir,
            bin,
            owner,
            tls,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        // A port picked here may be taken before the server binds it: try another then.
        for _ in 0..5 {
            server.addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
            if server.spawn() {
                return server;
            }
        }
        panic!("postgres could not bind a loopback port in 5 tries");
    }

    /// Starts the server on `self.addr`; false when the port was taken.
    fn spawn(&mut self) -> bool {
        let log = self.dir.path().join("log");
        let log_file = std::fs::File::create(&log).expect("the server log");
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid)).expect("chown the log");
        }
        let mut child = as_owner(Command::new(self.bin.join("postgres")), self.owner)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.addr.port().to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().join("sock").display()
            ))
            // Durability across a machine crash is not what these tests are about.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(if self.tls {
                &["-c", "ssl=on"][..]
            } else {
                &[][..]
            })
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting postgres");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("could not bind") || text.contains("Address already in use") {
                    return false;
                }
                panic!("postgres exited ({status}) before taking connections:\n{text}");
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
                && self.client().is_ok()
            {
                self.child = Some(child);
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not take connections on {} within 60 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The URL for clients, with the password (and `sslmode=require` for a TLS server).
    pub fn url(&self) -> String {
        let tls = if self.tls { "?sslmode=require" } else { "" };
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@{}/postgres{tls}",
            self.addr
        )
    }

    /// The CA certificate (PEM) that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The URL without the password (given separately: a file, `PGPASSWORD`).
    pub fn url_without_password(&self) -> String {
        format!("postgres://{PG_USER}@{}/postgres", self.addr)
    }

    /// A client connected as the superuser, for checks.
    pub fn client(&self) -> Result<postgres::Client, postgres::Error> {
        if !self.tls {
            return postgres::Client::connect(&self.url(), postgres::NoTls);
        }
        use tokio_rustls::rustls;
        let pem = std::fs::read_to_string(self.ca_file()).expect("reading ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pem_der(&pem).into()).expect("trusting ca.pem");
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        postgres::Client::connect(
            &self.url(),
            tokio_postgres_rustls::MakeRustlsConnect::new(config),
        )
    }

    /// Runs `sql` (one or more statements) and panics on error.
    pub fn execute(&self, sql: &str) {
        self.client()
            .and_then(|mut c| c.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Stops the server with a fast shutdown (open connections are cut, data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill sends a signal to our own child's pid; no memory is touched.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data after [`PgServer::stop`].
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "port {} was taken on restart", self.addr);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: immediate shutdown, the cluster is deleted next anyway.
            // SAFETY: as in stop().
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }
}

/// Writes a CA (`ca.pem` in `dir`), the server's certificate and key into `data`, and a
/// `pg_hba.conf` that takes TCP connections over TLS only.
fn write_tls_files(dir: &Path, data: &Path, owner: Option<(u32, u32)>) {
    let (cert, key) = crate::tls::server_certificate(dir);
    let hba = "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n";
    for (name, text) in [
        ("server.crt", cert.pem()),
        ("server.key", key.serialize_pem()),
        ("pg_hba.conf", hba.to_owned()),
    ] {
        let path = data.join(name);
        std::fs::write(&path, text).expect("writing a TLS file");
        // The server refuses a key others can read.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod 600");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown a TLS file");
        }
    }
}

/// The DER bytes of the first PEM certificate in `pem`.
fn pem_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

/// Where the server binaries are: `$SLUICE_PG_BIN`, Debian's `/usr/lib/postgresql/N/bin`
/// (newest), or the directory of `initdb` on the `PATH`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let initdb = crate::find_tool("initdb", "SLUICE_PG_INITDB");
    let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
    initdb.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The `postgres` user's uid and gid when this process is root, read from `/etc/passwd`.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs the `postgres` user (Debian's postgresql package makes it)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((
        fields[2].parse().expect("uid"),
        fields[3].parse().expect("gid"),
    ))
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}
