//! The child process of the kill -9 crash loop (`tests/crash_kill.rs`): appends test batches from
//! several threads in `always` mode and prints `ACK <first> <last> <batch id>` after each append
//! is acknowledged, so the parent knows what must survive the kill.
//!
//! Usage: `hybridstore-wal-crash-child DIR INCARNATION` (the incarnation makes batch ids unique
//! across restarts).

use std::io::Write;
use std::sync::{Arc, Mutex};

use hybridstore_wal::testing::batch_records;
use hybridstore_wal::{Options, Wal};

/// Filler bound for the crash child's records (the parent checks with the same value).
const FILLER_MAX: usize = 300;
const THREADS: u64 = 4;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(incarnation)) = (args.next(), args.next()) else {
        eprintln!("usage: hybridstore-wal-crash-child DIR INCARNATION");
        std::process::exit(2);
    };
    let incarnation: u64 = incarnation.parse().unwrap_or_else(|_| {
        eprintln!("INCARNATION must be a number");
        std::process::exit(2);
    });
    // Background preparation (the default); every incarnation's reopened segment is left early
    // for a prepared one after 4 KiB, so kills land around early switches too.
    let options = Options {
        segment_size_bytes: 64 * 1024,
        early_switch_after_bytes: 4096,
        ..Options::default()
    };
    let wal = match Wal::open(&dir, options) {
        Ok(wal) => wal,
        Err(error) => {
            eprintln!("open failed: {error}");
            std::process::exit(1);
        }
    };
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let wal = wal.clone();
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                for counter in 0u64.. {
                    let batch_id = (incarnation << 32) | (thread << 24) | counter;
                    let len = 1 + (counter % 4) as u32;
                    let records = batch_records(batch_id, len, FILLER_MAX);
                    let result = wal.append(&records).expect("append");
                    let mut out = stdout.lock().expect("stdout lock");
                    // The line is written only after the append is acknowledged (durable).
                    writeln!(out, "ACK {} {} {batch_id}", result.first.0, result.last.0)
                        .expect("write ack");
                    out.flush().expect("flush ack");
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}
