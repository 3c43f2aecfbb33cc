//! The progress line (or log lines when not on a terminal) and the monitor thread's tick.

use super::*;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the periodic progress report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Bars on a terminal, a log line now and then otherwise.
    Auto,
    /// Bars on standard error.
    Bars,
    /// An `info` log line every ten seconds.
    Log,
    /// Nothing until the summary.
    Off,
}

/// Reports progress on bars or in logs, and exports Prometheus gauges.
pub(crate) struct Reporter {
    bars: Option<(indicatif::MultiProgress, Vec<indicatif::ProgressBar>)>,
    last_log: Instant,
    log_every: Option<Duration>,
}

impl Reporter {
    pub fn new(progress: Progress, stages: &[String], total: Option<u64>) -> Self {
        let bars = match progress {
            Progress::Bars => true,
            Progress::Auto => std::io::stderr().is_terminal(),
            Progress::Log | Progress::Off => false,
        };
        let log_every = match progress {
            Progress::Off => None,
            _ if bars => None,
            _ => Some(Duration::from_secs(10)),
        };
        let bars = bars.then(|| {
            let multi = indicatif::MultiProgress::new();
            let style = indicatif::ProgressStyle::with_template(
                "{prefix:>16} {bar:30} {pos:>9}/{len:9} {per_sec:>12} eta {eta:>4} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            let list = stages
                .iter()
                .map(|s| {
                    let bar = multi.add(indicatif::ProgressBar::new(total.unwrap_or(0)));
                    bar.set_style(style.clone());
                    bar.set_prefix(s.clone());
                    bar
                })
                .collect();
            (multi, list)
        });
        Reporter {
            bars,
            last_log: Instant::now(),
            log_every,
        }
    }

    pub fn tick(&mut self, stages: &[Arc<StageStats>], source: &SourceStats) {
        for s in stages {
            let stage = || ("stage", s.name.clone());
            let items = |outcome: &'static str| [stage(), ("outcome", outcome.into())];
            metrics::gauge!("sluice_pipeline_workers", &[stage()])
                .set(s.alive.load(Relaxed) as f64);
            metrics::gauge!("sluice_pipeline_workers_target", &[stage()])
                .set(s.target.load(Relaxed) as f64);
            metrics::counter!("sluice_pipeline_items_total", &items("ok"))
                .absolute(s.out.load(Relaxed));
            metrics::counter!("sluice_pipeline_items_total", &items("failed"))
                .absolute(s.failed.load(Relaxed));
            metrics::counter!("sluice_pipeline_received_total", &[stage()])
                .absolute(s.received.load(Relaxed));
            metrics::counter!("sluice_pipeline_retries_total", &[stage()])
                .absolute(s.retries.load(Relaxed));
            metrics::counter!("sluice_pipeline_restarts_total", &[stage()])
                .absolute(s.restarts.load(Relaxed));
        }
        let source_items = |outcome: &'static str| [("outcome", outcome)];
        for (outcome, n) in [
            ("emitted", &source.emitted),
            ("skipped", &source.skipped),
            ("other_shard", &source.other_shards),
        ] {
            metrics::counter!("sluice_pipeline_source_items_total", &source_items(outcome))
                .absolute(n.load(Relaxed));
        }
        if let Some((_, bars)) = &self.bars {
            let total = source.total.unwrap_or_else(|| source.emitted.load(Relaxed));
            for (s, bar) in stages.iter().zip(bars) {
                bar.set_length(total.saturating_sub(
                    source.skipped.load(Relaxed) + source.other_shards.load(Relaxed),
                ));
                bar.set_position(s.out.load(Relaxed) + s.failed.load(Relaxed));
                bar.set_message(format!(
                    "{} workers, {} failed",
                    s.alive.load(Relaxed),
                    s.failed.load(Relaxed)
                ));
            }
        }
        if let Some(every) = self.log_every {
            if self.last_log.elapsed() >= every {
                self.last_log = Instant::now();
                for s in stages {
                    tracing::info!(
                        stage = %s.name,
                        done = s.out.load(Relaxed),
                        failed = s.failed.load(Relaxed),
                        workers = s.alive.load(Relaxed),
                        "progress"
                    );
                }
            }
        }
    }

    pub fn finish(self) {
        if let Some((multi, bars)) = self.bars {
            for bar in bars {
                bar.finish();
            }
            let _ = multi.clear();
        }
    }
}

/// Runs `tick` every `every` on a thread until `stop` is set.
pub(crate) fn every(
    every: Duration,
    stop: Arc<AtomicBool>,
    mut tick: impl FnMut() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("sluice-monitor".into())
        .spawn(move || {
            while !stop.load(Relaxed) {
                std::thread::park_timeout(every);
                tick();
            }
        })
        .expect("spawning the monitor thread")
}
