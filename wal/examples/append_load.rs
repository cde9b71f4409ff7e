//! A load generator for profiling group commit: `append_load DIR THREADS OPS_PER_THREAD`
//! appends 256-byte records in `always` mode from THREADS threads and prints appends/s.

use std::time::Instant;

use hybridstore_wal::{Options, Wal};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(threads), Some(ops)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: append_load DIR THREADS OPS_PER_THREAD");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().expect("THREADS is a number");
    let ops: usize = ops.parse().expect("OPS_PER_THREAD is a number");
    let wal = Wal::open(dir, Options::default()).expect("open");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let wal = wal.clone();
            scope.spawn(move || {
                let record = [7u8; 256];
                for _ in 0..ops {
                    wal.append(&[record]).expect("append");
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let total = threads * ops;
    println!(
        "{total} appends in {elapsed:?}: {:.0} appends/s",
        total as f64 / elapsed.as_secs_f64()
    );
    wal.close().expect("close");
}
