//! Legacy import and export: the old bot's `girls_data/` and `conversations/` files go in as
//! events and come back out JSON-equal, re-runs import nothing twice, and the CLI reports
//! malformed files.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use hybridstore::events::{Event, Generation, MessageReceived, MessageSent, ProfileCreated};
use hybridstore::legacy::{
    export_legacy, import_legacy, legacy_key_prefix, FileProblem, ImportReport,
};
use hybridstore::store::APPEND_EVENTS_MAX;
use hybridstore::{
    BotId, ExpectedVersion, NewEvent, ReadDirection, Store, StoreConfig, StreamId, StreamVersion,
    Timestamp,
};
use hybridstore_wal::Position;
use serde_json::{json, Value};

/// The valid fixture chats: with a girls file, and with a conversation file.
/// 100006 holds U+0000 in every kind of text and the earliest and latest times the old bot could
/// write (and some it could only write as numbers).
const PROFILE_CHATS: [i64; 4] = [100_001, 100_002, 100_003, 100_006];
const CONVERSATION_CHATS: [i64; 4] = [100_001, 100_002, 100_004, 100_006];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy")
}

fn bot() -> BotId {
    BotId::new("b").unwrap()
}

/// A store keeping only 2 messages per conversation in memory, so exports also read older
/// messages back from the log.
async fn open(dir: &Path) -> Store {
    let mut config = StoreConfig::new(dir);
    config.conversation_tail_len = 2;
    Store::open(config).await.unwrap()
}

