//! Schema evolution (design §4, "Old schema versions are upcast on read; unknown future types are
//! reported, not dropped silently").
//!
//! `tests/fixtures/events-v1/wal/` is a committed log written when `MessageReceived` was at schema
//! version 1 (no `content_type`): a store of this build must read it, upcasting each message to
//! version 2 with `content_type = "text"`. The fixture was written once by
//! [`regenerate_events_v1_fixture`] (run with `HYBRIDSTORE_REGENERATE_FIXTURES=1`) and must not be
//! regenerated casually: its value is that its bytes come from the old version.

use std::path::{Path, PathBuf};

use hybridstore::events::{
    DecodeError, Event, Generation, MessageReceived, MessageReceivedV1, MessageSent,
    ProfileCreated, StoredEvent, StoredEventV1,
};
use hybridstore::projection::Direction;
use hybridstore::{
    BotId, ExpectedVersion, NewEvent, ReadDirection, Store, StoreConfig, StoreError, StreamId,
    StreamVersion, Timestamp,
};
use hybridstore_wal::{Options, Position, Wal};
use uuid::Uuid;

const FIXTURE_SEGMENT_SIZE_BYTES: u64 = 4096;
const FIXTURE_CHAT: i64 = 1001;
/// Messages received in the fixture (schema version 1).
const FIXTURE_MESSAGES_IN: u64 = 40;
/// 2026-11-18T11:06:40.123Z: every fixture event is recorded at a fixed time.
const FIXTURE_TIME_MS: i64 = 1_795_000_000_123;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events-v1")
}

fn bot() -> BotId {
    BotId::new("girlbot").unwrap()
}

fn fixture_stream() -> StreamId {
    StreamId::conversation(&bot(), FIXTURE_CHAT)
}

fn fixture_text(n: u64) -> String {
    format!("message {n} from the v1 era: {}", "la ".repeat(20))
}

fn fixture_key(n: u64) -> String {
    format!("tg:{FIXTURE_CHAT}:{n}:in")
}

/// An envelope as the v1-era store wrote it, with deterministic ids and times.
fn envelope(
    stream_version: u64,
    (batch_index, batch_len): (u32, u32),
    idempotency_key: Option<String>,
    event_type: &str,
    payload: Vec<u8>,
) -> Vec<u8> {
    StoredEventV1 {
        format: 1,
        stream: fixture_stream().to_string(),
        stream_version,
        batch_index,
        batch_len,
        event_id: *Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_0000 | u128::from(stream_version),
        )
        .as_bytes(),
        idempotency_key,
        recorded_at: FIXTURE_TIME_MS + stream_version as i64,
        occurred_at: FIXTURE_TIME_MS + stream_version as i64,
        bot_id: bot().to_string(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload,
    }
    .encode()
    .unwrap()
}

/// Writes the v1 fixture log into `wal_dir`: a profile, 40 version-1 messages received (the last
/// two as one atomic append, one with a legacy timestamp) and one message sent.
fn write_v1_log(wal_dir: &Path) {
    let wal = Wal::open(
        wal_dir,
        Options {
            segment_size_bytes: FIXTURE_SEGMENT_SIZE_BYTES,
            ..Options::default()
        },
    )
    .unwrap();
    let profile = postcard::to_stdvec(&ProfileCreated {
        name: "Anna".into(),
    })
    .unwrap();
    wal.append(&[envelope(0, (0, 1), None, "ProfileCreated", profile)])
        .unwrap();
    let message = |n: u64, batch: (u32, u32)| {
        let payload = postcard::to_stdvec(&MessageReceivedV1 {
            telegram_message_id: Some(n as i64),
            text: fixture_text(n),
            legacy_ts: (n == 0).then(|| {
                hybridstore::events::JsonText::from_value(&serde_json::json!("2024-01-02 10:00:00"))
            }),
        })
        .unwrap();
        envelope(
            n + 1,
            batch,
            Some(fixture_key(n)),
            "MessageReceived",
            payload,
        )
    };
    for n in 0..FIXTURE_MESSAGES_IN - 2 {
        wal.append(&[message(n, (0, 1))]).unwrap();
    }
    let (a, b) = (FIXTURE_MESSAGES_IN - 2, FIXTURE_MESSAGES_IN - 1);
    wal.append(&[message(a, (0, 2)), message(b, (1, 2))])
        .unwrap();
    let reply = postcard::to_stdvec(&MessageSent {
        text: "the bot's reply".into(),
        kind: "reply".into(),
        generation: Some(Generation {
            model: "gpt-v1".into(),
            response_id: Some("resp_v1".into()),
            prompt_tokens: 50,
            completion_tokens: 12,
            latency_ms: 800,
        }),
        legacy_ts: None,
    })
    .unwrap();
    wal.append(&[envelope(
        FIXTURE_MESSAGES_IN + 1,
        (0, 1),
        None,
        "MessageSent",
        reply,
    )])
    .unwrap();
    assert_eq!(wal.durable_end(), Position(FIXTURE_MESSAGES_IN + 2));
    assert!(
        wal.segment_ids().len() > 1,
        "the fixture should span segments"
    );
    wal.close().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A store on a private copy of the fixture (a store writes to its log, the fixture must stay).
async fn open_fixture_copy(data: &Path) -> Store {
    copy_dir(
        &fixture_dir().join("wal"),
        &data.join(hybridstore::WAL_SUBDIR),
    );
    Store::open(StoreConfig {
        wal: Options {
            segment_size_bytes: FIXTURE_SEGMENT_SIZE_BYTES,
            ..Options::default()
        },
        ..StoreConfig::new(data)
    })
    .await
    .unwrap()
}

/// Proves the committed v1 fixture is in place; with `HYBRIDSTORE_REGENERATE_FIXTURES=1` it
/// first (re)writes it from the version-1 structs.
#[test]
fn regenerate_events_v1_fixture() {
    let wal_dir = fixture_dir().join("wal");
    if std::env::var("HYBRIDSTORE_REGENERATE_FIXTURES").as_deref() == Ok("1") {
        if wal_dir.exists() {
            std::fs::remove_dir_all(&wal_dir).unwrap();
        }
        write_v1_log(&wal_dir);
    }
    let mut names: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; write it with HYBRIDSTORE_REGENERATE_FIXTURES=1",
                wal_dir.display()
            )
        })
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let segments = names.iter().filter(|n| n.ends_with(".wal")).count();
    assert!(segments > 1, "{names:?}");
    assert!(names.contains(&"clean-shutdown".to_owned()), "{names:?}");
    assert_eq!(names[0], "00000000000000000000.wal");
}

