//! Benchmarks of the `hybridstore` [`Store`]: what the event store costs over the log it sits
//! on, each figure read as a ratio against a baseline measured in the same run (style guide,
//! "Tests, fuzzing, benches").
//!
//! # What is measured
//! | criterion id                              | what                                                                 | unit |
//! |-------------------------------------------|----------------------------------------------------------------------|------|
//! | `wal_append_durable_64/<N>B`              | **baseline**: 64 OS threads, each `Wal::append` of one N-byte record per call (N = the encoded size of the store's `MessageReceived` envelope), `Durability::Always`; wall time for `iters` appends spread over the 64 threads started together | appends/s |
//! | `store_append_durable_64/MessageReceived` | 64 tokio tasks, each `Store::append` of one `MessageReceived` (with an idempotency key) to its own conversation stream, `Always`; timed the same way | appends/s |
//! | `projection_rebuild/wal_open_iterate`     | **baseline**: `Wal::open` + one verified pass over every record of the rebuild log (CRCs, no decoding) | events/s |
//! | `projection_rebuild/store_open`           | `Store::open` over the same log: recovery, then decoding every event into the per-stream index, the dedupe index and the projection | events/s |
//! | `hot_reads/{profile,last_messages_20,conversation_head,config_value}` | the bot's hot-path reads through the `Store` (`min_position: None`), on the store over the rebuild log; chats in a fixed random order | reads/s |
//! | report (stdout, after criterion)          | the ratios: store/wal append throughput (target ≥ 0.8) with p50/p99, durable appends with 500 idle and 500 active subscribers as ratios to none, and one appender's throughput and latency on each side in `Durability::Never` (CPU cost) and `Durability::Always`; rebuild events/s (target ≥ 1M/s) against the raw pass and a decode-only pass; read p50/p99/p999 (target p99 ≤ 5 µs) against the same lookup on a plain `Projection` (no lock, no async) | µs, ratios |
//!
//! # Reading the ratios
//! Only compare numbers from the same run on the same machine; the report prints the ratios
//! itself, from its own runs (appends: rounds alternating wal and store, summed, so drift hits
//! both sides alike).
//! - `store / wal` append throughput: what the store's validation, dedupe, per-stream lock,
//!   envelope encoding and the hop to the blocking pool cost at 64 concurrent appenders. The
//!   `fdatasync`s are shared by group commit on both sides.
//! - `Store::open / wal pass`: how much decoding and applying every event costs over reading the
//!   bytes. Hot page cache on both sides.
//! - reads `store / direct`: the handle's overhead (async call, `RwLock`, clones) over the
//!   projection's own lookup. `Instant::now()` is inside every per-op figure (tens of ns here).
//!
//! # Running
//! ```text
//! cargo bench --bench store                                 # full suite (~3 minutes) + report
//! cargo bench --bench store -- hot_reads                    # one group (criterion's filter)
//! cargo bench --bench store -- report                       # only the report
//! cargo bench --bench store -- --test                       # smoke: every bench once, tiny sizes
//! HYBRIDSTORE_BENCH_QUICK=1 cargo bench --bench store       # tiny sizes, 1 s measurements: smoke only
//! ```
//!
//! # Environment
//! - `HYBRIDSTORE_BENCH_DIR`: where data goes; default `<repo>/target/bench-data` (not `/tmp`,
//!   which may be tmpfs). The file system type is printed and tmpfs is flagged.
//! - `HYBRIDSTORE_BENCH_QUICK=1`: tiny sizes and short measurements, for smoke runs. Criterion's
//!   test mode (`-- --test`, or `cargo test --benches`) implies it.
//! - `HYBRIDSTORE_BENCH_REBUILD_EVENTS` (default 1000000, quick 20000): events in the rebuild log.
//! - `HYBRIDSTORE_BENCH_APPEND_OPS` (default 32000, quick 640): appends per side and round of the
//!   report's append comparison.
//! - `HYBRIDSTORE_BENCH_READ_OPS` (default 200000, quick 2000): reads per kind in the report.
//!   Explicit values win over quick mode.
//!
//! # Data on disk
//! Append groups work in temporary directories under the bench directory, removed when the group
//! ends. The rebuild log, `store-rebuild-<N>/` (the store's data directory in `data/`, the log's
//! layout in `manifest`), is built once with `Durability::Never` and reused by later runs when the
//! manifest matches and the log opens with the expected end; remove it with
//! `rm -rf target/bench-data/store-rebuild-*`. Setup time is never measured. The hot reads use a
//! store opened over the same log.
//!
//! The rebuild log is written through `Wal::append` in frames of 64 events, as group commit
//! writes them under 64 concurrent appenders, with envelopes built exactly as `Store::append`
//! builds them (`StoredEvent::new` + `encode`); going through `Store::append` would take minutes
//! for a million events and write the same bytes. Its mix, from a fixed seed: per chat a
//! `UserRegistered` and a `ProfileCreated`; exchanges (`MessageReceived` with a key,
//! `MessageSent` with generation metadata) on chats picked with a skew towards older chats;
//! every ~10th exchange an analysis (`ConversationAnalyzed` + `ProfileFactsRecorded`, one
//! two-event batch); follow-ups, configuration changes and `llm_call` analytics now and then;
//! 2% of the chats are new, with only a few messages (their `last_messages(20)` reaches past the
//! in-memory tail into the log, shown separately in the report).

mod common;

/// The same allocator as the `hybridstore` binary, so the figures are the shipped ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{env_number, nanos, LatencyRun, RunMode, Timing};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use hybridstore::events::{
    decode_record, AnalyticsRecorded, ConfigValueSet, ConversationAnalyzed, Event, FollowupFired,
    FollowupScheduled, Generation, Identity, JsonText, MessageReceived, MessageSent,
    ProfileCreated, ProfileFactsRecorded, StoredEvent, UserRegistered, ENVELOPE_FORMAT,
};
use hybridstore::projection::Projection;
use hybridstore::{
    BotId, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId, StreamVersion, Timestamp,
};
use hybridstore_wal::{Durability, Options, Position, Wal};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Sizes, seeds, timings
// ---------------------------------------------------------------------------------------------

