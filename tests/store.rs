//! The `Store` handle's contract (design §4): optimistic concurrency, idempotent retries that
//! survive restarts, atomic multi-event appends under power loss, subscriptions, typed refusal of
//! bad input, reads (streams, the whole log, conversations beyond the in-memory tail,
//! read-your-writes) and spot checks of the projection's semantics.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::task::Poll;
use std::time::Duration;

use hybridstore::error::InputError;
use hybridstore::events::{
    AnalyticsRecorded, ComponentStateChanged, ConfigValueSet, ConfigValueUnset,
    ConversationAnalyzed, Event, FollowupCancelled, FollowupFired, FollowupScheduled, Generation,
    HistoryCleared, Identity, JsonText, MessageReceived, MessageSent, ProfileCreated,
    ProfileDeleted, ProfileFactsRecorded, ProfileLegacyStateImported, ProfileRenamed,
    RecordedEvent, UserBlocked, UserErased, UserIdentityUpdated, UserRegistered,
    UserSettingsChanged, UserUnblocked,
};
use hybridstore::projection::Direction;
use hybridstore::{
    AppendResult, BotId, Component, ExpectedVersion, MigrationState, NewEvent, ReadDirection,
    Store, StoreConfig, StoreError, StreamId, StreamKind, StreamVersion, Timestamp,
};
use hybridstore_wal::io::sim::{FaultAt, FaultMode, SimFs, Tear};
use hybridstore_wal::{Durability, Options, Position};
use serde_json::json;
use uuid::Uuid;

/// 2026-11-18T11:06:40.123Z.
const DAY_ONE: Timestamp = Timestamp(1_795_000_000_123);
const DAY_MS: i64 = 86_400_000;

fn bot() -> BotId {
    BotId::new("girlbot").unwrap()
}

fn conv(chat: i64) -> StreamId {
    StreamId::conversation(&bot(), chat)
}

fn received(text: &str) -> Event {
    Event::MessageReceived(MessageReceived {
        telegram_message_id: None,
        text: text.to_owned(),
        content_type: "text".to_owned(),
        legacy_ts: None,
    })
}

fn sent(text: &str, generation: Option<Generation>) -> Event {
    Event::MessageSent(MessageSent {
        text: text.to_owned(),
        kind: "reply".to_owned(),
        generation,
        legacy_ts: None,
    })
}

fn generation(prompt_tokens: u32, completion_tokens: u32, response_id: &str) -> Generation {
    Generation {
        model: "gpt-test".to_owned(),
        response_id: Some(response_id.to_owned()),
        prompt_tokens,
        completion_tokens,
        latency_ms: 120,
    }
}

fn json_text(value: serde_json::Value) -> JsonText {
    JsonText::from_value(&value)
}

fn message_text(event: &RecordedEvent) -> &str {
    match &event.event {
        Event::MessageReceived(m) => &m.text,
        Event::MessageSent(m) => &m.text,
        other => panic!("not a message: {other}"),
    }
}

fn one(event: Event) -> Vec<NewEvent> {
    vec![NewEvent::new(event)]
}

fn expect_from(actual: Option<StreamVersion>) -> ExpectedVersion {
    actual.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
}

async fn open_dir(dir: &Path) -> Store {
    Store::open(StoreConfig::new(dir)).await.unwrap()
}

fn sim_config(fs: &SimFs) -> StoreConfig {
    StoreConfig {
        wal: Options {
            fs: fs.shared(),
            segment_size_bytes: 4096,
            ..Default::default()
        },
        ..StoreConfig::new("/data")
    }
}

async fn read_everything(store: &Store) -> Vec<RecordedEvent> {
    store.read_all(Position(0), usize::MAX).await.unwrap()
}

async fn stream_versions(store: &Store, stream: &StreamId) -> Vec<u64> {
    store
        .read_stream(stream, StreamVersion(0), ReadDirection::Forward, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version.0)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Optimistic concurrency
// ---------------------------------------------------------------------------------------------

/// Proves `NoStream` succeeds on a new stream and then fails with the actual version 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stream_succeeds_once_then_reports_the_actual_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(1);
    let first = store
        .append(&stream, ExpectedVersion::NoStream, one(received("hi")))
        .await
        .unwrap();
    assert_eq!(
        first,
        AppendResult {
            first_position: Position(0),
            last_position: Position(0),
            stream_version: StreamVersion(0),
        }
    );
    let error = store
        .append(&stream, ExpectedVersion::NoStream, one(received("again")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::WrongExpectedVersion {
                stream: s,
                expected: ExpectedVersion::NoStream,
                actual: Some(StreamVersion(0)),
            } if *s == stream
        ),
        "{error:?}"
    );
    assert_eq!(store.durable_end(), Position(1));
    assert_eq!(stream_versions(&store, &stream).await, vec![0]);
}

/// Proves `Exact(n)` appends only at the stream's last version, `Any` always appends, and a
/// conflict on a missing stream reports `actual: None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_and_any_expectations() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(2);
    let missing = store
        .append(
            &stream,
            ExpectedVersion::Exact(StreamVersion(0)),
            one(received("too early")),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            missing,
            StoreError::WrongExpectedVersion { actual: None, .. }
        ),
        "{missing:?}"
    );
    let any_first = store
        .append(&stream, ExpectedVersion::Any, one(received("a")))
        .await
        .unwrap();
    assert_eq!(any_first.stream_version, StreamVersion(0));
    let exact = store
        .append(
            &stream,
            ExpectedVersion::Exact(StreamVersion(0)),
            one(received("b")),
        )
        .await
        .unwrap();
    assert_eq!(exact.stream_version, StreamVersion(1));
    assert_eq!(exact.first_position, Position(1));
    for wrong in [0, 2, 7] {
        let error = store
            .append(
                &stream,
                ExpectedVersion::Exact(StreamVersion(wrong)),
                one(received("stale")),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::WrongExpectedVersion {
                    expected: ExpectedVersion::Exact(StreamVersion(w)),
                    actual: Some(StreamVersion(1)),
                    ..
                } if w == wrong
            ),
            "{error:?}"
        );
    }
    let any = store
        .append(&stream, ExpectedVersion::Any, one(received("c")))
        .await
        .unwrap();
    assert_eq!(any.stream_version, StreamVersion(2));
    assert_eq!(store.durable_end(), Position(3));
    let texts: Vec<String> = store
        .read_stream(&stream, StreamVersion(0), ReadDirection::Forward, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| message_text(e).to_owned())
        .collect();
    assert_eq!(texts, ["a", "b", "c"]);
}

/// Proves concurrent writers of one stream that retry on conflicts with `Exact` expectations end
/// with a dense stream: versions 0..N, every message exactly once, each writer's in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exact_appends_to_one_stream_stay_dense() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(3);
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            let mut expected = ExpectedVersion::NoStream;
            let mut conflicts = 0u32;
            for n in 0..PER_WRITER {
                let event = NewEvent::new(received(&format!("w{writer}-{n}")));
                loop {
                    match store.append(&stream, expected, vec![event.clone()]).await {
                        Ok(result) => {
                            expected = ExpectedVersion::Exact(result.stream_version);
                            break;
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                            conflicts += 1;
                            expected = expect_from(actual);
                        }
                        Err(other) => panic!("writer {writer}: {other}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let total = WRITERS * PER_WRITER;
    let events = store
        .read_stream(
            &stream,
            StreamVersion(0),
            ReadDirection::Forward,
            usize::MAX,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), total, "{conflicts} conflicts");
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version.0).collect();
    assert_eq!(versions, (0..total as u64).collect::<Vec<_>>());
    let positions: Vec<u64> = events.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (0..total as u64).collect::<Vec<_>>());
    let texts: Vec<&str> = events.iter().map(message_text).collect();
    let unique: BTreeSet<&str> = texts.iter().copied().collect();
    assert_eq!(unique.len(), total, "a message was appended twice");
    for writer in 0..WRITERS {
        let own: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| t.starts_with(&format!("w{writer}-")))
            .collect();
        let wanted: Vec<String> = (0..PER_WRITER).map(|n| format!("w{writer}-{n}")).collect();
        assert_eq!(own, wanted, "writer {writer}'s messages out of order");
    }
    assert_eq!(store.durable_end(), Position(total as u64));
}

/// Proves concurrent writers of different streams never conflict: every `Exact` append succeeds
/// at the first attempt and every stream is dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_different_streams_all_succeed() {
    const WRITERS: i64 = 8;
    const PER_WRITER: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let mut tasks = Vec::new();
    for chat in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = conv(100 + chat);
            let mut expected = ExpectedVersion::NoStream;
            for n in 0..PER_WRITER {
                let result = store
                    .append(&stream, expected, one(received(&format!("{chat}-{n}"))))
                    .await
                    .unwrap_or_else(|e| panic!("chat {chat} append {n}: {e}"));
                assert_eq!(result.stream_version, StreamVersion(n));
                expected = ExpectedVersion::Exact(result.stream_version);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.durable_end(), Position(WRITERS as u64 * PER_WRITER));
    for chat in 0..WRITERS {
        assert_eq!(
            stream_versions(&store, &conv(100 + chat)).await,
            (0..PER_WRITER).collect::<Vec<_>>()
        );
    }
}

