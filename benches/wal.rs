//! Benchmarks of `hybridstore-wal`, each read as a ratio against a raw baseline measured in the
//! same run (style guide, "Tests, fuzzing, benches"). Every record is 256 B.
//!
//! # What is measured
//! | criterion id                          | what                                                                 | unit |
//! |---------------------------------------|----------------------------------------------------------------------|------|
//! | `raw_write_fdatasync/256B`            | **baseline**: `pwrite` 256 B + `fdatasync` at increasing offsets of a file preallocated as the WAL preallocates segments (`FileSystem::open(CreateNew)` + `WalFile::allocate(64 MiB)`; `set_len` would make a sparse file, whose writes cost more) | writes/s |
//! | `append_durable_1/256B`               | `Wal::append` of one record, `Durability::Always`, one appender      | appends/s |
//! | `append_durable_concurrent/{16,64}`   | N threads appending one record per call, `Always`; the time is wall time for `iters` appends spread over N threads started together | appends/s |
//! | `append_never_1/256B`                 | as `append_durable_1` in `Durability::Never`: an append without its `fdatasync` | appends/s |
//! | `iterate_verified/<N>MiB`             | one full `wal.reader(Position(0))` pass over N MiB of payload (sealed, mmapped segments and the active one), every frame's CRCs checked | payload bytes/s |
//! | `open/open_after_clean_shutdown`      | `Wal::open` of a G GiB log that was closed cleanly (only the open is timed) | time/open |
//! | `open/open_after_crash`               | `Wal::open` of the same log with the `clean-shutdown` marker deleted and the last segment re-extended to 64 MiB, as a crash leaves it: the full active segment (~233k one-record frames) is scanned | time/open |
//! | latency report (stdout, after criterion) | p50/p99/p999/max per-op latency of raw write+fdatasync and durable appends x1/x16/x64, and throughput ratios from those runs | µs |
//!
//! # Reading the ratios
//! Only compare numbers from the same run on the same machine; the latency report prints the
//! main ratios itself (throughput from the wall time of its runs).
//! - `append_durable_1 / raw_write_fdatasync` (throughput): what the log costs over the
//!   `fdatasync` it cannot avoid. 1.0 is the ceiling; the append writes a 288 B frame (24 B header,
//!   4 B length, 256 B, 4 B padding) where the baseline writes 256 B, and adds the queue lock, the
//!   CRCs and the sparse index.
//! - `append_durable_concurrent/N / raw_write_fdatasync`: the group-commit gain. Above 1.0 means
//!   appends share `fdatasync`s; N is the upper bound.
//! - `append_never_1 / append_durable_1`: how much of a durable append is the `fdatasync`.
//! - `iterate_verified`: hot page cache, so it is CPU-bound (CRC + record slicing); compare with
//!   the machine's memory bandwidth, not with the disk.
//! - `open_after_crash / open_after_clean_shutdown`: what the clean-shutdown marker saves. Both run
//!   on a hot page cache (dropping caches needs root and disturbs other users of the machine).
//!
//! # Running
//! ```text
//! cargo bench --bench wal                                  # full suite (a few minutes) + latency report
//! cargo bench --bench wal -- open                          # one group (criterion's filter, a regex on ids)
//! cargo bench --bench wal -- latency                       # only the latency report
//! cargo bench --bench wal -- --test                        # smoke: every bench once, tiny sizes
//! HYBRIDSTORE_BENCH_QUICK=1 cargo bench --bench wal        # tiny sizes, 1 s measurements: smoke only
//! ```
//! The latency report runs unless criterion lists (`--list`), profiles (`--profile-time`), or is
//! given a filter that is not a substring of `latency_report`.
//!
//! # Environment
//! - `HYBRIDSTORE_BENCH_DIR`: where data goes; default `<repo>/target/bench-data`. Not `/tmp`: it
//!   may be tmpfs, where `fdatasync` is free. The file system type is printed and tmpfs is flagged.
//! - `HYBRIDSTORE_BENCH_QUICK=1`: tiny sizes (200 latency ops, 8 MiB iterate, 0.05 GiB open) and
//!   short measurement times, for smoke runs. Criterion's test mode (`-- --test`, or
//!   `cargo test --benches`) implies it.
//! - `HYBRIDSTORE_BENCH_ITER_MIB` (default 256), `HYBRIDSTORE_BENCH_OPEN_GIB` (default 10, rounded
//!   up to whole 64 MiB segments), `HYBRIDSTORE_BENCH_LATENCY_OPS` (default 5000 per latency run):
//!   explicit values win over quick mode.
//!
//! # Data on disk
//! Each group works in its own temporary directory under the bench directory, removed when the
//! group ends. The exception is the `open` log, `open-<G>gib/` (the log in `log/`, its expected
//! layout in `manifest`): building 10 GiB takes a while, so it is kept and reused by later runs
//! when the manifest matches and the log opens with the expected end and segment count; otherwise
//! it is rebuilt. Remove it with `rm -rf target/bench-data/open-*`. Setup time is never measured;
//! the open group prints how long building took.
//!
//! Record contents come from fixed seeds, so every run writes the same bytes.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{env_number, nanos, LatencyRun, RunMode, Timing};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use hybridstore_wal::config::SEGMENT_SIZE_BYTES_DEFAULT;
use hybridstore_wal::format::{align_up, record_encoded_len, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use hybridstore_wal::io::{FileSystem, OpenMode, StdFs, WalFile};
use hybridstore_wal::marker::MARKER_FILE_NAME;
use hybridstore_wal::segment::{list_segments, segment_path};
use hybridstore_wal::{Durability, Options, Position, Wal};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Sizes, seeds, timings
// ---------------------------------------------------------------------------------------------

/// Every record is this long.
const RECORD_LEN: usize = 256;
/// Segment size of every log (the default) and of the raw baseline file.
const SEGMENT_SIZE: u64 = SEGMENT_SIZE_BYTES_DEFAULT;
/// The raw baseline writes from here (where a segment's first frame goes) and wraps back here.
const RAW_FIRST_OFFSET: u64 = SEGMENT_HEADER_LEN as u64;
/// Records per append when building logs for `iterate_verified` and `open` (64 KiB of payload per
/// frame), so setup is fast.
const SETUP_BATCH_RECORDS: usize = 256;
/// Distinct records generated per pool; appends cycle through them.
const POOL_RECORDS: usize = 4096;
/// Appender threads of `append_durable_concurrent` and of the latency report.
const CONCURRENCY: [usize; 2] = [16, 64];
/// Thread `t` of a concurrent run starts at record `t * THREAD_RECORD_STRIDE` of the pool.
const THREAD_RECORD_STRIDE: usize = 61;

/// Seeds of the record pools (fixed: every run writes the same bytes).
const SEED_APPEND: u64 = 0x6879_6273_7761_6c01;
const SEED_ITERATE: u64 = 0x6879_6273_7761_6c02;
const SEED_OPEN: u64 = 0x6879_6273_7761_6c03;
const SEED_LATENCY: u64 = 0x6879_6273_7761_6c04;

const ITER_MIB_DEFAULT: u64 = 256;
const ITER_MIB_QUICK: u64 = 8;
const OPEN_GIB_DEFAULT: f64 = 10.0;
const OPEN_GIB_QUICK: f64 = 0.05;
const LATENCY_OPS_DEFAULT: usize = 5000;
const LATENCY_OPS_QUICK: usize = 200;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Groups whose operation ends in an `fdatasync` (milliseconds per op).
const TIMING_FSYNC: Timing = Timing {
    warm_up: Duration::from_millis(1500),
    measurement: Duration::from_secs(6),
    sampling: SamplingMode::Auto,
};
/// `append_never_1` (microseconds per op).
const TIMING_FAST: Timing = Timing {
    warm_up: Duration::from_secs(1),
    measurement: Duration::from_secs(5),
    sampling: SamplingMode::Auto,
};
/// `iterate_verified` (a fraction of a second per pass).
const TIMING_ITERATE: Timing = Timing {
    warm_up: Duration::from_secs(2),
    measurement: Duration::from_secs(8),
    sampling: SamplingMode::Flat,
};
/// `open` (tens of milliseconds per open, plus an untimed close and reset per iteration, so the
/// wall time is a few times the measurement time).
const TIMING_OPEN: Timing = Timing {
    warm_up: Duration::from_secs(1),
    measurement: Duration::from_secs(5),
    sampling: SamplingMode::Flat,
};

// ---------------------------------------------------------------------------------------------
// Settings: command line and environment
// ---------------------------------------------------------------------------------------------

/// What this run does, from the command line (as criterion reads it) and the environment.
#[derive(Debug)]
struct Settings {
    /// Tiny sizes and short measurements: a smoke run, not a measurement.
    quick: bool,
    /// Whether the latency report runs after the criterion groups.
    latency_report: bool,
    /// Bench data directory (on the disk being measured).
    dir: PathBuf,
    iterate_mib: u64,
    open_gib: f64,
    latency_ops: usize,
}

impl Settings {
    fn from_args_and_env() -> Settings {
        let mode = RunMode::from_args_and_env("latency_report");
        let (quick, latency_report, dir) = (mode.quick, mode.report, mode.dir);
        let iterate_mib = env_number("HYBRIDSTORE_BENCH_ITER_MIB").unwrap_or(if quick {
            ITER_MIB_QUICK
        } else {
            ITER_MIB_DEFAULT
        });
        let open_gib = env_number("HYBRIDSTORE_BENCH_OPEN_GIB").unwrap_or(if quick {
            OPEN_GIB_QUICK
        } else {
            OPEN_GIB_DEFAULT
        });
        let latency_ops = env_number("HYBRIDSTORE_BENCH_LATENCY_OPS").unwrap_or(if quick {
            LATENCY_OPS_QUICK
        } else {
            LATENCY_OPS_DEFAULT
        });
        assert!(
            iterate_mib >= 1,
            "HYBRIDSTORE_BENCH_ITER_MIB must be at least 1"
        );
        assert!(
            open_gib.is_finite() && open_gib > 0.0,
            "HYBRIDSTORE_BENCH_OPEN_GIB must be a positive number"
        );
        assert!(
            latency_ops >= 1,
            "HYBRIDSTORE_BENCH_LATENCY_OPS must be at least 1"
        );
        Settings {
            quick,
            latency_report,
            dir,
            iterate_mib,
            open_gib,
            latency_ops,
        }
    }

    fn configure(&self, group: &mut BenchmarkGroup<'_, WallTime>, timing: Timing) {
        timing.configure(group, self.quick);
    }

    /// A fresh directory for one group, removed when dropped.
    fn temp_dir(&self, name: &str) -> TempDir {
        common::temp_dir_in(&self.dir, name)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// A fixed pool of random records; appends cycle through it.
struct Records(Vec<[u8; RECORD_LEN]>);

impl Records {
    fn new(seed: u64) -> Records {
        let mut rng = StdRng::seed_from_u64(seed);
        Records(
            (0..POOL_RECORDS)
                .map(|_| {
                    let mut record = [0u8; RECORD_LEN];
                    rng.fill_bytes(&mut record);
                    record
                })
                .collect(),
        )
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.0[i % self.0.len()]
    }

    fn batch(&self, start: usize, len: usize) -> Vec<&[u8]> {
        (start..start + len).map(|i| self.get(i)).collect()
    }
}

/// The raw baseline: a file preallocated exactly as the WAL preallocates a segment, written with
/// `pwrite` + `fdatasync` at increasing offsets.
struct RawFile {
    file: Arc<dyn WalFile>,
    offset: u64,
    _dir: TempDir,
}

impl RawFile {
    fn create(settings: &Settings) -> RawFile {
        let dir = settings.temp_dir("raw");
        let path = dir.path().join("raw.seg");
        let fs = StdFs;
        let file = fs
            .open(&path, OpenMode::CreateNew)
            .expect("create the raw baseline file");
        file.allocate(SEGMENT_SIZE)
            .expect("preallocate the raw baseline file");
        file.sync_all().expect("fsync the raw baseline file");
        fs.sync_dir(dir.path()).expect("fsync the bench directory");
        RawFile {
            file,
            offset: RAW_FIRST_OFFSET,
            _dir: dir,
        }
    }

    fn write_sync(&mut self, record: &[u8]) {
        let len = record.len() as u64;
        if self.offset + len > SEGMENT_SIZE {
            self.offset = RAW_FIRST_OFFSET;
        }
        self.file
            .write_all_at(record, self.offset)
            .expect("raw write");
        self.file.sync_data().expect("raw fdatasync");
        self.offset += len;
    }
}

/// A log in a temporary directory.
struct TempWal {
    wal: Wal,
    dir: TempDir,
}

impl TempWal {
    fn open(settings: &Settings, name: &str, durability: Durability) -> TempWal {
        let dir = settings.temp_dir(name);
        let wal = Wal::open(
            dir.path(),
            Options {
                durability,
                ..Options::default()
            },
        )
        .expect("open a bench log");
        TempWal { wal, dir }
    }

    /// Closes the log, then removes its directory.
    fn close(self) {
        self.wal.close().expect("close a bench log");
        drop(self.dir);
    }
}

fn append_one(wal: &Wal, record: &[u8]) {
    black_box(wal.append(&[record]).expect("append"));
}

/// `total` one-record appends spread over `threads` threads released together by a barrier
/// (spawning is not timed). Returns the wall time from the release until the last thread is done
/// and, when `record_latencies`, every append's latency in nanoseconds.
fn append_concurrently(
    wal: &Wal,
    records: &Records,
    threads: usize,
    total: u64,
    record_latencies: bool,
) -> (Duration, Vec<u64>) {
    let barrier = Barrier::new(threads + 1);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ops = total / threads as u64 + u64::from((t as u64) < total % threads as u64);
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut latencies =
                        Vec::with_capacity(if record_latencies { ops as usize } else { 0 });
                    let first = t * THREAD_RECORD_STRIDE;
                    barrier.wait();
                    for i in 0..ops as usize {
                        let record = records.get(first + i);
                        if record_latencies {
                            let started = Instant::now();
                            append_one(wal, record);
                            latencies.push(nanos(started.elapsed()));
                        } else {
                            append_one(wal, record);
                        }
                    }
                    latencies
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let per_thread: Vec<Vec<u64>> = handles
            .into_iter()
            .map(|h| h.join().expect("an appender thread panicked"))
            .collect();
        let wall = started.elapsed();
        (wall, per_thread.concat())
    })
}

// ---------------------------------------------------------------------------------------------
// 1. raw_write_fdatasync
// ---------------------------------------------------------------------------------------------

fn bench_raw_write_fdatasync(c: &mut Criterion, settings: &Settings) {
    let records = Records::new(SEED_APPEND);
    let mut group = c.benchmark_group("raw_write_fdatasync");
    settings.configure(&mut group, TIMING_FSYNC);
    group.throughput(Throughput::Elements(1));
    // Fixtures are built the first time criterion runs the benchmark, so filtered-out and
    // `--list`ed benchmarks touch no disk.
    let mut raw: Option<RawFile> = None;
    let mut i = 0;
    group.bench_function("256B", |b| {
        let raw = raw.get_or_insert_with(|| RawFile::create(settings));
        b.iter(|| {
            raw.write_sync(records.get(i));
            i += 1;
        });
    });
    group.finish();
    drop(raw);
}

// ---------------------------------------------------------------------------------------------
// 2. append_durable_1 and 4. append_never_1
// ---------------------------------------------------------------------------------------------

fn bench_append_single(
    c: &mut Criterion,
    settings: &Settings,
    group_name: &str,
    durability: Durability,
    timing: Timing,
) {
    let records = Records::new(SEED_APPEND);
    let mut group = c.benchmark_group(group_name);
    settings.configure(&mut group, timing);
    group.throughput(Throughput::Elements(1));
    let mut log: Option<TempWal> = None;
    let mut i = 0;
    group.bench_function("256B", |b| {
        let log = log.get_or_insert_with(|| TempWal::open(settings, group_name, durability));
        b.iter(|| {
            append_one(&log.wal, records.get(i));
            i += 1;
        });
    });
    group.finish();
    if let Some(log) = log {
        log.close();
    }
}

fn bench_append_durable_1(c: &mut Criterion, settings: &Settings) {
    bench_append_single(
        c,
        settings,
        "append_durable_1",
        Durability::Always,
        TIMING_FSYNC,
    );
}

fn bench_append_never_1(c: &mut Criterion, settings: &Settings) {
    bench_append_single(
        c,
        settings,
        "append_never_1",
        Durability::Never,
        TIMING_FAST,
    );
}

// ---------------------------------------------------------------------------------------------
// 3. append_durable_concurrent/{16,64}
// ---------------------------------------------------------------------------------------------

fn bench_append_durable_concurrent(c: &mut Criterion, settings: &Settings) {
    let records = Records::new(SEED_APPEND);
    let mut group = c.benchmark_group("append_durable_concurrent");
    settings.configure(&mut group, TIMING_FSYNC);
    group.throughput(Throughput::Elements(1));
    for threads in CONCURRENCY {
        let mut log: Option<TempWal> = None;
        group.bench_with_input(
            BenchmarkId::from_parameter(threads),
            &threads,
            |b, &threads| {
                let log = log.get_or_insert_with(|| {
                    TempWal::open(settings, &format!("durable-x{threads}"), Durability::Always)
                });
                b.iter_custom(|iters| {
                    append_concurrently(&log.wal, &records, threads, iters, false).0
                });
            },
        );
        if let Some(log) = log {
            log.close();
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. iterate_verified
// ---------------------------------------------------------------------------------------------

/// Records written for `iterate_verified`: the configured payload, in whole setup batches.
fn iterate_records(settings: &Settings) -> u64 {
    let batch = SETUP_BATCH_RECORDS as u64;
    let records = settings.iterate_mib * MIB / RECORD_LEN as u64;
    (records / batch).max(1) * batch
}

/// Writes the log (`Never`: setup is not measured), closes it and reopens it, so every segment
/// but the last is sealed and read through its memory map.
fn build_iterate_log(settings: &Settings, records_total: u64) -> TempWal {
    let started = Instant::now();
    let records = Records::new(SEED_ITERATE);
    let log = TempWal::open(settings, "iterate", Durability::Never);
    let batches = records_total / SETUP_BATCH_RECORDS as u64;
    for n in 0..batches as usize {
        log.wal
            .append(&records.batch(n * SETUP_BATCH_RECORDS, SETUP_BATCH_RECORDS))
            .expect("append while building the iterate log");
    }
    let TempWal { wal, dir } = log;
    wal.close().expect("close the iterate log");
    let wal = Wal::open(dir.path(), Options::default()).expect("reopen the iterate log");
    assert_eq!(wal.durable_end(), Position(records_total));
    println!(
        "iterate_verified: setup wrote {} MiB in {} segments in {:.1} s (not measured)",
        records_total * RECORD_LEN as u64 / MIB,
        wal.segment_ids().len(),
        started.elapsed().as_secs_f64()
    );
    TempWal { wal, dir }
}

/// One full verified pass; returns the record count and a fold over the data.
fn read_all(wal: &Wal) -> (u64, u64) {
    let mut count = 0u64;
    let mut fold = 0u64;
    for record in wal.reader(Position(0)).expect("reader") {
        let record = record.expect("read a record");
        count += 1;
        fold = fold.wrapping_add(record.data.len() as u64) ^ u64::from(record.data[RECORD_LEN - 1]);
    }
    (count, fold)
}

fn bench_iterate_verified(c: &mut Criterion, settings: &Settings) {
    let records_total = iterate_records(settings);
    let mut group = c.benchmark_group("iterate_verified");
    settings.configure(&mut group, TIMING_ITERATE);
    group.throughput(Throughput::Bytes(records_total * RECORD_LEN as u64));
    let mut log: Option<TempWal> = None;
    let id = format!("{}MiB", records_total * RECORD_LEN as u64 / MIB);
    group.bench_function(id, |b| {
        let log = log.get_or_insert_with(|| build_iterate_log(settings, records_total));
        b.iter(|| {
            let (count, fold) = read_all(&log.wal);
            assert_eq!(count, records_total);
            black_box(fold)
        });
    });
    group.finish();
    if let Some(log) = log {
        log.close();
    }
}

// ---------------------------------------------------------------------------------------------
// 6. open
// ---------------------------------------------------------------------------------------------

/// The reusable log of the `open` group.
struct OpenLog {
    dir: PathBuf,
    marker: PathBuf,
    last_segment: PathBuf,
    end: Position,
    segments: usize,
}

/// One-record frame length (what a single durable appender writes).
fn single_frame_len() -> u64 {
    align_up(FRAME_HEADER_LEN + record_encoded_len(RECORD_LEN)) as u64
}

/// How many frames of `frame_len` bytes fit in one segment.
fn frames_per_segment(frame_len: u64) -> u64 {
    (SEGMENT_SIZE - SEGMENT_HEADER_LEN as u64) / frame_len
}

/// Segments of the `open` log: the requested size rounded up to whole segments.
fn open_segments(settings: &Settings) -> usize {
    ((settings.open_gib * GIB as f64 / SEGMENT_SIZE as f64).ceil() as usize).max(1)
}

fn open_manifest(segments: usize) -> String {
    format!(
        "hybridstore-wal open bench log v1\nsegment_size_bytes={SEGMENT_SIZE}\nrecord_len={RECORD_LEN}\n\
         batch_records={SETUP_BATCH_RECORDS}\nlast_segment=one-record frames, full\nsegments={segments}\n"
    )
}

/// Reuses the log under `root` if its manifest and contents match; `None` otherwise.
fn reuse_open_log(root: &Path, segments: usize) -> Option<OpenLog> {
    let manifest = fs::read_to_string(root.join("manifest")).ok()?;
    let (expected, end_line) = manifest.rsplit_once("end_position=")?;
    if expected != open_manifest(segments) {
        println!(
            "open: the manifest of {} does not match; rebuilding",
            root.display()
        );
        return None;
    }
    let end = Position(end_line.trim().parse().ok()?);
    let log = open_log_paths(root, end, segments)?;
    let wal = match Wal::open(&log.dir, Options::default()) {
        Ok(wal) => wal,
        Err(e) => {
            println!("open: cannot reuse {}: {e}; rebuilding", log.dir.display());
            return None;
        }
    };
    let matches = wal.durable_end() == end && wal.segment_ids().len() == segments;
    wal.close().expect("close the open log");
    let last_full =
        fs::metadata(&log.last_segment).is_ok_and(|m| m.len() + single_frame_len() > SEGMENT_SIZE);
    if matches && last_full {
        Some(log)
    } else {
        println!(
            "open: {} is not the expected log; rebuilding",
            log.dir.display()
        );
        None
    }
}

fn open_log_paths(root: &Path, end: Position, segments: usize) -> Option<OpenLog> {
    let dir = root.join("log");
    let last = *list_segments(&StdFs, &dir).ok()?.last()?;
    Some(OpenLog {
        marker: dir.join(MARKER_FILE_NAME),
        last_segment: segment_path(&dir, last),
        dir,
        end,
        segments,
    })
}

/// Builds (or reuses) the `open` log: sealed segments of 64 KiB frames (fast to write), then a
/// last segment filled to the brim with one-record frames, as single durable appenders leave it,
/// so a scan after a crash checks the most frames a segment can hold.
fn open_log(settings: &Settings) -> OpenLog {
    let segments = open_segments(settings);
    let root = settings.dir.join(format!("open-{}gib", settings.open_gib));
    if let Some(log) = reuse_open_log(&root, segments) {
        println!(
            "open: reusing the {} GiB log in {} ({segments} segments)",
            settings.open_gib,
            root.display()
        );
        return log;
    }
    if root.exists() {
        fs::remove_dir_all(&root).expect("remove the stale open log");
    }
    let started = Instant::now();
    let dir = root.join("log");
    let records = Records::new(SEED_OPEN);
    let wal = Wal::open(
        &dir,
        Options {
            durability: Durability::Never,
            // The layout below is exact (full segments): no early switch out of the first one.
            early_switch_after_bytes: 0,
            ..Options::default()
        },
    )
    .expect("create the open log");

    let batch_frame_len =
        align_up(FRAME_HEADER_LEN + SETUP_BATCH_RECORDS * record_encoded_len(RECORD_LEN)) as u64;
    let sealed_batches = (segments as u64 - 1) * frames_per_segment(batch_frame_len);
    for n in 0..sealed_batches as usize {
        wal.append(&records.batch(n * SETUP_BATCH_RECORDS, SETUP_BATCH_RECORDS))
            .expect("append while building the open log");
    }
    // The batches end exactly at the end of segment `segments - 1` (a log always has one).
    assert_eq!(
        wal.segment_ids().len(),
        (segments - 1).max(1),
        "segments after the batches"
    );
    // One-record appends fill what is left of the previous segment first; count only the frames
    // that land in the last one.
    let mut in_last = 0;
    let mut n = 0;
    while in_last < frames_per_segment(single_frame_len()) {
        append_one(&wal, records.get(n));
        n += 1;
        if wal.segment_ids().len() == segments {
            in_last += 1;
        }
    }
    let end = wal.durable_end();
    wal.close().expect("close the open log");

    let log = open_log_paths(&root, end, segments).expect("the open log has segments");
    let last_len = fs::metadata(&log.last_segment)
        .expect("stat the last segment")
        .len();
    assert!(
        last_len + single_frame_len() > SEGMENT_SIZE,
        "the last segment is full ({last_len} bytes)"
    );
    let mut manifest = open_manifest(segments);
    let _ = writeln!(manifest, "end_position={}", end.0);
    fs::write(root.join("manifest"), manifest).expect("write the open log manifest");
    println!(
        "open: setup built a {:.2} GiB log ({segments} segments, {} records) in {} in {:.1} s \
         (not measured; kept for later runs)",
        (segments as u64 * SEGMENT_SIZE) as f64 / GIB as f64,
        end.0,
        root.display(),
        started.elapsed().as_secs_f64()
    );
    log
}

/// Opens the log, timing only `Wal::open`; checks it recovered everything and closes it (the
/// close writes the clean-shutdown marker).
fn timed_open(log: &OpenLog) -> Duration {
    let started = Instant::now();
    let wal = Wal::open(&log.dir, Options::default()).expect("open the open log");
    let elapsed = started.elapsed();
    assert_eq!(wal.durable_end(), log.end, "recovered end");
    assert_eq!(wal.segment_ids().len(), log.segments, "recovered segments");
    wal.close().expect("close the open log");
    elapsed
}

/// Leaves the log as a crash would: no clean-shutdown marker and the last segment at its
/// preallocated size (frames, then zeros). Synced, so the timed open pays nothing for it.
fn simulate_crash(log: &OpenLog) {
    fs::remove_file(&log.marker).expect("remove the clean-shutdown marker");
    let fs = StdFs;
    let file = fs
        .open(&log.last_segment, OpenMode::ReadWrite)
        .expect("open the last segment");
    file.allocate(SEGMENT_SIZE)
        .expect("re-extend the last segment");
    file.sync_all().expect("fsync the last segment");
    fs.sync_dir(&log.dir).expect("fsync the log directory");
}

fn bench_open(c: &mut Criterion, settings: &Settings) {
    let mut group = c.benchmark_group("open");
    settings.configure(&mut group, TIMING_OPEN);
    let mut log: Option<OpenLog> = None;
    group.bench_function("open_after_clean_shutdown", |b| {
        let log = log.get_or_insert_with(|| open_log(settings));
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    assert!(log.marker.exists(), "the previous close left a marker");
                    timed_open(log)
                })
                .sum()
        });
    });
    group.bench_function("open_after_crash", |b| {
        let log = log.get_or_insert_with(|| open_log(settings));
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    simulate_crash(log);
                    timed_open(log)
                })
                .sum()
        });
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 7. Latency report
// ---------------------------------------------------------------------------------------------

