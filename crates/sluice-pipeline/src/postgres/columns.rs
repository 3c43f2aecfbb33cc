//! What goes in the table's columns: the SQL types a new table takes from the records, and each
//! JSON value converted for its column's type before a part is sent (so a value that does not fit
//! fails with its record and field, not as a rejected COPY). Kept apart from the sink, whose
//! concern is connections and transactions, not types.

use std::collections::HashMap;

use bytes::BytesMut;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::{ident, PostgresSpec};

/// One column of the table, as the sink writes it.
#[derive(Debug, Clone)]
pub(super) struct Column {
    pub(super) name: String,
    pub(super) ty: Type,
}

/// `CREATE TABLE` for `rows`: each field's type from its values (text, bigint, double precision,
/// boolean; jsonb for arrays, objects, mixed kinds and fields only ever null), the key the
/// primary key.
pub(super) fn create_table_sql(
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
pub(super) enum Cell {
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
    pub(super) fn encode(value: &serde_json::Value, ty: &Type) -> Result<Cell, String> {
        if value.is_null() {
            return Ok(Cell::Null);
        }
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
                serde_json::Value::Bool(b) => Cell::Bool(*b),
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

/// A JSON number or numeric string as a whole number (`3.0` is one; `3.5` is not).
fn integer(value: &serde_json::Value) -> Result<i64, String> {
    use serde_json::Value as V;
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
}

/// A JSON number or numeric string as a float.
fn float(value: &serde_json::Value) -> Result<f64, String> {
    use serde_json::Value as V;
    match value {
        V::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        V::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number")),
        other => Err(format!("{other} is not a number")),
    }
}

/// A string's text, or any other value as JSON.
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Why `n` does not fit a narrower integer column.
fn narrow(n: i64, what: &str) -> String {
    format!("{n} does not fit in {what}")
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