/// Proves an append whose caller stops waiting (its future dropped mid-flight, as when an HTTP
/// client disconnects) still records its version and dedupe keys: a retry with the same event id
/// returns the original result and the next append gets the next version, not a duplicate. (With
/// the writer-thread hand-off only: an append the caller writes itself finishes in its first
/// poll, so it cannot be dropped mid-flight.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_append_future_keeps_versions_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        appends_by_caller: false,
        ..StoreConfig::new(dir.path())
    })
    .await
    .unwrap();
    let stream = conv(4);
    let mut abandoned = 0;
    for round in 0..20 {
        let id = Uuid::now_v7();
        let event = NewEvent::new(received(&format!("r{round}"))).with_id(id);
        let mut future = Box::pin(store.append(&stream, ExpectedVersion::Any, vec![event.clone()]));
        // Poll once: the append is handed to the log, then the caller goes away.
        let first_poll =
            std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).map(|r| r.unwrap())))
                .await;
        drop(future);
        if first_poll.is_pending() {
            abandoned += 1;
        }
        let retried = store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
        let next = store
            .append(&stream, ExpectedVersion::Any, one(received("next")))
            .await
            .unwrap();
        assert_eq!(next.stream_version.0, retried.stream_version.0 + 1);
    }
    assert!(abandoned > 0, "no append was abandoned mid-flight");
    // Each round appended its message exactly once, plus "next".
    assert_eq!(store.durable_end(), Position(40));
    assert_eq!(
        stream_versions(&store, &stream).await,
        (0..40).collect::<Vec<_>>()
    );
    store.close().await.unwrap();
    let store = open_dir(dir.path()).await;
    assert_eq!(
        stream_versions(&store, &stream).await,
        (0..40).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

/// Proves retries by event id, by idempotency key and of multi-event appends return the original
/// result and append nothing, before and after a close and reopen (the dedupe index is rebuilt
/// from the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_return_the_original_result_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(5);
    let other = conv(6);
    store
        .append(&other, ExpectedVersion::Any, one(received("filler")))
        .await
        .unwrap();

    let by_id = NewEvent::new(received("by id")).with_id(Uuid::now_v7());
    let by_id_result = store
        .append(&stream, ExpectedVersion::NoStream, vec![by_id.clone()])
        .await
        .unwrap();
    let by_key = NewEvent::new(received("by key")).with_key("tg:5:77:in");
    let by_key_result = store
        .append(&stream, ExpectedVersion::Any, vec![by_key.clone()])
        .await
        .unwrap();
    let batch: Vec<NewEvent> = (0..4)
        .map(|n| NewEvent::new(received(&format!("batch {n}"))).with_id(Uuid::now_v7()))
        .collect();
    let batch_result = store
        .append(
            &stream,
            ExpectedVersion::Exact(StreamVersion(1)),
            batch.clone(),
        )
        .await
        .unwrap();
    assert_eq!(
        batch_result,
        AppendResult {
            first_position: Position(3),
            last_position: Position(6),
            stream_version: StreamVersion(5),
        }
    );
    let end = store.durable_end();
    assert_eq!(end, Position(7));

    let mut store = store;
    for pass in 0..2 {
        // The same event id, even with a now-stale expected version.
        let again = store
            .append(&stream, ExpectedVersion::NoStream, vec![by_id.clone()])
            .await
            .unwrap();
        assert_eq!(again, by_id_result, "pass {pass}");
        // The same idempotency key with a fresh event id (a client that regenerates ids).
        let rekeyed = NewEvent::new(received("by key, resent")).with_key("tg:5:77:in");
        let again = store
            .append(&stream, ExpectedVersion::Any, vec![rekeyed])
            .await
            .unwrap();
        assert_eq!(again, by_key_result, "pass {pass}");
        let again = store
            .append(&stream, ExpectedVersion::Any, vec![by_key.clone()])
            .await
            .unwrap();
        assert_eq!(again, by_key_result, "pass {pass}");
        // The whole batch, and a retry naming only its last event.
        let again = store
            .append(
                &stream,
                ExpectedVersion::Exact(StreamVersion(1)),
                batch.clone(),
            )
            .await
            .unwrap();
        assert_eq!(again, batch_result, "pass {pass}");
        let again = store
            .append(&stream, ExpectedVersion::Any, vec![batch[3].clone()])
            .await
            .unwrap();
        assert_eq!(again, batch_result, "pass {pass}");
        assert_eq!(store.durable_end(), end, "pass {pass}: a retry appended");
        assert_eq!(read_everything(&store).await.len(), 7, "pass {pass}");
        assert_eq!(
            stream_versions(&store, &stream).await,
            vec![0, 1, 2, 3, 4, 5]
        );
        store.close().await.unwrap();
        store = open_dir(dir.path()).await;
    }
    // New events still append after the retries.
    let fresh = store
        .append(
            &stream,
            ExpectedVersion::Exact(StreamVersion(5)),
            one(received("fresh")),
        )
        .await
        .unwrap();
    assert_eq!(fresh.stream_version, StreamVersion(6));
    assert_eq!(fresh.first_position, Position(7));
}

/// Proves concurrent retries of one append (same event ids) append it exactly once and all
/// receive the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_append_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(7);
    let batch: Vec<NewEvent> = (0..3)
        .map(|n| {
            NewEvent::new(received(&format!("b{n}")))
                .with_id(Uuid::now_v7())
                .with_key(format!("tg:7:{n}:in"))
        })
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let stream = stream.clone();
        let batch = batch.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(&stream, ExpectedVersion::Any, batch)
                .await
                .unwrap()
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    assert_eq!(results[0].stream_version, StreamVersion(2));
    assert_eq!(store.durable_end(), Position(3));
}

// ---------------------------------------------------------------------------------------------
// Power loss (simulated disk)
// ---------------------------------------------------------------------------------------------

/// Proves a multi-event append cut by a failed fdatasync and a power loss is wholly absent or
/// wholly present after recovery — never partial — and that the client's retry with the same
/// event ids then yields exactly one copy; with unsynced writes dropped it is always absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_during_a_multi_event_append_is_all_or_nothing() {
    const BATCH_LEN: usize = 6;
    let mut outcomes = [0usize; 2]; // [absent, present]
    for seed in 0..48u64 {
        let tear = if seed % 4 == 3 {
            Tear::DropUnsynced
        } else {
            Tear::Sectors
        };
        let fs = SimFs::new();
        fs.seed(seed);
        let config = sim_config(&fs);
        let store = Store::open(config.clone()).await.unwrap();
        let stream = conv(8);
        // A committed prefix; its length varies so the batch lands at different offsets.
        let prefix = 1 + (seed % 7);
        for n in 0..prefix {
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    one(received(&format!("p{n}"))),
                )
                .await
                .unwrap();
        }
        let before_end = store.durable_end();
        let before_version = StreamVersion(prefix - 1);
        let batch: Vec<NewEvent> = (0..BATCH_LEN)
            .map(|n| {
                NewEvent::new(received(&format!(
                    "seed {seed} batch {n} {}",
                    "x".repeat(90)
                )))
                .with_id(Uuid::now_v7())
            })
            .collect();
        let batch_ids: BTreeSet<Uuid> = batch.iter().map(|e| e.event_id.unwrap()).collect();
        fs.fail(
            FaultAt::Kind("sync_data", 0),
            FaultMode::Persistent,
            std::io::ErrorKind::Other,
        );
        let error = store
            .append(
                &stream,
                ExpectedVersion::Exact(before_version),
                batch.clone(),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Log(_)), "seed {seed}: {error}");
        assert_eq!(store.durable_end(), before_end, "seed {seed}");
        fs.power_loss(tear);
        drop(store);
        fs.clear_faults();

        let store = Store::open(config.clone()).await.unwrap();
        let events = read_everything(&store).await;
        let found = events
            .iter()
            .filter(|e| batch_ids.contains(&e.event_id))
            .count();
        assert!(
            found == 0 || found == BATCH_LEN,
            "seed {seed}: {found} of {BATCH_LEN} events of the cut append survived"
        );
        if tear == Tear::DropUnsynced {
            assert_eq!(found, 0, "seed {seed}: an unsynced append survived");
        }
        let present = found == BATCH_LEN;
        outcomes[usize::from(present)] += 1;
        let expected_len = prefix as usize + if present { BATCH_LEN } else { 0 };
        assert_eq!(events.len(), expected_len, "seed {seed}");
        assert_eq!(store.durable_end(), Position(expected_len as u64));
        assert_eq!(
            stream_versions(&store, &stream).await,
            (0..expected_len as u64).collect::<Vec<_>>(),
            "seed {seed}"
        );
        // The committed prefix is intact.
        let prefix_texts: Vec<&str> = events[..prefix as usize].iter().map(message_text).collect();
        let wanted: Vec<String> = (0..prefix).map(|n| format!("p{n}")).collect();
        assert_eq!(prefix_texts, wanted, "seed {seed}");
        // The client retries the failed append with the same event ids: one copy either way.
        let retried = store
            .append(
                &stream,
                ExpectedVersion::Exact(before_version),
                batch.clone(),
            )
            .await
            .unwrap();
        assert_eq!(
            retried,
            AppendResult {
                first_position: before_end,
                last_position: before_end.advance(BATCH_LEN as u64 - 1),
                stream_version: StreamVersion(before_version.0 + BATCH_LEN as u64),
            },
            "seed {seed}"
        );
        assert_eq!(
            read_everything(&store).await.len(),
            prefix as usize + BATCH_LEN
        );
        store.close().await.unwrap();
    }
    // Both outcomes occur, so the tearing really cut some appends.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