fn latency_raw(settings: &Settings, records: &Records, warm_up: usize) -> LatencyRun {
    let ops = settings.latency_ops;
    let mut raw = RawFile::create(settings);
    for i in 0..warm_up {
        raw.write_sync(records.get(i));
    }
    let mut latencies = Vec::with_capacity(ops);
    let started = Instant::now();
    for i in 0..ops {
        let op = Instant::now();
        raw.write_sync(records.get(warm_up + i));
        latencies.push(nanos(op.elapsed()));
    }
    LatencyRun::new("raw write+fdatasync", latencies, started.elapsed())
}

fn latency_durable_1(settings: &Settings, records: &Records, warm_up: usize) -> LatencyRun {
    let ops = settings.latency_ops;
    let log = TempWal::open(settings, "latency-x1", Durability::Always);
    for i in 0..warm_up {
        append_one(&log.wal, records.get(i));
    }
    let mut latencies = Vec::with_capacity(ops);
    let started = Instant::now();
    for i in 0..ops {
        let op = Instant::now();
        append_one(&log.wal, records.get(warm_up + i));
        latencies.push(nanos(op.elapsed()));
    }
    let wall = started.elapsed();
    assert_eq!(log.wal.durable_end(), Position((warm_up + ops) as u64));
    log.close();
    LatencyRun::new("append durable x1", latencies, wall)
}