/// Proves a log written with `MessageReceived` v1 opens in this build: every message is upcast
/// (content type "text"), the envelope still says schema version 1, the projection and
/// `last_messages` show them, the dedupe index covers them, and new v2 events append after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_messages_are_upcast_on_read() {
    let data = tempfile::tempdir().unwrap();
    let store = open_fixture_copy(data.path()).await;
    let end = Position(FIXTURE_MESSAGES_IN + 2);
    assert_eq!(store.durable_end(), end);

    let events = store.read_all(Position(0), usize::MAX).await.unwrap();
    assert_eq!(events.len(), end.0 as usize);
    assert!(events.iter().all(|e| e.schema_version == 1));
    assert!(matches!(&events[0].event, Event::ProfileCreated(p) if p.name == "Anna"));
    for n in 0..FIXTURE_MESSAGES_IN {
        let event = &events[n as usize + 1];
        assert_eq!(event.stream, fixture_stream());
        assert_eq!(event.stream_version, StreamVersion(n + 1));
        assert_eq!(
            event.idempotency_key.as_deref(),
            Some(fixture_key(n).as_str())
        );
        assert_eq!(event.occurred_at, Timestamp(FIXTURE_TIME_MS + n as i64 + 1));
        let legacy_ts = (n == 0).then(|| {
            hybridstore::events::JsonText::from_value(&serde_json::json!("2024-01-02 10:00:00"))
        });
        assert_eq!(
            event.event,
            Event::MessageReceived(MessageReceived {
                telegram_message_id: Some(n as i64),
                text: fixture_text(n),
                content_type: "text".into(),
                legacy_ts,
            }),
            "message {n}"
        );
    }
    let last = &events[FIXTURE_MESSAGES_IN as usize - 1 + 1];
    assert_eq!((last.batch_index, last.batch_len), (1, 2));
    assert!(
        matches!(&events[end.0 as usize - 1].event, Event::MessageSent(m) if m.text == "the bot's reply")
    );

    let (profile, head, daily) = store
        .read_projection(None, |p| {
            (
                p.profile(&bot(), FIXTURE_CHAT).cloned(),
                p.conversation(&bot(), FIXTURE_CHAT).map(|c| c.head),
                p.daily(&bot(), "2026-11-18").cloned(),
            )
        })
        .await
        .unwrap();
    let profile = profile.unwrap();
    assert_eq!(profile.name, "Anna");
    assert_eq!(profile.message_count, FIXTURE_MESSAGES_IN + 1);
    assert_eq!(profile.previous_response_id.as_deref(), Some("resp_v1"));
    let head = head.unwrap();
    assert_eq!(
        (head.messages_in, head.messages_out),
        (FIXTURE_MESSAGES_IN, 1)
    );
    let daily = daily.unwrap();
    assert_eq!(
        (daily.messages_in, daily.llm_calls, daily.llm_tokens),
        (FIXTURE_MESSAGES_IN, 1, 62)
    );

    // 45 messages: the whole conversation, read from the in-memory tail and then the log.
    let messages = store
        .last_messages(&fixture_stream(), 45, None)
        .await
        .unwrap();
    assert_eq!(messages.len(), FIXTURE_MESSAGES_IN as usize + 1);
    assert_eq!(&*messages[0].text, fixture_text(0));
    assert_eq!(
        messages[0].legacy_ts,
        Some(serde_json::json!("2024-01-02 10:00:00"))
    );
    assert!(messages[..FIXTURE_MESSAGES_IN as usize]
        .iter()
        .all(|m| m.direction == Direction::In));
    assert_eq!(messages.last().unwrap().direction, Direction::Out);

    // The dedupe index was rebuilt from v1 envelopes: a retried v1-era message appends nothing.
    let retry = store
        .append(
            &fixture_stream(),
            ExpectedVersion::Any,
            vec![NewEvent::new(Event::MessageReceived(MessageReceived {
                telegram_message_id: Some(5),
                text: fixture_text(5),
                content_type: "text".into(),
                legacy_ts: None,
            }))
            .with_key(fixture_key(5))],
        )
        .await
        .unwrap();
    assert_eq!(retry.first_position, Position(6));
    assert_eq!(retry.stream_version, StreamVersion(6));
    assert_eq!(store.durable_end(), end);

    // New events are written at version 2 and read back beside the v1 ones, across a reopen.
    let appended = store
        .append(
            &fixture_stream(),
            ExpectedVersion::Exact(StreamVersion(FIXTURE_MESSAGES_IN + 1)),
            vec![NewEvent::new(Event::MessageReceived(MessageReceived {
                telegram_message_id: Some(1000),
                text: "a photo".into(),
                content_type: "photo".into(),
                legacy_ts: None,
            }))],
        )
        .await
        .unwrap();
    assert_eq!(appended.first_position, end);
    store.close().await.unwrap();
    let store = Store::open(StoreConfig::new(data.path())).await.unwrap();
    let newest = store
        .read_stream(
            &fixture_stream(),
            StreamVersion(u64::MAX),
            ReadDirection::Backward,
            2,
        )
        .await
        .unwrap();
    assert_eq!(newest[0].schema_version, 2);
    assert!(
        matches!(&newest[0].event, Event::MessageReceived(m) if m.content_type == "photo" && m.text == "a photo")
    );
    assert_eq!(newest[1].schema_version, 1);
    assert!(matches!(&newest[1].event, Event::MessageSent(_)));
    assert_eq!(
        store
            .read_all(Position(1), 1)
            .await
            .unwrap()
            .first()
            .map(|e| e.schema_version),
        Some(1)
    );
}