async fn import(store: &Store, legacy: &Path) -> ImportReport {
    let girls = legacy.join("girls_data");
    let conversations = legacy.join("conversations");
    import_legacy(store, &bot(), Some(&girls), Some(&conversations), |_| {})
        .await
        .unwrap()
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write_json(path: &Path, value: &Value) {
    fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// The chat ids of the `{chat}.json` files in `dir`.
fn chats_in(dir: &Path) -> BTreeSet<i64> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .map(|name| name.strip_suffix(".json").unwrap().parse().unwrap())
        .collect()
}

/// Asserts the export in `out` holds exactly `chats` and is JSON-equal to `legacy`'s files.
fn assert_exported(out: &Path, legacy: &Path, profile_chats: &[i64], conversation_chats: &[i64]) {
    for (sub, chats) in [
        ("girls_data", profile_chats),
        ("conversations", conversation_chats),
    ] {
        assert_eq!(
            chats_in(&out.join(sub)),
            chats.iter().copied().collect(),
            "{sub}"
        );
        for chat in chats {
            let name = format!("{sub}/{chat}.json");
            assert_eq!(
                read_json(&out.join(&name)),
                read_json(&legacy.join(&name)),
                "{name}"
            );
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

async fn events_of(store: &Store, chat: i64) -> Vec<hybridstore::events::RecordedEvent> {
    let stream = StreamId::conversation(&bot(), chat);
    store
        .read_stream(
            &stream,
            StreamVersion(0),
            ReadDirection::Forward,
            usize::MAX,
        )
        .await
        .unwrap()
}

/// Proves import then export gives back every valid fixture file JSON-equal, while the malformed
/// files are reported with their path and reason and skip only their own chats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_reproduces_the_files_and_reports_malformed_ones() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = open(data.path()).await;

    let report = import(&store, &fixtures()).await;
    assert_eq!(report.chats_found, 7, "{report}");
    assert_eq!(report.chats_imported, 5, "{report}");
    assert_eq!(report.chats_failed, vec![999, 100_005], "{report}");
    assert_eq!(report.events_already_imported, 0);
    // 100001: profile + 2 facts + 3 summaries + 6 messages + state; 100002: profile + 1 fact + 4
    // messages + state; 100003: profile + state; 100004: 3 messages; 100006: profile + 1 fact +
    // 1 summary + 5 messages + state.
    assert_eq!(report.events_appended, 13 + 7 + 2 + 3 + 9);
    // The old bot's backup and temporary files are skipped, not failures.
    let skipped: Vec<String> = report
        .files_skipped
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(skipped, ["100002.json.tmp", "100001.backup.20241124.json"]);
    assert!(!report.is_complete());
    assert_eq!(report.failures.len(), 2, "{report}");
    let conversation = &report.failures[0];
    assert!(conversation.path.ends_with("conversations/100005.json"));
    assert_eq!(conversation.chat_id, Some(100_005));
    assert!(matches!(conversation.problem, FileProblem::Format(_)));
    assert!(
        conversation
            .to_string()
            .contains("unknown variant `sideways`"),
        "{conversation}"
    );
    let girls = &report.failures[1];
    assert!(girls.path.ends_with("girls_data/999.json"));
    assert!(matches!(girls.problem, FileProblem::InvalidJson(_)));
    assert!(
        girls.to_string().contains("999.json: invalid JSON"),
        "{girls}"
    );
    assert!(events_of(&store, 100_005).await.is_empty());

    // The state event comes last, after the message events it corrects.
    let events = events_of(&store, 100_001).await;
    assert!(matches!(
        events.last().unwrap().event,
        Event::ProfileLegacyStateImported(_)
    ));
    let first = events
        .iter()
        .find_map(|e| match &e.event {
            Event::MessageReceived(m) => Some((m, e.occurred_at)),
            _ => None,
        })
        .unwrap();
    assert_eq!(first.0.content_type, "text");
    assert_eq!(first.1, Timestamp(1_732_470_000_123));

    let exported = export_legacy(&store, &bot(), out.path()).await.unwrap();
    assert_eq!(exported.profiles_written, 4);
    assert_eq!(exported.conversations_written, 4);
    assert_eq!(exported.messages_written, 6 + 4 + 3 + 5);
    assert_exported(out.path(), &fixtures(), &PROFILE_CHATS, &CONVERSATION_CHATS);
    store.close().await.unwrap();
}

/// Proves a second import appends nothing and counts everything as already imported, also after
/// the store was closed and reopened (the dedupe index is rebuilt from the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_twice_appends_nothing_also_across_a_reopen() {
    let data = tempfile::tempdir().unwrap();
    let store = open(data.path()).await;
    let first = import(&store, &fixtures()).await;
    let end = store.durable_end();
    assert!(first.events_appended > 0);

    let again = import(&store, &fixtures()).await;
    assert_eq!(store.durable_end(), end);
    assert_eq!(again.events_appended, 0);
    assert_eq!(again.events_already_imported, first.events_appended);
    assert_eq!((again.chats_imported, again.chats_unchanged), (0, 5));
    assert_eq!(again.chats_failed, first.chats_failed);
    store.close().await.unwrap();

    let store = open(data.path()).await;
    assert_eq!(store.durable_end(), end);
    let reopened = import(&store, &fixtures()).await;
    assert_eq!(store.durable_end(), end);
    assert_eq!(reopened.events_appended, 0);
    assert_eq!(reopened.events_already_imported, first.events_appended);
    store.close().await.unwrap();
}

/// Proves messages the bot records after the import move the imported document on as the old
/// bot did: +1 message_count and a new last_activity per message, and a reply's response id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_after_the_import_update_the_document() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = open(data.path()).await;
    import(&store, &fixtures()).await;

    let stream = StreamId::conversation(&bot(), 100_001);
    let (received_at, sent_at) = (Timestamp(1_732_500_000_250), Timestamp(1_732_500_004_000));
    let received = NewEvent::new(Event::MessageReceived(MessageReceived {
        telegram_message_id: Some(9001),
        text: "Спасибо за плейлист 🎧".into(),
        content_type: "text".into(),
        legacy_ts: None,
    }))
    .at(received_at);
    let sent = NewEvent::new(Event::MessageSent(MessageSent {
        text: "Рад, что понравилось!".into(),
        kind: "reply".into(),
        generation: Some(Generation {
            model: "gpt-4o-mini".into(),
            response_id: Some("resp_next".into()),
            prompt_tokens: 900,
            completion_tokens: 40,
            latency_ms: 800,
        }),
        legacy_ts: None,
    }))
    .at(sent_at);
    store
        .append(&stream, ExpectedVersion::Any, vec![received])
        .await
        .unwrap();
    let appended = store
        .append(&stream, ExpectedVersion::Any, vec![sent])
        .await
        .unwrap();

    let document = store
        .read_projection(Some(appended.last_position), |p| {
            p.profile(&bot(), 100_001).cloned()
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(document.message_count, 57 + 2);
    assert_eq!(document.last_activity, Some(json!(sent_at.to_rfc3339())));
    assert_eq!(document.previous_response_id.as_deref(), Some("resp_next"));

    export_legacy(&store, &bot(), out.path()).await.unwrap();
    let mut expected = read_json(&fixtures().join("girls_data/100001.json"));
    expected["message_count"] = json!(59);
    expected["last_activity"] = json!("2024-11-25T02:00:04.000Z");
    expected["previous_response_id"] = json!("resp_next");
    assert_eq!(
        read_json(&out.path().join("girls_data/100001.json")),
        expected
    );
    let mut messages = read_json(&fixtures().join("conversations/100001.json"));
    let messages_expected = messages.as_array_mut().unwrap();
    messages_expected
        .push(json!({"ts": 1_732_500_000.25, "direction": "in", "text": "Спасибо за плейлист 🎧"}));
    messages_expected
        .push(json!({"ts": 1_732_500_004.0, "direction": "out", "text": "Рад, что понравилось!"}));
    assert_eq!(
        read_json(&out.path().join("conversations/100001.json")),
        messages
    );
    store.close().await.unwrap();
}

/// Proves the CLI imports with exit 1 and the malformed files' paths on stderr, then exports
/// with exit 0.
#[test]
fn cli_imports_reports_malformed_files_and_exports() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_hybridstore"))
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env_remove("HYBRIDSTORE_BOT")
            .env_remove("HYBRIDSTORE_DATA_DIR")
            .output()
            .unwrap()
    };
    let girls = fixtures().join("girls_data");
    let conversations = fixtures().join("conversations");
    let imported = run(&[
        "import-legacy".as_ref(),
        "--bot".as_ref(),
        "b".as_ref(),
        "--girls-dir".as_ref(),
        girls.as_os_str(),
        "--conversations-dir".as_ref(),
        conversations.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&imported.stdout);
    let stderr = String::from_utf8_lossy(&imported.stderr);
    assert_eq!(imported.status.code(), Some(1), "{stdout}{stderr}");
    for malformed in ["girls_data/999.json", "conversations/100005.json"] {
        let path = fixtures().join(malformed);
        assert!(
            stderr.contains(&path.display().to_string()),
            "{malformed} not in {stderr}"
        );
    }
    assert!(stdout.contains("7 found, 5 imported"), "{stdout}");
    assert!(stdout.contains("files failed: 2, skipped: 2"), "{stdout}");
    for skipped in [
        "girls_data/100001.backup.20241124.json",
        "conversations/100002.json.tmp",
    ] {
        let line = format!("warning: skipped {}", fixtures().join(skipped).display());
        assert!(stderr.contains(&line), "{line} not in {stderr}");
    }

    let exported = run(&[
        "export-legacy".as_ref(),
        "--bot".as_ref(),
        "b".as_ref(),
        "--out".as_ref(),
        out.path().as_os_str(),
    ]);
    assert_eq!(
        exported.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert_exported(out.path(), &fixtures(), &PROFILE_CHATS, &CONVERSATION_CHATS);

    // A bot id the store cannot hold is refused before anything runs.
    let refused = run(&[
        "export-legacy".as_ref(),
        "--bot".as_ref(),
        "no-dashes".as_ref(),
        "--out".as_ref(),
        out.path().as_os_str(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
}

/// Proves a re-run after the old bot kept writing imports only what is new (messages, a changed
/// fact, a new summary, a rename, new counters), and the export then equals the new files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_catches_up_with_files_that_grew() {
    let data = tempfile::tempdir().unwrap();
    let legacy = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    copy_dir(&fixtures(), legacy.path());
    let store = open(data.path()).await;
    let first = import(&store, legacy.path()).await;

    let girls_path = legacy.path().join("girls_data/100001.json");
    let mut girls = read_json(&girls_path);
    girls["name"] = json!("Аня");
    girls["message_count"] = json!(59);
    girls["last_activity"] = json!("2024-11-25T09:00:00.000001");
    girls["previous_response_id"] = json!("resp_after");
    girls["summary"]["1732500000"] = json!("Утром написала первой 🌅");
    girls["profile"]["1732470000"]["mood"] = json!("😍");
    write_json(&girls_path, &girls);
    let conversation_path = legacy.path().join("conversations/100001.json");
    let mut conversation = read_json(&conversation_path);
    let entries = conversation.as_array_mut().unwrap();
    entries.push(json!({"ts": 1_732_525_200.0, "direction": "in", "text": "Доброе утро!"}));
    entries.push(json!({"ts": 1_732_525_260.5, "direction": "out", "text": "Доброе, Аня ☀️"}));
    write_json(&conversation_path, &conversation);

    let again = import(&store, legacy.path()).await;
    // Rename, changed fact, new summary, 2 messages, new state.
    assert_eq!(again.events_appended, 6, "{again}");
    // Everything of the first run except the replaced fact and state is still current.
    assert_eq!(again.events_already_imported, first.events_appended - 2);
    assert_eq!((again.chats_imported, again.chats_unchanged), (1, 4));
    let events = events_of(&store, 100_001).await;
    assert!(matches!(
        events.last().unwrap().event,
        Event::ProfileLegacyStateImported(_)
    ));

    export_legacy(&store, &bot(), out.path()).await.unwrap();
    assert_exported(
        out.path(),
        legacy.path(),
        &PROFILE_CHATS,
        &CONVERSATION_CHATS,
    );
    let end = store.durable_end();
    assert_eq!(import(&store, legacy.path()).await.events_appended, 0);
    assert_eq!(store.durable_end(), end);
    store.close().await.unwrap();
}

/// Proves an import that stopped part-way through a chat resumes with the first missing event
/// and ends where an uninterrupted import would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_import_resumes() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = open(data.path()).await;
    // What a first run had appended of chat 100002 before it stopped: the profile and the first
    // message, with the keys the importer gives them.
    let prefix = legacy_key_prefix(&bot(), 100_002);
    let stream = StreamId::conversation(&bot(), 100_002);
    let first_message = &read_json(&fixtures().join("conversations/100002.json"))[0];
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new(Event::ProfileCreated(ProfileCreated {
                    name: "Мария 🌸".into(),
                }))
                .with_key(format!("{prefix}profile")),
                NewEvent::new(Event::MessageSent(MessageSent {
                    text: first_message["text"].as_str().unwrap().into(),
                    kind: "reply".into(),
                    generation: None,
                    legacy_ts: Some(hybridstore::events::JsonText::from_value(
                        &first_message["ts"],
                    )),
                }))
                .with_key(format!("{prefix}msg:0")),
            ],
        )
        .await
        .unwrap();

    let report = import(&store, &fixtures()).await;
    assert_eq!(report.events_already_imported, 2, "{report}");
    assert_eq!(report.events_appended, 34 - 2);
    assert_eq!(events_of(&store, 100_002).await.len(), 7);
    export_legacy(&store, &bot(), out.path()).await.unwrap();
    assert_exported(out.path(), &fixtures(), &PROFILE_CHATS, &CONVERSATION_CHATS);
    store.close().await.unwrap();
}

/// Proves a chat with more events than one append may hold is imported in several appends, the
/// state event still last, and round-trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chat_spans_several_appends() {
    let data = tempfile::tempdir().unwrap();
    let legacy = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let girls = legacy.path().join("girls_data");
    let conversations = legacy.path().join("conversations");
    fs::create_dir_all(&girls).unwrap();
    fs::create_dir_all(&conversations).unwrap();
    let messages_len = 2 * APPEND_EVENTS_MAX + 500;
    let messages: Vec<Value> = (0..messages_len)
        .map(|i| {
            let direction = if i % 2 == 0 { "in" } else { "out" };
            json!({"ts": 1_700_000_000.0 + i as f64 * 1.5, "direction": direction, "text": format!("сообщение №{i}")})
        })
        .collect();
    write_json(&conversations.join("42.json"), &Value::Array(messages));
    write_json(
        &girls.join("42.json"),
        &json!({"chat_id": 42, "name": "Лена", "last_activity": "2023-11-15T01:02:29Z", "message_count": messages_len, "summary": {"a": "долгая переписка"}, "profile": {}, "previous_response_id": "resp_1"}),
    );

    let store = open(data.path()).await;
    let report = import(&store, legacy.path()).await;
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.events_appended, messages_len as u64 + 3);
    let events = events_of(&store, 42).await;
    assert_eq!(events.len(), messages_len + 3);
    assert!(events
        .iter()
        .all(|e| (e.batch_len as usize) <= APPEND_EVENTS_MAX));
    assert_eq!(
        events.iter().filter(|e| e.batch_index == 0).count(),
        3,
        "three appends"
    );
    assert!(matches!(
        events.last().unwrap().event,
        Event::ProfileLegacyStateImported(_)
    ));

    export_legacy(&store, &bot(), out.path()).await.unwrap();
    assert_exported(out.path(), legacy.path(), &[42], &[42]);
    let end = store.durable_end();
    let again = import(&store, legacy.path()).await;
    assert_eq!(again.events_appended, 0);
    assert_eq!(store.durable_end(), end);
    assert!(end > Position(0));
    store.close().await.unwrap();
}

/// Proves an import makes every chat's key in one rewrite of the key store (not one per chat),
/// and a rerun makes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_makes_all_its_keys_in_one_key_store_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    assert_eq!(store.keyring().generation(), 0);
    let report = import(&store, &fixtures()).await;
    assert!(report.chats_imported >= 3, "{report:?}");
    assert_eq!(
        store.keyring().generation(),
        1,
        "one rewrite for every chat's key"
    );
    assert!(store.keyring().subjects().len() >= 3);
    import(&store, &fixtures()).await;
    assert_eq!(store.keyring().generation(), 1, "a rerun makes no key");
    store.close().await.unwrap();
}
