//! Helpers for the benchmark files: reading criterion's command line the way criterion does
//! (quick/test mode, the filter), the bench data directory and its file system, environment
//! numbers, and nearest-rank latency runs for the printed reports.
//!
//! `benches/wal.rs`, `benches/store.rs` and `benches/read.rs` use it.

#![allow(
    dead_code,
    reason = "each bench binary includes this module and uses a different part of it"
)]

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, SamplingMode};
use tempfile::TempDir;

/// Criterion's options that take a value (so the filter can be told apart from their values).
const CRITERION_VALUE_OPTIONS: &[&str] = &[
    "-c",
    "--color",
    "--colour",
    "-s",
    "--save-baseline",
    "-b",
    "--baseline",
    "--baseline-lenient",
    "--format",
    "--profile-time",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
];

/// What the command line and the environment ask of a bench binary.
#[derive(Debug, Clone)]
pub struct RunMode {
    /// Tiny sizes and short measurements: a smoke run, not a measurement. Criterion's test mode
    /// (`-- --test`, or `cargo test --benches`) implies it, as does `HYBRIDSTORE_BENCH_QUICK=1`.
    pub quick: bool,
    /// Whether the printed report (named `report_name`) runs after the criterion groups: unless
    /// criterion lists (`--list`), profiles (`--profile-time`), or is given a filter that is not a
    /// substring of the report's name.
    pub report: bool,
    /// Criterion's filter (the first argument that is neither an option nor an option's value).
    pub filter: Option<String>,
    /// The bench data directory: `HYBRIDSTORE_BENCH_DIR`, default `<repo>/target/bench-data`.
    /// Not `/tmp`: it may be tmpfs, where `fdatasync` is free.
    pub dir: PathBuf,
}

impl RunMode {
    /// Reads the command line and the environment.
    pub fn from_args_and_env(report_name: &str) -> RunMode {
        let mut bench = false;
        let mut test = false;
        let mut list = false;
        let mut profile = false;
        let mut filter = None;
        let mut args = env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => bench = true,
                "--test" => test = true,
                "--list" => list = true,
                "--profile-time" => {
                    profile = true;
                    args.next();
                }
                a if a.starts_with("--profile-time=") => profile = true,
                a if CRITERION_VALUE_OPTIONS.contains(&a) => {
                    args.next();
                }
                a if a.starts_with('-') => {}
                a => {
                    filter.get_or_insert_with(|| a.to_owned());
                }
            }
        }
        // Criterion's rule: without `--bench` (as under `cargo test --benches`) it only tests.
        let test_mode = test || !bench;
        let quick = test_mode || env_flag("HYBRIDSTORE_BENCH_QUICK");
        let report = !list && !profile && filter.as_deref().is_none_or(|f| report_name.contains(f));
        let dir = env::var_os("HYBRIDSTORE_BENCH_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"),
            PathBuf::from,
        );
        RunMode {
            quick,
            report,
            filter,
            dir,
        }
    }

    /// Creates the data directory and prints where it is and on what file system, flagging
    /// tmpfs (where `fdatasync` costs nothing).
    pub fn announce(&self, what: &str) {
        fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("create the bench directory {}: {e}", self.dir.display()));
        let fs_type = filesystem_type(&self.dir).unwrap_or_else(|| "unknown".into());
        println!(
            "{what} benches: data in {} (file system: {fs_type}){}",
            self.dir.display(),
            if self.quick {
                "; quick mode (tiny sizes, not a measurement)"
            } else {
                ""
            }
        );
        if matches!(fs_type.as_str(), "tmpfs" | "ramfs") {
            println!(
                "WARNING: {fs_type} makes fdatasync free; set HYBRIDSTORE_BENCH_DIR to a directory on the real disk"
            );
        }
    }

    /// A fresh directory for one group, removed when dropped.
    pub fn temp_dir(&self, name: &str) -> TempDir {
        temp_dir_in(&self.dir, name)
    }
}

