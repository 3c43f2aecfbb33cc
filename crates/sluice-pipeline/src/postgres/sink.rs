//! `PostgresSink`, the part that talks to the server while a run writes: records buffered into
//! parts, each part one transaction (retried whole while the connection is what failed), and the
//! keys the table holds read back for skip-completed. Apart from the settings (`super`), the
//! connection (`connect`) and the column types (`columns`) so that the write path reads alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::config::SslMode;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};
use serde::Serialize;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::columns::{create_table_sql, Cell, Column};
use super::connect::{endpoint, Failure};
use super::{ident, PostgresSpec};
use crate::sink::{key_text, keyed_record, Completed, Sink};
use crate::{Envelope, SinkError};

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
                    return Err(SinkError::Destination(format!(
                        "postgres {} ({what}): {message}",
                        self.target()
                    )))
                }
                Err(Failure::Retry(message)) => {
                    self.client = None;
                    if Instant::now() + pause > deadline {
                        return Err(SinkError::Destination(format!(
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
                        SinkError::Destination(format!(
                            "postgres {}: created but not found",
                            self.target()
                        ))
                    })?
            }
            None => {
                return Err(SinkError::Schema(format!(
                    "postgres {}: the table does not exist (create it, or set create = true to \
                     create it from the records' fields)",
                    self.target()
                )))
            }
        };
        for key in self.spec.key_columns() {
            if !columns.contains_key(&key) {
                return Err(SinkError::Schema(format!(
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
        let used = self.part_columns()?;
        // Encoded before any connection work, so bad values fail without a retry.
        let cells = self.encode_part(&used)?;
        let sql = PartSql::new(&self.spec, &used);
        let types: Vec<Type> = used.iter().map(|c| c.ty.clone()).collect();
        self.with_retry("writing a part", |s| s.send_part(&sql, &types, &cells))?;
        self.rows.clear();
        self.at.clear();
        Ok(())
    }

    /// The part's columns: every field some record has, in first-seen order. A field the table
    /// has no column for fails the part before anything is sent.
    fn part_columns(&self) -> Result<Vec<Column>, SinkError> {
        let columns = self.columns.as_ref().expect("ensured");
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
            return Err(SinkError::Schema(format!(
                "postgres {}: records have fields the table has no column for: {} (add them with \
                 ALTER TABLE ... ADD COLUMN; nothing of this part was written)",
                self.target(),
                missing.join(", ")
            )));
        }
        Ok(names.iter().map(|n| columns[*n].clone()).collect())
    }

    /// The part's values, row by row, each converted for its column (`used`).
    fn encode_part(&self, used: &[Column]) -> Result<Vec<Cell>, SinkError> {
        let mut cells = Vec::with_capacity(self.rows.len() * used.len());
        for row in &self.rows {
            for column in used {
                let value = row.get(&column.name).unwrap_or(&serde_json::Value::Null);
                cells.push(Cell::encode(value, &column.ty).map_err(|why| {
                    SinkError::Schema(format!(
                        "postgres {}: record {}: field {:?}: {why}",
                        self.target(),
                        row.get(&self.spec.key).map(key_text).unwrap_or_default(),
                        column.name
                    ))
                })?);
            }
        }
        Ok(cells)
    }

    /// One try at writing a part: a transaction that copies its rows (`cells`, a row of `types`
    /// at a time) into the staging table and moves them into the table.
    fn send_part(&mut self, sql: &PartSql, types: &[Type], cells: &[Cell]) -> Result<(), Failure> {
        self.connect()?;
        let client = self.client.as_mut().expect("connected");
        // Once per connection: the table lives as long as the session.
        if !self.staging {
            client
                .batch_execute(&sql.create)
                .map_err(|e| Failure::of(e, "creating the staging table"))?;
            self.staging = true;
        }
        let mut tx = client
            .transaction()
            .map_err(|e| Failure::of(e, "beginning"))?;
        let sink = tx
            .copy_in(&sql.copy)
            .map_err(|e| Failure::of(e, "starting COPY"))?;
        let mut writer = BinaryCopyInWriter::new(sink, types);
        for row in cells.chunks(types.len()) {
            let values: Vec<&(dyn ToSql + Sync)> =
                row.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            writer
                .write(&values)
                .map_err(|e| Failure::of(e, "copying rows"))?;
        }
        writer
            .finish()
            .map_err(|e| Failure::of(e, "copying rows"))?;
        if let Some(delete) = &sql.delete {
            tx.execute(delete, &[])
                .map_err(|e| Failure::of(e, "replacing the keys' rows"))?;
        }
        tx.execute(&sql.insert, &[])
            .map_err(|e| Failure::of(e, "upserting"))?;
        tx.commit().map_err(|e| Failure::of(e, "committing"))
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

/// The statements that write a part: through a session-local staging table, so that `COPY` can
/// load it and one `INSERT ... ON CONFLICT` can upsert it.
struct PartSql {
    /// Creates the staging table, once per connection.
    create: String,
    /// Loads the part into the staging table.
    copy: String,
    /// Removes the part's keys' rows first, when records are exploded.
    delete: Option<String>,
    /// Moves the staged rows into the table.
    insert: String,
}

impl PartSql {
    /// The statements for a part with the columns `used`.
    fn new(spec: &PostgresSpec, used: &[Column]) -> Self {
        let table = spec.qualified();
        let list = used
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let keys = spec.key_columns();
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
        let key = ident(&spec.key);
        // Exploded rows: a key's rows are replaced together (a rerun may make fewer).
        let delete = spec.explode.as_ref().map(|_| {
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
        PartSql {
            create,
            copy,
            delete,
            insert,
        }
    }
}
