//! The demo: simulates a bot's message loop on the embedded default (the log alone, no database)
//! so a newcomer can see the engine work and inspect what it leaves behind.
//!
//! Each simulated chat receives a message and sends a reply (one atomic two-record append, as the
//! bot records an exchange), from several concurrent "handler" threads; then the demo reads the
//! whole log back, checking every record, and prints throughput and latency percentiles.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hybridstore_wal::{Durability, Options, Position, Wal};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Chats to simulate.
    pub chats: u64,
    /// Message exchanges (received + sent) per chat.
    pub exchanges_per_chat: u64,
    /// Concurrent handler threads.
    pub handlers: usize,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Appends made (each an exchange of two records).
    pub appends: u64,
    /// Wall time of the append phase.
    pub append_elapsed: Duration,
    /// Per-append latency percentiles: p50, p99, max.
    pub append_latency: [Duration; 3],
    /// Records read back and checked.
    pub records_read: u64,
    /// Wall time of the read-back.
    pub read_elapsed: Duration,
    /// The log's durable end after the run.
    pub durable_end: Position,
}

fn exchange(chat: u64, turn: u64) -> [Vec<u8>; 2] {
    let received = format!(
        r#"{{"chat_id":{chat},"direction":"in","turn":{turn},"text":"hi there, how was your day? ({turn})"}}"#
    );
    let sent = format!(
        r#"{{"chat_id":{chat},"direction":"out","turn":{turn},"text":"Lovely, thanks for asking! Tell me about yours. ({turn})"}}"#
    );
    [received.into_bytes(), sent.into_bytes()]
}

/// Runs the demo against the log in `data_dir/wal`, in the default (`always`) durability mode.
///
/// # Errors
/// If the log cannot be opened, an append fails, or a record read back differs.
pub fn run(data_dir: &Path, config: &DemoConfig) -> Result<DemoReport> {
    let wal_dir = data_dir.join(crate::WAL_SUBDIR);
    let options = Options {
        durability: Durability::Always,
        ..Options::default()
    };
    let wal = Wal::open(&wal_dir, options)
        .with_context(|| format!("opening the log in {}", wal_dir.display()))?;
    let start_position = wal.durable_end();
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| -> Result<Vec<Duration>> {
        let handlers: Vec<_> = (0..config.handlers as u64)
            .map(|handler| {
                let wal = wal.clone();
                let config = config.clone();
                scope.spawn(move || -> Result<Vec<Duration>> {
                    let mut latencies = Vec::new();
                    for turn in 0..config.exchanges_per_chat {
                        for chat in (handler..config.chats).step_by(config.handlers) {
                            let began = Instant::now();
                            wal.append(&exchange(chat, turn))
                                .context("appending an exchange")?;
                            latencies.push(began.elapsed());
                        }
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut all = Vec::new();
        for handler in handlers {
            all.extend(
                handler
                    .join()
                    .map_err(|_| anyhow::anyhow!("a handler thread panicked"))??,
            );
        }
        Ok(all)
    })?;
    let append_elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let append_latency = [
        percentile(0.50),
        percentile(0.99),
        *latencies.last().unwrap_or(&Duration::ZERO),
    ];

    let read_started = Instant::now();
    let mut records_read = 0u64;
    for record in wal.reader(start_position).context("opening a reader")? {
        let record = record.context("reading the log back")?;
        let text = std::str::from_utf8(&record.data).context("a record is not UTF-8")?;
        anyhow::ensure!(
            text.starts_with(r#"{"chat_id":"#),
            "record {} is not an exchange: {text}",
            record.position
        );
        records_read += 1;
    }
    let read_elapsed = read_started.elapsed();
    let appends = latencies.len() as u64;
    anyhow::ensure!(
        records_read == appends * 2,
        "read {records_read} records back, expected {}",
        appends * 2
    );
    let durable_end = wal.durable_end();
    wal.close().context("closing the log")?;
    Ok(DemoReport {
        appends,
        append_elapsed,
        append_latency,
        records_read,
        read_elapsed,
        durable_end,
    })
}
