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
//!
//! The settings and the registry's builders live here; `connect` turns them into a connection
//! (URL, `PG*` variables, password file, TLS) and tells the connection's failures from the
//! data's, `sink` writes parts and reads the keys back, and `columns` says what each column is
//! and what goes in it.

mod columns;
mod connect;
mod sink;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use serde::Deserialize;

use crate::config::doc::{Kind, KindDoc, SinkBuilder};
use crate::section::{section, ConfigError, ConfigProblem};
use crate::sink::Sink;
use crate::SinkError;

pub use sink::PostgresSink;

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
            .map_err(|m| ConfigError::invalid(place, "[sink] (postgres)", m))?;
        Ok(spec)
    }

    /// Reads an output URL, `postgres://user@host/db?table=results&create=true&key=path`: the
    /// sink's own settings are query parameters, the rest is the connection; `defaults` are
    /// sink settings the URL may override (a command's own choice of key, say).
    pub fn from_url(url: &str, defaults: &[(&str, &str)]) -> Result<Self, ConfigError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let shown = redact(url);
        let bad = |message: String| ConfigError::new(&shown, ConfigProblem::Url(message));
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
                    other => return Err(bad(format!("create={other}: expected true or false"))),
                }),
                "batch_rows" => toml::Value::Integer(
                    value
                        .parse()
                        .map_err(|_| bad(format!("batch_rows={value}: expected a number")))?,
                ),
                "retry_for_s" => toml::Value::Float(
                    value
                        .parse()
                        .map_err(|_| bad(format!("retry_for_s={value}: expected seconds")))?,
                ),
                _ => toml::Value::String(value.into_owned()),
            };
            table.insert(name.to_owned(), value);
        }
        if !table.contains_key("table") {
            return Err(bad(
                "names no table: add ?table=NAME (and &create=true to create it)".into(),
            ));
        }
        let connection = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        table.insert("url".into(), toml::Value::String(connection));
        let spec: PostgresSpec = table.try_into().map_err(|e| bad(e.to_string()))?;
        spec.check().map_err(bad)?;
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

/// `[sink] kind = "postgres"`.
pub(crate) fn sink() -> Kind<SinkBuilder> {
    let doc = KindDoc::of::<PostgresSpec>(
        "rows upserted into a PostgreSQL table by key, a transaction per part",
    );
    Kind::new(doc, |s| {
        PostgresSpec::parse(&s.table, &s.place).map(|p| Arc::new(p) as _)
    })
}

/// Builds the sink a `postgres://` output URL names.
pub(crate) fn url_sink(
    url: &str,
    defaults: &[(&str, &str)],
) -> Result<Arc<dyn crate::connector::SinkConfig>, ConfigError> {
    PostgresSpec::from_url(url, defaults).map(|p| Arc::new(p) as _)
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
        let e = PostgresSpec::from_url("postgres://u:secret@db/results", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("postgres://u:***@db/results: names no table"),
            "{e}"
        );
        let e = PostgresSpec::from_url("postgres://db/r?table=t&create=maybe", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("create=maybe"), "{e}");
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
