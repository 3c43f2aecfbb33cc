//! `sluice stress`: the load tool users ran as `stress_test.py`, against any server that speaks
//! the translation contract.
//!
//! Open loop (`--sleep`): request *starts* are spaced evenly whatever the answers do, which is how
//! a burst of independent clients behaves and what exposes queueing. Closed loop
//! (`--concurrency`): a fixed number of clients each send their next request when the previous
//! one is answered, which measures sustainable throughput.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use sluice_serve::api::{Payload, RecordIn, TranslationRequest, TranslationResponse};

/// Sentences cycled through when no `--text` or `--input` is given.
const SAMPLE_TEXTS: &[&str] = &[
    "Life is like a box of chocolates.",
    "The weather is nice today, so we will walk to the station.",
    "Please send me the report before Friday.",
    "Machine translation has improved a lot in recent years.",
    "Where is the nearest train station?",
    "The meeting was moved to next Tuesday at ten o'clock.",
    "She bought three apples and a loaf of bread at the market.",
    "Thank you very much for your help.",
];

/// Command-line options of `sluice stress`.
#[derive(clap::Args, Debug, Clone)]
pub struct StressArgs {
    /// Translation endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9527/translation")]
    pub url: String,
    /// Records per request.
    #[arg(long, default_value_t = 16)]
    pub pay_size: usize,
    /// Requests to send.
    #[arg(long, default_value_t = 100)]
    pub num_req: usize,
    /// Seconds between request starts (open loop); ignored with --concurrency.
    #[arg(long, default_value_t = 0.01)]
    pub sleep: f64,
    /// Clients each sending their next request when the last is answered (closed loop).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Source language.
    #[arg(long, default_value = "en")]
    pub from: String,
    /// Target language.
    #[arg(long, default_value = "ja")]
    pub to: String,
    /// Seconds before a request counts as timed out.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Text sent in every record [default: a few sample sentences, cycled].
    #[arg(long, conflicts_with = "input")]
    pub text: Option<String>,
    /// File of texts, one per line, cycled through the records.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Beams asked for in each request (server default otherwise).
    #[arg(long)]
    pub beams: Option<usize>,
    /// Most new tokens asked for in each request (server default otherwise).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Write per-request results as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write the summary and per-request results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw latency over time as an SVG chart here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
}

/// What happened to one request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Request number, in start order.
    pub index: usize,
    /// Seconds from the start of the run to the request's start.
    pub start_s: f64,
    /// Seconds from start to complete answer (or to the failure).
    pub latency_s: f64,
    /// HTTP status, if one came back.
    pub status: Option<u16>,
    /// Answered 200 with one result per record, same ids, same order.
    pub ok: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Latency statistics in seconds.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Requests sent.
    pub requests: usize,
    /// Requests answered correctly.
    pub succeeded: usize,
    /// `succeeded / requests × 100`.
    pub success_percent: f64,
    /// Latency of the successful requests.
    pub latency: Latency,
    /// Seconds from the first start to the last answer.
    pub duration_s: f64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Records translated per second.
    pub records_per_s: f64,
    /// Count of each status seen (`timeout`, `connect` and so on for failures without one).
    pub statuses: std::collections::BTreeMap<String, usize>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises samples of a run that lasted `duration_s` with `pay_size` records per request.
pub fn summarise(samples: &[Sample], pay_size: usize, duration_s: f64) -> Summary {
    let mut ok: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency_s)
        .collect();
    ok.sort_by(f64::total_cmp);
    let latency = if ok.is_empty() {
        Latency::default()
    } else {
        Latency {
            mean: ok.iter().sum::<f64>() / ok.len() as f64,
            min: ok[0],
            max: ok[ok.len() - 1],
            p50: percentile(&ok, 50.0),
            p95: percentile(&ok, 95.0),
            p99: percentile(&ok, 99.0),
        }
    };
    let mut statuses = std::collections::BTreeMap::new();
    for s in samples {
        let key = match (s.status, &s.error) {
            (Some(code), _) => code.to_string(),
            (None, Some(e)) => e.split(':').next().unwrap_or("error").to_owned(),
            (None, None) => "unknown".to_owned(),
        };
        *statuses.entry(key).or_insert(0) += 1;
    }
    let per_s = |n: usize| {
        if duration_s > 0.0 {
            n as f64 / duration_s
        } else {
            0.0
        }
    };
    Summary {
        requests: samples.len(),
        succeeded: ok.len(),
        success_percent: if samples.is_empty() {
            0.0
        } else {
            100.0 * ok.len() as f64 / samples.len() as f64
        },
        latency,
        duration_s,
        requests_per_s: per_s(ok.len()),
        records_per_s: per_s(ok.len() * pay_size),
        statuses,
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency;
        writeln!(
            f,
            "requests:   {} sent, {} succeeded ({:.1}%)",
            self.requests, self.succeeded, self.success_percent
        )?;
        writeln!(
            f,
            "latency:    mean {:.3}s  min {:.3}s  max {:.3}s  p50 {:.3}s  p95 {:.3}s  p99 {:.3}s",
            l.mean, l.min, l.max, l.p50, l.p95, l.p99
        )?;
        writeln!(
            f,
            "throughput: {:.2} requests/s, {:.1} records/s over {:.2}s",
            self.requests_per_s, self.records_per_s, self.duration_s
        )?;
        let codes: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k} × {v}"))
            .collect();
        write!(f, "statuses:   {}", codes.join(", "))
    }
}

