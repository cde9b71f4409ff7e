//! kill -9 crash loop: a real child process appends from several threads in `always` mode and is
//! killed at random moments; after each kill the parent reopens the log (running recovery) and
//! checks that every acknowledged batch is present at its acknowledged positions and that no
//! batch is partial. 200 kills by default; `HYBRIDSTORE_CRASH_KILLS=N` runs more.
//!
//! A kill -9 leaves the page cache intact, so this proves crash consistency of the process and
//! recovery, not durability against power loss; `sim_crash.rs` covers that through the simulated
//! disk.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hybridstore_wal::testing::check_batches;
use hybridstore_wal::{Options, Position, Wal};
use rand::{Rng, SeedableRng};

const FILLER_MAX: usize = 300;

fn kills() -> u64 {
    std::env::var("HYBRIDSTORE_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Proves that after each of ≥200 kill -9s, every acknowledged append survives whole, at the
/// position it was acknowledged with, and nothing partial appears.
#[test]
fn kill_nine_loop_keeps_every_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED_C4A5);
    let mut acked_total = 0usize;
    let mut verified_end = Position(0);
    let options = || Options {
        segment_size_bytes: 64 * 1024,
        ..Options::default()
    };
    for incarnation in 0..kills() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hybridstore-wal-crash-child"))
            .arg(dir.path())
            .arg(incarnation.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crash child");
        let acks: Arc<Mutex<Vec<(u64, u64, u64)>>> = Arc::default();
        let stdout = child.stdout.take().unwrap();
        let collector = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let parts: Vec<u64> = line
                        .split_whitespace()
                        .skip(1)
                        .filter_map(|p| p.parse().ok())
                        .collect();
                    if let [first, last, batch_id] = parts[..] {
                        acks.lock().unwrap().push((first, last, batch_id));
                    }
                }
            })
        };
        // Let the child get going (it must ack at least once), then kill it at a random moment.
        let started = Instant::now();
        while acks.lock().unwrap().is_empty() && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..20_000)));
        child.kill().expect("kill -9 the child");
        child.wait().unwrap();
        collector.join().unwrap();
        let acks = acks.lock().unwrap().clone();
        assert!(
            !acks.is_empty(),
            "incarnation {incarnation}: the child acknowledged nothing"
        );
        acked_total += acks.len();

        let wal = Wal::open(dir.path(), options())
            .unwrap_or_else(|e| panic!("incarnation {incarnation}: reopen failed: {e}"));
        let durable = wal.durable_end();
        assert!(
            durable >= verified_end,
            "incarnation {incarnation}: log shrank from {verified_end} to {durable}"
        );
        // Check what this incarnation wrote (earlier records were checked before and are
        // re-checked in full at the end).
        let records: Vec<_> = wal
            .reader(verified_end)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let batches = check_batches(&records, FILLER_MAX)
            .unwrap_or_else(|e| panic!("incarnation {incarnation}: {e}"));
        for (first, last, batch_id) in &acks {
            let found = batches.iter().find(|b| b.batch_id == *batch_id);
            let found = found.unwrap_or_else(|| panic!("incarnation {incarnation}: acknowledged batch {batch_id} at {first}..={last} is missing"));
            assert_eq!(found.first, Position(*first), "batch {batch_id} moved");
            assert_eq!(
                found.first.0 + u64::from(found.len) - 1,
                *last,
                "batch {batch_id} changed length"
            );
        }
        verified_end = durable;
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), options()).unwrap();
    let records: Vec<_> = wal
        .reader(Position(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let batches = check_batches(&records, FILLER_MAX).unwrap();
    assert!(
        batches.len() >= acked_total,
        "{} batches on disk, {acked_total} acknowledged",
        batches.len()
    );
    assert!(
        wal.segment_ids().len() > 1,
        "the loop must exercise rotation"
    );
}
