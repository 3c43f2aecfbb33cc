//! `[sink] kind = "postgres"`: records upserted into a PostgreSQL table by their key.
//!
//! Records are buffered into parts of `batch_rows`; each part is one transaction that copies the
//! rows into a session-local staging table with binary `COPY` and moves them into the table with
//! `INSERT ... ON CONFLICT (key) DO UPDATE`, so a part lands whole or not at all and writing a key
//! again (a rerun, a redelivered NATS item) replaces its row instead of adding one. Skip-completed
//! reads the keys the table holds. A lost connection is retried (reconnect, the part again) for
//! `retry_for_s`; errors the server reports about the data stop the run with its message.
//!
//! The driver is `postgres` (the blocking face of `tokio-postgres`) because sinks run on the
//! run's collecting thread; its binary COPY writer does the wire format. With `sslmode=require`
//! the connection is TLS (rustls) and the server's certificate is verified against the system's
//! roots or `ca_file`, as libpq's `verify-full` does; other modes connect in plain text.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use percent_encoding::percent_decode_str;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::config::SslMode;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::section::{section, ConfigError};
use crate::sink::{key_text, keyed_record, Completed, Sink};
use crate::{Envelope, SinkError};

/// The settings of a `postgres` sink, from `[sink]` or a `postgres://` output URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSpec {
    /// `postgres://user@host:port/db?...` or `host=... user=...`; unset parts come from the
    /// `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE` and `PGPASSWORD` environment variables, and a
    /// password last from libpq's password file (`PGPASSFILE`, `~/.pgpass`).
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the password (a mounted secret); wins over the URL and `PGPASSWORD`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM certificates to trust for `sslmode=require` (a private CA) instead of the system's;
    /// `PGSSLROOTCERT` when unset.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The table's schema; the connection's `search_path` decides when unset.
    #[serde(default)]
    pub schema: Option<String>,
    /// The table.
    pub table: String,
    /// Create the table (and schema) from the first part's fields when it does not exist.
    #[serde(default)]
    pub create: bool,
    /// The primary-key column, which holds each record's key.
    #[serde(default = "default_key")]
    pub key: String,
    /// Records per part (one transaction each).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// How long to keep reconnecting after the server went away before the run fails.
    #[serde(default = "default_retry_for_s")]
    pub retry_for_s: f64,
    /// Write one row per element of this array field, numbered in `FIELD_index`; the primary
    /// key is then (key, `FIELD_index`) and a key's rows are replaced together.
    #[serde(default)]
    pub explode: Option<String>,
}

fn default_key() -> String {
    "key".into()
}

fn default_batch_rows() -> usize {
    1000
}

fn default_retry_for_s() -> f64 {
    60.0
}

/// The query parameters of a `postgres://` output URL that are the sink's, not the driver's.
const SINK_PARAMS: [&str; 8] = [
    "ca_file",
    "table",
    "schema",
    "create",
    "key",
    "batch_rows",
    "retry_for_s",
    "explode",
];

impl PostgresSpec {
    /// Reads and checks a `[sink]` table (without `kind`).
    pub fn parse(table: &toml::Table, place: &str) -> Result<Self, ConfigError> {
        let spec: PostgresSpec = section(table, "[sink] (postgres)", place)?;
        spec.check()
            .map_err(|m| ConfigError(format!("{place}: [sink] (postgres): {m}")))?;
        Ok(spec)
    }