fn latency_durable_concurrent(
    settings: &Settings,
    records: &Records,
    warm_up: usize,
    threads: usize,
) -> LatencyRun {
    let log = TempWal::open(settings, &format!("latency-x{threads}"), Durability::Always);
    append_concurrently(&log.wal, records, threads, warm_up as u64, false);
    let (wall, latencies) = append_concurrently(
        &log.wal,
        records,
        threads,
        settings.latency_ops as u64,
        true,
    );
    let appended = warm_up + settings.latency_ops;
    assert_eq!(log.wal.durable_end(), Position(appended as u64));
    log.close();
    LatencyRun::new(format!("append durable x{threads}"), latencies, wall)
}

/// Per-op latencies (criterion reports means, not tails) and the throughput ratios of this run.
fn latency_report(settings: &Settings) {
    let records = Records::new(SEED_LATENCY);
    let warm_up = (settings.latency_ops / 20).max(5);
    println!(
        "latency report: {} ops per run after {warm_up} warm-up ops...",
        settings.latency_ops
    );
    let raw = latency_raw(settings, &records, warm_up);
    let durable_1 = latency_durable_1(settings, &records, warm_up);
    let concurrent: Vec<LatencyRun> = CONCURRENCY
        .iter()
        .map(|&threads| latency_durable_concurrent(settings, &records, warm_up, threads))
        .collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== hybridstore-wal latency report (256 B records) =="
    );
    if settings.quick {
        let _ = writeln!(
            out,
            "(quick mode: tiny sizes, a smoke run, NOT a measurement)"
        );
    }
    for run in [&raw, &durable_1].into_iter().chain(&concurrent) {
        let _ = writeln!(out, "{}", run.line());
    }
    let _ = writeln!(out, "-- throughput from the runs above (same run) --");
    let _ = writeln!(
        out,
        "{:<25}: {:.3}  ({:.0} vs {:.0} ops/s)",
        "append durable x1 / raw",
        durable_1.ops_per_sec() / raw.ops_per_sec(),
        durable_1.ops_per_sec(),
        raw.ops_per_sec()
    );
    for run in &concurrent {
        let _ = writeln!(
            out,
            "{:<25}: {:.0} appends/s  ({:.2}x raw)",
            run.label,
            run.ops_per_sec(),
            run.ops_per_sec() / raw.ops_per_sec()
        );
    }
    print!("{out}");
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() {
    let settings = Settings::from_args_and_env();
    RunMode {
        quick: settings.quick,
        report: settings.latency_report,
        filter: None,
        dir: settings.dir.clone(),
    }
    .announce("hybridstore-wal");

    let mut c = Criterion::default().configure_from_args();
    bench_raw_write_fdatasync(&mut c, &settings);
    bench_append_durable_1(&mut c, &settings);
    bench_append_durable_concurrent(&mut c, &settings);
    bench_append_never_1(&mut c, &settings);
    bench_iterate_verified(&mut c, &settings);
    bench_open(&mut c, &settings);
    if settings.latency_report {
        latency_report(&settings);
    }
    c.final_summary();
}
