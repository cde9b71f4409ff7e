//! The peer benchmark's driver: settings, the measurement loop (runs × cases × engines in
//! rotating order, plus the raw baselines), and the report (a markdown table and the targets).
//!
//! `cargo run --release --manifest-path peers/Cargo.toml -- [--runs N] [--secs S]
//! [--warmup S] [--data-dir DIR]`; the same settings as `PEERS_RUNS`, `PEERS_SECS`,
//! `PEERS_WARMUP` and `PEERS_DATA_DIR`. Flags win over the environment.

mod engines;
mod raw;
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engines::{Engine, Kind};
use stats::{fmt_latency, fmt_rate, percentiles, spread, Percentiles, Spread};

/// Every record is this long, in every engine and baseline.
pub const RECORD_LEN: usize = 256;

/// A record for writer `writer`: the index slot (bytes 0..8, filled per append) and a filler
/// that differs per writer, so no layer could deduplicate or find runs of zeros.
pub fn record(writer: usize) -> Vec<u8> {
    let mut r = vec![0u8; RECORD_LEN];
    for (i, b) in r.iter_mut().enumerate().skip(8) {
        *b = (i as u8).wrapping_mul(31).wrapping_add(writer as u8);
    }
    r
}

/// How long a measurement warms up and then counts.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

impl Window {
    /// Starts the clock: counting begins after the warm-up.
    pub fn start_clock(self) -> Clock {
        let start = Instant::now() + self.warmup;
        Clock {
            start,
            end: start + self.measure,
        }
    }
}

/// The counted interval of one measurement. An append counts when it completes inside it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    end: Instant,
}

impl Clock {
    pub fn counts(&self, done: Instant) -> bool {
        done >= self.start && done < self.end
    }

    pub fn is_over(&self, now: Instant) -> bool {
        now >= self.end
    }

    pub fn measured_until(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }
}

/// What one measurement gives: its throughput and one latency per append (nanoseconds).
pub struct Sample {
    pub records_per_sec: f64,
    pub latencies: Vec<u64>,
}

/// A workload: `writers` threads, each appending `batch` records at a time and waiting for the
/// acknowledgement before the next append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Case {
    writers: usize,
    batch: usize,
}

const CASES: [Case; 4] = [
    Case {
        writers: 1,
        batch: 1,
    },
    Case {
        writers: 16,
        batch: 1,
    },
    Case {
        writers: 64,
        batch: 1,
    },
    Case {
        writers: 1,
        batch: 100,
    },
];

impl Case {
    fn label(self) -> String {
        match (self.writers, self.batch) {
            (1, 1) => "1 writer".into(),
            (w, 1) => format!("{w} writers"),
            (1, b) => format!("batches of {b}, 1 writer"),
            (w, b) => format!("batches of {b}, {w} writers"),
        }
    }
}

struct Settings {
    runs: usize,
    window: Window,
    data_dir: PathBuf,
}

const USAGE: &str = "usage: peers [--runs N] [--secs S] [--warmup S] [--data-dir DIR]
  --runs N        runs, engines in rotating order (default 3; env PEERS_RUNS)
  --secs S        counted seconds per measurement (default 2; env PEERS_SECS)
  --warmup S      uncounted seconds before each (default 0.5; env PEERS_WARMUP)
  --data-dir DIR  where the logs go; must be a real disk, not tmpfs
                  (default peers/target/peer-data; env PEERS_DATA_DIR)";

fn settings() -> Settings {
    let mut runs = std::env::var("PEERS_RUNS").ok();
    let mut secs = std::env::var("PEERS_SECS").ok();
    let mut warmup = std::env::var("PEERS_WARMUP").ok();
    let mut data_dir = std::env::var("PEERS_DATA_DIR").ok();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--runs" => &mut runs,
            "--secs" => &mut secs,
            "--warmup" => &mut warmup,
            "--data-dir" => &mut data_dir,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other:?}")),
        };
        *slot = Some(
            args.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value"))),
        );
    }
    let seconds = |name: &str, value: Option<String>, default: f64| {
        let s = value.map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{name} {v:?} is not a number of seconds")))
        });
        if !(s >= 0.0 && s.is_finite()) {
            fail(&format!("{name} must be a non-negative number of seconds"));
        }
        Duration::from_secs_f64(s)
    };
    let runs = runs.map_or(3, |v| {
        v.parse()
            .unwrap_or_else(|_| fail(&format!("runs {v:?} is not a count")))
    });
    if runs == 0 {
        fail("runs must be at least 1");
    }
    let window = Window {
        measure: seconds("secs", secs, 2.0),
        warmup: seconds("warmup", warmup, 0.5),
    };
    if window.measure.is_zero() {
        fail("secs must be greater than zero");
    }
    let data_dir = data_dir.map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peer-data"),
        PathBuf::from,
    );
    Settings {
        runs,
        window,
        data_dir,
    }
}

fn fail(message: &str) -> ! {
    eprintln!("peers: {message}\n{USAGE}");
    std::process::exit(2);
}

