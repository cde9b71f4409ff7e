//! Progress of a long replay: an indicatif bar with events/s and ETA on a terminal, a plain line
//! every few seconds when stderr is piped, nothing when quiet.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a plain progress line is printed when stderr is not a terminal (the environment
/// variable `HYBRIDSTORE_PROGRESS_INTERVAL_MS` overrides it).
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

fn plain_interval() -> Duration {
    std::env::var("HYBRIDSTORE_PROGRESS_INTERVAL_MS")
        .ok()
        .and_then(|ms| ms.trim().parse().ok())
        .map_or(PLAIN_INTERVAL, Duration::from_millis)
}

/// Reports how far a replay is.
#[derive(Debug)]
pub struct Progress {
    kind: Kind,
    total: u64,
    started: Instant,
}

#[derive(Debug)]
enum Kind {
    Bar(ProgressBar),
    Plain { last: Instant, every: Duration },
    Quiet,
}

impl Progress {
    /// A bar on a terminal, plain lines otherwise; nothing when `quiet`.
    pub fn new(total: u64, quiet: bool) -> Progress {
        let kind = if quiet {
            Kind::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events \
                     ({per_sec}, ETA {eta})",
                )
                .expect("the template is valid"),
            );
            Kind::Bar(bar)
        } else {
            Kind::Plain {
                last: Instant::now(),
                every: plain_interval(),
            }
        };
        Progress {
            kind,
            total,
            started: Instant::now(),
        }
    }

    /// `done` of the total events are replayed.
    pub fn set(&mut self, done: u64) {
        match &mut self.kind {
            Kind::Bar(bar) => bar.set_position(done),
            Kind::Plain { last, every } => {
                if last.elapsed() >= *every {
                    *last = Instant::now();
                    eprintln!("{}", self.line(done));
                }
            }
            Kind::Quiet => {}
        }
    }

    fn line(&self, done: u64) -> String {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / elapsed;
        let left = self.total.saturating_sub(done) as f64;
        let eta = if rate > 0.0 { left / rate } else { 0.0 };
        let percent = if self.total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / self.total as f64
        };
        format!(
            "replay: {done}/{} events ({percent:.1}%), {rate:.0} events/s, ETA {eta:.0}s",
            self.total
        )
    }

    /// Removes the bar (the summary follows).
    pub fn finish(&self) {
        if let Kind::Bar(bar) = &self.kind {
            bar.finish_and_clear();
        }
    }
}