/// Concurrent appenders of the append comparison.
const CONCURRENCY: usize = 64;
/// Length of every message text of the append comparison (so every envelope has nearly the same
/// encoded size).
const APPEND_TEXT_LEN: usize = 120;
/// Distinct texts / raw records generated per pool; appends cycle through them.
const POOL_LEN: usize = 4096;
/// The bench's bot.
const BOT: &str = "bench";
/// Events per chat, on average, in the rebuild log.
const EVENTS_PER_CHAT: u64 = 100;
/// One chat in this many is new: a few messages only.
const NEW_CHAT_EVERY: i64 = 50;
/// Events per `Wal::append` while building the rebuild log (a group commit's frame at 64
/// appenders).
const SETUP_FRAME_EVENTS: usize = 64;
/// Configuration keys of the bench bot.
const CONFIG_KEYS: usize = 16;
/// Messages the hot path reads.
const HISTORY_LEN: usize = 20;
/// When the rebuild log's clock starts (2026-01-01T00:00:00Z).
const LOG_CLOCK_START_MS: i64 = 1_767_225_600_000;

const SEED_APPEND: u64 = 0x6879_6273_7374_6f01;
const SEED_REBUILD: u64 = 0x6879_6273_7374_6f02;
const SEED_READS: u64 = 0x6879_6273_7374_6f03;

const REBUILD_EVENTS_DEFAULT: u64 = 1_000_000;
const REBUILD_EVENTS_QUICK: u64 = 20_000;
const APPEND_OPS_DEFAULT: u64 = 32_000;
const APPEND_OPS_QUICK: u64 = 640;
const READ_OPS_DEFAULT: usize = 200_000;
const READ_OPS_QUICK: usize = 2_000;
/// Rounds of the report's append comparison (each: a wal run, then a store run).
const APPEND_ROUNDS: usize = 3;
/// Timed opens of the report's rebuild comparison (the best of each is reported).
const REBUILD_ROUNDS: usize = 3;

/// Append groups (every op ends in a shared `fdatasync`).
const TIMING_FSYNC: Timing = Timing {
    warm_up: Duration::from_millis(1500),
    measurement: Duration::from_secs(6),
    sampling: SamplingMode::Auto,
};
/// `projection_rebuild` (about a second per open at the default size, plus an untimed close).
const TIMING_REBUILD: Timing = Timing {
    warm_up: Duration::from_secs(2),
    measurement: Duration::from_secs(10),
    sampling: SamplingMode::Flat,
};
/// `hot_reads` (microseconds per op).
const TIMING_READS: Timing = Timing {
    warm_up: Duration::from_secs(1),
    measurement: Duration::from_secs(3),
    sampling: SamplingMode::Auto,
};

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// What this run does, from the command line (as criterion reads it) and the environment.
#[derive(Debug)]
struct Settings {
    mode: RunMode,
    rebuild_events: u64,
    append_ops: u64,
    read_ops: usize,
}

impl Settings {
    fn from_args_and_env() -> Settings {
        let mode = RunMode::from_args_and_env("report");
        let quick = mode.quick;
        let pick = |quick_value, default| if quick { quick_value } else { default };
        let rebuild_events = env_number("HYBRIDSTORE_BENCH_REBUILD_EVENTS")
            .unwrap_or(pick(REBUILD_EVENTS_QUICK, REBUILD_EVENTS_DEFAULT));
        let append_ops = env_number("HYBRIDSTORE_BENCH_APPEND_OPS")
            .unwrap_or(pick(APPEND_OPS_QUICK, APPEND_OPS_DEFAULT));
        let read_ops = env_number("HYBRIDSTORE_BENCH_READ_OPS").unwrap_or(if quick {
            READ_OPS_QUICK
        } else {
            READ_OPS_DEFAULT
        });
        assert!(
            rebuild_events >= 1000,
            "HYBRIDSTORE_BENCH_REBUILD_EVENTS must be at least 1000"
        );
        assert!(
            append_ops >= CONCURRENCY as u64,
            "HYBRIDSTORE_BENCH_APPEND_OPS must be at least {CONCURRENCY}"
        );
        assert!(
            read_ops >= 1,
            "HYBRIDSTORE_BENCH_READ_OPS must be at least 1"
        );
        Settings {
            mode,
            rebuild_events,
            append_ops,
            read_ops,
        }
    }

    fn configure(&self, group: &mut BenchmarkGroup<'_, WallTime>, timing: Timing) {
        timing.configure(group, self.mode.quick);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime")
}

fn bot() -> BotId {
    BotId::new(BOT).expect("the bench bot id")
}

/// `len` lowercase letters and spaces from `rng`.
fn text(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| match rng.gen_range(0..32u8) {
            0..=25 => char::from(b'a' + rng.gen_range(0..26u8)),
            _ => ' ',
        })
        .collect()
}

fn message_received(text: &str, message_id: u64) -> Event {
    Event::MessageReceived(MessageReceived {
        telegram_message_id: Some(message_id as i64),
        text: text.to_owned(),
        content_type: "text".into(),
        legacy_ts: None,
    })
}

// ---------------------------------------------------------------------------------------------
// 1. wal_append_durable_64 and store_append_durable_64
// ---------------------------------------------------------------------------------------------

/// The append comparison's inputs: message texts, and raw records of the envelope's size.
struct AppendInputs {
    texts: Arc<Vec<String>>,
    records: Arc<Vec<Vec<u8>>>,
    record_len: usize,
}

/// Telegram message ids of the store's appends: unique across every run of the process, so
/// idempotency keys never repeat (a repeat would be deduplicated, not appended).
static NEXT_MESSAGE_ID: AtomicU64 = AtomicU64::new(1_000_000);

impl AppendInputs {
    fn new() -> AppendInputs {
        let mut rng = StdRng::seed_from_u64(SEED_APPEND);
        let texts: Vec<String> = (0..POOL_LEN)
            .map(|_| text(&mut rng, APPEND_TEXT_LEN))
            .collect();
        // The size of a typical envelope of the store run: a two-digit chat, a stream version in
        // the thousands, a seven-digit message id in the key.
        let stored = StoredEvent::new(
            &StreamId::conversation(&bot(), 10),
            StreamVersion(1000),
            (0, 1),
            Uuid::now_v7(),
            Some("tg:10:1000000:in".into()),
            Timestamp::now(),
            Timestamp::now(),
            &message_received(&texts[0], 1_000_000),
        )
        .expect("build an envelope");
        let record_len = stored.encode().expect("encode an envelope").len();
        let records = (0..POOL_LEN)
            .map(|_| {
                let mut record = vec![0u8; record_len];
                rng.fill(record.as_mut_slice());
                record
            })
            .collect();
        AppendInputs {
            texts: Arc::new(texts),
            records: Arc::new(records),
            record_len,
        }
    }
}