    /// Reads an output URL, `postgres://user@host/db?table=results&create=true&key=path`: the
    /// sink's own settings are query parameters, the rest is the connection; `defaults` are
    /// sink settings the URL may override (a command's own choice of key, say).
    pub fn from_url(url: &str, defaults: &[(&str, &str)]) -> Result<Self, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let shown = redact(url);
        let mut table = toml::Table::new();
        let mut rest = Vec::new();
        let pairs = query.split('&').filter(|p| !p.is_empty()).map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (pair, name, percent_decode_str(value).decode_utf8_lossy())
        });
        let defaults = defaults.iter().map(|&(n, v)| (n, n, Cow::Borrowed(v)));
        for (pair, name, value) in defaults.chain(pairs) {
            if !SINK_PARAMS.contains(&name) {
                rest.push(pair);
                continue;
            }
            let value = match name {
                "create" => toml::Value::Boolean(match &*value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(format!("{shown}: create={other}: expected true or false"))
                    }
                }),
                "batch_rows" => toml::Value::Integer(
                    value
                        .parse()
                        .map_err(|_| format!("{shown}: batch_rows={value}: expected a number"))?,
                ),
                "retry_for_s" => toml::Value::Float(
                    value
                        .parse()
                        .map_err(|_| format!("{shown}: retry_for_s={value}: expected seconds"))?,
                ),
                _ => toml::Value::String(value.into_owned()),
            };
            table.insert(name.to_owned(), value);
        }
        if !table.contains_key("table") {
            return Err(format!(
                "{shown}: names no table: add ?table=NAME (and &create=true to create it)"
            ));
        }
        let connection = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        table.insert("url".into(), toml::Value::String(connection));
        let spec: PostgresSpec = table.try_into().map_err(|e| format!("{shown}: {e}"))?;
        spec.check().map_err(|m| format!("{shown}: {m}"))?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        if self.table.is_empty() || self.key.is_empty() {
            return Err("table and key cannot be empty".into());
        }
        if self.batch_rows == 0 {
            return Err("batch_rows must be at least 1".into());
        }
        if !(self.retry_for_s >= 0.0 && self.retry_for_s.is_finite()) {
            return Err(format!(
                "retry_for_s = {}: expected seconds",
                self.retry_for_s
            ));
        }
        Ok(())
    }

    /// The column numbering exploded rows, when records are exploded.
    fn index_column(&self) -> Option<String> {
        self.explode.as_ref().map(|field| format!("{field}_index"))
    }

    /// The primary key's columns.
    fn key_columns(&self) -> Vec<String> {
        std::iter::once(self.key.clone())
            .chain(self.index_column())
            .collect()
    }

    /// The table as SQL, schema-qualified when one is set.
    fn qualified(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", ident(schema), ident(&self.table)),
            None => ident(&self.table),
        }
    }

    /// The server, database and table, without the password, for messages.
    pub fn describe(&self) -> String {
        let url = self
            .url
            .as_deref()
            .map(redact)
            .unwrap_or_else(|| "PG* settings".into());
        format!("{url} table {}", self.name())
    }

    /// The table as people name it, for messages.
    fn name(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.table),
            None => self.table.clone(),
        }
    }

    /// The driver's connection settings: the URL, then the `PG*` variables for what it left
    /// unset, then the password file.
    fn connection(&self) -> Result<postgres::Config, SinkError> {
        let mut config: postgres::Config = match &self.url {
            Some(url) => url.parse().map_err(|e| {
                SinkError::Encode(format!("[sink] (postgres): url {}: {e}", redact(url)))
            })?,
            None => postgres::Config::new(),
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if config.get_hosts().is_empty() {
            config.host(env("PGHOST").as_deref().unwrap_or("localhost"));
        }
        if config.get_ports().is_empty() {
            if let Some(port) = env("PGPORT") {
                let port = port
                    .parse()
                    .map_err(|_| SinkError::Encode(format!("PGPORT={port}: not a port number")))?;
                config.port(port);
            }
        }
        if config.get_user().is_none() {
            match env("PGUSER").or_else(|| env("USER")) {
                Some(user) => config.user(&user),
                None => {
                    return Err(SinkError::Encode(
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
    fn tls(&self) -> Result<MakeRustlsConnect, SinkError> {
        use rustls_pki_types::pem::PemObject;
        let bad = |m: String| SinkError::Encode(format!("[sink] (postgres): {m}"));
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
fn endpoint(config: &postgres::Config) -> (String, u16) {
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

/// The URL with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// An identifier quoted for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One column of the table, as the sink writes it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    ty: Type,
}

/// Records into a PostgreSQL table, a part per transaction; see the module doc.
pub struct PostgresSink {
    spec: PostgresSpec,
    config: postgres::Config,
    /// The TLS connector, for `sslmode=require`.
    tls: Option<MakeRustlsConnect>,
    client: Option<Client>,
    /// The table's columns by name, once read (or created).
    columns: Option<HashMap<String, Column>>,
    /// Whether this connection has its staging table (a session's temporary table).
    staging: bool,
    /// The part being filled, one row per key (a key written twice keeps its last record).
    rows: Vec<serde_json::Map<String, serde_json::Value>>,
    at: HashMap<String, usize>,
}

impl PostgresSink {
    /// A sink for `spec`; connects on first use.
    pub fn new(spec: &PostgresSpec) -> Result<Self, SinkError> {
        let config = spec.connection()?;
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(spec.tls()?),
            _ => None,
        };
        Ok(PostgresSink {
            config,
            tls,
            spec: spec.clone(),
            client: None,
            columns: None,
            staging: false,
            rows: Vec::new(),
            at: HashMap::new(),
        })
    }

    /// Connects (again); a refused password or an unknown database is final, a server that
    /// cannot be reached is retried by the caller.
    fn connect(&mut self) -> Result<&mut Client, Failure> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(self.client.as_mut().expect("checked"));
        }
        self.client = None;
        self.staging = false;
        let client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        }
        .map_err(|e| Failure::of(e, "connecting"))?;
        self.client = Some(client);
        Ok(self.client.as_mut().expect("just set"))
    }

    /// Runs `step` on a live connection, reconnecting and running it again while the failure
    /// is the connection's, for up to `retry_for_s`.
    fn with_retry<R>(
        &mut self,
        what: &str,
        mut step: impl FnMut(&mut Self) -> Result<R, Failure>,
    ) -> Result<R, SinkError> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.spec.retry_for_s);
        let mut pause = Duration::from_millis(100);
        loop {
            match step(self) {
                Ok(value) => return Ok(value),
                Err(Failure::Final(message)) => {
                    return Err(SinkError::Encode(format!(
                        "postgres {} ({what}): {message}",
                        self.target()
                    )))
                }
                Err(Failure::Retry(message)) => {
                    self.client = None;
                    if Instant::now() + pause > deadline {
                        return Err(SinkError::Encode(format!(
                            "postgres {} ({what}): {message}; gave up after retrying for {} s",
                            self.target(),
                            self.spec.retry_for_s
                        )));
                    }
                    tracing::warn!(
                        "postgres {} ({what}): {message}; retrying in {} ms",
                        self.target(),
                        pause.as_millis()
                    );
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// `host:port/db table`, for messages.
    fn target(&self) -> String {
        let (host, port) = endpoint(&self.config);
        let db = self
            .config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("");
        format!("{host}:{port}/{db} table {}", self.spec.name())
    }

    /// The table's columns, `None` when it does not exist.
    fn read_columns(&mut self) -> Result<Option<HashMap<String, Column>>, Failure> {
        let qualified = self.spec.qualified();
        let client = self.connect()?;
        let rows = client
            .query(
                "SELECT a.attname, a.atttypid FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&qualified],
            )
            .map_err(|e| Failure::of(e, "reading the table's columns"))?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            rows.iter()
                .map(|row| {
                    let name: String = row.get(0);
                    let oid: u32 = row.get(1);
                    let ty = Type::from_oid(oid).unwrap_or(Type::UNKNOWN);
                    (name.clone(), Column { name, ty })
                })
                .collect(),
        ))
    }

    /// The table's columns, creating the table from `rows` when it is missing and `create` is
    /// set.
    fn ensure_table(&mut self) -> Result<(), SinkError> {
        if self.columns.is_some() {
            return Ok(());
        }
        let columns = self.with_retry("reading the table", |s| s.read_columns())?;
        let columns = match columns {
            Some(columns) => columns,
            None if self.spec.create => {
                let ddl = create_table_sql(&self.spec, &self.rows);
                self.with_retry("creating the table", |s| {
                    s.connect()?
                        .batch_execute(&ddl)
                        .map_err(|e| Failure::of(e, "creating the table"))
                })?;
                self.with_retry("reading the table", |s| s.read_columns())?
                    .ok_or_else(|| {
                        SinkError::Encode(format!(
                            "postgres {}: created but not found",
                            self.target()
                        ))
                    })?
            }
            None => {
                return Err(SinkError::Encode(format!(
                    "postgres {}: the table does not exist (create it, or set create = true to \
                     create it from the records' fields)",
                    self.target()
                )))
            }
        };
        for key in self.spec.key_columns() {
            if !columns.contains_key(&key) {
                return Err(SinkError::Encode(format!(
                    "postgres {}: has no key column {key:?}",
                    self.target()
                )));
            }
        }
        self.columns = Some(columns);
        Ok(())
    }

    /// Writes the buffered part in one transaction, retried whole on a lost connection.
    fn write_part(&mut self) -> Result<(), SinkError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        self.ensure_table()?;
        let columns = self.columns.as_ref().expect("ensured");
        // The part's columns: every field some record has, in first-seen order.
        let mut names: Vec<&str> = Vec::new();
        let mut seen = HashSet::new();
        for row in &self.rows {
            for name in row.keys() {
                if seen.insert(name.as_str()) {
                    names.push(name);
                }
            }
        }
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !columns.contains_key(**n))
            .map(|n| format!("{n:?}"))
            .collect();
        if !missing.is_empty() {
            return Err(SinkError::Encode(format!(
                "postgres {}: records have fields the table has no column for: {} (add them with \
                 ALTER TABLE ... ADD COLUMN; nothing of this part was written)",
                self.target(),
                missing.join(", ")
            )));
        }
        let used: Vec<Column> = names.iter().map(|n| columns[*n].clone()).collect();
        // Encoded before any connection work, so bad values fail without a retry.
        let mut cells = Vec::with_capacity(self.rows.len() * used.len());
        for row in &self.rows {
            for column in &used {
                let value = row.get(&column.name).unwrap_or(&serde_json::Value::Null);
                cells.push(Cell::encode(value, &column.ty).map_err(|why| {
                    SinkError::Encode(format!(
                        "postgres {}: record {}: field {:?}: {why}",
                        self.target(),
                        row.get(&self.spec.key).map(key_text).unwrap_or_default(),
                        column.name
                    ))
                })?);
            }
        }
        let table = self.spec.qualified();
        let list = used
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let keys = self.spec.key_columns();
        let updates = used
            .iter()
            .filter(|c| !keys.contains(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", ident(&c.name)))
            .collect::<Vec<_>>();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let staging = "pg_temp.sluice_staging";
        let key = ident(&self.spec.key);
        // Exploded rows: a key's rows are replaced together (a rerun may make fewer).
        let delete = self.spec.explode.as_ref().map(|_| {
            format!(
                "DELETE FROM {table} t USING (SELECT DISTINCT {key} FROM {staging}) s \
                 WHERE t.{key} = s.{key}"
            )
        });
        let create = format!(
            "CREATE TEMP TABLE IF NOT EXISTS sluice_staging (LIKE {table} INCLUDING DEFAULTS) \
             ON COMMIT DELETE ROWS"
        );
        let copy = format!("COPY {staging} ({list}) FROM STDIN (FORMAT binary)");
        let insert = format!(
            "INSERT INTO {table} ({list}) SELECT {list} FROM {staging} ON CONFLICT ({}) \
             {on_conflict}",
            keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ")
        );
        let types: Vec<Type> = used.iter().map(|c| c.ty.clone()).collect();
        let width = used.len();
        self.with_retry("writing a part", |s| {
            s.connect()?;
            let client = s.client.as_mut().expect("connected");
            // Once per connection: the table lives as long as the session.
            if !s.staging {
                client
                    .batch_execute(&create)
                    .map_err(|e| Failure::of(e, "creating the staging table"))?;
                s.staging = true;
            }
            let mut tx = client
                .transaction()
                .map_err(|e| Failure::of(e, "beginning"))?;
            let sink = tx
                .copy_in(&copy)
                .map_err(|e| Failure::of(e, "starting COPY"))?;
            let mut writer = BinaryCopyInWriter::new(sink, &types);
            for row in cells.chunks(width) {
                let values: Vec<&(dyn ToSql + Sync)> =
                    row.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                writer
                    .write(&values)
                    .map_err(|e| Failure::of(e, "copying rows"))?;
            }
            writer
                .finish()
                .map_err(|e| Failure::of(e, "copying rows"))?;
            if let Some(delete) = &delete {
                tx.execute(delete, &[])
                    .map_err(|e| Failure::of(e, "replacing the keys' rows"))?;
            }
            tx.execute(&insert, &[])
                .map_err(|e| Failure::of(e, "upserting"))?;
            tx.commit().map_err(|e| Failure::of(e, "committing"))
        })?;
        self.rows.clear();
        self.at.clear();
        Ok(())
    }

    /// The keys the table holds now; none when it does not exist yet.
    pub fn keys(&mut self) -> Result<HashSet<String>, SinkError> {
        let key = ident(&self.spec.key);
        let qualified = self.spec.qualified();
        self.with_retry("reading its keys", |s| {
            let client = s.connect()?;
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
                .map_err(|e| Failure::of(e, "looking up the table"))?
                .get(0);
            if !exists {
                return Ok(HashSet::new());
            }
            let rows = client
                .query(
                    &format!("SELECT DISTINCT {key}::text FROM {qualified}"),
                    &[],
                )
                .map_err(|e| Failure::of(e, "reading keys"))?;
            Ok(rows
                .iter()
                .filter_map(|r| r.get::<_, Option<String>>(0))
                .collect())
        })
    }
}

impl<T: Serialize> Sink<T> for PostgresSink {
    fn write(&mut self, item: Envelope<T>) -> Result<(), SinkError> {
        let record = match keyed_record(&item, &self.spec.key)? {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("keyed_record makes objects"),
        };
        let key = key_text(&record[&self.spec.key]);
        let seen = self.at.get(&key).copied();
        match (self.spec.index_column(), seen) {
            (None, Some(i)) => {
                // ON CONFLICT cannot touch a row twice in one statement: the last record wins.
                self.rows[i] = record;
            }
            (None, None) => {
                self.at.insert(key, self.rows.len());
                self.rows.push(record);
            }
            (Some(index), seen) => {
                if seen.is_some() {
                    // The earlier record's rows land first; this one's then replace them.
                    self.write_part()?;
                }
                self.at.insert(key, self.rows.len());
                let field = self
                    .spec
                    .explode
                    .as_deref()
                    .expect("an index column explodes");
                let mut rows = Vec::new();
                crate::sink::explode(serde_json::Value::Object(record), field, &mut rows);
                for (i, row) in rows.into_iter().enumerate() {
                    let serde_json::Value::Object(mut row) = row else {
                        unreachable!("exploding an object makes objects")
                    };
                    row.insert(index.clone(), i.into());
                    self.rows.push(row);
                }
            }
        }
        if self.rows.len() >= self.spec.batch_rows {
            self.write_part()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.write_part()
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.write_part()
    }

    fn completed(&mut self) -> Result<Option<Completed>, SinkError> {
        let done = self.keys()?;
        Ok(Some(Arc::new(move |key: &str| done.contains(key))))
    }
}

/// Why a step failed: the connection's (retry) or the data's and settings' (stop).
enum Failure {
    Retry(String),
    Final(String),
}

impl Failure {
    fn of(e: postgres::Error, doing: &str) -> Failure {
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

/// `CREATE TABLE` for `rows`: each field's type from its values (text, bigint, double precision,
/// boolean; jsonb for arrays, objects, mixed kinds and fields only ever null), the key the
/// primary key.
fn create_table_sql(
    spec: &PostgresSpec,
    rows: &[serde_json::Map<String, serde_json::Value>],
) -> String {
    // The key (and the exploded rows' index) first, then the fields as records list them.
    let keys = spec.key_columns();
    let mut order: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut types: HashMap<&str, &str> = keys.iter().map(|k| (k.as_str(), "")).collect();
    for row in rows {
        for (name, value) in row {
            if !types.contains_key(name.as_str()) {
                order.push(name);
            }
            let ty = types.entry(name).or_insert("");
            let this = sql_type(value);
            *ty = match (*ty, this) {
                ("", t) => t,
                (t, "") => t,
                // Integers then fractions: the column holds both.
                ("bigint", "double precision") | ("double precision", "bigint") => {
                    "double precision"
                }
                (t, u) if t == u => t,
                // Mixed kinds: keep every value as JSON.
                _ => "jsonb",
            };
        }
    }
    let columns: Vec<String> = order
        .iter()
        .map(|name| {
            let ty = match types[name] {
                "" => "jsonb",
                t => t,
            };
            let pk = if *name == spec.key && spec.explode.is_none() {
                " PRIMARY KEY"
            } else {
                ""
            };
            format!("{} {ty}{pk}", ident(name))
        })
        .chain(spec.explode.as_ref().map(|_| {
            let keys: Vec<String> = spec.key_columns().iter().map(|k| ident(k)).collect();
            format!("PRIMARY KEY ({})", keys.join(", "))
        }))
        .collect();
    let schema = spec
        .schema
        .as_ref()
        .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {};\n", ident(s)))
        .unwrap_or_default();
    format!(
        "{schema}CREATE TABLE IF NOT EXISTS {} ({})",
        spec.qualified(),
        columns.join(", ")
    )
}

/// The SQL type a JSON value makes a new column; "" for null.
fn sql_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(n) if n.is_i64() => "bigint",
        serde_json::Value::Number(_) => "double precision",
        serde_json::Value::String(_) => "text",
        _ => "jsonb",
    }
}

/// One value ready for the binary COPY, converted from JSON for its column's type.
#[derive(Debug)]
enum Cell {
    Null,
    Text(String),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Json(serde_json::Value),
    Timestamptz(chrono::DateTime<chrono::Utc>),
    Timestamp(chrono::NaiveDateTime),
    Date(chrono::NaiveDate),
}

impl Cell {
    /// `value` for a column of type `ty`, or why it does not fit.
    fn encode(value: &serde_json::Value, ty: &Type) -> Result<Cell, String> {
        use serde_json::Value as V;
        if value.is_null() {
            return Ok(Cell::Null);
        }
        let integer = |value: &V| -> Result<i64, String> {
            match value {
                V::Number(n) => n
                    .as_i64()
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                            .map(|f| f as i64)
                    })
                    .ok_or_else(|| format!("{n} is not an integer")),
                V::String(s) => s
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?} is not an integer")),
                other => Err(format!("{other} is not an integer")),
            }
        };
        let float = |value: &V| -> Result<f64, String> {
            match value {
                V::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
                V::String(s) => s
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?} is not a number")),
                other => Err(format!("{other} is not a number")),
            }
        };
        let text = |value: &V| match value {
            V::String(s) => s.clone(),
            other => other.to_string(),
        };
        let narrow = |n: i64, what: &str| format!("{n} does not fit in {what}");
        Ok(match *ty {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Cell::Text(text(value)),
            Type::INT8 => Cell::I64(integer(value)?),
            Type::INT4 => {
                let n = integer(value)?;
                Cell::I32(i32::try_from(n).map_err(|_| narrow(n, "integer"))?)
            }
            Type::INT2 => {
                let n = integer(value)?;
                Cell::I16(i16::try_from(n).map_err(|_| narrow(n, "smallint"))?)
            }
            Type::FLOAT8 => Cell::F64(float(value)?),
            Type::FLOAT4 => Cell::F32(float(value)? as f32),
            Type::BOOL => match value {
                V::Bool(b) => Cell::Bool(*b),
                other => return Err(format!("{other} is not true or false")),
            },
            Type::JSONB | Type::JSON => Cell::Json(value.clone()),
            Type::TIMESTAMPTZ => {
                let s = text(value);
                Cell::Timestamptz(
                    chrono::DateTime::parse_from_rfc3339(&s)
                        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?
                        .with_timezone(&chrono::Utc),
                )
            }
            Type::TIMESTAMP => {
                let s = text(value);
                Cell::Timestamp(
                    s.parse()
                        .map_err(|e| format!("{s:?} is not a date and time: {e}"))?,
                )
            }
            Type::DATE => {
                let s = text(value);
                Cell::Date(s.parse().map_err(|e| format!("{s:?} is not a date: {e}"))?)
            }
            ref other => {
                return Err(format!(
                    "the column's type {other} is not one the sink writes (text, integers, \
                     floats, boolean, json, jsonb, timestamps, date)"
                ))
            }
        })
    }
}

impl ToSql for Cell {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Text(v) => v.to_sql(ty, out),
            Cell::I16(v) => v.to_sql(ty, out),
            Cell::I32(v) => v.to_sql(ty, out),
            Cell::I64(v) => v.to_sql(ty, out),
            Cell::F32(v) => v.to_sql(ty, out),
            Cell::F64(v) => v.to_sql(ty, out),
            Cell::Bool(v) => v.to_sql(ty, out),
            Cell::Json(v) => v.to_sql(ty, out),
            Cell::Timestamptz(v) => v.to_sql(ty, out),
            Cell::Timestamp(v) => v.to_sql(ty, out),
            Cell::Date(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Cells are made for their column's type by Cell::encode.
        true
    }

    to_sql_checked!();
}

/// `[sink] kind = "postgres"`.
pub(crate) fn sink() -> crate::config::Kind<crate::config::SinkBuilder> {
    let doc = crate::config::KindDoc::of::<PostgresSpec>(
        "rows upserted into a PostgreSQL table by key, a transaction per part",
    );
    crate::config::Kind::new(doc, |s| {
        PostgresSpec::parse(&s.table, &s.place).map(|p| Arc::new(p) as _)
    })
}

/// Builds the sink a `postgres://` output URL names.
pub(crate) fn url_sink(
    url: &str,
    defaults: &[(&str, &str)],
) -> Result<Arc<dyn crate::connector::SinkConfig>, ConfigError> {
    PostgresSpec::from_url(url, defaults)
        .map(|p| Arc::new(p) as _)
        .map_err(ConfigError)
}

impl crate::connector::SinkConfig for PostgresSpec {
    fn key_field(&self) -> Option<&str> {
        Some(&self.key)
    }

    fn describe(&self) -> String {
        PostgresSpec::describe(self)
    }

    fn open(
        &self,
        _key_field: &str,
        _tag: &str,
    ) -> Result<Box<dyn Sink<crate::stages::Record>>, SinkError> {
        Ok(Box::new(PostgresSink::new(self)?))
    }

    fn flush_items(&self) -> usize {
        self.batch_rows
    }

    /// A connection of its own, kept between checks (the writing one is the sink's).
    fn done_check(
        &self,
        _key_field: &str,
    ) -> Result<Option<crate::connector::DoneCheck>, SinkError> {
        let checker = std::sync::Mutex::new(PostgresSink::new(self)?);
        Ok(Some(Box::new(move || {
            let mut checker = checker.lock().unwrap_or_else(|e| e.into_inner());
            Sink::<crate::stages::Record>::completed(&mut *checker)
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_urls_keep_the_sinks_settings_apart_from_the_connections() {
        let spec = PostgresSpec::from_url("postgres://u:secret@db:5433/results?sslmode=disable&table=scores&create=true&key=path&batch_rows=50", &[("key", "id")])
        .unwrap();
        assert_eq!(spec.table, "scores");
        assert!(spec.create);
        assert_eq!(spec.key, "path");
        assert_eq!(spec.batch_rows, 50);
        assert_eq!(
            spec.url.as_deref(),
            Some("postgres://u:secret@db:5433/results?sslmode=disable")
        );
        let e = PostgresSpec::from_url("postgres://u:secret@db/results", &[]).unwrap_err();
        assert!(
            e.contains("postgres://u:***@db/results: names no table"),
            "{e}"
        );
        let e = PostgresSpec::from_url("postgres://db/r?table=t&create=maybe", &[]).unwrap_err();
        assert!(e.contains("create=maybe"), "{e}");
    }

    #[test]
    fn new_tables_take_their_column_types_from_the_records() {
        let spec = PostgresSpec::from_url("postgres://db/r?table=t&schema=s&key=id", &[]).unwrap();
        let rows: Vec<serde_json::Map<String, serde_json::Value>> = [
            serde_json::json!({"id": "a", "n": 1, "x": 1, "ok": true, "tags": ["q"], "none": null, "mixed": 1}),
            serde_json::json!({"id": "b", "n": 2, "x": 2.5, "ok": false, "tags": null, "mixed": "z"}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        assert_eq!(
            create_table_sql(&spec, &rows),
            "CREATE SCHEMA IF NOT EXISTS \"s\";\nCREATE TABLE IF NOT EXISTS \"s\".\"t\" \
             (\"id\" text PRIMARY KEY, \"mixed\" jsonb, \"n\" bigint, \"none\" jsonb, \
             \"ok\" boolean, \"tags\" jsonb, \"x\" double precision)"
        );
        let spec = PostgresSpec::from_url("postgres://db/r?table=t&key=id&explode=w", &[]).unwrap();
        let rows = [serde_json::json!({"id": "a", "w_index": 0, "s": 0.5})];
        let rows: Vec<_> = rows
            .iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect();
        assert_eq!(
            create_table_sql(&spec, &rows),
            "CREATE TABLE IF NOT EXISTS \"t\" (\"id\" text, \"w_index\" bigint, \
             \"s\" double precision, PRIMARY KEY (\"id\", \"w_index\"))"
        );
    }

    #[test]
    fn values_that_do_not_fit_their_column_say_why() {
        use serde_json::json;
        assert!(matches!(
            Cell::encode(&json!(3.0), &Type::INT8),
            Ok(Cell::I64(3))
        ));
        assert!(matches!(
            Cell::encode(&json!("7"), &Type::INT4),
            Ok(Cell::I32(7))
        ));
        let e = Cell::encode(&json!(3.5), &Type::INT8).unwrap_err();
        assert_eq!(e, "3.5 is not an integer");
        let e = Cell::encode(&json!(70000), &Type::INT2).unwrap_err();
        assert_eq!(e, "70000 does not fit in smallint");
        let e = Cell::encode(&json!("yes"), &Type::BOOL).unwrap_err();
        assert_eq!(e, "\"yes\" is not true or false");
        let e = Cell::encode(&json!("x"), &Type::NUMERIC).unwrap_err();
        assert!(e.contains("numeric"), "{e}");
        assert!(matches!(
            Cell::encode(&json!(null), &Type::BOOL),
            Ok(Cell::Null)
        ));
        assert!(matches!(
            Cell::encode(&json!({"a": 1}), &Type::TEXT),
            Ok(Cell::Text(t)) if t == "{\"a\":1}"
        ));
    }

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

    #[test]
    fn identifiers_are_quoted_and_passwords_kept_out_of_messages() {
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(redact("postgres://a:b@h/d"), "postgres://a:***@h/d");
        assert_eq!(redact("postgres://a@h/d"), "postgres://a@h/d");
        let spec = PostgresSpec::from_url("postgres://db/r?table=a%20b%2", &[]).unwrap();
        assert_eq!(spec.table, "a b%2");
    }
}
