//! Reaching the server: the driver's settings from the URL, the `PG*` variables and libpq's
//! password file, the TLS connector for `sslmode=require`, and telling a failure the connection
//! caused (reconnect and try again) from one the data or the settings caused (stop). Kept apart
//! from the sink so that what libpq users expect of a connection reads in one place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres_rustls::MakeRustlsConnect;

use super::{redact, PostgresSpec};
use crate::SinkError;

impl PostgresSpec {
    /// The driver's connection settings: the URL, then the `PG*` variables for what it left
    /// unset, then the password file.
    pub(super) fn connection(&self) -> Result<postgres::Config, SinkError> {
        let mut config: postgres::Config = match &self.url {
            Some(url) => url.parse().map_err(|e| {
                SinkError::Settings(format!("[sink] (postgres): url {}: {e}", redact(url)))
            })?,
            None => postgres::Config::new(),
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if config.get_hosts().is_empty() {
            config.host(env("PGHOST").as_deref().unwrap_or("localhost"));
        }
        if config.get_ports().is_empty() {
            if let Some(port) = env("PGPORT") {
                let port = port.parse().map_err(|_| {
                    SinkError::Settings(format!("PGPORT={port}: not a port number"))
                })?;
                config.port(port);
            }
        }
        if config.get_user().is_none() {
            match env("PGUSER").or_else(|| env("USER")) {
                Some(user) => config.user(&user),
                None => {
                    return Err(SinkError::Settings(
                        "[sink] (postgres): no user: put one in the url or set PGUSER".into(),
                    ))
                }
            };
        }
        if config.get_dbname().is_none() {
            if let Some(db) = env("PGDATABASE") {
                config.dbname(&db);
            }
        }
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file).map_err(|e| SinkError::io(file, e))?;
            config.password(text.trim_end_matches(['\r', '\n']));
        } else if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            } else if let Some(password) = pgpass_password(&config) {
                config.password(password);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("sluice");
        Ok(config)
    }

    /// A rustls connector trusting `ca_file` (or `PGSSLROOTCERT`), else the system's roots.
    pub(super) fn tls(&self) -> Result<MakeRustlsConnect, SinkError> {
        use rustls_pki_types::pem::PemObject;
        let bad = |m: String| SinkError::Settings(format!("[sink] (postgres): {m}"));
        let ca_file = self
            .ca_file
            .clone()
            .or_else(|| std::env::var_os("PGSSLROOTCERT").map(PathBuf::from));
        let mut roots = rustls::RootCertStore::empty();
        match &ca_file {
            Some(file) => {
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(format!("ca_file {}: {e}", file.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bad(format!(
                        "ca_file {}: no certificate in it",
                        file.display()
                    )));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The password libpq would take from the password file (`PGPASSFILE`, else `~/.pgpass`) for
/// `config`'s first host, port, database and user; a file others can read is ignored, as libpq
/// does.
fn pgpass_password(config: &postgres::Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let mode = std::fs::metadata(&file).ok()?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{}: group or others can read it; ignored (chmod 600 it)",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    let (host, port) = endpoint(config);
    // libpq matches a socket connection as "localhost".
    let host = if host.starts_with('/') {
        "localhost".into()
    } else {
        host
    };
    let user = config.get_user()?;
    let db = config.get_dbname().unwrap_or(user);
    pgpass_lookup(&text, [&host, &port.to_string(), db, user])
}

/// The first host (a name, an address or a socket directory) and port the driver will try.
pub(super) fn endpoint(config: &postgres::Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// The password of the first line of a `.pgpass` text whose fields (host, port, database, user;
/// `*` matches anything, `\:` and `\\` are escapes) match `want`.
fn pgpass_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let mut fields = Vec::with_capacity(5);
            let mut field = String::new();
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => field.extend(chars.next()),
                    ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                    c => field.push(c),
                }
            }
            fields.push(field);
            let [host, port, db, user, password] = <[String; 5]>::try_from(fields).ok()?;
            [host, port, db, user]
                .iter()
                .zip(want)
                .all(|(have, want)| have == "*" || have == want)
                .then_some(password)
        })
}

/// Why a step failed: the connection's (retry) or the data's and settings' (stop).
pub(super) enum Failure {
    Retry(String),
    Final(String),
}

impl Failure {
    pub(super) fn of(e: postgres::Error, doing: &str) -> Failure {
        let message = match e.as_db_error() {
            Some(db) => format!(
                "{doing}: {} ({}){}",
                db.message(),
                db.code().code(),
                db.detail().map(|d| format!(": {d}")).unwrap_or_default()
            ),
            None => {
                // The driver's own text names only the kind ("error performing TLS handshake"):
                // the causes say which certificate or socket.
                let mut text = format!("{doing}: {e}");
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                text
            }
        };
        let retry = match e.code() {
            // Connection exceptions, shutdown and not-yet-started, serialization, deadlock.
            Some(code) => {
                let code = code.code();
                code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
            }
            // No SQLSTATE: the socket failed (retry), or the TLS handshake refused the server's
            // certificate, which no retry changes.
            None => {
                !tls_refused(&e)
                    && (e.is_closed() || std::error::Error::source(&e).is_some_and(is_io))
            }
        };
        if retry {
            Failure::Retry(message)
        } else {
            Failure::Final(message)
        }
    }
}

fn is_io(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>().is_some()
}

/// Whether rustls refused the handshake somewhere in `e`'s causes (also inside an io::Error).
fn tls_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if tls_refused(inner) {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_as_libpq_reads_them() {
        let text = "# comment\n\
                    db.example:5432:other:u:wrong-db\n\
                    db.example:*:analytics:u:p\\:w\\\\1\n\
                    *:*:*:*:fallback\n";
        let want = |db| pgpass_lookup(text, ["db.example", "5432", db, "u"]);
        assert_eq!(want("analytics").as_deref(), Some("p:w\\1"));
        assert_eq!(want("other").as_deref(), Some("wrong-db"));
        assert_eq!(want("third").as_deref(), Some("fallback"));
        assert_eq!(pgpass_lookup("h:1:d:u\n", ["h", "1", "d", "u"]), None);
    }
}