/// Appends each of `CONCURRENCY` workers makes of `total`.
fn share(total: u64, worker: usize) -> u64 {
    total / CONCURRENCY as u64 + u64::from((worker as u64) < total % CONCURRENCY as u64)
}

/// `total` raw one-record appends from 64 threads released together (spawning is not timed).
/// Returns the wall time and, when `record_latencies`, every append's latency in ns.
fn wal_append_round(
    wal: &Wal,
    inputs: &AppendInputs,
    total: u64,
    record_latencies: bool,
) -> (Duration, Vec<u64>) {
    let barrier = Barrier::new(CONCURRENCY + 1);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..CONCURRENCY)
            .map(|t| {
                let ops = share(total, t);
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut latencies =
                        Vec::with_capacity(if record_latencies { ops as usize } else { 0 });
                    barrier.wait();
                    for i in 0..ops as usize {
                        let record = &inputs.records[(t * 61 + i) % POOL_LEN];
                        let started = Instant::now();
                        black_box(wal.append(&[record]).expect("append"));
                        if record_latencies {
                            latencies.push(nanos(started.elapsed()));
                        }
                    }
                    latencies
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let latencies: Vec<Vec<u64>> = handles
            .into_iter()
            .map(|h| h.join().expect("an appender thread panicked"))
            .collect();
        (started.elapsed(), latencies.concat())
    })
}

/// `total` `Store::append`s of one `MessageReceived` from 64 tasks, each on its own
/// conversation stream, released together (spawning is not timed).
async fn store_append_round(
    store: &Store,
    inputs: &AppendInputs,
    total: u64,
    record_latencies: bool,
) -> (Duration, Vec<u64>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(CONCURRENCY + 1));
    let bot = bot();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let ops = share(total, t);
            let store = store.clone();
            let stream = StreamId::conversation(&bot, t as i64);
            let texts = inputs.texts.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut latencies =
                    Vec::with_capacity(if record_latencies { ops as usize } else { 0 });
                barrier.wait().await;
                for _ in 0..ops {
                    let id = NEXT_MESSAGE_ID.fetch_add(1, Ordering::Relaxed);
                    let event = NewEvent::new(message_received(&texts[id as usize % POOL_LEN], id))
                        .with_key(format!("tg:{t}:{id}:in"));
                    let started = Instant::now();
                    black_box(
                        store
                            .append(&stream, ExpectedVersion::Any, vec![event])
                            .await
                            .expect("append"),
                    );
                    if record_latencies {
                        latencies.push(nanos(started.elapsed()));
                    }
                }
                latencies
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("an appender task panicked"));
    }
    (started.elapsed(), latencies)
}

/// A log in a temporary directory.
struct TempWal {
    wal: Wal,
    _dir: TempDir,
}

impl TempWal {
    fn open(settings: &Settings, name: &str, durability: Durability) -> TempWal {
        let dir = settings.mode.temp_dir(name);
        let options = Options {
            durability,
            ..Options::default()
        };
        let wal = Wal::open(dir.path(), options).expect("open a bench log");
        TempWal { wal, _dir: dir }
    }
}

/// A store in a temporary directory.
struct TempStore {
    store: Store,
    _dir: TempDir,
}

impl TempStore {
    fn open(
        settings: &Settings,
        runtime: &tokio::runtime::Runtime,
        name: &str,
        durability: Durability,
    ) -> TempStore {
        let dir = settings.mode.temp_dir(name);
        let mut config = StoreConfig::new(dir.path());
        config.wal.durability = durability;
        let store = runtime
            .block_on(Store::open(config))
            .expect("open a bench store");
        TempStore { store, _dir: dir }
    }

    fn close(self, runtime: &tokio::runtime::Runtime) {
        runtime
            .block_on(self.store.close())
            .expect("close a bench store");
    }
}