/// Proves an acknowledged multi-event append survives a power loss wholly, with its positions,
/// versions and dedupe entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_multi_event_append_survives_power_loss() {
    for seed in 0..8u64 {
        let fs = SimFs::new();
        fs.seed(seed);
        let config = sim_config(&fs);
        let store = Store::open(config.clone()).await.unwrap();
        let stream = conv(9);
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                one(Event::ProfileCreated(ProfileCreated {
                    name: "Anna".into(),
                })),
            )
            .await
            .unwrap();
        let batch = vec![
            NewEvent::new(Event::ConversationAnalyzed(ConversationAnalyzed {
                analysis_id: "a1".into(),
                summary: "likes cats".into(),
            }))
            .with_id(Uuid::now_v7()),
            NewEvent::new(Event::ProfileFactsRecorded(ProfileFactsRecorded {
                snapshot_id: "s1".into(),
                facts: json_text(json!({"pet": "cat"})),
            }))
            .with_key("analysis:9:a1"),
        ];
        let result = store
            .append(
                &stream,
                ExpectedVersion::Exact(StreamVersion(0)),
                batch.clone(),
            )
            .await
            .unwrap();
        fs.power_loss(Tear::Sectors);
        drop(store);
        let store = Store::open(config).await.unwrap();
        let events = read_everything(&store).await;
        assert_eq!(events.len(), 3, "seed {seed}");
        assert_eq!(events[1].batch_index, 0);
        assert_eq!(events[2].batch_index, 1);
        assert_eq!(events[2].batch_len, 2);
        let profile = store
            .read_projection(None, |p| p.profile(&bot(), 9).cloned())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(profile.summary["a1"], "likes cats");
        assert_eq!(profile.profile["s1"], json!({"pet": "cat"}));
        let again = store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
        assert_eq!(again, result, "seed {seed}");
        assert_eq!(store.durable_end(), Position(3));
        store.close().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

/// Proves a subscription from position 0, started before concurrent appends, delivers every
/// durable event exactly once in log order, and one started mid-log starts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_deliver_every_event_once_in_order() {
    const WRITERS: i64 = 4;
    const PER_WRITER: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let mut subscription = store.subscribe(Position(0)).unwrap();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_WRITER {
                // Half the writers share a stream, the others have their own.
                let stream = conv(if writer % 2 == 0 { 10 } else { 10 + writer });
                let events = if n % 5 == 0 {
                    vec![
                        NewEvent::new(received(&format!("{writer}-{n}a"))),
                        NewEvent::new(received(&format!("{writer}-{n}b"))),
                    ]
                } else {
                    one(received(&format!("{writer}-{n}")))
                };
                store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
            }
        }));
    }
    let total = WRITERS as usize * (PER_WRITER + PER_WRITER / 5);
    let mut delivered = Vec::new();
    while delivered.len() < total {
        let next = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the subscription stalled")
            .expect("the subscription ended")
            .unwrap();
        delivered.push(next);
    }
    for task in tasks {
        task.await.unwrap();
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(extra.is_err(), "an event was delivered twice: {extra:?}");
    let all = read_everything(&store).await;
    assert_eq!(all.len(), total);
    assert_eq!(delivered, all);
    let positions: Vec<u64> = delivered.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (0..total as u64).collect::<Vec<_>>());

    let middle = Position(total as u64 / 2);
    let mut from_middle = store.subscribe(middle).unwrap();
    let first = from_middle.next().await.unwrap().unwrap();
    assert_eq!(first, all[middle.0 as usize]);
    // It follows new appends too.
    let late = store
        .append(&conv(99), ExpectedVersion::Any, one(received("late")))
        .await
        .unwrap();
    let mut rest = vec![first];
    while rest.len() < total - middle.0 as usize + 1 {
        rest.push(from_middle.next().await.unwrap().unwrap());
    }
    assert_eq!(rest[..rest.len() - 1], all[middle.0 as usize..]);
    assert_eq!(rest.last().unwrap().position, late.first_position);
    assert_eq!(message_text(rest.last().unwrap()), "late");
}

/// Proves the fan-out reads and decodes nothing while nobody subscribes, and each event exactly
/// once while a subscriber is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fanout_decodes_nothing_while_nobody_subscribes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    for n in 0..100 {
        store
            .append(&conv(n % 3), ExpectedVersion::Any, one(received("alone")))
            .await
            .unwrap();
    }
    // The projection has applied them all (the same durable notification wakes the fan-out).
    store
        .read_projection(Some(Position(99)), |_| ())
        .await
        .unwrap();
    assert_eq!(store.fanout_decoded_events(), 0);
    let mut live = store.subscribe(store.durable_end()).unwrap();
    for n in 0..100 {
        let appended = store
            .append(&conv(n % 3), ExpectedVersion::Any, one(received("watched")))
            .await
            .unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("the subscription stalled")
            .expect("the subscription ended")
            .unwrap();
        assert_eq!(event.position, appended.first_position);
    }
    assert_eq!(store.fanout_decoded_events(), 100);
    store.close().await.unwrap();
}

/// Proves subscribers that start behind a parked fan-out (nobody live) catch up, rejoin it and
/// then get every later event exactly once, in order, while appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_rejoining_a_parked_fanout_get_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    for n in 0..50 {
        store
            .append(&conv(n % 4), ExpectedVersion::Any, one(received("before")))
            .await
            .unwrap();
    }
    // Nobody was live: the fan-out stands where the store opened (0) and reads nothing.
    assert_eq!(store.fanout_decoded_events(), 0);
    let mut from_middle = store.subscribe(Position(25)).unwrap();
    let mut from_end = store.subscribe(store.durable_end()).unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..200 {
                store
                    .append(&conv(n % 5), ExpectedVersion::Any, one(received("during")))
                    .await
                    .unwrap();
            }
        })
    };
    let end = 250u64;
    for (from, subscription) in [(25u64, &mut from_middle), (50, &mut from_end)] {
        for expected in from..end {
            let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
                .await
                .unwrap_or_else(|_| panic!("the subscriber from {from} stalled at {expected}"))
                .expect("the subscription ended")
                .unwrap();
            assert_eq!(event.position.0, expected, "the subscriber from {from}");
        }
    }
    writer.await.unwrap();
    for subscription in [&mut from_middle, &mut from_end] {
        let extra = tokio::time::timeout(Duration::from_millis(20), subscription.next()).await;
        assert!(extra.is_err(), "an extra event: {extra:?}");
    }
    // Both rejoined: later appends come through the fan-out, to each once.
    let late = store
        .append(&conv(9), ExpectedVersion::Any, one(received("late")))
        .await
        .unwrap();
    for subscription in [&mut from_middle, &mut from_end] {
        let event = subscription.next().await.unwrap().unwrap();
        assert_eq!(event.position, late.first_position);
        assert_eq!(message_text(&event), "late");
    }
    assert!(
        store.fanout_decoded_events() < end,
        "the fan-out read from where the first subscriber rejoined, not from the start"
    );
    store.close().await.unwrap();
}

/// Proves a subscriber asking for positions not written yet, then hanging up, does not move the
/// parked fan-out past the log's end: the next subscriber rejoins it and gets later events
/// through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_from_the_future_does_not_strand_the_fanout() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    for n in 0..10 {
        store
            .append(&conv(n % 2), ExpectedVersion::Any, one(received("before")))
            .await
            .unwrap();
    }
    let mut future = store.subscribe(Position(1_000_000_000)).unwrap();
    // Its first poll catches up: it tries to rejoin the (parked) fan-out there.
    let nothing = tokio::time::timeout(Duration::from_millis(20), future.next()).await;
    assert!(nothing.is_err(), "an event from the future: {nothing:?}");
    drop(future);
    let mut now = store.subscribe(store.durable_end()).unwrap();
    let appended = store
        .append(&conv(3), ExpectedVersion::Any, one(received("after")))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), now.next())
        .await
        .expect("the subscription stalled")
        .expect("the subscription ended")
        .unwrap();
    assert_eq!(event.position, appended.first_position);
    assert_eq!(
        store.fanout_decoded_events(),
        1,
        "the event came through the fan-out, which read on from where the subscriber rejoined"
    );
    store.close().await.unwrap();
}

