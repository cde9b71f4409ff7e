//! Does rotating segments put a spike in the append latency? 16 threads append 256-byte records
//! durably (`always`) to a log whose segments are 1 MiB (a rotation every ~3,900 records: several
//! a second) and, in the same run, to one with the default 64 MiB segments (none during a
//! measurement), rounds alternating; the report compares the p999 latencies. Target: p999 with
//! rotation ≤ 2× p999 without. With the preparer (the default) each rotation renames a segment
//! zero-filled ahead of time; `HYBRIDSTORE_BENCH_PREPARE=off` measures rotation creating its
//! segment inline, for comparison. Neither run switches early out of its first segment
//! (`early_switch_after_bytes: 0`), so the 64 MiB run never rotates.
//!
//! ```text
//! cargo bench --bench rotation          # ~30 s
//! ```
//! Under `cargo test --benches` it runs in quick mode (tiny counts: a smoke run).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{nanos, LatencyRun, RunMode};
use hybridstore_wal::{Durability, Options, PrepareSegments, Wal};

const WRITERS: usize = 16;
const RECORD_BYTES: usize = 256;

/// One measurement: `WRITERS` threads appending for `duration`; every acknowledgement's latency.
fn measure(
    dir: &std::path::Path,
    segment_bytes: u64,
    prepare: PrepareSegments,
    duration: Duration,
) -> (Vec<u64>, Duration, usize) {
    let options = Options {
        segment_size_bytes: segment_bytes,
        durability: Durability::Always,
        prepare,
        // The 64 MiB run must not rotate at all: no early switch out of its first segment. (In
        // the 1 MiB run the threshold, 1 MiB, is past half a segment: it never applies there.)
        early_switch_after_bytes: 0,
        ..Options::default()
    };
    let wal = Arc::new(Wal::open(dir, options).expect("open the log"));
    let started = Instant::now();
    let end = started + duration;
    let threads: Vec<_> = (0..WRITERS)
        .map(|_| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let record = vec![7u8; RECORD_BYTES];
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let at = Instant::now();
                    wal.append(&[&record]).expect("append");
                    latencies.push(nanos(at.elapsed()));
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for thread in threads {
        all.extend(thread.join().expect("writer"));
    }
    let wall = started.elapsed();
    let segments = wal.segment_ids().len();
    drop(wal);
    (all, wall, segments)
}

fn main() {
    let mode = RunMode::from_args_and_env("report");
    mode.announce("rotation");
    let (rounds, duration) = if mode.quick {
        (1, Duration::from_millis(200))
    } else {
        (3, Duration::from_secs(4))
    };
    let prepare = match std::env::var("HYBRIDSTORE_BENCH_PREPARE").as_deref() {
        Ok("off") => PrepareSegments::Off,
        _ => PrepareSegments::Background,
    };
    let mut rotating = Vec::new();
    let mut steady = Vec::new();
    let mut rotations = 0;
    let (mut wall_rotating, mut wall_steady) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let dir = mode.temp_dir("rotation-1mib");
        let (l, w, segments) = measure(dir.path(), 1 << 20, prepare, duration);
        rotations += segments.saturating_sub(1);
        rotating.extend(l);
        wall_rotating += w;
        let dir = mode.temp_dir("rotation-64mib");
        let (l, w, _) = measure(dir.path(), 64 << 20, prepare, duration);
        steady.extend(l);
        wall_steady += w;
    }
    let rotating = LatencyRun::new("16 writers, 1 MiB segments", rotating, wall_rotating);
    let steady = LatencyRun::new("16 writers, 64 MiB segments", steady, wall_steady);
    println!("\n== hybridstore-wal rotation report (preparer {prepare:?}) ==");
    println!("{}", rotating.line());
    println!("{}", steady.line());
    println!(
        "rotations during the rotating runs: {rotations}; p999 rotating / steady: {:.2}x (target <= 2x); p99 {:.2}x",
        rotating.percentile_us(0.999) / steady.percentile_us(0.999),
        rotating.percentile_us(0.99) / steady.percentile_us(0.99)
    );
}