/// A fresh directory named `{name}-…` in `dir`, removed when dropped.
///
/// # Panics
/// If it cannot be created (a bench cannot run without it).
pub fn temp_dir_in(dir: &Path, name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(dir)
        .unwrap_or_else(|e| panic!("create a temporary directory in {}: {e}", dir.display()))
}

/// True when the variable is `1`, `true` or `yes`.
pub fn env_flag(name: &str) -> bool {
    env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// The variable as a number, if set.
///
/// # Panics
/// When it is set and not a number: a typo must not silently become the default.
pub fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid number")),
    )
}

/// The type of the file system holding `path`, from `/proc/self/mounts` (Linux).
pub fn filesystem_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?.replace("\\040", " ");
            let fs_type = fields.next()?.to_owned();
            Some((PathBuf::from(mount_point), fs_type))
        })
        .filter(|(mount_point, _)| path.starts_with(mount_point))
        // The longest mount point wins; for equal ones the later (over-)mount.
        .max_by_key(|(mount_point, _)| mount_point.as_os_str().len())
        .map(|(_, fs_type)| fs_type)
}

/// Criterion samples per benchmark.
pub const SAMPLE_SIZE: usize = 10;

/// Warm-up and measurement time of one group, and how criterion samples it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Criterion's warm-up time.
    pub warm_up: Duration,
    /// Criterion's measurement time.
    pub measurement: Duration,
    /// How criterion spreads its iterations over the samples.
    pub sampling: SamplingMode,
}

/// Every group in quick mode.
pub const TIMING_QUICK: Timing = Timing {
    warm_up: Duration::from_millis(300),
    measurement: Duration::from_secs(1),
    sampling: SamplingMode::Flat,
};

impl Timing {
    /// Applies this timing (or [`TIMING_QUICK`] in quick mode) and [`SAMPLE_SIZE`] to a group.
    pub fn configure(self, group: &mut BenchmarkGroup<'_, WallTime>, quick: bool) {
        let timing = if quick { TIMING_QUICK } else { self };
        group
            .sample_size(SAMPLE_SIZE)
            .warm_up_time(timing.warm_up)
            .measurement_time(timing.measurement)
            .sampling_mode(timing.sampling);
    }
}

/// A duration in whole nanoseconds.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Per-op latencies of one run and the wall time of the whole run.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// What ran.
    pub label: String,
    sorted_ns: Vec<u64>,
    /// Wall time of the run (throughput is ops / wall).
    pub wall: Duration,
}

impl LatencyRun {
    /// A run of `latencies_ns` (sorted here) that took `wall`.
    ///
    /// # Panics
    /// On an empty run.
    pub fn new(label: impl Into<String>, mut latencies_ns: Vec<u64>, wall: Duration) -> LatencyRun {
        assert!(!latencies_ns.is_empty(), "a latency run records ops");
        latencies_ns.sort_unstable();
        LatencyRun {
            label: label.into(),
            sorted_ns: latencies_ns,
            wall,
        }
    }

    /// Ops measured.
    pub fn ops(&self) -> usize {
        self.sorted_ns.len()
    }

    /// Nearest-rank percentile, in microseconds.
    pub fn percentile_us(&self, q: f64) -> f64 {
        let n = self.sorted_ns.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.sorted_ns[rank - 1] as f64 / 1000.0
    }

    /// Ops per second of wall time.
    pub fn ops_per_sec(&self) -> f64 {
        self.sorted_ns.len() as f64 / self.wall.as_secs_f64()
    }

    /// One report line: percentiles, op count and throughput.
    pub fn line(&self) -> String {
        format!(
            "{:<34}: p50 {:>9.2} µs  p99 {:>9.2} µs  p999 {:>9.2} µs  max {:>9.1} µs  ({} ops, {:.0} ops/s)",
            self.label,
            self.percentile_us(0.50),
            self.percentile_us(0.99),
            self.percentile_us(0.999),
            self.sorted_ns.last().copied().unwrap_or(0) as f64 / 1000.0,
            self.sorted_ns.len(),
            self.ops_per_sec()
        )
    }
}