/// Proves hundreds of subscribers on a live store each see every event once, in order: some
/// start at the beginning (catching up from the log), some mid-log, some live, while appends go
/// on; slow ones that fall a whole queue behind catch up from the log and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_subscribers_each_see_every_event_once_in_order() {
    const SUBSCRIBERS: u64 = 300;
    const APPENDS: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    for n in 0..200 {
        store
            .append(&conv(n % 7), ExpectedVersion::Any, one(received("before")))
            .await
            .unwrap();
    }
    let mut subscribers = Vec::new();
    for n in 0..SUBSCRIBERS {
        let from = match n % 3 {
            0 => Position(0),
            1 => Position(100),
            _ => store.durable_end(),
        };
        subscribers.push((from, store.subscribe(from).unwrap()));
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..APPENDS {
                let events = if n % 4 == 0 {
                    vec![NewEvent::new(received("a")), NewEvent::new(received("b"))]
                } else {
                    one(received("c"))
                };
                store
                    .append(&conv(n as i64 % 11), ExpectedVersion::Any, events)
                    .await
                    .unwrap();
            }
        })
    };
    writer.await.unwrap();
    let end = store.durable_end();
    assert_eq!(end, Position(200 + APPENDS as u64 + APPENDS as u64 / 4));
    // Read the subscribers one after the other: all but the first fall far behind (more than a
    // queue's worth of events) before they are read, so they catch up from the log.
    for (index, (from, mut subscription)) in subscribers.into_iter().enumerate() {
        let mut expected = from.0;
        while expected < end.0 {
            let event = tokio::time::timeout(Duration::from_secs(10), subscription.next_shared())
                .await
                .unwrap_or_else(|_| panic!("subscriber {index} stalled at {expected}"))
                .expect("the subscription ended")
                .unwrap();
            assert_eq!(event.position.0, expected, "subscriber {index}");
            expected += 1;
        }
        let extra = tokio::time::timeout(Duration::from_millis(5), subscription.next()).await;
        assert!(extra.is_err(), "subscriber {index} got an extra event");
    }
    store.close().await.unwrap();
}

/// Proves closing the store ends every subscription the same way: a subscriber waiting for its
/// next event during the close and one that had fallen behind (its queue full) both get every
/// event durable before the close, in order, and then the end — in `always` and in `interval`
/// durability (where the close itself makes the last appends durable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_ends_live_and_lagging_subscribers_alike() {
    for durability in [
        Durability::Always,
        Durability::Interval(Duration::from_secs(60)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.wal.durability = durability;
        let store = Store::open(config).await.unwrap();
        let mut live = store.subscribe(Position(0)).unwrap();
        let mut lagging = store.subscribe(Position(0)).unwrap();
        // The live one reads all along, so it waits for its next event when the store closes.
        let reader = tokio::spawn(async move {
            let mut positions = Vec::new();
            while let Some(event) = tokio::time::timeout(Duration::from_secs(10), live.next())
                .await
                .expect("the live subscription did not end")
            {
                positions.push(event.unwrap().position.0);
            }
            positions
        });
        for n in 0..400 {
            store
                .append(&conv(n % 5), ExpectedVersion::Any, one(received("x")))
                .await
                .unwrap();
        }
        store.clone().close().await.unwrap();
        let end = store.durable_end().0;
        assert_eq!(end, 400, "{durability:?}");
        assert_eq!(
            reader.await.unwrap(),
            (0..end).collect::<Vec<_>>(),
            "live, {durability:?}"
        );
        let mut positions = Vec::new();
        while let Some(event) = tokio::time::timeout(Duration::from_secs(10), lagging.next())
            .await
            .expect("the lagging subscription did not end")
        {
            positions.push(event.unwrap().position.0);
        }
        assert_eq!(
            positions,
            (0..end).collect::<Vec<_>>(),
            "lagging, {durability:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

/// Proves bad stream ids and component names are refused with typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_names_are_typed_errors() {
    let long = format!("conv-{}-1", "b".repeat(193));
    assert_eq!(long.len(), 200);
    for (text, reason) in [
        ("", "empty"),
        (
            "chat-girlbot-1",
            "unknown prefix (expected bot, user, conv or telemetry)",
        ),
        (long.as_str(), "longer than 128 bytes"),
        ("conv-girlbot", "missing the user or chat id"),
        ("user-girl-bot-x", "the user or chat id is not an integer"),
        ("bot-girl bot", "bad bot id (1-64 of A-Z a-z 0-9 _)"),
    ] {
        let error = text.parse::<StreamId>().unwrap_err();
        assert!(
            matches!(&error, InputError::InvalidStreamId { reason: r, .. } if *r == reason),
            "{text:?}: {error:?}"
        );
    }
    let error = "blah".parse::<Component>().unwrap_err();
    assert_eq!(
        error,
        InputError::UnknownComponent {
            name: "blah".into()
        }
    );
    assert_eq!(
        "profiles".parse::<Component>().unwrap(),
        Component::Profiles
    );
    assert!(matches!(
        BotId::new(""),
        Err(InputError::InvalidBotId { .. })
    ));
}

/// Proves every refused append is a typed error that appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_appends_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        event_size_max_bytes: 200,
        ..StoreConfig::new(dir.path())
    })
    .await
    .unwrap();
    let stream = conv(20);
    store
        .append(&stream, ExpectedVersion::NoStream, one(received("ok")))
        .await
        .unwrap();
    let end = store.durable_end();
    assert_eq!(end, Position(1));

    let error = store
        .append(&stream, ExpectedVersion::Any, Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Input(InputError::EmptyAppend)),
        "{error:?}"
    );

    let error = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![
                NewEvent::new(received("small")),
                NewEvent::new(received(&"x".repeat(500))),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Input(InputError::EventTooLarge {
                index: 1,
                event_type: "MessageReceived",
                encoded_len,
                max: 200,
            }) if encoded_len > 500
        ),
        "{error:?}"
    );

    let user = StreamId::user(&bot(), 42);
    let error = store
        .append(&user, ExpectedVersion::Any, one(received("wrong stream")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Input(InputError::WrongStreamKind {
                event_type: "MessageReceived",
                stream: s,
                expected: StreamKind::Conversation,
            }) if *s == user
        ),
        "{error:?}"
    );

    let error = store
        .append(
            &stream,
            ExpectedVersion::Exact(StreamVersion(5)),
            one(received("stale")),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::WrongExpectedVersion {
                actual: Some(StreamVersion(0)),
                ..
            }
        ),
        "{error:?}"
    );

    let id = Uuid::now_v7();
    let error = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![
                NewEvent::new(received("a")).with_id(id),
                NewEvent::new(received("b")).with_id(id),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Input(InputError::DuplicateInAppend { index: 1 })
        ),
        "{error:?}"
    );

    let error = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::new(received("k")).with_key("k".repeat(257))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Input(InputError::IdempotencyKeyTooLong { len: 257 })
        ),
        "{error:?}"
    );

    let error = store
        .append(
            &user,
            ExpectedVersion::Any,
            one(Event::UserSettingsChanged(UserSettingsChanged {
                settings: json_text(json!([1, 2])),
            })),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Input(InputError::NotAnObject { field: "settings" })
        ),
        "{error:?}"
    );

    assert_eq!(store.durable_end(), end);
    assert_eq!(read_everything(&store).await.len(), 1);
    assert_eq!(stream_versions(&store, &stream).await, vec![0]);
    assert_eq!(stream_versions(&store, &user).await, Vec::<u64>::new());
}