/// The file system kind of `dir`, refusing tmpfs and ramfs: `fdatasync` costs nothing there, so
/// every figure would be meaningless.
fn file_system(dir: &Path) -> String {
    let st = rustix::fs::statfs(dir).expect("statfs the data directory");
    let name = match st.f_type as u64 {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x2FC1_2FC1 => "zfs",
        0x794C_7630 => "overlayfs",
        0x0102_1994 | 0x8584_58F6 => {
            eprintln!(
                "peers: {} is on tmpfs/ramfs, where fdatasync is free; point PEERS_DATA_DIR at a real disk",
                dir.display()
            );
            std::process::exit(2);
        }
        _ => return format!("type {:#x}", st.f_type),
    };
    name.to_owned()
}

/// Runs `engine` through `case` and closes it.
fn measure<E: Engine>(engine: E, case: Case, window: Window) -> Sample {
    let clock = window.start_clock();
    let per_writer: Vec<(u64, Vec<u64>)> = std::thread::scope(|scope| {
        let engine = &engine;
        let handles: Vec<_> = (0..case.writers)
            .map(|id| {
                scope.spawn(move || {
                    let mut writer = engine.writer(id);
                    let mut records: Vec<Vec<u8>> = (0..case.batch).map(|_| record(id)).collect();
                    let mut next_index = 1u64;
                    let mut counted = 0u64;
                    let mut latencies = Vec::with_capacity(1 << 14);
                    loop {
                        for r in &mut records {
                            r[..8].copy_from_slice(&next_index.to_le_bytes());
                            next_index += 1;
                        }
                        let started = Instant::now();
                        engine.append(&mut writer, &records);
                        let done = Instant::now();
                        if clock.counts(done) {
                            counted += case.batch as u64;
                            latencies.push((done - started).as_nanos() as u64);
                        }
                        if clock.is_over(done) {
                            break;
                        }
                    }
                    (counted, latencies)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a writer thread panicked"))
            .collect()
    });
    engine.close();
    let records: u64 = per_writer.iter().map(|(n, _)| n).sum();
    Sample {
        records_per_sec: records as f64 / window.measure.as_secs_f64(),
        latencies: per_writer.into_iter().flat_map(|(_, l)| l).collect(),
    }
}

fn measure_kind(kind: Kind, case: Case, settings: &Settings) -> Sample {
    let dir = tempfile::Builder::new()
        .prefix("peer-")
        .tempdir_in(&settings.data_dir)
        .expect("create a directory under the data directory");
    let log = dir.path().join("log");
    let sample = match kind {
        Kind::Hybridstore => measure(engines::Hybridstore::open(&log), case, settings.window),
        Kind::RaftEngine => measure(engines::RaftEngine::open(&log), case, settings.window),
        Kind::Okaywal => measure(engines::Okaywal::open(&log), case, settings.window),
    };
    dir.close().expect("remove the measurement's directory");
    settle();
    sample
}

/// Between measurements: write back whatever the last one left dirty (and the deletion of its
/// files) before the next starts, so it is not billed to the next engine.
fn settle() {
    rustix::fs::sync();
    std::thread::sleep(Duration::from_millis(100));
}

/// Every measurement of one row of the report.
#[derive(Default)]
struct Row {
    throughputs: Vec<f64>,
    latencies: Vec<u64>,
}

impl Row {
    fn add(&mut self, sample: Sample) {
        self.throughputs.push(sample.records_per_sec);
        self.latencies.extend(sample.latencies);
    }
}

/// A row reduced to what the report prints.
struct Summary {
    spread: Spread,
    latency: Option<Percentiles>,
}

fn summarize(mut row: Row) -> Summary {
    Summary {
        spread: spread(&row.throughputs).expect("at least one run"),
        latency: percentiles(&mut row.latencies),
    }
}

fn table_row(label: &str, name: &str, s: &Summary) -> String {
    let (p50, p99, p999) = match s.latency {
        Some(p) => (fmt_latency(p.p50), fmt_latency(p.p99), fmt_latency(p.p999)),
        None => ("–".into(), "–".into(), "–".into()),
    };
    format!(
        "| {label} | {name} | {} | {}–{} | {p50} | {p99} | {p999} |",
        fmt_rate(s.spread.median),
        fmt_rate(s.spread.min),
        fmt_rate(s.spread.max),
    )
}

const TABLE_HEAD: &str = "| case | engine | records/s (median) | range | p50 | p99 | p999 |\n\
                          |---|---|---:|---:|---:|---:|---:|";

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown date".into())
}

fn main() {
    let settings = settings();
    std::fs::create_dir_all(&settings.data_dir).expect("create the data directory");
    let fs = file_system(&settings.data_dir);
    let began = Instant::now();
    let date = now_utc();
    let load_before = load_average();
    eprintln!(
        "peers: {} runs, {:?} warm-up + {:?} counted per measurement, data in {} ({fs})",
        settings.runs,
        settings.window.warmup,
        settings.window.measure,
        settings.data_dir.display()
    );

    let mut rows: HashMap<(Case, Kind), Row> = HashMap::new();
    let mut raw_rows: HashMap<raw::Prep, Row> = HashMap::new();
    for run in 0..settings.runs {
        // Rotate the order so that, over three runs, each engine goes first, second and last
        // once: whatever the disk carries over from one measurement to the next (writeback,
        // discards, the other tenant) falls on each alike.
        let mut order = Kind::ALL;
        order.rotate_left(run % Kind::ALL.len());
        let mut raw_order = raw::Prep::ALL;
        raw_order.rotate_left(run % raw::Prep::ALL.len());
        for prep in raw_order {
            let sample = raw::measure(&settings.data_dir, prep, settings.window);
            eprintln!(
                "run {}/{} · {}: {} rec/s",
                run + 1,
                settings.runs,
                prep.name(),
                fmt_rate(sample.records_per_sec)
            );
            raw_rows.entry(prep).or_default().add(sample);
            settle();
        }
        for case in CASES {
            for kind in order {
                let sample = measure_kind(kind, case, &settings);
                eprintln!(
                    "run {}/{} · {} · {}: {} rec/s",
                    run + 1,
                    settings.runs,
                    case.label(),
                    kind.name(),
                    fmt_rate(sample.records_per_sec)
                );
                rows.entry((case, kind)).or_default().add(sample);
            }
        }
    }

    let summaries: HashMap<(Case, Kind), Summary> = rows
        .into_iter()
        .map(|(key, row)| (key, summarize(row)))
        .collect();
    let raw_summaries: HashMap<raw::Prep, Summary> = raw_rows
        .into_iter()
        .map(|(key, row)| (key, summarize(row)))
        .collect();

    println!(
        "## Peer benchmark, {date}\n\n\
         {} runs × {:?} counted (after {:?} warm-up) per engine and case; 256-byte records, \
         each acknowledged after fdatasync; data on {fs}; load average {load_before} before, \
         {} after; {:.0} s in all. Throughput: median and range over runs. Latency: per \
         acknowledgement (a batch's records share its latency), percentiles pooled over all \
         runs.\n",
        settings.runs,
        settings.window.measure,
        settings.window.warmup,
        load_average(),
        began.elapsed().as_secs_f64(),
    );
    println!("{TABLE_HEAD}");
    for case in CASES {
        for kind in Kind::ALL {
            println!(
                "{}",
                table_row(&case.label(), kind.name(), &summaries[&(case, kind)])
            );
        }
    }
    println!("\nRaw baselines (1 writer, 64 MiB file):\n\n{TABLE_HEAD}");
    for prep in raw::Prep::ALL {
        println!(
            "{}",
            table_row("1 writer", prep.name(), &raw_summaries[&prep])
        );
    }

    println!("\n### Targets (medians; p99 pooled)\n");
    let rate = |case: Case, kind: Kind| summaries[&(case, kind)].spread.median;
    let best_peer = |case: Case| {
        [Kind::RaftEngine, Kind::Okaywal]
            .into_iter()
            .map(|k| (rate(case, k), k))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .expect("two peers")
    };
    let verdict = |met: bool| if met { "met" } else { "missed" };
    let [one, sixteen, sixty_four, batches] = CASES;
    let target = |text: String, ratio: f64, needed: f64, lower_is_better: bool| {
        let met = if lower_is_better {
            ratio <= needed
        } else {
            ratio >= needed
        };
        println!(
            "- {text}: {ratio:.2}× ({} {needed:.2}×) — **{}**",
            if lower_is_better {
                "needs ≤"
            } else {
                "needs ≥"
            },
            verdict(met)
        );
    };
    target(
        "1 writer, throughput vs okaywal".into(),
        rate(one, Kind::Hybridstore) / rate(one, Kind::Okaywal),
        1.0,
        false,
    );
    let p99 = |kind: Kind| {
        summaries[&(one, kind)]
            .latency
            .map_or(f64::NAN, |p| p.p99.as_secs_f64())
    };
    target(
        format!(
            "1 writer, p99 vs okaywal's ({} vs {})",
            fmt_latency(Duration::from_secs_f64(p99(Kind::Hybridstore))),
            fmt_latency(Duration::from_secs_f64(p99(Kind::Okaywal)))
        ),
        p99(Kind::Hybridstore) / p99(Kind::Okaywal),
        1.0,
        true,
    );
    target(
        "1 writer, throughput vs the pre-written raw baseline".into(),
        rate(one, Kind::Hybridstore) / raw_summaries[&raw::Prep::Prewritten].spread.median,
        0.95,
        false,
    );
    target(
        "batches of 100, throughput vs okaywal".into(),
        rate(batches, Kind::Hybridstore) / rate(batches, Kind::Okaywal),
        1.0,
        false,
    );
    for case in [sixteen, sixty_four] {
        let (best, peer) = best_peer(case);
        target(
            format!(
                "{}, throughput vs the best peer ({})",
                case.label(),
                peer.name()
            ),
            rate(case, Kind::Hybridstore) / best,
            1.5,
            false,
        );
    }
}
