//! Run variables in pipeline files: `${name}` in any string (paths, prefixes, parameters, a
//! command's arguments) is replaced before the file is checked; `${name:FORMAT}` formats a date
//! with strftime's `%Y`, `%m`, `%d`, ... (chrono). Built in: `date`, the run's logical date
//! (`--date`, default today in UTC, as `YYYY-MM-DD`), and `yesterday` and `tomorrow` around it;
//! others come from `--var name=value`. `$${` writes a literal `${`. A name that is not defined
//! is an error naming it and its line.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDate;

use crate::section::{ConfigError, VarError};

/// The names set from the logical date.
const BUILT_IN: [&str; 3] = ["date", "yesterday", "tomorrow"];

/// The variables of one run.
#[derive(Debug, Clone)]
pub struct Vars {
    values: BTreeMap<String, String>,
}

impl Vars {
    /// The built-ins for logical date `date`, then `given` (`name=value`; a built-in name is
    /// refused: the date comes from `--date`).
    pub fn new(date: NaiveDate, given: &[String]) -> Result<Self, VarError> {
        let mut values = BTreeMap::new();
        values.insert("date".to_owned(), date.to_string());
        let day = chrono::Days::new(1);
        if let Some(d) = date.checked_sub_days(day) {
            values.insert("yesterday".to_owned(), d.to_string());
        }
        if let Some(d) = date.checked_add_days(day) {
            values.insert("tomorrow".to_owned(), d.to_string());
        }
        for pair in given {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| VarError::NotAssignment(pair.clone()))?;
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(VarError::BadName(pair.clone()));
            }
            if BUILT_IN.contains(&name) {
                return Err(VarError::BuiltIn {
                    pair: pair.clone(),
                    name: name.to_owned(),
                });
            }
            values.insert(name.to_owned(), value.to_owned());
        }
        Ok(Self { values })
    }

    /// From the command line: `date` as `YYYY-MM-DD`, `today` or `yesterday` (in UTC; today
    /// without it), and `--var`s.
    pub fn from_args(date: Option<&str>, given: &[String]) -> Result<Self, VarError> {
        let today = chrono::Utc::now().date_naive();
        let date = match date {
            None | Some("today") => today,
            // What a daily schedule runs on: the day that has just ended.
            Some("yesterday") => today
                .checked_sub_days(chrono::Days::new(1))
                .ok_or_else(|| VarError::BadDate {
                    given: "yesterday".into(),
                    reason: "before the first date".into(),
                })?,
            Some(d) => NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|e| VarError::BadDate {
                given: d.to_owned(),
                reason: e.to_string(),
            })?,
        };
        Self::new(date, given)
    }

    /// Today in UTC as the logical date, and no other variable.
    pub fn today() -> Self {
        Self::new(chrono::Utc::now().date_naive(), &[]).expect("no variables to read")
    }

    /// The logical date.
    pub fn date(&self) -> &str {
        &self.values["date"]
    }

    /// `text` with every `${...}` replaced; an error names what is wrong.
    pub fn expand(&self, text: &str) -> Result<String, VarError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(escaped) = after.strip_prefix("${") {
                out.push_str("${");
                rest = escaped;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let end = body
                .find('}')
                .ok_or_else(|| VarError::Unclosed(body.to_owned()))?;
            out.push_str(&self.value(&body[..end])?);
            rest = &body[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The value of `name` or `name:FORMAT`.
    fn value(&self, spec: &str) -> Result<String, VarError> {
        let (name, format) = match spec.split_once(':') {
            Some((n, f)) => (n.trim(), Some(f)),
            None => (spec.trim(), None),
        };
        let value = self.values.get(name).ok_or_else(|| VarError::Undefined {
            name: name.to_owned(),
            defined: self.values.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let Some(format) = format else {
            return Ok(value.clone());
        };
        let date =
            NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| VarError::NotADate {
                spec: spec.to_owned(),
                name: name.to_owned(),
                value: value.clone(),
            })?;
        let items: Vec<_> = chrono::format::StrftimeItems::new(format).collect();
        if items
            .iter()
            .any(|i| matches!(i, chrono::format::Item::Error))
        {
            return Err(VarError::BadFormat {
                spec: spec.to_owned(),
                format: format.to_owned(),
            });
        }
        Ok(date.format_with_items(items.into_iter()).to_string())
    }
}

/// Checks every `${...}` of a pipeline file's text (comments aside), naming the line of the first
/// that cannot be expanded.
pub fn check(file: &Path, text: &str, vars: &Vars) -> Result<(), ConfigError> {
    for (n, line) in text.lines().enumerate() {
        let code = strip_comment(line);
        if let Err(e) = vars.expand(code) {
            return Err(ConfigError::new(
                format!("{}:{}", file.display(), n + 1),
                e.into(),
            ));
        }
    }
    Ok(())
}

/// A line without its `#` comment (a `#` inside a quoted string is kept).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Expands the variables in every string of `value`.
pub(super) fn expand_value(value: &mut toml::Value, vars: &Vars) -> Result<(), VarError> {
    match value {
        toml::Value::String(s) => *s = vars.expand(s)?,
        toml::Value::Array(items) => {
            for item in items {
                expand_value(item, vars)?;
            }
        }
        toml::Value::Table(table) => {
            for (_, v) in table.iter_mut() {
                expand_value(v, vars)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(given: &[&str]) -> Vars {
        let date = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        Vars::new(
            date,
            &given.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn dates_names_and_formats_expand() {
        let v = vars(&["bucket=logs", "day=2025-12-31"]);
        assert_eq!(
            v.expand("s3://${bucket}/${date:%Y/%m/%d}/x-${yesterday}.jsonl")
                .unwrap(),
            "s3://logs/2026/03/01/x-2026-02-28.jsonl"
        );
        assert_eq!(v.expand("${day:%j} ${tomorrow}").unwrap(), "365 2026-03-02");
        assert_eq!(
            v.expand("$${date} $5 ${ date }").unwrap(),
            "${date} $5 2026-03-01"
        );
        // The date is the run's: --date sets it, not --var.
        let e = Vars::new(NaiveDate::MIN, &["date=2024-02-29".into()]).unwrap_err();
        assert!(e.to_string().contains("--date"), "{e}");
    }

    #[test]
    fn the_date_comes_from_the_command_line() {
        let today = chrono::Utc::now().date_naive();
        let yesterday = today.pred_opt().unwrap().to_string();
        assert_eq!(
            Vars::from_args(Some("yesterday"), &[]).unwrap().date(),
            yesterday
        );
        assert_eq!(
            Vars::from_args(None, &[]).unwrap().date(),
            today.to_string()
        );
        assert_eq!(
            Vars::from_args(Some("2026-01-31"), &[]).unwrap().date(),
            "2026-01-31"
        );
        assert!(Vars::from_args(Some("31.01.2026"), &[])
            .unwrap_err()
            .to_string()
            .contains("expected YYYY-MM-DD, today or yesterday"));
    }

    #[test]
    fn what_cannot_expand_is_named() {
        let v = vars(&["bucket=logs"]);
        let e = v.expand("in/${region}/x").unwrap_err().to_string();
        assert!(
            e.contains("${region} is not defined") && e.contains("--var region="),
            "{e}"
        );
        let e = |text: &str| v.expand(text).unwrap_err().to_string();
        assert!(e("${bucket:%Y}").contains("not a date"));
        assert!(e("${date:%Q}").contains("not a date format"));
        assert!(e("${date").contains("not closed"));
        assert!(Vars::new(NaiveDate::MIN, &["x".into()]).is_err());
        let e = check(
            Path::new("p.toml"),
            "[source]\n# ${comment} is fine\npath = \"a/${nope}\"\n",
            &v,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "p.toml:3: ${nope} is not defined: give --var nope=VALUE (defined: bucket, date, tomorrow, yesterday)");
    }
}