/// Proves the log holds what the bot had: U+0000 in every kind of text (message, name, summary,
/// facts, settings, configuration) and the earliest and latest times are appended, projected and
/// read back unchanged, also after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_holds_nul_characters_and_any_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(40);
    let user = StreamId::user(&bot(), 40);
    let nul_facts = json!({"note\u{0}key": "x\u{0}y", "list": ["\u{0}"]});
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![
                NewEvent::new(Event::ProfileCreated(ProfileCreated {
                    name: "An\u{0}na".into(),
                })),
                NewEvent::new(Event::ConversationAnalyzed(ConversationAnalyzed {
                    analysis_id: "20260101\u{0}".into(),
                    summary: "sum\u{0}mary".into(),
                })),
                NewEvent::new(Event::ProfileFactsRecorded(ProfileFactsRecorded {
                    snapshot_id: "s".into(),
                    facts: json_text(nul_facts.clone()),
                })),
                NewEvent::new(received("a\0b")).at(Timestamp(i64::MIN)),
                NewEvent::new(sent("\0", None)).at(Timestamp(i64::MAX)),
            ],
        )
        .await
        .unwrap();
    store
        .append(
            &user,
            ExpectedVersion::Any,
            vec![
                NewEvent::new(Event::UserRegistered(UserRegistered {
                    identity: Identity {
                        first_name: Some("\0".into()),
                        ..Identity::default()
                    },
                })),
                NewEvent::new(Event::UserSettingsChanged(UserSettingsChanged {
                    settings: json_text(json!({"name": "x\u{0}y"})),
                })),
            ],
        )
        .await
        .unwrap();
    let last = store
        .append(
            &StreamId::bot(&bot()),
            ExpectedVersion::Any,
            one(Event::ConfigValueSet(ConfigValueSet {
                scope: "glo\u{0}bal".into(),
                key: "k\u{0}".into(),
                value: json_text(json!("v\u{0}")),
            })),
        )
        .await
        .unwrap();
    let check = |store: Store| {
        let (nul_facts, stream) = (nul_facts.clone(), stream.clone());
        async move {
            let (profile, user_view, value, head) = store
                .read_projection(Some(last.last_position), |p| {
                    (
                        p.profile(&bot(), 40).cloned().unwrap(),
                        p.user(&bot(), 40).cloned().unwrap(),
                        p.config_value(&bot(), "glo\u{0}bal", "k\u{0}").cloned(),
                        p.conversation(&bot(), 40).unwrap().head,
                    )
                })
                .await
                .unwrap();
            assert_eq!(profile.name, "An\u{0}na");
            assert_eq!(profile.summary["20260101\u{0}"], "sum\u{0}mary");
            assert_eq!(profile.profile["s"], nul_facts);
            assert_eq!(user_view.identity.first_name.as_deref(), Some("\0"));
            assert_eq!(user_view.settings["name"], json!("x\u{0}y"));
            assert_eq!(value, Some(json!("v\u{0}")));
            assert_eq!(head.last_in_at, Some(Timestamp(i64::MIN)));
            assert_eq!(head.last_out_at, Some(Timestamp(i64::MAX)));
            let messages = store.last_messages(&stream, 10, None).await.unwrap();
            let texts: Vec<&str> = messages.iter().map(|m| &*m.text).collect();
            assert_eq!(texts, ["a\0b", "\0"]);
            store
        }
    };
    let store = check(store).await;
    store.close().await.unwrap();
    let store = check(open_dir(dir.path()).await).await;
    store.close().await.unwrap();
}

/// Proves idempotency keys belong to a bot: two bots that build the same key (the same chat and
/// message ids) both append, while the same bot's retry is deduplicated, also after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_scoped_per_bot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let other = BotId::new("otherbot").unwrap();
    let key = "tg:7:42:in";
    let first = store
        .append(
            &conv(7),
            ExpectedVersion::Any,
            vec![NewEvent::new(received("hi")).with_key(key)],
        )
        .await
        .unwrap();
    let second = store
        .append(
            &StreamId::conversation(&other, 7),
            ExpectedVersion::Any,
            vec![NewEvent::new(received("hi")).with_key(key)],
        )
        .await
        .unwrap();
    assert_ne!(first, second, "the other bot's event must be appended");
    assert_eq!(store.durable_end(), Position(2));
    store.close().await.unwrap();
    let store = open_dir(dir.path()).await;
    for (stream, original) in [
        (conv(7), first),
        (StreamId::conversation(&other, 7), second),
    ] {
        let retry = store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(received("hi")).with_key(key)],
            )
            .await
            .unwrap();
        assert_eq!(
            retry, original,
            "a retry of {stream} returns its original result"
        );
    }
    assert_eq!(store.durable_end(), Position(2), "retries append nothing");
    store.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------------

/// Proves `read_stream` pages forward and backward by version with `from` and `limit`, and
/// `read_all` pages through the whole log in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_log_reads_page_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(30);
    let noise = conv(31);
    for n in 0..10 {
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                one(received(&format!("m{n}"))),
            )
            .await
            .unwrap();
        store
            .append(
                &noise,
                ExpectedVersion::Any,
                one(received(&format!("n{n}"))),
            )
            .await
            .unwrap();
    }
    let read = |from: u64, direction: ReadDirection, limit: usize| {
        let store = store.clone();
        let stream = stream.clone();
        async move {
            store
                .read_stream(&stream, StreamVersion(from), direction, limit)
                .await
                .unwrap()
                .iter()
                .map(|e| {
                    assert_eq!(e.stream, stream);
                    assert_eq!(message_text(e), format!("m{}", e.stream_version.0));
                    // Stream version v sits at log position 2v.
                    assert_eq!(e.position.0, 2 * e.stream_version.0);
                    e.stream_version.0
                })
                .collect::<Vec<u64>>()
        }
    };
    use ReadDirection::{Backward, Forward};
    assert_eq!(read(3, Forward, 4).await, vec![3, 4, 5, 6]);
    assert_eq!(
        read(0, Forward, usize::MAX).await,
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(read(8, Forward, 10).await, vec![8, 9]);
    assert_eq!(read(10, Forward, 10).await, Vec::<u64>::new());
    assert_eq!(read(3, Forward, 0).await, Vec::<u64>::new());
    assert_eq!(read(7, Backward, 3).await, vec![7, 6, 5]);
    assert_eq!(read(1, Backward, 5).await, vec![1, 0]);
    assert_eq!(read(100, Backward, 2).await, vec![9, 8]);
    assert_eq!(read(0, Backward, 1).await, vec![0]);
    assert!(store
        .read_stream(&conv(32), StreamVersion(0), Forward, 10)
        .await
        .unwrap()
        .is_empty());

    let all = read_everything(&store).await;
    assert_eq!(all.len(), 20);
    let mut paged = Vec::new();
    let mut from = Position(0);
    loop {
        let page = store.read_all(from, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        assert_eq!(page[0].position, from);
        from = page.last().unwrap().position.advance(1);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (0..20).collect::<Vec<_>>());
    assert!(store.read_all(Position(20), 5).await.unwrap().is_empty());
}

/// Proves `last_messages` reads past the in-memory tail from the log: oldest first, the right
/// texts and directions, skipping non-message events, before and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_messages_reach_beyond_the_in_memory_tail() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        conversation_tail_len: 3,
        ..StoreConfig::new(dir.path())
    };
    let store = Store::open(config.clone()).await.unwrap();
    let stream = conv(40);
    let mut last = None;
    for n in 0..10 {
        let event = if n % 2 == 0 {
            received(&format!("m{n}"))
        } else {
            sent(&format!("m{n}"), None)
        };
        last = Some(
            store
                .append(&stream, ExpectedVersion::Any, one(event))
                .await
                .unwrap(),
        );
        if n % 3 == 0 {
            // A non-message event in the same stream, and an unrelated stream's message.
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    one(Event::FollowupScheduled(FollowupScheduled {
                        followup_id: format!("f{n}"),
                        due_at: DAY_ONE,
                        reason: "quiet".into(),
                    })),
                )
                .await
                .unwrap();
            store
                .append(&conv(41), ExpectedVersion::Any, one(received("other")))
                .await
                .unwrap();
        }
    }
    let min = Some(last.unwrap().last_position);
    let texts = |messages: &[hybridstore::projection::MessageView]| -> Vec<String> {
        messages.iter().map(|m| m.text.to_string()).collect()
    };
    let mut store = store;
    for pass in 0..2 {
        let eight = store.last_messages(&stream, 8, min).await.unwrap();
        let wanted: Vec<String> = (2..10).map(|n| format!("m{n}")).collect();
        assert_eq!(texts(&eight), wanted, "pass {pass}");
        for (message, n) in eight.iter().zip(2..) {
            let direction = if n % 2 == 0 {
                Direction::In
            } else {
                Direction::Out
            };
            assert_eq!(message.direction, direction, "pass {pass}");
        }
        assert!(eight.windows(2).all(|w| w[0].position < w[1].position));
        let two = store.last_messages(&stream, 2, min).await.unwrap();
        assert_eq!(texts(&two), ["m8", "m9"], "pass {pass}");
        let all = store.last_messages(&stream, 50, min).await.unwrap();
        let wanted: Vec<String> = (0..10).map(|n| format!("m{n}")).collect();
        assert_eq!(texts(&all), wanted, "pass {pass}");
        assert!(store
            .last_messages(&stream, 0, min)
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .last_messages(&conv(49), 5, None)
            .await
            .unwrap()
            .is_empty());
        store.close().await.unwrap();
        store = Store::open(config.clone()).await.unwrap();
    }
}

/// Proves read-your-writes: a read with `min_position` = the append's last position sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_with_min_position_see_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(50);
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            one(Event::ProfileCreated(ProfileCreated { name: "Eva".into() })),
        )
        .await
        .unwrap();
    for n in 1..=30u64 {
        let result = store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![
                    NewEvent::new(received(&format!("q{n}"))),
                    NewEvent::new(sent(&format!("a{n}"), None)),
                ],
            )
            .await
            .unwrap();
        let (head, count) = store
            .read_projection(Some(result.last_position), |p| {
                (
                    p.conversation(&bot(), 50).unwrap().head,
                    p.profile(&bot(), 50).unwrap().message_count,
                )
            })
            .await
            .unwrap();
        assert_eq!(head.messages_in, n);
        assert_eq!(head.messages_out, n);
        assert_eq!(count, 2 * n);
        let last = store
            .last_messages(&stream, 1, Some(result.last_position))
            .await
            .unwrap();
        assert_eq!(&*last[0].text, format!("a{n}"));
    }
}

