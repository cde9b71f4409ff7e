//! What crypto-shredding costs (design §10). Three figures, each a ratio against a baseline
//! measured in the same run, rounds alternating:
//!
//! 1. Durable appends (`always`), 64 tasks each appending one `MessageReceived` (200-byte text)
//!    to a conversation of its own, personal fields sealed vs written in the clear
//!    (`StoreConfig::seal_personal_fields`); every stream's key exists before the timing (a key
//!    is made once per subject). Target: ≥ 0.9×.
//! 2. `Store::open` rebuilding the projection from a log of sealed events vs a log of the same
//!    events in the clear (the decryption at open). Target: ≥ 0.8×.
//! 3. With Postgres (`DATABASE_URL`) and Redis (`REDIS_URL`) up, profiles and conversations
//!    `database-only`: the time from `Hybrid::erase` to a complete receipt (every sink at the
//!    erasure), over several erasures. Skipped, and said so, without `DATABASE_URL`.
//!
//! ```text
//! cargo bench --bench shred            # ~1 min
//! ```
//! Under `cargo test --benches` it runs in quick mode (tiny counts: a smoke run).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RunMode;
use hybridstore::events::{Event, MessageReceived, ProfileCreated};
use hybridstore::hybrid::{Hybrid, HybridConfig, SetOptions};
use hybridstore::ids::Subject;
use hybridstore::{
    BotId, Component, ExpectedVersion, MigrationState, NewEvent, Store, StoreConfig, StreamId,
};
use hybridstore_wal::Durability;

/// The allocator the binary uses (a per-thread heap: a rebuild decodes on one thread and frees
/// on another), as the other benches do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TASKS: usize = 64;
/// Chats of the bot-like rebuild log (39 events each).
const MIXED_CHATS: u64 = 25_000;
const TEXT_BYTES: usize = 200;

fn bot() -> BotId {
    BotId::new("bench").expect("a bot id")
}

fn message(i: u64) -> Event {
    let mut text = format!("message {i} ");
    while text.len() < TEXT_BYTES {
        text.push_str("lorem ipsum ");
    }
    text.truncate(TEXT_BYTES);
    Event::MessageReceived(MessageReceived {
        telegram_message_id: Some(i as i64),
        text,
        content_type: "text".into(),
        legacy_ts: None,
    })
}

fn config(dir: &std::path::Path, sealed: bool, durability: Durability) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.seal_personal_fields = sealed;
    config.wal.durability = durability;
    config
}

/// `per_task` appends from each of 64 tasks (one conversation each); appends per second.
async fn append_round(store: &Store, per_task: u64, round: u64) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::conversation(&bot(), t as i64);
                for i in 0..per_task {
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Any,
                            vec![NewEvent::new(message(round * 1_000_000 + i))],
                        )
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    (TASKS as u64 * per_task) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn appends(mode: &RunMode, runtime: &tokio::runtime::Runtime) -> (f64, f64) {
    let (rounds, per_task) = if mode.quick { (1, 5) } else { (5, 150) };
    let sealed_dir = mode.temp_dir("shred-append-sealed");
    let clear_dir = mode.temp_dir("shred-append-clear");
    runtime.block_on(async {
        let sealed = Store::open(config(sealed_dir.path(), true, Durability::Always))
            .await
            .expect("open");
        let clear = Store::open(config(clear_dir.path(), false, Durability::Always))
            .await
            .expect("open");
        // Keys made before timing: one append per stream.
        append_round(&sealed, 1, 0).await;
        append_round(&clear, 1, 0).await;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            with.push(append_round(&sealed, per_task, round).await);
            without.push(append_round(&clear, per_task, round).await);
        }
        sealed.close().await.expect("close");
        clear.close().await.expect("close");
        (median(with), median(without))
    })
}

/// Writes `events` messages over `chats` conversations (no fsync: `never`), closes.
fn write_log(dir: &std::path::Path, sealed: bool, events: u64, runtime: &tokio::runtime::Runtime) {
    runtime.block_on(async {
        let store = Store::open(config(dir, sealed, Durability::Never))
            .await
            .expect("open");
        let per_task = events / TASKS as u64;
        append_round(&store, per_task, 1).await;
        store.close().await.expect("close");
    });
}

/// Opens the store in `dir` (rebuilding its projection); seconds.
fn timed_open(dir: &std::path::Path, sealed: bool) -> f64 {
    let started = Instant::now();
    let store = Store::open_blocking(config(dir, sealed, Durability::Always)).expect("open");
    let elapsed = started.elapsed().as_secs_f64();
    drop(store);
    elapsed
}

