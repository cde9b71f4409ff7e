//! Property test of the store against a simple model: random sequences of appends (single and
//! multi-event, of every event type, over a few bots, users and chats), expected-version
//! conflicts, duplicate retries and close/reopen cycles. Throughout, the live projection (built
//! by following the log) must equal one rebuilt from scratch, stream versions must match the
//! model, retries must return their original results and append nothing, and conflicts must
//! report the model's version.

use std::collections::HashMap;

use hybridstore::events::{
    AnalyticsRecorded, ComponentStateChanged, ConfigValueSet, ConfigValueUnset,
    ConversationAnalyzed, Event, FollowupCancelled, FollowupFired, FollowupScheduled, Generation,
    HistoryCleared, Identity, JsonText, MessageReceived, MessageSent, ProfileCreated,
    ProfileDeleted, ProfileFactsRecorded, ProfileLegacyStateImported, ProfileRenamed, UserBlocked,
    UserErased, UserIdentityUpdated, UserRegistered, UserSettingsChanged, UserUnblocked,
};
use hybridstore::{
    AppendResult, BotId, Component, ExpectedVersion, MigrationState, NewEvent, ReadDirection,
    Store, StoreConfig, StoreError, StreamId, StreamKind, StreamVersion, Timestamp,
};
use hybridstore_wal::io::sim::SimFs;
use hybridstore_wal::{Options, Position};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

/// 2026-11-18T00:00:00Z.
const DAY_ZERO_MS: i64 = 20_775 * 86_400_000;

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

/// One event to build: a selector (which type, among those of the stream's kind), an argument
/// that varies its content, and the day it happened.
#[derive(Debug, Clone, Copy)]
struct EventSpec {
    selector: u8,
    argument: u8,
    day: i64,
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

fn json_text(value: serde_json::Value) -> JsonText {
    JsonText::from_value(&value)
}

/// Builds a valid event for a stream of `kind`.
fn build_event(kind: StreamKind, spec: EventSpec) -> Event {
    let a = spec.argument;
    let small = i64::from(a % 4);
    match kind {
        StreamKind::User => match spec.selector % 6 {
            0 | 1 => Event::UserRegistered(UserRegistered {
                identity: Identity {
                    username: Some(format!("user{a}")),
                    first_name: a.is_multiple_of(2).then(|| "Anna".to_owned()),
                    last_name: None,
                    language_code: Some("en".into()),
                },
            }),
            2 => Event::UserSettingsChanged(UserSettingsChanged {
                settings: json_text(if a.is_multiple_of(3) {
                    json!({ format!("s{small}"): null })
                } else {
                    json!({ format!("s{small}"): a, "lang": "en" })
                }),
            }),
            3 => Event::UserBlocked(UserBlocked {
                reason: a.is_multiple_of(2).then(|| format!("reason {a}")),
            }),
            4 => {
                if a.is_multiple_of(4) {
                    Event::UserErased(UserErased {})
                } else if a.is_multiple_of(2) {
                    Event::UserUnblocked(UserUnblocked {})
                } else {
                    Event::UserIdentityUpdated(UserIdentityUpdated {
                        identity: Identity {
                            username: Some(format!("renamed{a}")),
                            ..Identity::default()
                        },
                    })
                }
            }
            _ => Event::UserSettingsChanged(UserSettingsChanged {
                settings: json_text(json!({ "nested": {"x": a} })),
            }),
        },
        StreamKind::Conversation => match spec.selector % 12 {
            0 => Event::ProfileCreated(ProfileCreated {
                name: format!("name{a}"),
            }),
            1 => Event::ProfileRenamed(ProfileRenamed {
                name: format!("renamed{a}"),
            }),
            2 => Event::ProfileFactsRecorded(ProfileFactsRecorded {
                snapshot_id: format!("s{small}"),
                facts: json_text(json!({"n": a})),
            }),
            3 => Event::ConversationAnalyzed(ConversationAnalyzed {
                analysis_id: format!("a{small}"),
                summary: format!("summary {a}"),
            }),
            4 if a.is_multiple_of(8) => Event::ProfileDeleted(ProfileDeleted {}),
            4 => Event::ProfileLegacyStateImported(ProfileLegacyStateImported {
                last_activity: a
                    .is_multiple_of(2)
                    .then(|| json_text(json!(format!("2024-01-0{small}")))),
                message_count: u64::from(a),
                previous_response_id: a.is_multiple_of(3).then(|| format!("legacy{a}")),
            }),
            5 | 6 => Event::MessageReceived(MessageReceived {
                telegram_message_id: Some(i64::from(a)),
                text: format!("in {a}"),
                content_type: if a.is_multiple_of(5) { "photo" } else { "text" }.into(),
                legacy_ts: None,
            }),
            7 | 8 => Event::MessageSent(MessageSent {
                text: format!("out {a}"),
                kind: "reply".into(),
                generation: a.is_multiple_of(2).then(|| Generation {
                    model: "m".into(),
                    response_id: a.is_multiple_of(4).then(|| format!("resp{a}")),
                    prompt_tokens: u32::from(a),
                    completion_tokens: 7,
                    latency_ms: 10,
                }),
                legacy_ts: None,
            }),
            9 if a.is_multiple_of(4) => Event::HistoryCleared(HistoryCleared {}),
            9 => Event::FollowupScheduled(FollowupScheduled {
                followup_id: format!("f{small}"),
                due_at: Timestamp(DAY_ZERO_MS + i64::from(a)),
                reason: "quiet".into(),
            }),
            10 => Event::FollowupCancelled(FollowupCancelled {
                followup_id: format!("f{small}"),
            }),
            _ => Event::FollowupFired(FollowupFired {
                followup_id: format!("f{small}"),
            }),
        },
        StreamKind::Bot => match spec.selector % 3 {
            0 => Event::ConfigValueSet(ConfigValueSet {
                scope: if a.is_multiple_of(2) {
                    "global"
                } else {
                    "chat:1"
                }
                .into(),
                key: format!("k{small}"),
                value: json_text(json!({"v": a})),
            }),
            1 => Event::ConfigValueUnset(ConfigValueUnset {
                scope: "global".into(),
                key: format!("k{small}"),
            }),
            _ => {
                let states = [
                    MigrationState::Disabled,
                    MigrationState::Enabled,
                    MigrationState::DualWrite,
                    MigrationState::DatabaseOnly,
                ];
                Event::ComponentStateChanged(ComponentStateChanged {
                    component: Component::ALL[usize::from(a) % Component::ALL.len()],
                    from: states[usize::from(a / 5) % 4],
                    to: states[usize::from(a / 20) % 4],
                    reason: "test".into(),
                    automatic: a.is_multiple_of(2),
                })
            }
        },
        StreamKind::Telemetry => Event::AnalyticsRecorded(AnalyticsRecorded {
            kind: if spec.selector.is_multiple_of(3) {
                "command"
            } else {
                "llm_call"
            }
            .into(),
            user_id: a.is_multiple_of(2).then_some(i64::from(a)),
            properties: json_text(json!({"tokens": a})),
        }),
    }
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