fn texts(args: &StressArgs) -> anyhow::Result<Vec<String>> {
    if let Some(t) = &args.text {
        return Ok(vec![t.clone()]);
    }
    if let Some(p) = &args.input {
        let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let lines: Vec<String> = s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        anyhow::ensure!(!lines.is_empty(), "{} holds no text", p.display());
        return Ok(lines);
    }
    Ok(SAMPLE_TEXTS.iter().map(|s| (*s).to_owned()).collect())
}

/// The body of request `index`: `pay_size` records cycling through `texts`.
fn body(args: &StressArgs, texts: &[String], index: usize) -> TranslationRequest {
    let records = (0..args.pay_size)
        .map(|j| RecordIn {
            id: format!("{index}-{j}"),
            text: texts[(index * args.pay_size + j) % texts.len()].clone(),
        })
        .collect();
    TranslationRequest {
        payload: Payload {
            from_lang: args.from.clone(),
            to_lang: args.to.clone(),
            records,
            beams: args.beams,
            max_new_tokens: args.max_new_tokens,
        },
    }
}

async fn send(
    client: &reqwest::Client,
    args: &StressArgs,
    request: &TranslationRequest,
    index: usize,
    run_start: Instant,
) -> Sample {
    let started = Instant::now();
    let outcome = async {
        let resp = client.post(&args.url).json(request).send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, bytes))
    }
    .await;
    let latency_s = started.elapsed().as_secs_f64();
    let (status, error) = match outcome {
        Ok((200, bytes)) => (Some(200), check(request, &bytes).err()),
        Ok((code, bytes)) => (
            Some(code),
            Some(String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()),
        ),
        Err(e) if e.is_timeout() => (None, Some(format!("timeout: {e}"))),
        Err(e) if e.is_connect() => (None, Some(format!("connect: {e}"))),
        Err(e) => (None, Some(format!("error: {e}"))),
    };
    Sample {
        index,
        start_s: started.duration_since(run_start).as_secs_f64(),
        latency_s,
        status,
        ok: error.is_none(),
        error,
    }
}

/// Checks that a 200 answer holds one result per record with the same ids in the same order.
fn check(request: &TranslationRequest, body: &[u8]) -> Result<(), String> {
    let resp: TranslationResponse =
        serde_json::from_slice(body).map_err(|e| format!("bad answer: {e}"))?;
    let sent = &request.payload.records;
    if resp.result.len() != sent.len() {
        return Err(format!(
            "bad answer: {} results for {} records",
            resp.result.len(),
            sent.len()
        ));
    }
    match sent
        .iter()
        .zip(&resp.result)
        .position(|(a, b)| a.id != b.id)
    {
        Some(i) => Err(format!("bad answer: result {i} has the wrong id")),
        None => Ok(()),
    }
}

/// Sends the requests and returns one sample per request (in index order) and the run's length.
pub async fn load(args: &StressArgs) -> anyhow::Result<(Vec<Sample>, f64)> {
    anyhow::ensure!(args.pay_size > 0, "--pay-size must be at least 1");
    anyhow::ensure!(
        args.timeout > 0.0 && args.sleep >= 0.0,
        "--timeout must be positive and --sleep not negative"
    );
    let texts = Arc::new(texts(args)?);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()
        .context("building the HTTP client")?;
    let args = Arc::new(args.clone());
    let run_start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    match args.concurrency {
        Some(c) => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..c.max(1) {
                let (client, args, texts, next) =
                    (client.clone(), args.clone(), texts.clone(), next.clone());
                tasks.spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= args.num_req {
                            return out;
                        }
                        let req = body(&args, &texts, i);
                        out.push(send(&client, &args, &req, i, run_start).await);
                    }
                });
            }
        }
        None => {
            let tick = tokio::time::Instant::from_std(run_start);
            for i in 0..args.num_req {
                tokio::time::sleep_until(tick + Duration::from_secs_f64(args.sleep * i as f64))
                    .await;
                let (client, args, texts) = (client.clone(), args.clone(), texts.clone());
                tasks.spawn(async move {
                    let req = body(&args, &texts, i);
                    vec![send(&client, &args, &req, i, run_start).await]
                });
            }
        }
    }
    let mut samples = Vec::with_capacity(args.num_req);
    while let Some(r) = tasks.join_next().await {
        samples.extend(r.context("a request task failed")?);
    }
    samples.sort_by_key(|s| s.index);
    Ok((samples, run_start.elapsed().as_secs_f64()))
}