fn bench_append_durable_64(c: &mut Criterion, settings: &Settings, inputs: &AppendInputs) {
    let runtime = runtime();
    {
        let mut group = c.benchmark_group("wal_append_durable_64");
        settings.configure(&mut group, TIMING_FSYNC);
        group.throughput(Throughput::Elements(1));
        let mut log: Option<TempWal> = None;
        group.bench_function(format!("{}B", inputs.record_len), |b| {
            let log =
                log.get_or_insert_with(|| TempWal::open(settings, "wal-x64", Durability::Always));
            b.iter_custom(|iters| wal_append_round(&log.wal, inputs, iters, false).0);
        });
        group.finish();
        if let Some(log) = log {
            log.wal.close().expect("close a bench log");
        }
    }
    let mut group = c.benchmark_group("store_append_durable_64");
    settings.configure(&mut group, TIMING_FSYNC);
    group.throughput(Throughput::Elements(1));
    let mut store: Option<TempStore> = None;
    group.bench_function("MessageReceived", |b| {
        let store = store.get_or_insert_with(|| {
            TempStore::open(settings, &runtime, "store-x64", Durability::Always)
        });
        b.iter_custom(|iters| {
            runtime
                .block_on(store_append_round(&store.store, inputs, iters, false))
                .0
        });
    });
    group.finish();
    if let Some(store) = store {
        store.close(&runtime);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. projection_rebuild
// ---------------------------------------------------------------------------------------------

/// The reusable rebuild log: a store's data directory.
struct RebuildLog {
    data_dir: PathBuf,
    events: u64,
}

impl RebuildLog {
    fn wal_dir(&self) -> PathBuf {
        self.data_dir.join(hybridstore::WAL_SUBDIR)
    }

    fn log_bytes(&self) -> u64 {
        fs::read_dir(self.wal_dir())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn rebuild_manifest(events: u64) -> String {
    let catalogue: Vec<String> = Event::CATALOGUE
        .iter()
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    format!(
        "hybridstore store rebuild bench log v1\nevents_min={events}\nseed={SEED_REBUILD:#x}\n\
         envelope_format={ENVELOPE_FORMAT}\nevents_per_chat={EVENTS_PER_CHAT}\n\
         frame_events={SETUP_FRAME_EVENTS}\ncatalogue={}\n",
        catalogue.join(",")
    )
}

/// Reuses the log under `root` if its manifest matches and it opens with the recorded end.
fn reuse_rebuild_log(root: &Path, events: u64) -> Option<RebuildLog> {
    let manifest = fs::read_to_string(root.join("manifest")).ok()?;
    let (expected, end_line) = manifest.rsplit_once("end_position=")?;
    if expected != rebuild_manifest(events) {
        println!(
            "projection_rebuild: the manifest of {} does not match; rebuilding",
            root.display()
        );
        return None;
    }
    let end: u64 = end_line.trim().parse().ok()?;
    let log = RebuildLog {
        data_dir: root.join("data"),
        events: end,
    };
    match Wal::open(log.wal_dir(), Options::default()) {
        Ok(wal) => {
            let matches = wal.durable_end() == Position(end);
            wal.close().expect("close the rebuild log");
            matches.then_some(log)
        }
        Err(e) => {
            println!(
                "projection_rebuild: cannot reuse {}: {e}; rebuilding",
                log.wal_dir().display()
            );
            None
        }
    }
}

/// Writes the rebuild log's events: envelopes as `Store::append` builds them, into frames of
/// [`SETUP_FRAME_EVENTS`].
struct LogWriter {
    wal: Wal,
    rng: StdRng,
    bot: BotId,
    versions: HashMap<StreamId, u64>,
    clock_ms: i64,
    pending: Vec<Vec<u8>>,
    written: u64,
}

impl LogWriter {
    /// Appends `events` to `stream` as one batch (a multi-event append of the store).
    fn append(&mut self, stream: &StreamId, events: Vec<(Event, Option<String>)>) {
        let first = *self.versions.get(stream).unwrap_or(&0);
        let count = events.len() as u32;
        for (index, (event, key)) in events.into_iter().enumerate() {
            let at = Timestamp(self.clock_ms);
            let random: [u8; 10] = self.rng.gen();
            let event_id = uuid::Builder::from_unix_timestamp_millis(self.clock_ms as u64, &random)
                .into_uuid();
            let stored = StoredEvent::new(
                stream,
                StreamVersion(first + index as u64),
                (index as u32, count),
                event_id,
                key,
                at,
                at,
                &event,
            )
            .and_then(|s| s.encode())
            .expect("encode an envelope");
            self.pending.push(stored);
        }
        self.versions
            .insert(stream.clone(), first + u64::from(count));
        self.written += u64::from(count);
        self.clock_ms += self.rng.gen_range(100..4000);
    }

    /// Writes the pending events as one frame once there are enough (whole batches only).
    fn flush(&mut self, force: bool) {
        if !self.pending.is_empty() && (force || self.pending.len() >= SETUP_FRAME_EVENTS) {
            self.wal
                .append(&self.pending)
                .expect("append while building the rebuild log");
            self.pending.clear();
        }
    }

    fn exchange(&mut self, chat: i64, message_id: &mut u64) {
        let stream = StreamId::conversation(&self.bot, chat);
        let received_len = self.rng.gen_range(5..300);
        let received = text(&mut self.rng, received_len);
        *message_id += 1;
        let key = format!("tg:{chat}:{message_id}:in");
        self.append(
            &stream,
            vec![(message_received(&received, *message_id), Some(key))],
        );
        let reply_len = self.rng.gen_range(20..400);
        let reply = text(&mut self.rng, reply_len);
        let generation = Generation {
            model: "gpt-bench-1".into(),
            response_id: Some(format!("resp_{chat}_{message_id}")),
            prompt_tokens: self.rng.gen_range(200..3000),
            completion_tokens: self.rng.gen_range(10..300),
            latency_ms: self.rng.gen_range(300..4000),
        };
        let key = format!("tg:{chat}:{message_id}:out");
        *message_id += 1;
        self.append(
            &stream,
            vec![(
                Event::MessageSent(MessageSent {
                    text: reply,
                    kind: "reply".into(),
                    generation: Some(generation),
                    legacy_ts: None,
                }),
                Some(key),
            )],
        );
    }

    fn analysis(&mut self, chat: i64, message_id: u64) {
        let stream = StreamId::conversation(&self.bot, chat);
        let id = format!("analysis-{message_id}");
        let summary_len = self.rng.gen_range(80..400);
        let summary = text(&mut self.rng, summary_len);
        let mood = ["cheerful", "curious", "tired", "playful"][self.rng.gen_range(0..4)];
        let facts = serde_json::json!({
            "mood": mood,
            "interests": [text(&mut self.rng, 8), text(&mut self.rng, 10)],
            "city": text(&mut self.rng, 9),
            "messages_seen": message_id,
        });
        self.append(
            &stream,
            vec![
                (
                    Event::ConversationAnalyzed(ConversationAnalyzed {
                        analysis_id: id.clone(),
                        summary,
                    }),
                    None,
                ),
                (
                    Event::ProfileFactsRecorded(ProfileFactsRecorded {
                        snapshot_id: id,
                        facts: JsonText::from_value(&facts),
                    }),
                    None,
                ),
            ],
        );
    }

    fn config(&mut self) {
        let key = format!("key_{}", self.rng.gen_range(0..CONFIG_KEYS));
        let value = serde_json::json!({ "enabled": self.rng.gen_bool(0.5), "limit": self.rng.gen_range(1..100) });
        self.append(
            &StreamId::bot(&self.bot),
            vec![(
                Event::ConfigValueSet(ConfigValueSet {
                    scope: "global".into(),
                    key,
                    value: JsonText::from_value(&value),
                }),
                None,
            )],
        );
    }
}

/// Builds (or reuses) the rebuild log: at least `settings.rebuild_events` events.
fn rebuild_log(settings: &Settings) -> RebuildLog {
    let target = settings.rebuild_events;
    let root = settings.mode.dir.join(format!("store-rebuild-{target}"));
    if let Some(log) = reuse_rebuild_log(&root, target) {
        println!(
            "projection_rebuild: reusing the {}-event log in {}",
            log.events,
            root.display()
        );
        return log;
    }
    if root.exists() {
        fs::remove_dir_all(&root).expect("remove the stale rebuild log");
    }
    let started = Instant::now();
    let data_dir = root.join("data");
    let wal = Wal::open(
        data_dir.join(hybridstore::WAL_SUBDIR),
        Options {
            durability: Durability::Never,
            ..Options::default()
        },
    )
    .expect("create the rebuild log");
    let bot = bot();
    let mut writer = LogWriter {
        wal,
        rng: StdRng::seed_from_u64(SEED_REBUILD),
        bot: bot.clone(),
        versions: HashMap::new(),
        clock_ms: LOG_CLOCK_START_MS,
        pending: Vec::new(),
        written: 0,
    };
    let chats = (target / EVENTS_PER_CHAT).max(10) as i64;
    for _ in 0..CONFIG_KEYS {
        writer.config();
    }
    let mut message_ids = vec![0u64; chats as usize];
    for chat in 0..chats {
        let identity = Identity {
            username: Some(format!("user{chat}")),
            first_name: Some(text(&mut writer.rng, 7)),
            last_name: None,
            language_code: Some("en".into()),
        };
        writer.append(
            &StreamId::user(&bot, chat),
            vec![(Event::UserRegistered(UserRegistered { identity }), None)],
        );
        let name = text(&mut writer.rng, 6);
        writer.append(
            &StreamId::conversation(&bot, chat),
            vec![(Event::ProfileCreated(ProfileCreated { name }), None)],
        );
        if chat % NEW_CHAT_EVERY == NEW_CHAT_EVERY - 1 {
            for _ in 0..writer.rng.gen_range(1..5) {
                writer.exchange(chat, &mut message_ids[chat as usize]);
            }
        }
        writer.flush(false);
    }
    let mut followup = 0u64;
    while writer.written < target {
        // Skewed towards older (lower) chats, as long-running chats talk most; new chats are
        // left with their few messages.
        let chat = loop {
            let chat = (writer.rng.gen::<f64>().powf(1.5) * chats as f64) as i64;
            if chat % NEW_CHAT_EVERY != NEW_CHAT_EVERY - 1 {
                break chat.min(chats - 1);
            }
        };
        writer.exchange(chat, &mut message_ids[chat as usize]);
        let roll = writer.rng.gen_range(0..1000);
        let stream = StreamId::conversation(&bot, chat);
        match roll {
            0..=99 => writer.analysis(chat, message_ids[chat as usize]),
            100..=119 => {
                followup += 1;
                let due_at = Timestamp(writer.clock_ms + 3_600_000);
                writer.append(
                    &stream,
                    vec![(
                        Event::FollowupScheduled(FollowupScheduled {
                            followup_id: format!("f{followup}"),
                            due_at,
                            reason: "silence".into(),
                        }),
                        None,
                    )],
                );
            }
            120..=134 => writer.append(
                &stream,
                vec![(
                    Event::FollowupFired(FollowupFired {
                        followup_id: format!("f{followup}"),
                    }),
                    None,
                )],
            ),
            135..=139 => writer.config(),
            140..=144 => {
                let tokens = writer.rng.gen_range(100..5000);
                writer.append(
                    &StreamId::telemetry(&bot),
                    vec![(
                        Event::AnalyticsRecorded(AnalyticsRecorded {
                            kind: "llm_call".into(),
                            user_id: Some(chat),
                            properties: JsonText::from_value(
                                &serde_json::json!({ "tokens": tokens, "purpose": "analysis" }),
                            ),
                        }),
                        None,
                    )],
                );
            }
            _ => {}
        }
        writer.flush(false);
    }
    writer.flush(true);
    let end = writer.wal.durable_end();
    assert_eq!(end.0, writer.written, "events written");
    writer.wal.close().expect("close the rebuild log");
    let mut manifest = rebuild_manifest(target);
    let _ = writeln!(manifest, "end_position={}", end.0);
    fs::write(root.join("manifest"), manifest).expect("write the rebuild log manifest");
    let log = RebuildLog {
        data_dir,
        events: end.0,
    };
    println!(
        "projection_rebuild: setup built a {}-event log ({chats} chats, {:.0} MiB) in {} in {:.1} s \
         (not measured; kept for later runs)",
        log.events,
        log.log_bytes() as f64 / (1024.0 * 1024.0),
        root.display(),
        started.elapsed().as_secs_f64()
    );
    log
}

/// `Store::open` over the log, timing only the open (recovery + rebuild of every index and the
/// projection). The store is returned open; dropping it (untimed) stops its projector and
/// closes the log.
fn timed_store_open(runtime: &tokio::runtime::Runtime, log: &RebuildLog) -> (Duration, Store) {
    let config = StoreConfig::new(&log.data_dir);
    let started = Instant::now();
    let store = runtime
        .block_on(Store::open(config))
        .expect("open the store over the rebuild log");
    let elapsed = started.elapsed();
    assert_eq!(store.durable_end(), Position(log.events), "rebuilt end");
    (elapsed, store)
}

/// `Wal::open` plus one verified pass over every record (optionally decoding each as an event),
/// timed whole; the log is closed (untimed) afterwards.
fn timed_wal_pass(log: &RebuildLog, decode: bool) -> Duration {
    let started = Instant::now();
    let wal = Wal::open(log.wal_dir(), Options::default()).expect("open the rebuild log");
    let mut count = 0u64;
    let mut fold = 0u64;
    let keys = hybridstore::crypto::Keyring::keyless();
    for record in wal.reader(Position(0)).expect("reader") {
        let record = record.expect("read a record");
        if decode {
            let event =
                decode_record(record.position, &record.data, &keys).expect("decode an event");
            fold = fold.wrapping_add(event.stream_version.0);
        } else {
            fold = fold.wrapping_add(record.data.len() as u64);
        }
        count += 1;
    }
    let elapsed = started.elapsed();
    black_box(fold);
    assert_eq!(count, log.events, "records read");
    wal.close().expect("close the rebuild log");
    elapsed
}

fn bench_projection_rebuild(c: &mut Criterion, settings: &Settings, log: &mut Option<RebuildLog>) {
    let runtime = runtime();
    let mut group = c.benchmark_group("projection_rebuild");
    settings.configure(&mut group, TIMING_REBUILD);
    // Criterion wants the throughput before the log (and so its exact size) may exist; the
    // target size is within an exchange of it.
    group.throughput(Throughput::Elements(settings.rebuild_events));
    group.bench_function("wal_open_iterate", |b| {
        let log = log.get_or_insert_with(|| rebuild_log(settings));
        b.iter_custom(|iters| (0..iters).map(|_| timed_wal_pass(log, false)).sum());
    });
    group.bench_function("store_open", |b| {
        let log = log.get_or_insert_with(|| rebuild_log(settings));
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (elapsed, store) = timed_store_open(&runtime, log);
                    drop(store);
                    elapsed
                })
                .sum()
        });
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. hot_reads
// ---------------------------------------------------------------------------------------------

/// The hot-path reads the bot makes before replying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    Profile,
    LastMessages,
    ConversationHead,
    ConfigValue,
}

impl ReadKind {
    const ALL: [ReadKind; 4] = [
        ReadKind::Profile,
        ReadKind::LastMessages,
        ReadKind::ConversationHead,
        ReadKind::ConfigValue,
    ];

    fn id(self) -> &'static str {
        match self {
            ReadKind::Profile => "profile",
            ReadKind::LastMessages => "last_messages_20",
            ReadKind::ConversationHead => "conversation_head",
            ReadKind::ConfigValue => "config_value",
        }
    }
}

/// A store opened over the rebuild log, a plain copy of its projection (the baseline), and the
/// chats and keys to read, in a fixed random order.
struct HotReads {
    store: Store,
    projection: Projection,
    bot: BotId,
    /// Chats whose last 20 messages are all in the in-memory tail, in read order.
    chats: Vec<i64>,
    /// Chats with fewer than 20 messages (their history read falls back to the log).
    short_chats: Vec<i64>,
    /// Configuration keys, in read order.
    keys: Vec<String>,
}

impl HotReads {
    fn open(runtime: &tokio::runtime::Runtime, log: &RebuildLog) -> HotReads {
        let (_, store) = timed_store_open(runtime, log);
        let projection = runtime
            .block_on(store.projection_snapshot())
            .expect("a projection snapshot");
        let bot = bot();
        let mut in_tail = Vec::new();
        let mut short_chats = Vec::new();
        for chat in projection.conversation_chats(&bot) {
            let Some(conversation) = projection.conversation(&bot, chat) else {
                continue;
            };
            let messages = conversation.head.messages_in + conversation.head.messages_out;
            if conversation.tail.len() >= HISTORY_LEN {
                in_tail.push(chat);
            } else if messages < HISTORY_LEN as u64 {
                short_chats.push(chat);
            }
        }
        assert!(
            !in_tail.is_empty(),
            "the rebuild log has chats with history"
        );
        let mut rng = StdRng::seed_from_u64(SEED_READS);
        let order = POOL_LEN.max(in_tail.len());
        let chats = (0..order)
            .map(|_| in_tail[rng.gen_range(0..in_tail.len())])
            .collect();
        let keys = (0..POOL_LEN)
            .map(|_| format!("key_{}", rng.gen_range(0..CONFIG_KEYS)))
            .collect();
        HotReads {
            store,
            projection,
            bot,
            chats,
            short_chats,
            keys,
        }
    }

    /// Read number `i` of `kind` through the store; returns a size to keep the result alive.
    async fn store_read(&self, kind: ReadKind, i: usize, chats: &[i64]) -> usize {
        let chat = chats[i % chats.len()];
        let bot = &self.bot;
        match kind {
            ReadKind::Profile => self
                .store
                .read_projection(None, |p| p.profile_shared(bot, chat))
                .await
                .expect("read a profile")
                .map_or(0, |p| p.name.len()),
            ReadKind::LastMessages => self
                .store
                .last_messages(&StreamId::conversation(bot, chat), HISTORY_LEN, None)
                .await
                .expect("read the last messages")
                .len(),
            ReadKind::ConversationHead => self
                .store
                .read_projection(None, |p| p.conversation(bot, chat).map(|c| c.head))
                .await
                .expect("read a head")
                .map_or(0, |h| h.messages_in as usize),
            ReadKind::ConfigValue => {
                let key = &self.keys[i % self.keys.len()];
                self.store
                    .read_projection(None, |p| p.config_value(bot, "global", key).cloned())
                    .await
                    .expect("read a config value")
                    .map_or(0, |v| v.is_object() as usize)
            }
        }
    }

    /// The same read on the plain projection: no lock, no async; the history clones only the 20
    /// messages it returns.
    fn direct_read(&self, kind: ReadKind, i: usize) -> usize {
        let chat = self.chats[i % self.chats.len()];
        let (p, bot) = (&self.projection, &self.bot);
        match kind {
            ReadKind::Profile => p.profile_shared(bot, chat).map_or(0, |p| p.name.len()),
            ReadKind::LastMessages => p.conversation(bot, chat).map_or(0, |c| {
                let skip = c.tail.len().saturating_sub(HISTORY_LEN);
                c.tail.iter().skip(skip).cloned().collect::<Vec<_>>().len()
            }),
            ReadKind::ConversationHead => p
                .conversation(bot, chat)
                .map(|c| c.head)
                .map_or(0, |h| h.messages_in as usize),
            ReadKind::ConfigValue => p
                .config_value(bot, "global", &self.keys[i % self.keys.len()])
                .cloned()
                .map_or(0, |v| v.is_object() as usize),
        }
    }

    /// `ops` store reads of `kind`, each timed.
    fn store_run(
        &self,
        runtime: &tokio::runtime::Runtime,
        kind: ReadKind,
        ops: usize,
        chats: &[i64],
        label: String,
    ) -> LatencyRun {
        runtime.block_on(async {
            let mut latencies = Vec::with_capacity(ops);
            let started = Instant::now();
            for i in 0..ops {
                let op = Instant::now();
                black_box(self.store_read(kind, i, chats).await);
                latencies.push(nanos(op.elapsed()));
            }
            LatencyRun::new(label, latencies, started.elapsed())
        })
    }

    /// `ops` direct reads of `kind`, each timed.
    fn direct_run(&self, kind: ReadKind, ops: usize) -> LatencyRun {
        let mut latencies = Vec::with_capacity(ops);
        let started = Instant::now();
        for i in 0..ops {
            let op = Instant::now();
            black_box(self.direct_read(kind, i));
            latencies.push(nanos(op.elapsed()));
        }
        LatencyRun::new(
            format!("{} (direct)", kind.id()),
            latencies,
            started.elapsed(),
        )
    }
}

fn bench_hot_reads(c: &mut Criterion, settings: &Settings, log: &mut Option<RebuildLog>) {
    let runtime = runtime();
    let mut group = c.benchmark_group("hot_reads");
    settings.configure(&mut group, TIMING_READS);
    group.throughput(Throughput::Elements(1));
    let mut reads: Option<HotReads> = None;
    for kind in ReadKind::ALL {
        group.bench_function(kind.id(), |b| {
            let reads = reads.get_or_insert_with(|| {
                let log = log.get_or_insert_with(|| rebuild_log(settings));
                HotReads::open(&runtime, log)
            });
            let mut next = 0usize;
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        black_box(reads.store_read(kind, next, &reads.chats).await);
                        next += 1;
                    }
                    started.elapsed()
                })
            });
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Report
// ---------------------------------------------------------------------------------------------

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn report_appends(out: &mut String, settings: &Settings, inputs: &AppendInputs) {
    let runtime = runtime();
    let wal = TempWal::open(settings, "report-wal-x64", Durability::Always);
    let store = TempStore::open(settings, &runtime, "report-store-x64", Durability::Always);
    let rounds = if settings.mode.quick {
        1
    } else {
        APPEND_ROUNDS
    };
    // Warm both (segment creation, first page faults, the blocking pool's threads).
    let warm_up = (settings.append_ops / 10).max(CONCURRENCY as u64);
    wal_append_round(&wal.wal, inputs, warm_up, false);
    runtime.block_on(store_append_round(&store.store, inputs, warm_up, false));
    let (mut wal_wall, mut wal_latencies) = (Duration::ZERO, Vec::new());
    let (mut store_wall, mut store_latencies) = (Duration::ZERO, Vec::new());
    for _ in 0..rounds {
        let (wall, latencies) = wal_append_round(&wal.wal, inputs, settings.append_ops, true);
        wal_wall += wall;
        wal_latencies.extend(latencies);
        let (wall, latencies) = runtime.block_on(store_append_round(
            &store.store,
            inputs,
            settings.append_ops,
            true,
        ));
        store_wall += wall;
        store_latencies.extend(latencies);
    }
    wal.wal.close().expect("close a bench log");
    store.close(&runtime);
    let wal_run = LatencyRun::new("wal append x64 (threads)", wal_latencies, wal_wall);
    let store_run = LatencyRun::new("store append x64 (tasks)", store_latencies, store_wall);
    let ratio = store_run.ops_per_sec() / wal_run.ops_per_sec();
    let _ = writeln!(
        out,
        "-- appends: {CONCURRENCY} concurrent, Durability::Always, one MessageReceived ({} B \
         encoded) per append, {rounds} round(s) of {} per side --",
        inputs.record_len, settings.append_ops
    );
    let _ = writeln!(out, "{}", wal_run.line());
    let _ = writeln!(out, "{}", store_run.line());
    let _ = writeln!(
        out,
        "{:<34}: {ratio:.3}  ({:.0} vs {:.0} appends/s; target >= 0.8: {})",
        "store / wal append throughput",
        store_run.ops_per_sec(),
        wal_run.ops_per_sec(),
        verdict(ratio >= 0.8)
    );
    report_append_cost(out, settings, inputs, &runtime);
}