/// Proves a read waiting for a position fails at once with the reason when the projection has
/// stopped (here: the disk failed its reads), instead of waiting out its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_a_stopped_projection_fail_at_once() {
    let fs = SimFs::new();
    let store = Store::open(StoreConfig {
        read_wait_max: Duration::from_secs(600),
        ..sim_config(&fs)
    })
    .await
    .unwrap();
    // The next reads of the disk fail. Whether the projector's read is among them depends on
    // which thread reads first, so go on until it is: then the read waiting for the append
    // must fail at once with the reason.
    let mut stopped = None;
    for _ in 0..50 {
        fs.clear_faults();
        for nth in 0..16 {
            fs.fail(
                FaultAt::Kind("read", nth),
                FaultMode::Once,
                std::io::ErrorKind::Other,
            );
        }
        let appended = store
            .append(&conv(1), ExpectedVersion::Any, one(received("x")))
            .await
            .unwrap();
        let read = tokio::time::timeout(
            Duration::from_secs(30),
            store.read_projection(Some(appended.last_position), |_| ()),
        )
        .await
        .expect("the read must not wait out its 600 s bound");
        match read {
            Ok(()) => continue,
            Err(StoreError::ProjectionStopped { reason }) => {
                stopped = Some(reason);
                break;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    let reason = stopped.expect("the projector's read never failed");
    assert!(reason.contains("stopped"), "{reason}");
    assert!(store.projection_error().is_some());
}

/// Proves a read asking for a position the projection never reaches fails with `NotCaughtUp`
/// after the configured wait instead of hanging or serving stale data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_position_in_the_future_is_not_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        read_wait_max: Duration::from_millis(50),
        ..StoreConfig::new(dir.path())
    })
    .await
    .unwrap();
    store
        .append(&conv(60), ExpectedVersion::Any, one(received("x")))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = store
        .read_projection(Some(Position(1_000_000)), |_| ())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            error,
            StoreError::NotCaughtUp {
                min_position: Position(1_000_000),
                applied,
                waited,
            } if applied <= Position(1) && waited >= Duration::from_millis(50)
        ),
        "{error:?}"
    );
    let error = store
        .last_messages(&conv(60), 5, Some(Position(1_000_000)))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotCaughtUp { .. }), "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// Projection semantics
// ---------------------------------------------------------------------------------------------

/// Proves the users read model: settings merge key by key (null removes), block and unblock,
/// identity updates, erase; events for an unregistered user change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_projection() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let user = StreamId::user(&bot(), 7);
    let identity = Identity {
        username: Some("anna".into()),
        first_name: Some("Anna".into()),
        last_name: None,
        language_code: Some("en".into()),
    };
    let events = [
        Event::UserRegistered(UserRegistered {
            identity: identity.clone(),
        }),
        Event::UserSettingsChanged(UserSettingsChanged {
            settings: json_text(json!({"lang": "en", "tz": "UTC", "voice": false})),
        }),
        Event::UserSettingsChanged(UserSettingsChanged {
            settings: json_text(json!({"tz": null, "voice": true, "nsfw": {"level": 1}})),
        }),
        Event::UserBlocked(UserBlocked {
            reason: Some("spam".into()),
        }),
    ];
    let mut last = None;
    for event in events {
        last = Some(
            store
                .append(
                    &user,
                    ExpectedVersion::Any,
                    vec![NewEvent::new(event).at(DAY_ONE)],
                )
                .await
                .unwrap(),
        );
    }
    let view = store
        .read_projection(Some(last.unwrap().last_position), |p| {
            p.user(&bot(), 7).cloned()
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.user_id, 7);
    assert_eq!(view.identity, identity);
    assert_eq!(view.registered_at, DAY_ONE);
    assert_eq!(
        serde_json::Value::Object(view.settings.clone()),
        json!({"lang": "en", "voice": true, "nsfw": {"level": 1}})
    );
    assert!(view.blocked);
    assert_eq!(view.blocked_reason.as_deref(), Some("spam"));

    let renamed = Identity {
        username: Some("anya".into()),
        ..identity.clone()
    };
    store
        .append(
            &user,
            ExpectedVersion::Exact(StreamVersion(3)),
            vec![
                NewEvent::new(Event::UserUnblocked(UserUnblocked {})),
                NewEvent::new(Event::UserIdentityUpdated(UserIdentityUpdated {
                    identity: renamed.clone(),
                })),
            ],
        )
        .await
        .unwrap();
    // An unregistered user's settings go nowhere.
    let stranger = store
        .append(
            &StreamId::user(&bot(), 8),
            ExpectedVersion::Any,
            one(Event::UserSettingsChanged(UserSettingsChanged {
                settings: json_text(json!({"lang": "de"})),
            })),
        )
        .await
        .unwrap();
    let (view, stranger_view) = store
        .read_projection(Some(stranger.last_position), |p| {
            (p.user(&bot(), 7).cloned(), p.user(&bot(), 8).cloned())
        })
        .await
        .unwrap();
    let view = view.unwrap();
    assert!(!view.blocked);
    assert_eq!(view.blocked_reason, None);
    assert_eq!(view.identity, renamed);
    assert_eq!(stranger_view, None);

    let erased = store
        .append(
            &user,
            ExpectedVersion::Any,
            one(Event::UserErased(UserErased { keys: Vec::new() })),
        )
        .await
        .unwrap();
    let gone = store
        .read_projection(Some(erased.last_position), |p| p.user(&bot(), 7).cloned())
        .await
        .unwrap();
    assert_eq!(gone, None);
}

/// Proves the profile read model: facts, analyses, renames, message counts, last activity,
/// previous response id, legacy import and deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_projection() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(70);
    let at = |ms: i64| Timestamp(DAY_ONE.0 + ms);
    let events = vec![
        NewEvent::new(Event::ProfileCreated(ProfileCreated {
            name: "Anna".into(),
        }))
        .at(at(0)),
        NewEvent::new(Event::ProfileFactsRecorded(ProfileFactsRecorded {
            snapshot_id: "s1".into(),
            facts: json_text(json!({"age": 25, "city": "Riga"})),
        }))
        .at(at(1)),
        NewEvent::new(Event::ConversationAnalyzed(ConversationAnalyzed {
            analysis_id: "a1".into(),
            summary: "talks about travel".into(),
        }))
        .at(at(2)),
        NewEvent::new(Event::ProfileRenamed(ProfileRenamed {
            name: "Anya".into(),
        }))
        .at(at(3)),
        NewEvent::new(received("hello")).at(at(4)),
        NewEvent::new(sent("hi!", Some(generation(10, 5, "resp_1")))).at(at(5)),
        NewEvent::new(sent("still there?", None)).at(at(6)),
    ];
    let result = store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let profile = store
        .read_projection(Some(result.last_position), |p| {
            p.profile(&bot(), 70).cloned()
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(profile.chat_id, 70);
    assert_eq!(profile.name, "Anya");
    assert_eq!(profile.message_count, 3);
    assert_eq!(
        profile.last_activity,
        Some(json!("2026-11-18T11:06:40.129Z"))
    );
    assert_eq!(profile.summary.len(), 1);
    assert_eq!(profile.summary["a1"], "talks about travel");
    assert_eq!(profile.profile["s1"], json!({"age": 25, "city": "Riga"}));
    assert_eq!(profile.previous_response_id.as_deref(), Some("resp_1"));
    let followups = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![
                NewEvent::new(Event::FollowupScheduled(FollowupScheduled {
                    followup_id: "f1".into(),
                    due_at: at(100),
                    reason: "silence".into(),
                })),
                NewEvent::new(Event::FollowupScheduled(FollowupScheduled {
                    followup_id: "f2".into(),
                    due_at: at(200),
                    reason: "silence".into(),
                })),
                NewEvent::new(Event::FollowupScheduled(FollowupScheduled {
                    followup_id: "f3".into(),
                    due_at: at(300),
                    reason: "silence".into(),
                })),
                NewEvent::new(Event::FollowupCancelled(FollowupCancelled {
                    followup_id: "f1".into(),
                })),
                NewEvent::new(Event::FollowupFired(FollowupFired {
                    followup_id: "f2".into(),
                })),
                NewEvent::new(Event::ProfileLegacyStateImported(
                    ProfileLegacyStateImported {
                        last_activity: Some(json_text(json!("2024-01-02 10:00:00"))),
                        message_count: 412,
                        previous_response_id: None,
                    },
                )),
            ],
        )
        .await
        .unwrap();
    let (profile, pending) = store
        .read_projection(Some(followups.last_position), |p| {
            (
                p.profile(&bot(), 70).cloned(),
                p.conversation(&bot(), 70).unwrap().followups.clone(),
            )
        })
        .await
        .unwrap();
    let profile = profile.unwrap();
    assert_eq!(
        pending.into_iter().collect::<Vec<_>>(),
        [("f3".into(), at(300))]
    );
    assert_eq!(profile.message_count, 412);
    assert_eq!(profile.last_activity, Some(json!("2024-01-02 10:00:00")));
    assert_eq!(profile.previous_response_id, None);

    let deleted = store
        .append(
            &stream,
            ExpectedVersion::Any,
            one(Event::ProfileDeleted(ProfileDeleted {})),
        )
        .await
        .unwrap();
    let (profile, bots) = store
        .read_projection(Some(deleted.last_position), |p| {
            (p.profile(&bot(), 70).cloned(), p.profiles(&bot()).len())
        })
        .await
        .unwrap();
    assert_eq!(profile, None);
    assert_eq!(bots, 0);
}