/// Writes samples as CSV: one row per request.
pub fn write_csv(path: &std::path::Path, samples: &[Sample]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    writeln!(f, "index,start_s,latency_s,status,ok,error")?;
    for s in samples {
        let error = s.error.as_deref().unwrap_or("").replace('"', "\"\"");
        writeln!(
            f,
            "{},{:.6},{:.6},{},{},\"{}\"",
            s.index,
            s.start_s,
            s.latency_s,
            s.status.map(|c| c.to_string()).unwrap_or_default(),
            s.ok,
            error.replace(['\n', '\r'], " ")
        )?;
    }
    f.flush()?;
    Ok(())
}

/// Draws latency against request start time, successes and failures in two colours.
pub fn write_chart(path: &std::path::Path, samples: &[Sample], title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let x_max = samples
        .iter()
        .map(|s| s.start_s)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.05;
    let y_max = samples
        .iter()
        .map(|s| s.latency_s)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("request start (s)")
            .y_desc("latency (s)")
            .draw()?;
        let ok = samples.iter().filter(|s| s.ok);
        chart
            .draw_series(ok.map(|s| Circle::new((s.start_s, s.latency_s), 3, GREEN.filled())))?
            .label("ok")
            .legend(|(x, y)| Circle::new((x, y), 3, GREEN.filled()));
        let failed = samples.iter().filter(|s| !s.ok);
        chart
            .draw_series(failed.map(|s| Cross::new((s.start_s, s.latency_s), 4, RED)))?
            .label("failed")
            .legend(|(x, y)| Cross::new((x, y), 4, RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}

/// Runs `sluice stress`: sends the load, prints the summary, writes the requested files.
pub async fn run(args: StressArgs) -> anyhow::Result<()> {
    let (samples, duration) = load(&args).await?;
    let summary = summarise(&samples, args.pay_size, duration);
    println!("{summary}");
    if let Some(p) = &args.csv {
        write_csv(p, &samples)?;
    }
    if let Some(p) = &args.json {
        let doc = serde_json::json!({ "summary": summary, "requests": samples });
        std::fs::write(p, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.chart {
        let mode = match args.concurrency {
            Some(c) => format!("concurrency {c}"),
            None => format!("{}s spacing", args.sleep),
        };
        let title = format!(
            "{} requests × {} records, {mode}: {:.1}% ok",
            args.num_req, args.pay_size, summary.success_percent
        );
        write_chart(p, &samples, &title)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(index: usize, latency_s: f64, status: Option<u16>, ok: bool) -> Sample {
        Sample {
            index,
            start_s: index as f64 * 0.1,
            latency_s,
            status,
            ok,
            error: (!ok).then(|| match status {
                Some(_) => "busy".to_owned(),
                None => "timeout: deadline".to_owned(),
            }),
        }
    }

    #[test]
    fn summary_counts_only_successes_in_latency_and_every_status() {
        let mut samples: Vec<Sample> = (0..100)
            .map(|i| sample(i, (i + 1) as f64 / 100.0, Some(200), true))
            .collect();
        samples.push(sample(100, 9.0, Some(503), false));
        samples.push(sample(101, 60.0, None, false));
        let s = summarise(&samples, 16, 10.0);
        assert_eq!((s.requests, s.succeeded), (102, 100));
        assert!((s.success_percent - 100.0 * 100.0 / 102.0).abs() < 1e-9);
        assert_eq!(s.latency.min, 0.01);
        assert_eq!(s.latency.max, 1.0);
        assert_eq!(s.latency.p50, 0.5);
        assert_eq!(s.latency.p95, 0.95);
        assert_eq!(s.latency.p99, 0.99);
        assert!((s.latency.mean - 0.505).abs() < 1e-9);
        assert_eq!(s.requests_per_s, 10.0);
        assert_eq!(s.records_per_s, 160.0);
        let statuses: Vec<(&str, usize)> =
            s.statuses.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(statuses, vec![("200", 100), ("503", 1), ("timeout", 1)]);
    }

    #[test]
    fn answers_with_wrong_ids_or_counts_fail() {
        let args = StressArgs {
            url: String::new(),
            pay_size: 2,
            num_req: 1,
            sleep: 0.0,
            concurrency: None,
            from: "en".into(),
            to: "ja".into(),
            timeout: 1.0,
            text: Some("hi".into()),
            input: None,
            beams: None,
            max_new_tokens: None,
            csv: None,
            json: None,
            chart: None,
        };
        let req = body(&args, &["hi".to_owned()], 3);
        assert_eq!(req.payload.records[1].id, "3-1");
        let good = br#"{"result":[{"id":"3-0","text":"a"},{"id":"3-1","text":"b"}]}"#;
        assert_eq!(check(&req, good), Ok(()));
        let swapped = br#"{"result":[{"id":"3-1","text":"a"},{"id":"3-0","text":"b"}]}"#;
        assert!(check(&req, swapped).is_err());
        let short = br#"{"result":[{"id":"3-0","text":"a"}]}"#;
        assert!(check(&req, short).is_err());
    }
}