/// Subscribers per kind in the report's subscription comparison.
const SUBSCRIBERS: usize = 500;

/// Durable appends from 64 tasks with no subscriber, with 500 idle subscribers (subscribed,
/// never reading: their queues fill and they fall back to reading the log when they resume),
/// and with 500 active ones (each reads every event), each on a fresh store, in one run.
fn report_subscribers(out: &mut String, settings: &Settings, inputs: &AppendInputs) {
    let runtime = runtime();
    let mut runs = Vec::new();
    for (label, subscribers, active) in [
        ("no subscribers", 0, false),
        ("500 idle subscribers", SUBSCRIBERS, false),
        ("500 active subscribers", SUBSCRIBERS, true),
    ] {
        let name = format!("report-subscribers-{subscribers}-{active}");
        let store = TempStore::open(settings, &runtime, &name, Durability::Always);
        let readers: Vec<_> = (0..subscribers)
            .map(|_| {
                let mut subscription = store.store.subscribe(Position(0)).expect("subscribe");
                runtime.spawn(async move {
                    let mut seen = 0u64;
                    if active {
                        // Ends with the store (or with the runtime, when the bench drops it).
                        while let Some(Ok(event)) = subscription.next_shared().await {
                            black_box(event);
                            seen += 1;
                        }
                    } else {
                        // Idle until the store closes.
                        std::future::pending::<()>().await;
                    }
                    seen
                })
            })
            .collect();
        let (wall, latencies) = runtime.block_on(store_append_round(
            &store.store,
            inputs,
            settings.append_ops,
            true,
        ));
        store.close(&runtime);
        for reader in readers {
            reader.abort();
        }
        runs.push(LatencyRun::new(label, latencies, wall));
    }
    let _ = writeln!(
        out,
        "-- appends with subscribers: {CONCURRENCY} concurrent, Durability::Always, {} appends \
         per case, a fresh store each --",
        settings.append_ops
    );
    let none = runs[0].ops_per_sec();
    for run in &runs {
        let _ = writeln!(
            out,
            "{}  ({:.3} of no subscribers)",
            run.line(),
            run.ops_per_sec() / none
        );
    }
}