/// Proves `HistoryCleared` hides every older message from `last_messages`, both in the
/// in-memory tail and in the part read from the log, across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_cleared_hides_older_messages() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        conversation_tail_len: 3,
        ..StoreConfig::new(dir.path())
    };
    let mut store = Store::open(config.clone()).await.unwrap();
    let stream = conv(80);
    for n in 0..6 {
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                one(received(&format!("old{n}"))),
            )
            .await
            .unwrap();
    }
    let cleared = store
        .append(
            &stream,
            ExpectedVersion::Any,
            one(Event::HistoryCleared(HistoryCleared {})),
        )
        .await
        .unwrap();
    let just_cleared = store
        .last_messages(&stream, 10, Some(cleared.last_position))
        .await
        .unwrap();
    assert!(just_cleared.is_empty(), "{just_cleared:?}");
    let mut last = cleared;
    for n in 0..5 {
        last = store
            .append(
                &stream,
                ExpectedVersion::Any,
                one(sent(&format!("new{n}"), None)),
            )
            .await
            .unwrap();
    }
    for pass in 0..2 {
        let messages = store
            .last_messages(&stream, 10, Some(last.last_position))
            .await
            .unwrap();
        let texts: Vec<&str> = messages.iter().map(|m| &*m.text).collect();
        assert_eq!(
            texts,
            ["new0", "new1", "new2", "new3", "new4"],
            "pass {pass}"
        );
        let head = store
            .read_projection(None, |p| p.conversation(&bot(), 80).unwrap().head)
            .await
            .unwrap();
        assert_eq!(head.cleared_before, cleared.last_position, "pass {pass}");
        // The counts are of all messages ever; clearing hides, it does not rewrite history.
        assert_eq!(head.messages_in, 6);
        assert_eq!(head.messages_out, 5);
        store.close().await.unwrap();
        store = Store::open(config.clone()).await.unwrap();
    }
}

/// Proves daily analytics: messages in and out, distinct active chats, LLM calls and tokens from
/// `MessageSent.generation` and `llm_call` records, per UTC day of `occurred_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_analytics() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let telemetry = StreamId::telemetry(&bot());
    let day_two = Timestamp(DAY_ONE.0 + DAY_MS);
    let appends: Vec<(StreamId, Event, Timestamp)> = vec![
        (conv(1), received("a"), DAY_ONE),
        (conv(1), received("b"), DAY_ONE),
        (conv(1), sent("c", Some(generation(100, 20, "r1"))), DAY_ONE),
        (conv(2), received("d"), DAY_ONE),
        (conv(2), sent("e", None), DAY_ONE),
        (conv(3), received("f"), day_two),
        (
            telemetry.clone(),
            Event::AnalyticsRecorded(AnalyticsRecorded {
                kind: "llm_call".into(),
                user_id: Some(7),
                properties: json_text(json!({"tokens": 300, "model": "m"})),
            }),
            DAY_ONE,
        ),
        (
            telemetry.clone(),
            Event::AnalyticsRecorded(AnalyticsRecorded {
                kind: "llm_call".into(),
                user_id: None,
                properties: json_text(json!({})),
            }),
            day_two,
        ),
        (
            telemetry.clone(),
            Event::AnalyticsRecorded(AnalyticsRecorded {
                kind: "command".into(),
                user_id: Some(7),
                properties: json_text(json!({"tokens": 999})),
            }),
            DAY_ONE,
        ),
    ];
    let mut last = None;
    for (stream, event, at) in appends {
        last = Some(
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::new(event).at(at)],
                )
                .await
                .unwrap(),
        );
    }
    let (one_day, two_day, none) = store
        .read_projection(Some(last.unwrap().last_position), |p| {
            (
                p.daily(&bot(), "2026-11-18").cloned(),
                p.daily(&bot(), "2026-11-19").cloned(),
                p.daily(&bot(), "2026-11-20").cloned(),
            )
        })
        .await
        .unwrap();
    let one_day = one_day.unwrap();
    assert_eq!(
        (
            one_day.messages_in,
            one_day.messages_out,
            one_day.active_chats,
            one_day.llm_calls,
            one_day.llm_tokens
        ),
        (3, 2, 2, 2, 420)
    );
    let two_day = two_day.unwrap();
    assert_eq!(
        (
            two_day.messages_in,
            two_day.messages_out,
            two_day.active_chats,
            two_day.llm_calls,
            two_day.llm_tokens
        ),
        (1, 0, 1, 1, 0)
    );
    assert_eq!(none, None);
}

/// Proves configuration values are set, overwritten and unset per scope, and
/// `ComponentStateChanged` drives `component_state`, across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_and_component_states() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_dir(dir.path()).await;
    let stream = StreamId::bot(&bot());
    let set = |scope: &str, key: &str, value: serde_json::Value| {
        NewEvent::new(Event::ConfigValueSet(ConfigValueSet {
            scope: scope.into(),
            key: key.into(),
            value: json_text(value),
        }))
    };
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![
                set("global", "model", json!("gpt-a")),
                set("global", "temperature", json!(0.7)),
                set("chat:1", "model", json!({"name": "gpt-b"})),
                set("global", "model", json!("gpt-c")),
                NewEvent::new(Event::ConfigValueUnset(ConfigValueUnset {
                    scope: "global".into(),
                    key: "temperature".into(),
                })),
                NewEvent::new(Event::ComponentStateChanged(ComponentStateChanged {
                    component: Component::Profiles,
                    from: MigrationState::Disabled,
                    to: MigrationState::Enabled,
                    reason: "operator".into(),
                    automatic: false,
                })),
                NewEvent::new(Event::ComponentStateChanged(ComponentStateChanged {
                    component: Component::Users,
                    from: MigrationState::Disabled,
                    to: MigrationState::Enabled,
                    reason: "operator".into(),
                    automatic: false,
                })),
                NewEvent::new(Event::ComponentStateChanged(ComponentStateChanged {
                    component: Component::Users,
                    from: MigrationState::Enabled,
                    to: MigrationState::DualWrite,
                    reason: "caught up".into(),
                    automatic: true,
                })),
            ],
        )
        .await
        .unwrap();
    let other_bot = BotId::new("otherbot").unwrap();
    for pass in 0..2 {
        let min = Some(store.durable_end().0.checked_sub(1).map(Position).unwrap());
        let read = store
            .read_projection(min, |p| {
                (
                    p.config_value(&bot(), "global", "model").cloned(),
                    p.config_value(&bot(), "global", "temperature").cloned(),
                    p.config_value(&bot(), "chat:1", "model").cloned(),
                    p.config_value(&other_bot, "global", "model").cloned(),
                    Component::ALL.map(|c| p.component_state(&bot(), c)),
                    p.component_state(&other_bot, Component::Users),
                )
            })
            .await
            .unwrap();
        assert_eq!(
            read,
            (
                Some(json!("gpt-c")),
                None,
                Some(json!({"name": "gpt-b"})),
                None,
                [
                    MigrationState::DualWrite,
                    MigrationState::Enabled,
                    MigrationState::Disabled,
                    MigrationState::Disabled,
                    MigrationState::Disabled,
                ],
                MigrationState::Disabled,
            ),
            "pass {pass}"
        );
        store.close().await.unwrap();
        store = open_dir(dir.path()).await;
    }
}