/// Writes a bot-like log: `chats` conversations, each a profile, 36 messages both ways (the
/// bot's with LLM usage), an analysis and a fact snapshot, in appends of a few events, from 64
/// tasks (`never`: the writing is not what is measured). Returns the events written.
fn write_mixed_log(
    dir: &std::path::Path,
    sealed: bool,
    chats: u64,
    runtime: &tokio::runtime::Runtime,
) -> u64 {
    use hybridstore::events::{
        ConversationAnalyzed, Generation, JsonText, MessageSent, ProfileFactsRecorded,
    };
    runtime.block_on(async {
        let store = Store::open(config(dir, sealed, Durability::Never))
            .await
            .expect("open");
        let tasks: Vec<_> = (0..TASKS as u64)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut written = 0u64;
                    for chat in (t..chats).step_by(TASKS) {
                        let stream = StreamId::conversation(&bot(), chat as i64);
                        let mut events = vec![Event::ProfileCreated(ProfileCreated {
                            name: format!("person {chat}"),
                        })];
                        for i in 0..18u64 {
                            events.push(message(i));
                            events.push(Event::MessageSent(MessageSent {
                                text: format!("reply {i} to chat {chat}: lorem ipsum dolor sit"),
                                kind: "reply".into(),
                                generation: Some(Generation {
                                    model: "gpt".into(),
                                    response_id: Some(format!("resp_{chat}_{i}")),
                                    prompt_tokens: 300,
                                    completion_tokens: 40,
                                    latency_ms: 900,
                                }),
                                legacy_ts: None,
                            }));
                        }
                        events.push(Event::ConversationAnalyzed(ConversationAnalyzed {
                            analysis_id: "a1".into(),
                            summary: format!("chat {chat} summary: likes hiking and cats"),
                        }));
                        let facts = serde_json::json!({"city": "Bishkek", "age": 25, "chat": chat});
                        events.push(Event::ProfileFactsRecorded(ProfileFactsRecorded {
                            snapshot_id: "s1".into(),
                            facts: JsonText::from_value(&facts),
                        }));
                        for chunk in events.chunks(4) {
                            store
                                .append(
                                    &stream,
                                    ExpectedVersion::Any,
                                    chunk.iter().cloned().map(NewEvent::new).collect(),
                                )
                                .await
                                .expect("append");
                            written += chunk.len() as u64;
                        }
                    }
                    written
                })
            })
            .collect();
        let mut written = 0;
        for task in tasks {
            written += task.await.expect("task");
        }
        store.close().await.expect("close");
        written
    })
}

/// The mixed log's rebuild, sealed vs clear: events/s each, and the events.
fn mixed_rebuilds(mode: &RunMode, runtime: &tokio::runtime::Runtime) -> (f64, f64, u64) {
    let (rounds, chats) = if mode.quick {
        (1, 64)
    } else {
        (3, MIXED_CHATS)
    };
    let sealed_dir = mode.temp_dir("shred-mixed-sealed");
    let clear_dir = mode.temp_dir("shred-mixed-clear");
    let events = write_mixed_log(sealed_dir.path(), true, chats, runtime);
    write_mixed_log(clear_dir.path(), false, chats, runtime);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        with.push(events as f64 / timed_open(sealed_dir.path(), true));
        without.push(events as f64 / timed_open(clear_dir.path(), false));
    }
    (median(with), median(without), events)
}

fn rebuilds(mode: &RunMode, runtime: &tokio::runtime::Runtime) -> (f64, f64, u64) {
    let (rounds, events) = if mode.quick { (1, 640) } else { (5, 200_000) };
    let sealed_dir = mode.temp_dir("shred-rebuild-sealed");
    let clear_dir = mode.temp_dir("shred-rebuild-clear");
    write_log(sealed_dir.path(), true, events, runtime);
    write_log(clear_dir.path(), false, events, runtime);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        with.push(events as f64 / timed_open(sealed_dir.path(), true));
        without.push(events as f64 / timed_open(clear_dir.path(), false));
    }
    (median(with), median(without), events)
}

/// Erasures timed from the call to the complete receipt, with Postgres and Redis; `None`
/// without `DATABASE_URL`.
fn erasures(mode: &RunMode, runtime: &tokio::runtime::Runtime) -> Option<Vec<Duration>> {
    std::env::var_os("DATABASE_URL")?;
    let count = if mode.quick { 2 } else { 20 };
    let dir = mode.temp_dir("shred-erase");
    runtime.block_on(async {
        // A database of its own (dropped with it), as the tests do.
        let db = hybridstore::testing::TestDb::create("shred_bench").await;
        let mut config = HybridConfig::new(StoreConfig::new(dir.path()));
        config.postgres = Some(db.config.clone());
        config.cache = std::env::var("REDIS_URL").ok().map(|url| {
            let mut cache = hybridstore::read::cache::CacheConfig {
                namespace: format!("hs-bench-{}", uuid::Uuid::now_v7()),
                ..Default::default()
            };
            cache.redis =
                Some(hybridstore::read::cache::RedisConfig::from_url(&url).expect("a Redis URL"));
            cache
        });
        config.supervisor.poll = Duration::from_millis(20);
        let hybrid = Hybrid::open(config).await.expect("open");
        let options = SetOptions {
            force: true,
            reason: Some("bench".into()),
            wait: Duration::from_secs(60),
        };
        for component in [Component::Profiles, Component::Conversations] {
            for state in [
                MigrationState::Enabled,
                MigrationState::DualWrite,
                MigrationState::DatabaseOnly,
            ] {
                hybrid
                    .set_component_state(&bot(), component, state, &options)
                    .await
                    .expect("transition");
            }
        }
        let store = hybrid.store().expect("a store").clone();
        for chat in 0..count {
            let stream = StreamId::conversation(&bot(), 10_000 + chat);
            let mut events = vec![NewEvent::new(Event::ProfileCreated(ProfileCreated {
                name: format!("person {chat}"),
            }))];
            events.extend((0..20).map(|i| NewEvent::new(message(i))));
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("append");
        }
        let mut times = Vec::new();
        for chat in 0..count {
            let subject = Subject::Chat {
                bot: bot(),
                chat_id: 10_000 + chat,
            };
            let started = Instant::now();
            let receipt = hybrid
                .erase(&subject, Duration::from_secs(30))
                .await
                .expect("erase");
            assert!(receipt.complete, "{receipt:?}");
            times.push(started.elapsed());
        }
        hybrid.close().await.expect("close");
        Some(times)
    })
}