/// One appender: what one append costs on each side, in `Durability::Never` (the CPU cost,
/// without the `fdatasync`) and in `Durability::Always` (what a bot process appending alone
/// sees), each store run beside a log run in the same report.
fn report_append_cost(
    out: &mut String,
    settings: &Settings,
    inputs: &AppendInputs,
    runtime: &tokio::runtime::Runtime,
) {
    for (durability, name, ops) in [
        (Durability::Never, "never", settings.append_ops as usize),
        (
            Durability::Always,
            "always",
            (settings.append_ops as usize / 8).max(1),
        ),
    ] {
        let wal = TempWal::open(settings, &format!("report-wal-x1-{name}"), durability);
        let mut latencies = Vec::with_capacity(ops);
        let started = Instant::now();
        for i in 0..ops {
            let op = Instant::now();
            black_box(
                wal.wal
                    .append(&[&inputs.records[i % POOL_LEN]])
                    .expect("append"),
            );
            latencies.push(nanos(op.elapsed()));
        }
        let wal_run = LatencyRun::new(
            format!("wal append x1, {name}"),
            latencies,
            started.elapsed(),
        );
        wal.wal.close().expect("close a bench log");
        let store = TempStore::open(
            settings,
            runtime,
            &format!("report-store-x1-{name}"),
            durability,
        );
        let stream = StreamId::conversation(&bot(), 1);
        let store_run = runtime.block_on(async {
            let mut latencies = Vec::with_capacity(ops);
            let started = Instant::now();
            for _ in 0..ops {
                let id = NEXT_MESSAGE_ID.fetch_add(1, Ordering::Relaxed);
                let event =
                    NewEvent::new(message_received(&inputs.texts[id as usize % POOL_LEN], id))
                        .with_key(format!("tg:1:{id}:in"));
                let op = Instant::now();
                black_box(
                    store
                        .store
                        .append(&stream, ExpectedVersion::Any, vec![event])
                        .await
                        .expect("append"),
                );
                latencies.push(nanos(op.elapsed()));
            }
            LatencyRun::new(
                format!("store append x1, {name}"),
                latencies,
                started.elapsed(),
            )
        });
        store.close(runtime);
        let _ = writeln!(out, "{}", wal_run.line());
        let _ = writeln!(out, "{}", store_run.line());
        let _ = writeln!(
            out,
            "{:<34}: {:.3}x the log's throughput; +{:.2} µs per append at p50",
            format!("store x1 / wal x1, {name}"),
            store_run.ops_per_sec() / wal_run.ops_per_sec(),
            store_run.percentile_us(0.5) - wal_run.percentile_us(0.5),
        );
    }
}

