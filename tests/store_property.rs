//! Property test of the store against a simple model: random sequences of appends (single and
//! multi-event, of every event type, over a few bots, users and chats), expected-version
//! conflicts, duplicate retries and close/reopen cycles. Throughout, the live projection (built
//! by following the log) must equal one rebuilt from scratch, stream versions must match the
//! model, retries must return their original results and append nothing, and conflicts must
//! report the model's version.

use std::collections::HashMap;

use hybridstore::testing::{build_event, EventSpec, DAY_ZERO_MS};
use hybridstore::{
    AppendResult, BotId, ExpectedVersion, NewEvent, ReadDirection, Store, StoreConfig, StoreError,
    StreamId, StreamVersion, Timestamp,
};
use hybridstore_wal::io::sim::SimFs;
use hybridstore_wal::{Options, Position};
use proptest::prelude::*;
use uuid::Uuid;

/// The streams the operations pick from: two bots, each with its bot and telemetry streams, two
/// users and two chats.
fn streams() -> Vec<StreamId> {
    let mut streams = Vec::new();
    for bot in ["bot_a", "bot_b"] {
        let bot = BotId::new(bot).unwrap();
        streams.push(StreamId::bot(&bot));
        streams.push(StreamId::telemetry(&bot));
        for key in [1, 2] {
            streams.push(StreamId::user(&bot, key));
            streams.push(StreamId::conversation(&bot, -100 - key));
        }
    }
    streams
}

#[derive(Debug, Clone)]
enum Op {
    /// Append these events to stream `stream`, with the correct expected version or `Any`;
    /// `keyed` adds idempotency keys.
    Append {
        stream: usize,
        events: Vec<EventSpec>,
        exact: bool,
        keyed: bool,
    },
    /// Append with an expected version the stream is not at.
    Conflict { stream: usize, offset: u64 },
    /// Retry an earlier successful append (picked modulo their count), by its event ids or (when
    /// it had them) by its idempotency keys with fresh event ids.
    Retry { pick: usize, by_key: bool },
    /// Compare the live projection with a rebuilt one, close the store and open it again.
    Reopen,
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    (any::<u8>(), any::<u8>(), 0i64..3).prop_map(|(selector, argument, day)| EventSpec {
        selector,
        argument,
        day,
    })
}

fn op(stream_count: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (
            0..stream_count,
            prop::collection::vec(event_spec(), 1..5),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(stream, events, exact, keyed)| Op::Append {
                stream,
                events,
                exact,
                keyed,
            }),
        2 => (0..stream_count, 0u64..3).prop_map(|(stream, offset)| Op::Conflict { stream, offset }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, by_key)| Op::Retry { pick, by_key }),
        1 => Just(Op::Reopen),
    ]
}

/// An append that succeeded, kept for retries.
struct Appended {
    stream: StreamId,
    events: Vec<NewEvent>,
    keyed: bool,
    result: AppendResult,
}

fn config(fs: &SimFs) -> StoreConfig {
    StoreConfig {
        wal: Options {
            fs: fs.shared(),
            segment_size_bytes: 2048,
            ..Default::default()
        },
        conversation_tail_len: 3,
        ..StoreConfig::new("/data")
    }
}

/// The live projection must equal one rebuilt from the log, which must end at the durable end.
async fn assert_live_equals_rebuilt(store: &Store, end: Position, when: &str) {
    let live = store.projection_snapshot().await.unwrap();
    let (rebuilt, stats) = store.rebuild_projection().await.unwrap();
    assert_eq!(stats.end, end, "{when}: rebuild end");
    assert_eq!(stats.events, end.0, "{when}: events rebuilt");
    assert_eq!(live.applied_end(), end, "{when}: live applied end");
    assert!(
        live == rebuilt,
        "{when}: live projection differs from rebuilt one\nlive: {live:#?}\nrebuilt: {rebuilt:#?}"
    );
}

async fn assert_versions(store: &Store, model: &HashMap<StreamId, u64>, when: &str) {
    for (stream, count) in model {
        let events = store
            .read_stream(stream, StreamVersion(0), ReadDirection::Forward, usize::MAX)
            .await
            .unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.stream_version.0).collect();
        assert_eq!(
            versions,
            (0..*count).collect::<Vec<_>>(),
            "{when}: versions of {stream}"
        );
    }
}