/// Nanoseconds per seal+open of `text` with one of ring's AEADs.
fn ring_seal_open(
    algorithm: &'static ring::aead::Algorithm,
    key: &[u8; 32],
    text: &[u8],
    aad: &[u8],
    n: u64,
) -> f64 {
    let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(algorithm, key).unwrap());
    let started = Instant::now();
    for i in 0..n {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&i.to_le_bytes());
        let mut buf = text.to_vec();
        key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad),
            &mut buf,
        )
        .unwrap();
        let opened = key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad),
                &mut buf,
            )
            .unwrap();
        std::hint::black_box(opened);
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

/// Nanoseconds per seal+open of a 200-byte text, by AEAD implementation.
fn micro(mode: &RunMode) {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let n: u64 = if mode.quick { 1_000 } else { 200_000 };
    let text = vec![7u8; TEXT_BYTES];
    let aad = [1u8; 40];
    let key = [9u8; 32];
    let x = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
    let started = Instant::now();
    for i in 0..n {
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&i.to_le_bytes());
        let nonce = chacha20poly1305::XNonce::from_slice(&nonce);
        let sealed = x
            .encrypt(
                nonce,
                Payload {
                    msg: &text,
                    aad: &aad,
                },
            )
            .unwrap();
        let opened = x
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .unwrap();
        std::hint::black_box(opened);
    }
    let rustcrypto = started.elapsed().as_nanos() as f64 / n as f64;
    let ring_chacha = ring_seal_open(&ring::aead::CHACHA20_POLY1305, &key, &text, &aad, n);
    let ring_aes = ring_seal_open(&ring::aead::AES_256_GCM, &key, &text, &aad, n);
    println!(
        "seal+open of {TEXT_BYTES} B: XChaCha20-Poly1305 (RustCrypto) {rustcrypto:.0} ns, ChaCha20-Poly1305 (ring) {ring_chacha:.0} ns, AES-256-GCM (ring) {ring_aes:.0} ns"
    );
}

fn main() {
    let mode = RunMode::from_args_and_env("report");
    mode.announce("shred");
    // A filter (`cargo bench --bench shred -- rebuild`) runs the parts whose name has it:
    // `micro`, `append`, `rebuild`, `erase`.
    let wanted = |part: &str| mode.filter.as_deref().is_none_or(|f| part.contains(f));
    if wanted("micro") {
        micro(&mode);
    }
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
    );
    println!("\n== crypto-shredding report ==");
    if wanted("append") {
        let (with, without) = appends(&mode, &runtime);
        println!(
        "durable appends, 64 tasks: sealed {with:.0}/s, clear {without:.0}/s: {:.2}x (target >= 0.9x)",
        with / without
    );
    }
    if wanted("rebuild") {
        let (with, without, events) = rebuilds(&mode, &runtime);
        println!(
            "Store::open rebuild of {events} messages over 64 chats (decode-bound): sealed {with:.0} events/s, clear {without:.0} events/s: {:.2}x (target >= 0.8x)",
            with / without
        );
        let (with, without, events) = mixed_rebuilds(&mode, &runtime);
        println!(
            "Store::open rebuild of {events} bot-like events over {MIXED_CHATS} chats: sealed {with:.0} events/s, clear {without:.0} events/s: {:.2}x (target >= 0.8x)",
            with / without
        );
    }
    if !wanted("erase") {
        return;
    }
    match erasures(&mode, &runtime) {
        None => println!("erase -> complete receipt: skipped (no DATABASE_URL)"),
        Some(mut times) => {
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "erase -> complete receipt (Postgres + {}): median {:.1} ms, max {:.1} ms over {} erasures",
                if std::env::var("REDIS_URL").is_ok() { "Redis" } else { "no Redis" },
                ms(times[times.len() / 2]),
                ms(times[times.len() - 1]),
                times.len()
            );
        }
    }
}