fn report_rebuild(out: &mut String, settings: &Settings, log: &RebuildLog) {
    let runtime = runtime();
    let rounds = if settings.mode.quick {
        1
    } else {
        REBUILD_ROUNDS
    };
    let best = |f: &mut dyn FnMut() -> Duration| (0..rounds).map(|_| f()).min().unwrap_or_default();
    let raw = best(&mut || timed_wal_pass(log, false));
    let decoded = best(&mut || timed_wal_pass(log, true));
    let open = best(&mut || {
        let (elapsed, store) = timed_store_open(&runtime, log);
        drop(store);
        elapsed
    });
    let rate = |d: Duration| log.events as f64 / d.as_secs_f64();
    let _ = writeln!(
        out,
        "-- projection rebuild: {} events ({:.0} MiB of segments), best of {rounds} --",
        log.events,
        log.log_bytes() as f64 / (1024.0 * 1024.0)
    );
    for (label, elapsed) in [
        ("wal open + verified pass", raw),
        ("  + decode every event", decoded),
        ("Store::open (rebuild)", open),
    ] {
        let _ = writeln!(
            out,
            "{label:<34}: {:>8.3} s  {:>10.0} events/s",
            elapsed.as_secs_f64(),
            rate(elapsed)
        );
    }
    let _ = writeln!(
        out,
        "{:<34}: {:.2}x the raw pass's time ({:.2}x the decode-only pass's); target >= 1M events/s: {}",
        "Store::open / wal pass",
        open.as_secs_f64() / raw.as_secs_f64(),
        open.as_secs_f64() / decoded.as_secs_f64(),
        verdict(rate(open) >= 1_000_000.0)
    );
}

