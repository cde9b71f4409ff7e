//! The README's first command: `hybridstore demo` runs the bot's message loop through the store
//! with no servers, and leaves a log whose events decode into what the demo did.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use hybridstore::events::Event;
use hybridstore::projection::Direction;
use hybridstore::{BotId, Store, StoreConfig, StreamId};
use hybridstore_wal::Position;

// What the demo writes, as `src/bin/hybridstore/demo.rs` defines it (the demo is part of the
// binary, not the library, so the test states the values it checks).
const DEMO_BOT_ID: &str = "demo";
const FIRST_CHAT_ID: i64 = 100_000;
const CONFIG_SCOPE: &str = "global";
const CONFIG_KEY_REPLY_MODEL: &str = "reply_model";
const REPLY_MODEL: &str = "demo-llm-1";

fn demo(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hybridstore"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("demo")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("HYBRIDSTORE_DATA_DIR")
        .output()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Proves the demo runs on the embedded default and leaves a log whose events decode into
/// exactly what it did: profiles, message counts, analyses, replies' response ids, histories and
/// the configured model, as a store opened on the directory afterwards serves them.
#[test]
fn demo_runs_log_only_and_leaves_decodable_events() {
    let data = tempfile::tempdir().unwrap();
    let (chats, exchanges) = (20i64, 12u64);
    let output = demo(
        data.path(),
        &["--chats", "20", "--exchanges", "12", "--handlers", "4"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 1 config value + 20 profiles + 20 x 12 x (in + out) + 20 analyses of two events each.
    let (appends, events) = (1 + 20 + 480 + 20, 1 + 20 + 480 + 40);
    assert!(
        stdout.contains(&format!("{appends} appends ({events} events)")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("the log ends at position {events}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("hot-path reads, read-your-writes"),
        "{stdout}"
    );
    assert!(stdout.contains("hybridstore-audit -- dump"), "{stdout}");

    runtime().block_on(async {
        let store = Store::open(StoreConfig::new(data.path())).await.unwrap();
        assert_eq!(store.durable_end(), Position(events));
        // Every record decodes as an event.
        let all = store.read_all(Position(0), usize::MAX).await.unwrap();
        assert_eq!(all.len() as u64, events);
        let mut by_type = BTreeMap::new();
        for event in &all {
            *by_type.entry(event.event.type_name()).or_insert(0u64) += 1;
            if let Event::MessageReceived(message) = &event.event {
                let chat = event.stream.key().unwrap();
                let id = message.telegram_message_id.unwrap();
                assert_eq!(
                    event.idempotency_key.as_deref(),
                    Some(format!("tg:{chat}:{id}:in").as_str())
                );
            }
        }
        let expected: BTreeMap<&str, u64> = [
            ("ConfigValueSet", 1),
            ("ConversationAnalyzed", 20),
            ("MessageReceived", 240),
            ("MessageSent", 240),
            ("ProfileCreated", 20),
            ("ProfileFactsRecorded", 20),
        ]
        .into();
        assert_eq!(by_type, expected);

        let bot = BotId::new(DEMO_BOT_ID).unwrap();
        let projection = store.projection_snapshot().await.unwrap();
        let profiles = projection.profiles(&bot);
        let chat_ids: Vec<i64> = profiles.keys().copied().collect();
        assert_eq!(
            chat_ids,
            (FIRST_CHAT_ID..FIRST_CHAT_ID + chats).collect::<Vec<_>>()
        );
        for (chat, profile) in profiles {
            assert_eq!(profile.message_count, 2 * exchanges, "chat {chat}");
            assert_eq!(profile.summary.len(), 1, "chat {chat}");
            assert_eq!(profile.profile.len(), 1, "chat {chat}");
            assert_eq!(
                profile.previous_response_id.as_deref(),
                Some(format!("resp_{chat}_{}", exchanges - 1).as_str())
            );
            let head = projection.conversation(&bot, chat).unwrap().head;
            assert_eq!((head.messages_in, head.messages_out), (12, 12));
            assert_eq!(head.unanswered, 0);
            let history = store
                .last_messages(&StreamId::conversation(&bot, chat), 20, None)
                .await
                .unwrap();
            assert_eq!(history.len(), 20);
            assert_eq!(history.last().unwrap().direction, Direction::Out);
        }
        assert_eq!(
            projection
                .config_value(&bot, CONFIG_SCOPE, CONFIG_KEY_REPLY_MODEL)
                .and_then(|v| v.as_str()),
            Some(REPLY_MODEL)
        );
        store.close().await.unwrap();
    });
}

/// Proves a second run on the same data directory simulates new chats after the first run's,
/// so the runs add up instead of colliding on expected versions or idempotency keys.
#[test]
fn demo_runs_again_on_the_same_directory() {
    let data = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let output = demo(data.path(), &["--chats", "3", "--exchanges", "1"]);
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    runtime().block_on(async {
        let store = Store::open(StoreConfig::new(data.path())).await.unwrap();
        let bot = BotId::new(DEMO_BOT_ID).unwrap();
        let chats: Vec<i64> = store
            .read_projection(None, |p| p.profiles(&bot).keys().copied().collect())
            .await
            .unwrap();
        assert_eq!(
            chats,
            (FIRST_CHAT_ID..FIRST_CHAT_ID + 6).collect::<Vec<_>>()
        );
        store.close().await.unwrap();
    });
}

/// Proves bad arguments are refused with exit code 2 and a message, not a panic, before any
/// data directory is created.
#[test]
fn demo_refuses_bad_numbers() {
    let data = tempfile::tempdir().unwrap();
    for args in [["--handlers", "0"], ["--chats", "0"], ["--exchanges", "0"]] {
        let output = demo(&data.path().join("data"), &args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("must be at least 1"),
            "{args:?}"
        );
        assert!(!data.path().join("data").exists(), "{args:?}");
    }
    let output = demo(data.path(), &["--chats", "many"]);
    assert_eq!(output.status.code(), Some(2));
}
