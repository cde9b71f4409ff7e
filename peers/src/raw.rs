//! The raw baselines: what one thread gets from the disk with `pwrite` of one 256-byte record and
//! `fdatasync` per record, into a 64 MiB file either preallocated with `fallocate` (unwritten
//! extents: each sync also commits an extent conversion) or pre-written (zeros written and
//! `fdatasync`ed beforehand: each sync writes data only). No log can beat the second for a lone
//! writer; a log that preallocates with `fallocate` pays the first's costs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use crate::engines::FILE_SIZE;
use crate::{record, Sample, Window};

/// How the baseline's file was prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prep {
    Fallocated,
    Prewritten,
}

impl Prep {
    pub const ALL: [Prep; 2] = [Prep::Fallocated, Prep::Prewritten];

    pub fn name(self) -> &'static str {
        match self {
            Prep::Fallocated => "raw pwrite+fdatasync, fallocated file",
            Prep::Prewritten => "raw pwrite+fdatasync, pre-written file",
        }
    }
}

/// Creates `dir/raw` prepared as `prep`, with its size and its directory entry durable, as a
/// log's segment would be before its first append.
fn prepare(dir: &Path, prep: Prep) -> File {
    let path = dir.join("raw");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create the raw baseline's file");
    match prep {
        Prep::Fallocated => {
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, FILE_SIZE)
                .expect("fallocate the raw baseline's file");
        }
        Prep::Prewritten => {
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..FILE_SIZE / zeros.len() as u64 {
                file.write_all(&zeros)
                    .expect("zero-fill the raw baseline's file");
            }
        }
    }
    file.sync_all().expect("fsync the raw baseline's file");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync the raw baseline's directory");
    file
}

/// One measurement of the baseline `prep` in a fresh file under `dir`.
///
/// Writes go to consecutive offsets from 0. Should a fast disk reach the end of the file, the
/// pre-written file wraps to 0 (still pre-written); the fallocated one stops there (its start is
/// no longer unwritten) and the throughput is over the time it ran.
pub fn measure(dir: &Path, prep: Prep, window: Window) -> Sample {
    let file = prepare(dir, prep);
    let mut rec = record(0);
    let mut offset = 0u64;
    let mut index = 0u64;
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut records = 0u64;
    let clock = window.start_clock();
    let mut stopped_early = None;
    loop {
        index += 1;
        rec[..8].copy_from_slice(&index.to_le_bytes());
        let started = Instant::now();
        file.write_all_at(&rec, offset)
            .expect("pwrite the raw baseline's record");
        file.sync_data().expect("fdatasync the raw baseline's file");
        let done = Instant::now();
        if clock.counts(done) {
            records += 1;
            latencies.push((done - started).as_nanos() as u64);
        }
        if clock.is_over(done) {
            break;
        }
        offset += rec.len() as u64;
        if offset + rec.len() as u64 > FILE_SIZE {
            match prep {
                Prep::Prewritten => offset = 0,
                Prep::Fallocated => {
                    stopped_early = Some(done);
                    break;
                }
            }
        }
    }
    let secs = match stopped_early {
        Some(at) => clock.measured_until(at).as_secs_f64(),
        None => window.measure.as_secs_f64(),
    };
    drop(file);
    std::fs::remove_file(dir.join("raw")).expect("remove the raw baseline's file");
    Sample {
        records_per_sec: if secs > 0.0 {
            records as f64 / secs
        } else {
            0.0
        },
        latencies,
    }
}