async fn run(ops: Vec<Op>) {
    let fs = SimFs::new();
    let config = config(&fs);
    let all_streams = streams();
    let mut store = Store::open(config.clone()).await.unwrap();
    let mut model: HashMap<StreamId, u64> = HashMap::new();
    let mut end = Position(0);
    let mut appended: Vec<Appended> = Vec::new();
    let mut next_key = 0u64;

    for (step, op) in ops.into_iter().enumerate() {
        let when = format!("step {step} ({op:?})");
        match op {
            Op::Append {
                stream,
                events,
                exact,
                keyed,
            } => {
                let stream = all_streams[stream].clone();
                let count = model.get(&stream).copied().unwrap_or(0);
                let expected = if exact {
                    count.checked_sub(1).map_or(ExpectedVersion::NoStream, |v| {
                        ExpectedVersion::Exact(StreamVersion(v))
                    })
                } else {
                    ExpectedVersion::Any
                };
                let events: Vec<NewEvent> = events
                    .iter()
                    .map(|spec| {
                        let mut new = NewEvent::new(build_event(stream.kind(), *spec))
                            .with_id(Uuid::now_v7())
                            .at(Timestamp(
                                DAY_ZERO_MS + spec.day * 86_400_000 + i64::from(spec.argument),
                            ));
                        if keyed {
                            next_key += 1;
                            new = new.with_key(format!("key-{next_key}"));
                        }
                        new
                    })
                    .collect();
                let len = events.len() as u64;
                let result = store
                    .append(&stream, expected, events.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{when}: {e}"));
                assert_eq!(
                    result,
                    AppendResult {
                        first_position: end,
                        last_position: end.advance(len - 1),
                        stream_version: StreamVersion(count + len - 1),
                    },
                    "{when}"
                );
                end = end.advance(len);
                model.insert(stream.clone(), count + len);
                appended.push(Appended {
                    stream,
                    events,
                    keyed,
                    result,
                });
            }
            Op::Conflict { stream, offset } => {
                let stream = all_streams[stream].clone();
                let count = model.get(&stream).copied().unwrap_or(0);
                let actual = count.checked_sub(1).map(StreamVersion);
                let expected = match actual {
                    None => ExpectedVersion::Exact(StreamVersion(offset)),
                    Some(_) if offset == 0 => ExpectedVersion::NoStream,
                    Some(v) => ExpectedVersion::Exact(StreamVersion(v.0 + offset)),
                };
                let event = NewEvent::new(build_event(
                    stream.kind(),
                    EventSpec {
                        selector: 5,
                        argument: 1,
                        day: 0,
                    },
                ));
                let error = store
                    .append(&stream, expected, vec![event])
                    .await
                    .unwrap_err();
                assert!(
                    matches!(
                        &error,
                        StoreError::WrongExpectedVersion { actual: a, expected: e, .. }
                            if *a == actual && *e == expected
                    ),
                    "{when}: {error:?}"
                );
                assert_eq!(store.durable_end(), end, "{when}");
            }
            Op::Retry { pick, by_key } => {
                if appended.is_empty() {
                    continue;
                }
                let original = &appended[pick % appended.len()];
                let events: Vec<NewEvent> = if by_key && original.keyed {
                    // A client that lost the ids but kept the keys.
                    original
                        .events
                        .iter()
                        .map(|e| NewEvent {
                            event_id: Some(Uuid::now_v7()),
                            ..e.clone()
                        })
                        .collect()
                } else {
                    original.events.clone()
                };
                let again = store
                    .append(&original.stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap_or_else(|e| panic!("{when}: {e}"));
                assert_eq!(again, original.result, "{when}");
                assert_eq!(store.durable_end(), end, "{when}: a retry appended");
            }
            Op::Reopen => {
                assert_live_equals_rebuilt(&store, end, &when).await;
                let before = store.projection_snapshot().await.unwrap();
                store.close().await.unwrap();
                store = Store::open(config.clone()).await.unwrap();
                assert_eq!(store.durable_end(), end, "{when}");
                let after = store.projection_snapshot().await.unwrap();
                assert!(
                    before == after,
                    "{when}: the projection changed across a reopen"
                );
                assert_versions(&store, &model, &when).await;
            }
        }
    }

    assert_eq!(store.durable_end(), end);
    assert_live_equals_rebuilt(&store, end, "end, before the final reopen").await;
    assert_versions(&store, &model, "end").await;
    let before = store.projection_snapshot().await.unwrap();
    store.close().await.unwrap();
    let store = Store::open(config).await.unwrap();
    assert_live_equals_rebuilt(&store, end, "after the final reopen").await;
    let after = store.projection_snapshot().await.unwrap();
    assert!(
        before == after,
        "the projection changed across the final reopen"
    );
    assert_versions(&store, &model, "after the final reopen").await;
    // Retries still return their original results after the reopen.
    for original in appended.iter().step_by(3) {
        let again = store
            .append(
                &original.stream,
                ExpectedVersion::Any,
                original.events.clone(),
            )
            .await
            .unwrap();
        assert_eq!(again, original.result);
    }
    assert_eq!(store.durable_end(), end);
    store.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Proves the live projection always equals one rebuilt from the log (before and after
    /// reopening), and appends, conflicts and retries behave as the model says.
    #[test]
    fn live_projection_equals_rebuilt(ops in prop::collection::vec(op(streams().len()), 1..80)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(ops));
    }
}
