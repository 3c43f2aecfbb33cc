//! `sluice run p.toml --dates START..END [--parallel N]`: one run per logical date, each a child
//! `sluice run p.toml --date D` with the same other arguments (its own outputs, summary and
//! skip-completed, as `${date}` in the file makes them), `N` at a time. A line per date as it
//! ends, one overall at the end; the exit status is the worst: 1 if a date's run failed, 3 if
//! one completed with failed records, else 0. Separate processes keep each run's engine state,
//! metrics and signals its own, as when a scheduler starts them.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use chrono::NaiveDate;

/// The most dates one backfill takes (ten years of days).
const MAX_DATES: i64 = 3660;

/// The dates of `START..END`, both included.
pub fn parse_range(range: &str) -> anyhow::Result<Vec<NaiveDate>> {
    let (start, end) = range
        .split_once("..")
        .ok_or_else(|| anyhow::anyhow!("--dates {range:?}: expected START..END"))?;
    let day = |s: &str| {
        NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
            .map_err(|e| anyhow::anyhow!("--dates {range:?}: {s:?} is not YYYY-MM-DD ({e})"))
    };
    let (start, end) = (day(start)?, day(end)?);
    let days = (end - start).num_days();
    if days < 0 {
        anyhow::bail!("--dates {range:?}: the end is before the start");
    }
    if days >= MAX_DATES {
        anyhow::bail!(
            "--dates {range:?}: {} dates; at most {MAX_DATES} at once",
            days + 1
        );
    }
    Ok(start.iter_days().take(days as usize + 1).collect())
}

/// This process's arguments without `--dates` and `--parallel` (and their values).
fn passthrough() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--dates" || a == "--parallel" {
            args.next();
        } else if !(a.starts_with("--dates=") || a.starts_with("--parallel=")) {
            out.push(a);
        }
    }
    out
}

/// Runs every date of `range`, `parallel` at a time.
pub fn run(range: &str, parallel: usize) -> anyhow::Result<()> {
    let dates = parse_range(range)?;
    let args = passthrough();
    let exe = std::env::current_exe()?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(NaiveDate, Option<i32>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel.clamp(1, dates.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&date) = dates.get(i) else {
                    return;
                };
                let out = Command::new(&exe)
                    .args(&args)
                    .args(["--date", &date.to_string()])
                    .env("SLUICE_DATE", date.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::inherit())
                    .output();
                let code = match out {
                    Ok(out) => {
                        for line in String::from_utf8_lossy(&out.stderr).lines() {
                            eprintln!("[{date}] {line}");
                        }
                        out.status.code()
                    }
                    Err(e) => {
                        eprintln!("[{date}] cannot start {}: {e}", exe.display());
                        None
                    }
                };
                eprintln!("[{date}] {}", outcome(code));
                results
                    .lock()
                    .expect("no panic holds it")
                    .push((date, code));
            });
        }
    });
    let mut results = results.into_inner().expect("no panic holds it");
    results.sort();
    let of = |want: &str| -> Vec<String> {
        results
            .iter()
            .filter(|(_, c)| outcome(*c) == want)
            .map(|(d, _)| d.to_string())
            .collect()
    };
    let done = of(DONE);
    let with_failures = of(WITH_FAILED_RECORDS);
    let failed = of(FAILED);
    eprintln!(
        "backfill: {}",
        serde_json::json!({
            "dates": results.len(),
            "done": done.len(),
            "with_failed_records": with_failures,
            "failed": failed,
        })
    );
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} dates failed: {}",
            failed.len(),
            results.len(),
            failed.join(", ")
        );
    }
    if !with_failures.is_empty() {
        return Err(DatesWithFailedRecords(with_failures).into());
    }
    Ok(())
}

/// Dates whose runs completed with failed records: the backfill exits 3, as such a run does.
#[derive(Debug)]
pub(crate) struct DatesWithFailedRecords(pub Vec<String>);

impl std::fmt::Display for DatesWithFailedRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records failed on {}; they are in those dates' failures files, and a rerun of the \
             backfill retries them",
            self.0.join(", ")
        )
    }
}

impl std::error::Error for DatesWithFailedRecords {}

const DONE: &str = "done";
const WITH_FAILED_RECORDS: &str = "completed with failed records";
const FAILED: &str = "failed";

/// A date's outcome by its run's exit status (none: it did not start or was killed).
fn outcome(code: Option<i32>) -> &'static str {
    match code {
        Some(0) => DONE,
        Some(c) if c == i32::from(crate::EXIT_FAILED_RECORDS) => WITH_FAILED_RECORDS,
        _ => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_include_both_ends_and_refuse_what_is_not_one() {
        let days = parse_range("2026-02-27..2026-03-01").unwrap();
        let days: Vec<String> = days.iter().map(ToString::to_string).collect();
        assert_eq!(days, ["2026-02-27", "2026-02-28", "2026-03-01"]);
        assert_eq!(parse_range("2026-11-30..2026-11-30").unwrap().len(), 1);
        for (bad, why) in [
            ("2026-11-30", "START..END"),
            ("2026-12-01..2026-11-30", "before the start"),
            ("2026-11-01..2026-13-01", "not YYYY-MM-DD"),
            ("2000-01-01..2026-01-01", "at most 3660"),
        ] {
            let e = parse_range(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