/// Writes a log in `wal_dir` of `events` on one conversation stream, each envelope's type name
/// and schema version overridden where given.
fn write_raw_log(wal_dir: &Path, events: &[(Event, Option<(&str, u16)>)]) {
    let wal = Wal::open(wal_dir, Options::default()).unwrap();
    let stream = StreamId::conversation(&bot(), 5);
    for (version, (event, override_type)) in events.iter().enumerate() {
        let mut stored = StoredEvent::new(
            &stream,
            StreamVersion(version as u64),
            (0, 1),
            Uuid::now_v7(),
            None,
            Timestamp(FIXTURE_TIME_MS),
            Timestamp(FIXTURE_TIME_MS),
            event,
        )
        .unwrap();
        if let Some((event_type, schema_version)) = override_type {
            stored.event_type = (*event_type).to_owned();
            stored.schema_version = *schema_version;
        }
        wal.append(&[stored.encode().unwrap()]).unwrap();
    }
    wal.close().unwrap();
}

fn message(text: &str) -> Event {
    Event::MessageReceived(MessageReceived {
        telegram_message_id: None,
        text: text.into(),
        content_type: "text".into(),
        legacy_ts: None,
    })
}

/// Proves a log holding an event type this build does not know makes `Store::open` fail with a
/// decode error naming the record's position and the type — reported, never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_type_fails_open_with_its_position() {
    let data = tempfile::tempdir().unwrap();
    let wal_dir = data.path().join(hybridstore::WAL_SUBDIR);
    write_raw_log(
        &wal_dir,
        &[
            (message("one"), None),
            (message("two"), None),
            (message("three"), None),
            (message("how do I feel"), Some(("MoodDetected", 1))),
            (message("after"), None),
        ],
    );
    let error = Store::open(StoreConfig::new(data.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Decode {
                position: Position(3),
                source: DecodeError::UnknownEventType { type_name, schema_version: 1 },
            } if type_name == "MoodDetected"
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("position 3") && message.contains("MoodDetected"),
        "{message}"
    );
    // Refusing to open left the log untouched and unlocked.
    let wal = Wal::open(&wal_dir, Options::default()).unwrap();
    assert_eq!(wal.durable_end(), Position(5));
    wal.close().unwrap();
}

/// Proves a known type at a schema version this build cannot read is reported the same way, with
/// the version found and the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_schema_version_fails_open_with_its_position() {
    let data = tempfile::tempdir().unwrap();
    write_raw_log(
        &data.path().join(hybridstore::WAL_SUBDIR),
        &[
            (message("one"), None),
            (message("from the future"), Some(("MessageReceived", 3))),
        ],
    );
    let error = Store::open(StoreConfig::new(data.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Decode {
                position: Position(1),
                source: DecodeError::UnknownSchemaVersion {
                    type_name,
                    schema_version: 3,
                    current: 2,
                },
            } if type_name == "MessageReceived"
        ),
        "{error:?}"
    );
}