/// Proves that under `interval` durability a stream read right after an append never fails:
/// it returns only durable events (the log's readers see nothing else) and the new event once
/// the interval's fdatasync has made it durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_durability_reads_only_durable_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        wal: Options {
            durability: hybridstore_wal::Durability::Interval(Duration::from_millis(300)),
            ..Options::default()
        },
        ..StoreConfig::new(dir.path())
    })
    .await
    .unwrap();
    let stream = conv(90);
    for n in 0..5u64 {
        let result = store
            .append(
                &stream,
                ExpectedVersion::Any,
                one(received(&format!("i{n}"))),
            )
            .await
            .unwrap();
        for direction in [ReadDirection::Forward, ReadDirection::Backward] {
            let from = match direction {
                ReadDirection::Forward => StreamVersion(0),
                ReadDirection::Backward => result.stream_version,
            };
            let durable_before = store.durable_end();
            let events = store
                .read_stream(&stream, from, direction, 100)
                .await
                .unwrap_or_else(|e| panic!("append {n}, {direction:?}: {e}"));
            let durable_after = store.durable_end();
            // Only this stream is appended to, so durable positions and versions coincide.
            let count = events.len() as u64;
            assert!(
                durable_before.0 <= count && count <= durable_after.0,
                "append {n}, {direction:?}: {count} events, durable {durable_before}..{durable_after}"
            );
        }
        let messages = store
            .last_messages(&stream, 10, Some(result.last_position))
            .await
            .unwrap();
        assert_eq!(messages.len() as u64, n + 1);
        let events = store
            .read_stream(&stream, StreamVersion(0), ReadDirection::Forward, 100)
            .await
            .unwrap();
        assert_eq!(events.len() as u64, n + 1, "after waiting for append {n}");
    }
}

/// Proves `last_messages` of a stream that is not a conversation is empty, even when a
/// conversation has the same number (a private chat's id is its user's id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_messages_of_other_stream_kinds_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let result = store
        .append(
            &conv(7),
            ExpectedVersion::Any,
            one(received("private chat")),
        )
        .await
        .unwrap();
    let user = StreamId::user(&bot(), 7);
    store
        .append(
            &user,
            ExpectedVersion::Any,
            one(Event::UserRegistered(UserRegistered {
                identity: Identity::default(),
            })),
        )
        .await
        .unwrap();
    let min = Some(result.last_position);
    let own = store.last_messages(&conv(7), 10, min).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(&*own[0].text, "private chat");
    for stream in [user, StreamId::bot(&bot()), StreamId::telemetry(&bot())] {
        let messages = store.last_messages(&stream, 10, min).await.unwrap();
        assert!(messages.is_empty(), "{stream}: {messages:?}");
    }
}

/// Proves concurrent first-time appends carrying the same idempotency key to different streams
/// (which share no lock) write exactly one event: one caller gets it, the others a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_on_different_streams_concurrently_appends_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    for round in 0..20 {
        let key = format!("tg:shared:{round}");
        let tasks: Vec<_> = (0..8)
            .map(|chat| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move {
                    store
                        .append(
                            &conv(1000 + chat),
                            ExpectedVersion::Any,
                            vec![NewEvent::new(received("same")).with_key(key)],
                        )
                        .await
                })
            })
            .collect();
        let mut written = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => written += 1,
                Err(error) => assert!(
                    matches!(error, StoreError::Input(InputError::IdempotencyConflict)),
                    "round {round}: {error}"
                ),
            }
        }
        assert_eq!(
            written, 1,
            "round {round}: exactly one caller's append is written"
        );
    }
    let all = store.read_all(Position(0), 10_000).await.unwrap();
    assert_eq!(all.len(), 20, "one event per key, whatever the stream");
}

/// Proves an append whose keys were only partly recorded is refused as a conflict (not answered
/// with the earlier append's result while its new event is silently dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_recorded_keys_are_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    store
        .append(
            &conv(1),
            ExpectedVersion::Any,
            vec![NewEvent::new(received("a")).with_key("ka")],
        )
        .await
        .unwrap();
    let both = store
        .append(
            &conv(1),
            ExpectedVersion::Any,
            vec![
                NewEvent::new(received("a")).with_key("ka"),
                NewEvent::new(received("b")).with_key("kb"),
            ],
        )
        .await;
    assert!(
        matches!(
            both,
            Err(StoreError::Input(InputError::IdempotencyConflict))
        ),
        "{both:?}"
    );
    let elsewhere = store
        .append(
            &conv(2),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(received("a")).with_key("ka")],
        )
        .await;
    assert!(
        matches!(
            elsewhere,
            Err(StoreError::Input(InputError::IdempotencyConflict))
        ),
        "{elsewhere:?}"
    );
    assert_eq!(store.durable_end(), Position(1), "nothing more was written");
}

/// Proves an event the decoder could not read back (JSON nested past serde_json's limit) is
/// refused, and the store still reopens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_json_is_refused_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let mut deep = serde_json::Value::Null;
    for _ in 0..200 {
        deep = serde_json::Value::Array(vec![deep]);
    }
    let event = Event::ConfigValueSet(ConfigValueSet {
        scope: "global".into(),
        key: "deep".into(),
        value: JsonText::from_value(&deep),
    });
    let result = store
        .append(&StreamId::bot(&bot()), ExpectedVersion::Any, one(event))
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::Input(InputError::Unreadable { index: 0, .. }))
        ),
        "{result:?}"
    );
    assert_eq!(store.durable_end(), Position(0));
    store.close().await.unwrap();
    open_dir(dir.path()).await.close().await.unwrap();
}

/// Proves counters fed absurd values saturate instead of overflowing (which would panic the
/// projector in a debug build and stop every later open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_token_counts_saturate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let telemetry = StreamId::telemetry(&bot());
    let at = Timestamp(1_795_000_000_000);
    let mut last = None;
    for _ in 0..2 {
        let event = Event::AnalyticsRecorded(AnalyticsRecorded {
            kind: "llm_call".into(),
            user_id: None,
            properties: json_text(json!({"tokens": u64::MAX})),
        });
        last = Some(
            store
                .append(
                    &telemetry,
                    ExpectedVersion::Any,
                    vec![NewEvent::new(event).at(at)],
                )
                .await
                .unwrap(),
        );
    }
    let tokens = store
        .read_projection(Some(last.unwrap().last_position), |p| {
            p.daily(&bot(), &at.date()).map(|d| d.llm_tokens)
        })
        .await
        .unwrap();
    assert_eq!(tokens, Some(u64::MAX));
    store.close().await.unwrap();
    let reopened = open_dir(dir.path()).await;
    assert_eq!(reopened.durable_end(), Position(2));
}

/// Proves `close` does not wait for an append future that was started and then left unpolled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_does_not_wait_for_an_abandoned_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let stream = conv(5);
    let mut pending = Box::pin(store.append(&stream, ExpectedVersion::Any, one(received("x"))));
    // Poll it once so that it reaches the writer, then leave it alive but unpolled.
    let _ = futures_poll_once(pending.as_mut()).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), store.clone().close()).await;
    assert!(
        matches!(closed, Ok(Ok(()))),
        "close hung or failed: {closed:?}"
    );
    drop(pending);
}

async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut future).poll(cx))).await
}

/// Proves erasing a user also removes their private chat's profile and messages from the reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_removes_their_private_chat_from_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_dir(dir.path()).await;
    let user = StreamId::user(&bot(), 77);
    store
        .append(
            &user,
            ExpectedVersion::Any,
            one(Event::UserRegistered(UserRegistered {
                identity: Identity::default(),
            })),
        )
        .await
        .unwrap();
    store
        .append(
            &conv(77),
            ExpectedVersion::Any,
            one(Event::ProfileCreated(ProfileCreated { name: "Mia".into() })),
        )
        .await
        .unwrap();
    store
        .append(&conv(77), ExpectedVersion::Any, one(received("secret")))
        .await
        .unwrap();
    let erased = store
        .append(
            &user,
            ExpectedVersion::Any,
            one(Event::UserErased(UserErased { keys: Vec::new() })),
        )
        .await
        .unwrap();
    let (user_view, profile, tail) = store
        .read_projection(Some(erased.last_position), |p| {
            (
                p.user(&bot(), 77).cloned(),
                p.profile(&bot(), 77).cloned(),
                p.conversation(&bot(), 77).map(|c| c.tail.len()),
            )
        })
        .await
        .unwrap();
    assert!(user_view.is_none() && profile.is_none());
    assert_eq!(tail, Some(0), "the conversation is emptied");
    assert!(store
        .last_messages(&conv(77), 20, None)
        .await
        .unwrap()
        .is_empty());
    // New messages after the erasure: even past the memory tail, the older ones stay hidden.
    let tail_len = store.config().conversation_tail_len;
    let mut last = erased;
    for i in 0..(tail_len + 5) {
        last = store
            .append(
                &conv(77),
                ExpectedVersion::Any,
                one(received(&format!("new {i}"))),
            )
            .await
            .unwrap();
    }
    let messages = store
        .last_messages(&conv(77), 1000, Some(last.last_position))
        .await
        .unwrap();
    assert_eq!(messages.len(), tail_len + 5);
    assert!(
        messages.iter().all(|m| m.text.starts_with("new ")),
        "an erased message came back"
    );
    let (rebuilt, _) = store.rebuild_projection().await.unwrap();
    assert_eq!(
        rebuilt,
        store.projection_snapshot().await.unwrap(),
        "erasure is the same live and rebuilt"
    );
}