fn report_reads(out: &mut String, settings: &Settings, log: &RebuildLog) {
    let runtime = runtime();
    let reads = HotReads::open(&runtime, log);
    let ops = settings.read_ops;
    let _ = writeln!(
        out,
        "-- hot-path reads (min_position: None) on the store over the rebuild log, {ops} per \
         kind, chats with >= {HISTORY_LEN} messages in memory --"
    );
    let mut worst_p99 = 0.0f64;
    let mut ratios = Vec::new();
    for kind in ReadKind::ALL {
        // Warm caches and the runtime first.
        reads.store_run(&runtime, kind, ops.min(1000), &reads.chats, String::new());
        let store = reads.store_run(
            &runtime,
            kind,
            ops,
            &reads.chats,
            format!("{} (store)", kind.id()),
        );
        let direct = reads.direct_run(kind, ops);
        let _ = writeln!(out, "{}", store.line());
        let _ = writeln!(out, "{}", direct.line());
        worst_p99 = worst_p99.max(store.percentile_us(0.99));
        ratios.push(format!(
            "{} {:.2}x",
            kind.id(),
            store.percentile_us(0.5) / direct.percentile_us(0.5).max(0.001)
        ));
    }
    let _ = writeln!(out, "{:<34}: {}", "store / direct p50", ratios.join(", "));
    let _ = writeln!(
        out,
        "{:<34}: {worst_p99:.2} µs (target <= 5 µs: {})",
        "worst store p99",
        verdict(worst_p99 <= 5.0)
    );
    if reads.short_chats.is_empty() {
        let _ = writeln!(
            out,
            "(no chat with fewer than {HISTORY_LEN} messages in this log)"
        );
    } else {
        let short = reads.store_run(
            &runtime,
            ReadKind::LastMessages,
            ops.min(20_000),
            &reads.short_chats,
            format!("last_messages_20, < {HISTORY_LEN} msgs"),
        );
        let _ = writeln!(
            out,
            "{}\n  (a chat with fewer than {HISTORY_LEN} messages: the history read goes past the \
             in-memory tail to the log)",
            short.line()
        );
    }
}

/// The ratios and latency percentiles criterion does not print.
fn report(settings: &Settings, inputs: &AppendInputs, log: &mut Option<RebuildLog>) {
    let mut out = String::new();
    println!("report: appends, then the rebuild, then reads...");
    report_appends(&mut out, settings, inputs);
    report_subscribers(&mut out, settings, inputs);
    let log = log.get_or_insert_with(|| rebuild_log(settings));
    report_rebuild(&mut out, settings, log);
    report_reads(&mut out, settings, log);
    let mut header = String::from("\n== hybridstore store report ==\n");
    if settings.mode.quick {
        header.push_str("(quick mode: tiny sizes, a smoke run, NOT a measurement)\n");
    }
    print!("{header}{out}");
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() {
    let settings = Settings::from_args_and_env();
    settings.mode.announce("hybridstore store");
    let inputs = AppendInputs::new();
    let mut log: Option<RebuildLog> = None;
    let mut c = Criterion::default().configure_from_args();
    bench_append_durable_64(&mut c, &settings, &inputs);
    bench_projection_rebuild(&mut c, &settings, &mut log);
    bench_hot_reads(&mut c, &settings, &mut log);
    if settings.mode.report {
        report(&settings, &inputs, &mut log);
    }
    c.final_summary();
}
