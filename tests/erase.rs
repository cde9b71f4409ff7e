//! Erasing a person (design §10): crypto-shredding in the log, the projections and the sinks
//! dropping the subject, the receipt, and the key store's durability and damage handling.

use std::path::Path;
use std::time::Duration;

use hybridstore::crypto::{KeyStoreError, MasterKey, KEYS_SUBDIR};
use hybridstore::erase::Receipt;
use hybridstore::events::{
    ConversationAnalyzed, Event, Identity, MessageReceived, MessageSent, Personal, ProfileCreated,
    ProfileFactsRecorded, StoredEvent, UserRegistered,
};
use hybridstore::hybrid::{Hybrid, HybridConfig, SetOptions};
use hybridstore::ids::Subject;
use hybridstore::read::{Query, ReadError};
use hybridstore::testing::{projected_past, redis_url, RedisNamespace, TestDb};
use hybridstore::{
    BotId, Component, ExpectedVersion, InputError, MigrationState, NewEvent, Store, StoreConfig,
    StoreError, StreamId, StreamVersion, Timestamp,
};
use hybridstore_wal::io::sim::{FaultAt, FaultMode, SimFs, Tear};
use hybridstore_wal::{Position, Wal};

fn bot() -> BotId {
    BotId::new("shred").unwrap()
}

/// A text no other test writes, to look for afterwards.
fn marker(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::now_v7().simple())
}

async fn append(store: &Store, stream: &StreamId, events: Vec<Event>) -> Position {
    store
        .append(
            stream,
            ExpectedVersion::Any,
            events.into_iter().map(NewEvent::new).collect(),
        )
        .await
        .expect("the append lands")
        .last_position
}

fn received(text: &str) -> Event {
    Event::MessageReceived(MessageReceived {
        telegram_message_id: Some(1),
        text: text.into(),
        content_type: "text".into(),
        legacy_ts: None,
    })
}

fn sent(text: &str) -> Event {
    Event::MessageSent(MessageSent {
        text: text.into(),
        kind: "reply".into(),
        generation: None,
        legacy_ts: None,
    })
}

/// The personal data of one chat partner, each field a fresh marker: name, messages both ways,
/// an analysis, facts.
struct Person {
    chat: i64,
    name: String,
    said: String,
    answered: String,
    summary: String,
    fact: String,
}

impl Person {
    fn new(chat: i64) -> Person {
        Person {
            chat,
            name: marker("name"),
            said: marker("said"),
            answered: marker("answered"),
            summary: marker("summary"),
            fact: marker("fact"),
        }
    }

    fn texts(&self) -> Vec<&str> {
        vec![
            &self.name,
            &self.said,
            &self.answered,
            &self.summary,
            &self.fact,
        ]
    }

    fn stream(&self) -> StreamId {
        StreamId::conversation(&bot(), self.chat)
    }

    async fn write(&self, store: &Store) -> Position {
        let facts = serde_json::json!({ "likes": self.fact });
        append(
            store,
            &self.stream(),
            vec![
                Event::ProfileCreated(ProfileCreated {
                    name: self.name.clone(),
                }),
                received(&self.said),
                sent(&self.answered),
                Event::ConversationAnalyzed(ConversationAnalyzed {
                    analysis_id: "a1".into(),
                    summary: self.summary.clone(),
                }),
                Event::ProfileFactsRecorded(ProfileFactsRecorded {
                    snapshot_id: "s1".into(),
                    facts: hybridstore::events::JsonText::from_value(&facts),
                }),
            ],
        )
        .await
    }
}

/// Every event of `stream` (up to 1000).
async fn all_events(store: &Store, stream: &StreamId) -> Vec<hybridstore::events::RecordedEvent> {
    store
        .read_stream(
            stream,
            StreamVersion(0),
            hybridstore::store::ReadDirection::Forward,
            1000,
        )
        .await
        .unwrap()
}

/// [`all_events`] from outside the runtime.
fn stream_events(
    runtime: &tokio::runtime::Runtime,
    store: &Store,
    stream: &StreamId,
) -> Vec<hybridstore::events::RecordedEvent> {
    runtime.block_on(all_events(store, stream))
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The files under `dir` holding `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    files(dir)
        .into_iter()
        .filter(|(_, bytes)| contains(bytes, needle))
        .map(|(path, _)| path)
        .collect()
}

/// Every row of every table of the test database, as text, holding `needle`.
async fn rows_holding(db: &TestDb, needle: &str) -> Vec<String> {
    let pool = db.pool().await;
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' \
         AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    for (table,) in tables {
        let rows: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT t::text FROM {table} t WHERE t::text LIKE $1"
        ))
        .bind(format!("%{needle}%"))
        .fetch_all(&pool)
        .await
        .unwrap();
        found.extend(rows.into_iter().map(|(row,)| format!("{table}: {row}")));
    }
    found
}

/// Every value in `namespace` holding `needle`.
async fn redis_holding(namespace: &RedisNamespace, needle: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", namespace.name))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut found = Vec::new();
    for key in keys {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        if value.is_some_and(|v| contains(&v, needle.as_bytes())) {
            found.push(key);
        }
    }
    found
}

/// A handle with Postgres (and Redis, when `cache` is given) and fast supervisor rounds.
fn config(dir: &Path, db: Option<&TestDb>, cache: Option<&RedisNamespace>) -> HybridConfig {
    let mut config = HybridConfig::new(StoreConfig::new(dir));
    config.postgres = db.map(|db| db.config.clone());
    config.cache = cache.map(|ns| ns.config(Some(&redis_url()), true));
    config.supervisor.poll = Duration::from_millis(20);
    config.supervisor.probe_timeout = Duration::from_secs(2);
    config.routing.postgres_timeout = Duration::from_secs(2);
    config
}

/// Moves `components` to `database-only` (forced: the guards are tested elsewhere).
async fn to_database_only(hybrid: &Hybrid, components: &[Component]) {
    let options = SetOptions {
        force: true,
        reason: Some("erase test".into()),
        wait: Duration::from_secs(60),
    };
    for component in components {
        for state in [
            MigrationState::Enabled,
            MigrationState::DualWrite,
            MigrationState::DatabaseOnly,
        ] {
            hybrid
                .set_component_state(&bot(), *component, state, &options)
                .await
                .expect("the transition is made");
        }
    }
}

fn queries(chat: i64) -> Vec<Query> {
    vec![
        Query::Profile {
            bot: bot(),
            chat_id: chat,
        },
        Query::Head {
            bot: bot(),
            chat_id: chat,
        },
        Query::Messages {
            bot: bot(),
            chat_id: chat,
            limit: 20,
        },
    ]
}

/// Every read of `chat`, as JSON.
async fn reads_of(hybrid: &Hybrid, chat: i64) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for query in queries(chat) {
        let routed = hybrid.reads().read(&query, None).await.expect("a read");
        out.push(serde_json::to_value(&routed.answer).unwrap());
    }
    out
}

/// Proves an erased chat partner leaves no byte of their texts and no key byte under the data
/// directory, in Postgres or in Redis; every read says erased; the other chat's reads are
/// unchanged; the receipt names every sink at or past the erasure; a rebuild at open
/// reproduces the erased state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_chat_leaves_nothing_readable_anywhere() {
    let db = TestDb::create("erase").await;
    let namespace = RedisNamespace::new();
    let dir = tempfile::tempdir().unwrap();
    let hybrid = Hybrid::open(config(dir.path(), Some(&db), Some(&namespace)))
        .await
        .unwrap();
    let components = [Component::Profiles, Component::Conversations];
    to_database_only(&hybrid, &components).await;
    let store = hybrid.store().unwrap().clone();
    let (erased, kept) = (Person::new(101), Person::new(202));
    erased.write(&store).await;
    let last = kept.write(&store).await;
    projected_past(&hybrid, last).await;
    // Reads through the cache fill both tiers with the erased person's values.
    let erased_reads = reads_of(&hybrid, erased.chat).await;
    assert!(erased_reads[0].to_string().contains(&erased.name));
    let kept_before = reads_of(&hybrid, kept.chat).await;
    assert!(
        !redis_holding(&namespace, &erased.name).await.is_empty(),
        "the test must see the value in Redis before the erasure, or it proves nothing"
    );
    assert!(!rows_holding(&db, &erased.said).await.is_empty());
    let key = store
        .keyring()
        .current(&erased.stream().to_string())
        .expect("the chat has a key")
        .1;
    assert!(!files_holding(dir.path(), key.bytes()).is_empty());

    let receipt = hybrid
        .erase(
            &Subject::Chat {
                bot: bot(),
                chat_id: erased.chat,
            },
            Duration::from_secs(30),
        )
        .await
        .expect("the erasure is made");

    assert!(receipt.complete, "{receipt:#?}");
    let sinks: Vec<&str> = receipt.sinks.iter().map(|s| s.sink.as_str()).collect();
    assert_eq!(sinks, ["log-projection", "postgres", "cache"]);
    for sink in &receipt.sinks {
        assert!(
            sink.reached && sink.position >= Some(receipt.erasure_position),
            "{sink:?} vs {}",
            receipt.erasure_position
        );
    }
    assert_eq!(receipt.plaintext_events_remaining, 0);
    assert_eq!(receipt.sealed_events_shredded, 5);
    for text in erased.texts() {
        assert_eq!(
            files_holding(dir.path(), text.as_bytes()),
            Vec::<std::path::PathBuf>::new(),
            "{text}"
        );
        assert_eq!(
            rows_holding(&db, text).await,
            Vec::<String>::new(),
            "{text}"
        );
        assert_eq!(
            redis_holding(&namespace, text).await,
            Vec::<String>::new(),
            "{text}"
        );
    }
    assert_eq!(
        files_holding(dir.path(), key.bytes()),
        Vec::<std::path::PathBuf>::new()
    );
    for query in queries(erased.chat) {
        match hybrid.reads().read(&query, None).await {
            Err(ReadError::Erased { position, .. }) => {
                assert_eq!(position.0, receipt.erasure_position);
            }
            other => panic!("{query:?} answered {other:?}, not erased"),
        }
    }
    assert_eq!(reads_of(&hybrid, kept.chat).await, kept_before);

    // The receipt is in the log.
    let receipts = all_events(&store, &StreamId::bot(&bot())).await;
    assert!(receipts.iter().any(|e| matches!(&e.event,
        Event::ErasureReceiptRecorded(r) if r.receipt_id == receipt.receipt_id.to_string())));

    let live = store.projection_snapshot().await.unwrap();
    hybrid.close().await.unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let (rebuilt, _) = store.rebuild_projection().await.unwrap();
    assert_eq!(rebuilt, live, "a rebuild reproduces the erased state");
    assert!(rebuilt.profile(&bot(), erased.chat).is_none());
    assert!(rebuilt.chat_erased(&bot(), erased.chat).is_some());
    assert_eq!(
        rebuilt.profile(&bot(), kept.chat).unwrap().name,
        kept.name,
        "the other chat is untouched"
    );
    // The sealed events of the erased chat decode as erased: ids and counts, no text.
    let events = all_events(&store, &erased.stream()).await;
    let erased_events: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.personal, Personal::Erased { .. }))
        .collect();
    assert_eq!(erased_events.len(), 5);
    store.close().await.unwrap();
}

/// Proves a replay of the log into a fresh database (the projector's backfill from nothing)
/// reproduces the erased state: no row of the erased chat, an erasure mark, and a read from
/// Postgres (a replica) that says erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_into_a_fresh_database_reproduces_the_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let person = Person::new(7);
    let subject = Subject::Chat {
        bot: bot(),
        chat_id: person.chat,
    };
    {
        let hybrid = Hybrid::open(config(dir.path(), None, None)).await.unwrap();
        person.write(hybrid.store().unwrap()).await;
        let receipt = hybrid
            .erase(&subject, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            receipt
                .sinks
                .iter()
                .map(|s| s.sink.as_str())
                .collect::<Vec<_>>(),
            ["log-projection"],
            "without Postgres the log projection is the only sink"
        );
        assert!(receipt.complete);
        hybrid.close().await.unwrap();
    }
    let db = TestDb::create("erase").await;
    let hybrid = Hybrid::open(config(dir.path(), Some(&db), None))
        .await
        .unwrap();
    to_database_only(
        &hybrid,
        &[
            Component::Users,
            Component::Profiles,
            Component::Conversations,
        ],
    )
    .await;
    let end = hybrid.store().unwrap().durable_end();
    projected_past(&hybrid, Position(end.0 - 1)).await;
    for text in person.texts() {
        assert_eq!(rows_holding(&db, text).await, Vec::<String>::new());
    }
    let marks: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, subject_id FROM erasures WHERE bot_id = $1")
            .bind(bot().as_str())
            .fetch_all(&db.pool().await)
            .await
            .unwrap();
    assert_eq!(marks, [("chat".to_owned(), person.chat)]);
    let replica = Hybrid::open_replica(
        &db.config,
        None,
        hybridstore::read::RoutingConfig::default(),
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    let query = Query::Profile {
        bot: bot(),
        chat_id: person.chat,
    };
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match replica.reads().read(&query, None).await {
                Err(ReadError::NotServedHere { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    })
    .await
    .expect("the replica sees the states");
    assert!(
        matches!(answered, Err(ReadError::Erased { .. })),
        "the replica answered {answered:?}"
    );
    replica.close().await.unwrap();
    hybrid.close().await.unwrap();
}

/// Proves erasing a user destroys their key and their private chat's, drops both from the
/// projections, reads of the user say erased, erasing again is harmless, an unknown subject is
/// refused, and the person writing again afterwards is readable (a new key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_twice_and_coming_back() {
    let dir = tempfile::tempdir().unwrap();
    let hybrid = Hybrid::open(config(dir.path(), None, None)).await.unwrap();
    let store = hybrid.store().unwrap().clone();
    let user = 55;
    let first_name = marker("first");
    append(
        &store,
        &StreamId::user(&bot(), user),
        vec![Event::UserRegistered(UserRegistered {
            identity: Identity {
                first_name: Some(first_name.clone()),
                ..Identity::default()
            },
        })],
    )
    .await;
    let private = Person::new(user);
    private.write(&store).await;
    let subject = Subject::User {
        bot: bot(),
        user_id: user,
    };
    let receipt = hybrid
        .erase(&subject, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(receipt.keys_destroyed.len(), 2, "{receipt:?}");
    assert!(receipt.keys_destroyed.iter().all(|k| k.epoch == 1));
    assert_eq!(receipt.sealed_events_shredded, 6);
    for needle in std::iter::once(first_name.as_str()).chain(private.texts()) {
        assert_eq!(
            files_holding(dir.path(), needle.as_bytes()),
            Vec::<std::path::PathBuf>::new()
        );
    }
    let user_read = hybrid
        .reads()
        .read(
            &Query::User {
                bot: bot(),
                user_id: user,
            },
            None,
        )
        .await;
    assert!(
        matches!(user_read, Err(ReadError::Erased { .. })),
        "{user_read:?}"
    );
    for query in queries(user) {
        let read = hybrid.reads().read(&query, None).await;
        assert!(matches!(read, Err(ReadError::Erased { .. })), "{read:?}");
    }

    let again = hybrid
        .erase(&subject, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(again.complete);
    assert!(again.erasure_position > receipt.erasure_position);
    assert_eq!(
        again.key_store_generation, receipt.key_store_generation,
        "no key left to destroy"
    );
    assert_eq!(
        again.sealed_events_shredded, 6,
        "the same events, still shredded"
    );

    let unknown = hybrid
        .erase(
            &Subject::Chat {
                bot: bot(),
                chat_id: 999_999,
            },
            Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(
            unknown,
            Err(hybridstore::hybrid::HybridError::Store(StoreError::Input(
                InputError::UnknownSubject { .. }
            )))
        ),
        "{unknown:?}"
    );

    let back = marker("back");
    append(&store, &private.stream(), vec![received(&back)]).await;
    let routed = hybrid
        .reads()
        .read(
            &Query::Messages {
                bot: bot(),
                chat_id: user,
                limit: 20,
            },
            store.last_position(),
        )
        .await
        .expect("the chat is readable again");
    let json = serde_json::to_string(&routed.answer).unwrap();
    assert!(
        json.contains(&back) && !json.contains(&private.said),
        "{json}"
    );
    assert_eq!(
        store
            .keyring()
            .current(&private.stream().to_string())
            .map(|(e, _)| e),
        Some(2),
        "a new key"
    );
    hybrid.close().await.unwrap();
}

/// Proves a receipt names a sink that did not reach the erasure (Postgres cut off) and that
/// asking again once it is back completes it, recorded under the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_names_a_stopped_sink_and_completes_later() {
    let db = TestDb::create("erase").await;
    let proxy = db.proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let mut hybrid_config = config(dir.path(), None, None);
    hybrid_config.postgres = Some(db.config_through(&proxy));
    let hybrid = Hybrid::open(hybrid_config).await.unwrap();
    hybrid
        .set_component_state(
            &bot(),
            Component::Profiles,
            MigrationState::Enabled,
            &SetOptions::default(),
        )
        .await
        .unwrap();
    let person = Person::new(3);
    let last = person.write(hybrid.store().unwrap()).await;
    projected_past(&hybrid, last).await;
    proxy.cut();
    let subject = Subject::Chat {
        bot: bot(),
        chat_id: person.chat,
    };
    let receipt: Receipt = hybrid
        .erase(&subject, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(!receipt.complete, "{receipt:#?}");
    let postgres = receipt.sinks.iter().find(|s| s.sink == "postgres").unwrap();
    assert!(!postgres.reached);
    assert!(postgres.position < Some(receipt.erasure_position));
    assert!(postgres.note.is_some());
    assert!(receipt
        .sinks
        .iter()
        .any(|s| s.sink == "log-projection" && s.reached));

    proxy.restore();
    let later = hybrid
        .erasure_receipt(&bot(), receipt.receipt_id, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the receipt is found");
    assert!(later.complete, "{later:#?}");
    assert_eq!(later.receipt_id, receipt.receipt_id);
    assert_eq!(later.erasure_position, receipt.erasure_position);
    let recorded = hybrid
        .store()
        .unwrap()
        .read_stream(
            &StreamId::bot(&bot()),
            StreamVersion(0),
            hybridstore::store::ReadDirection::Forward,
            1000,
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            matches!(&e.event, Event::ErasureReceiptRecorded(r)
            if r.receipt_id == receipt.receipt_id.to_string())
        })
        .count();
    assert_eq!(recorded, 2, "the incomplete receipt and the completed one");
    let missing = hybrid
        .erasure_receipt(&bot(), uuid::Uuid::now_v7(), Duration::from_millis(10))
        .await
        .unwrap();
    assert!(missing.is_none());
    hybrid.close().await.unwrap();
}

/// Writes a log whose events were appended before sealing existed (plaintext envelopes) for
/// chat `chat`, through the log alone.
fn write_plaintext_log(dir: &Path, chat: i64, texts: &[&str]) {
    let wal = Wal::open(dir.join(hybridstore::WAL_SUBDIR), Default::default()).unwrap();
    let stream = StreamId::conversation(&bot(), chat);
    let records: Vec<Vec<u8>> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            StoredEvent::new(
                &stream,
                StreamVersion(i as u64),
                (0, 1),
                uuid::Uuid::now_v7(),
                None,
                Timestamp(1),
                Timestamp(1),
                &received(text),
            )
            .unwrap()
            .encode()
            .unwrap()
        })
        .collect();
    for record in records {
        wal.append(&[record.as_slice()]).unwrap();
    }
    wal.close().unwrap();
}

/// Proves events written in the clear before this change are counted, not claimed shredded:
/// the receipt says how many remain readable in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_counts_the_plaintext_events_it_could_not_shred() {
    let dir = tempfile::tempdir().unwrap();
    let old = marker("old");
    write_plaintext_log(dir.path(), 9, &[&old, "older"]);
    let hybrid = Hybrid::open(config(dir.path(), None, None)).await.unwrap();
    let store = hybrid.store().unwrap().clone();
    append(
        &store,
        &StreamId::conversation(&bot(), 9),
        vec![received("new")],
    )
    .await;
    let receipt = hybrid
        .erase(
            &Subject::Chat {
                bot: bot(),
                chat_id: 9,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(receipt.plaintext_events_remaining, 2, "{receipt:?}");
    assert_eq!(receipt.sealed_events_shredded, 1);
    assert!(
        !files_holding(dir.path(), old.as_bytes()).is_empty(),
        "plaintext events stay readable: the receipt must not claim otherwise"
    );
    hybrid.close().await.unwrap();
}

/// A store on the simulated disk, with the preparer inline (deterministic I/O).
fn sim_config(fs: &SimFs, skip_key_sync: bool) -> StoreConfig {
    let mut config = StoreConfig::new("/data");
    config.wal.fs = fs.shared();
    config.wal.prepare = hybridstore_wal::PrepareSegments::Inline;
    config.appends_by_caller = false;
    config.key_store_skips_sync_for_tests = skip_key_sync;
    config
}

/// Runs the key-durability scenario with a power loss at every I/O call from the first append
/// of a new subject on; returns how many cuts left an acknowledged event without its key.
fn acknowledged_without_key(skip_key_sync: bool) -> usize {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // How many calls the append of a new subject makes.
    let calls = {
        let fs = SimFs::new();
        let store = Store::open_blocking(sim_config(&fs, skip_key_sync)).unwrap();
        let before = fs.op_count();
        runtime.block_on(append(
            &store,
            &StreamId::conversation(&bot(), 1),
            vec![received("hello")],
        ));
        let calls = fs.op_count() - before;
        drop(store);
        calls
    };
    assert!(calls > 3, "the append makes {calls} calls");
    let mut lost = 0;
    for cut in 0..=calls + 2 {
        let fs = SimFs::new();
        let store = Store::open_blocking(sim_config(&fs, skip_key_sync)).unwrap();
        let start = fs.op_count();
        // From call `start + cut` on, the disk is dead: what was not synced before is lost.
        fs.fail(
            FaultAt::Op(start + cut),
            FaultMode::Persistent,
            std::io::ErrorKind::Other,
        );
        let acked = runtime
            .block_on(store.append(
                &StreamId::conversation(&bot(), 1),
                ExpectedVersion::Any,
                vec![NewEvent::new(received("hello"))],
            ))
            .is_ok();
        drop(store);
        fs.power_loss(Tear::DropUnsynced);
        fs.clear_faults();
        match Store::open_blocking(sim_config(&fs, skip_key_sync)) {
            Ok(store) => {
                let events = runtime
                    .block_on(store.read_stream(
                        &StreamId::conversation(&bot(), 1),
                        StreamVersion(0),
                        hybridstore::store::ReadDirection::Forward,
                        10,
                    ))
                    .unwrap();
                if acked {
                    assert_eq!(
                        events.len(),
                        1,
                        "cut at {cut}: an acknowledged event is lost"
                    );
                    assert_eq!(
                        events[0].event,
                        received("hello"),
                        "cut at {cut}: the event reads back whole"
                    );
                }
            }
            Err(StoreError::Decode { .. }) if acked => lost += 1,
            Err(error) => panic!("cut at {cut} (acknowledged: {acked}): {error}"),
        }
    }
    lost
}

/// Proves a subject's key is durable before the first event sealed with it is acknowledged: a
/// power loss at every I/O call of that first append never leaves an acknowledged event the
/// store cannot open; and that the test catches an acknowledgement before the key's fsync.
#[test]
fn a_key_is_durable_before_its_first_event_is_acknowledged() {
    assert_eq!(acknowledged_without_key(false), 0);
    assert!(
        acknowledged_without_key(true) > 0,
        "mutation check: with the key store's fsyncs skipped, some cut must lose a key"
    );
}

/// Opens a store in `dir`, appends one message (`text`) to a new chat, so one key is made, and
/// closes it; returns the key store's one slot at rest.
async fn store_with_one_key(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let store = Store::open(StoreConfig::new(dir)).await.unwrap();
    append(
        &store,
        &StreamId::conversation(&bot(), 1),
        vec![received(text)],
    )
    .await;
    store.close().await.unwrap();
    std::fs::read_dir(dir.join(KEYS_SUBDIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("one slot at rest")
}

/// Proves a flipped bit, a truncation, a missing key store, another log's key store, and a
/// missing or wrong master key each give a clear error at open, naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_key_store_is_a_clear_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let slot = store_with_one_key(dir.path(), "x").await;
    let good = std::fs::read(&slot).unwrap();
    let open_error = || async {
        Store::open(StoreConfig::new(dir.path()))
            .await
            .expect_err("the open must fail")
    };

    let mut flipped = good.clone();
    let at = flipped.len() - 5;
    flipped[at] ^= 0x10;
    std::fs::write(&slot, &flipped).unwrap();
    let error = open_error().await;
    let text = error.to_string();
    assert!(
        matches!(&error, StoreError::KeyStore(KeyStoreError::Damaged { .. }))
            && text.contains("checksum")
            && text.contains(&slot.display().to_string()),
        "{text}"
    );

    std::fs::write(&slot, &good[..good.len() - 7]).unwrap();
    let text = open_error().await.to_string();
    assert!(
        text.contains("truncated") && text.contains("damaged"),
        "{text}"
    );

    std::fs::remove_file(&slot).unwrap();
    let text = open_error().await.to_string();
    assert!(
        text.contains("key store does not hold") && text.contains("conv-shred-1"),
        "{text}"
    );

    // Another data directory's key store.
    let other = tempfile::tempdir().unwrap();
    let other_slot = store_with_one_key(other.path(), "y").await;
    std::fs::copy(&other_slot, &slot).unwrap();
    let error = open_error().await;
    assert!(
        matches!(error, StoreError::KeyStore(KeyStoreError::OtherLog { .. })),
        "{error}"
    );
    std::fs::write(&slot, &good).unwrap();

    // Wrapped with a master key: opening without it, or with another, is refused.
    let master = MasterKey::from_hex(&MasterKey::generate_hex().unwrap()).unwrap();
    let mut with_master = StoreConfig::new(dir.path());
    with_master.master_key = Some(master.clone());
    let store = Store::open(with_master.clone()).await.unwrap();
    let key = store.keyring().current("conv-shred-1").expect("the key").1;
    store.close().await.unwrap();
    assert_eq!(
        files_holding(dir.path(), key.bytes()),
        Vec::<std::path::PathBuf>::new(),
        "a wrapped key store holds no key in the clear (the unwrapped copy is scrubbed)"
    );
    let error = open_error().await;
    assert!(
        matches!(
            error,
            StoreError::KeyStore(KeyStoreError::MasterKeyRequired { .. })
        ),
        "{error}"
    );
    let mut wrong = StoreConfig::new(dir.path());
    wrong.master_key = Some(MasterKey::from_hex(&MasterKey::generate_hex().unwrap()).unwrap());
    let error = Store::open(wrong).await.expect_err("a wrong master key");
    assert!(
        matches!(
            error,
            StoreError::KeyStore(KeyStoreError::MasterKeyMismatch { .. })
        ),
        "{error}"
    );
    let store = Store::open(with_master).await.unwrap();
    let events = store
        .read_stream(
            &StreamId::conversation(&bot(), 1),
            StreamVersion(0),
            hybridstore::store::ReadDirection::Forward,
            10,
        )
        .await
        .unwrap();
    assert_eq!(events[0].event, received("x"));
    store.close().await.unwrap();
}

/// Proves a crash between the erasure event and the key's destruction is finished at the next
/// open: the key is destroyed before anything is served.
#[test]
fn an_erasure_cut_before_the_key_is_destroyed_is_finished_at_open() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fs = SimFs::new();
    let store = Store::open_blocking(sim_config(&fs, false)).unwrap();
    let stream = StreamId::conversation(&bot(), 4);
    runtime.block_on(append(&store, &stream, vec![received("secret")]));
    // The key store's first rewrite after the erasure event fails: the disk dies there.
    fs.fail(
        FaultAt::Kind("open", 0),
        FaultMode::Persistent,
        std::io::ErrorKind::Other,
    );
    let erased = runtime.block_on(store.erase(&Subject::Chat {
        bot: bot(),
        chat_id: 4,
    }));
    assert!(erased.is_err(), "the key store could not be rewritten");
    drop(store);
    fs.power_loss(Tear::DropUnsynced);
    fs.clear_faults();
    let store = Store::open_blocking(sim_config(&fs, false)).unwrap();
    let events = stream_events(&runtime, &store, &stream);
    assert!(
        matches!(events.last().map(|e| &e.event), Some(Event::ChatErased(_))),
        "the erasure event was durable before the failure"
    );
    assert!(
        matches!(events[0].personal, Personal::Erased { .. }),
        "the open destroyed the key: {:?}",
        events[0].personal
    );
    let slot_bytes: Vec<Vec<u8>> = fs
        .list_files()
        .into_iter()
        .filter(|p| p.starts_with("/data/keys"))
        .filter_map(|p| fs.read_file(&p))
        .collect();
    assert!(!slot_bytes.is_empty());
    drop(store);
}

const CHILD_DIR_ENV: &str = "HYBRIDSTORE_ERASE_TEST_CHILD_DIR";
const CHILD_FIRST_CHAT_ENV: &str = "HYBRIDSTORE_ERASE_TEST_CHILD_FIRST_CHAT";

/// Not a test on its own: the child process of `acknowledged_events_keep_their_keys_across_kill_9`
/// (ignored; that test runs it). Appends one message to a new conversation after another (each
/// a new subject, so each makes a key) and prints `ack CHAT` once its append returned.
#[test]
#[ignore = "the child process of acknowledged_events_keep_their_keys_across_kill_9"]
fn kill_9_child_appends_to_new_subjects() {
    use std::io::Write as _;
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let first: i64 = std::env::var(CHILD_FIRST_CHAT_ENV)
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(StoreConfig::new(&dir)).await.unwrap();
        let mut out = std::io::stdout().lock();
        for chat in first.. {
            let stream = StreamId::conversation(&bot(), chat);
            append(
                &store,
                &stream,
                vec![received(&format!("text of chat {chat}"))],
            )
            .await;
            writeln!(out, "ack {chat}").unwrap();
            out.flush().unwrap();
        }
    });
}

/// Proves a process killed with SIGKILL while making keys never leaves an acknowledged event
/// without its key: after each kill the store opens, and every acknowledged chat's message reads
/// back whole.
#[test]
fn acknowledged_events_keep_their_keys_across_kill_9() {
    use rand::{Rng as _, SeedableRng as _};
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut acked: Vec<i64> = Vec::new();
    let mut next_first = 0i64;
    for _round in 0..8 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_9_child_appends_to_new_subjects",
                "--ignored",
                "--nocapture",
                "--quiet",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_FIRST_CHAT_ENV, next_first.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let wanted = rng.gen_range(3..40);
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < wanted {
            let Some(line) = lines.next() else { break };
            let line = line.unwrap();
            if let Some(chat) = line.strip_prefix("ack ") {
                acked.push(chat.trim().parse().unwrap());
                seen += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines the child printed before the kill landed count too.
        for line in lines.map_while(Result::ok) {
            if let Some(chat) = line.strip_prefix("ack ") {
                acked.push(chat.trim().parse().unwrap());
            }
        }
        assert!(seen > 0, "the child acknowledged nothing");
        let store = Store::open_blocking(StoreConfig::new(dir.path()))
            .expect("the store opens after a kill (no event without its key)");
        for chat in &acked {
            let events = runtime
                .block_on(store.read_stream(
                    &StreamId::conversation(&bot(), *chat),
                    StreamVersion(0),
                    hybridstore::store::ReadDirection::Forward,
                    10,
                ))
                .unwrap();
            assert_eq!(
                events.first().map(|e| &e.event),
                Some(&received(&format!("text of chat {chat}"))),
                "chat {chat} was acknowledged"
            );
            assert!(matches!(events[0].personal, Personal::Sealed { epoch: 1 }));
        }
        runtime.block_on(store.close()).unwrap();
        next_first = acked.iter().max().copied().unwrap_or(0) + 1_000;
    }
    assert!(acked.len() >= 8);
}

/// Proves the `erase` command on a data directory: exit 0 and the receipt as JSON on stdout for a
/// chat, 2 (with the reason) for a subject the log does not hold, 1 for a receipt id it does not
/// know; clap refuses two targets at once; a directory without a store is refused (exit 2) and
/// not created.
#[test]
fn the_erase_command_on_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
        Person::new(12).write(&store).await;
        store.close().await.unwrap();
    });
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hybridstore"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("DB_HOST")
            .env_remove("REDIS_URL")
            .env_remove("HYBRIDSTORE_URL")
            .output()
            .unwrap()
    };
    let erased = run(&["erase", "--bot", "shred", "--chat", "12"]);
    assert!(erased.status.success(), "{erased:?}");
    let receipt: serde_json::Value = serde_json::from_slice(&erased.stdout).unwrap();
    assert_eq!(receipt["complete"], true);
    assert_eq!(receipt["sealed_events_shredded"], 5);
    let id = receipt["receipt_id"].as_str().unwrap();
    let again = run(&["erase", "--bot", "shred", "--receipt", id]);
    assert!(again.status.success(), "{again:?}");
    let unknown = run(&["erase", "--bot", "shred", "--chat", "13"]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no such subject"));
    let no_receipt = run(&[
        "erase",
        "--bot",
        "shred",
        "--receipt",
        &uuid::Uuid::now_v7().to_string(),
    ]);
    assert_eq!(no_receipt.status.code(), Some(1), "{no_receipt:?}");
    let both = run(&["erase", "--bot", "shred", "--chat", "12", "--user", "12"]);
    assert_eq!(both.status.code(), Some(2));
    let nowhere = dir.path().join("mistyped");
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_hybridstore"))
        .arg("--data-dir")
        .arg(&nowhere)
        .args(["erase", "--bot", "shred", "--chat", "12"])
        .env_remove("HYBRIDSTORE_URL")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no store in"));
    assert!(!nowhere.exists(), "a failed erase created a data directory");
}

/// Proves a key-store rewrite whose removal of the old generation fails still counts (the new
/// one is the key store): the next rewrite does not remove the current generation, and after a
/// power loss every acknowledged event opens; an erasure whose clean-up failed scrubs the
/// leftover when it is asked again.
#[test]
fn a_failed_clean_up_after_the_commit_keeps_the_key_store() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fs = SimFs::new();
    let store = Store::open_blocking(sim_config(&fs, false)).unwrap();
    let chat = |n: i64| StreamId::conversation(&bot(), n);
    runtime.block_on(append(&store, &chat(1), vec![received("one")]));
    // The second key's rewrite: its new slot lands, removing the old one fails.
    fs.fail(
        FaultAt::Kind("remove_file", 0),
        FaultMode::Once,
        std::io::ErrorKind::Other,
    );
    runtime.block_on(append(&store, &chat(2), vec![received("two")]));
    runtime.block_on(append(&store, &chat(3), vec![received("three")]));
    let slots = |fs: &SimFs| {
        fs.list_files()
            .into_iter()
            .filter(|p| p.starts_with("/data/keys"))
            .count()
    };
    assert_eq!(slots(&fs), 1, "the third rewrite cleaned up the leftover");
    // An erasure whose scrub of the old generation fails is not finished: asked again, it is.
    fs.fail(
        FaultAt::Kind("remove_file", 0),
        FaultMode::Once,
        std::io::ErrorKind::Other,
    );
    let subject = Subject::Chat {
        bot: bot(),
        chat_id: 1,
    };
    assert!(runtime.block_on(store.erase(&subject)).is_err());
    assert_eq!(slots(&fs), 2, "the old generation is still there");
    runtime.block_on(store.erase(&subject)).unwrap();
    assert_eq!(slots(&fs), 1, "erasing again scrubbed it");
    drop(store);
    fs.power_loss(Tear::DropUnsynced);
    let store = Store::open_blocking(sim_config(&fs, false)).unwrap();
    for (n, text) in [(2, "two"), (3, "three")] {
        let events = stream_events(&runtime, &store, &chat(n));
        assert_eq!(events[0].event, received(text));
    }
    let erased = stream_events(&runtime, &store, &chat(1));
    assert!(matches!(erased[0].personal, Personal::Erased { .. }));
}

/// Proves a client cannot append what only the store writes: a receipt (it could forge a
/// complete one), a `ChatErased`, a `UserErased` naming keys; a `UserErased` without keys (the
/// old projections-only erasure) is still accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_erasures_or_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let refused = |event: Event, stream: StreamId| {
        let store = store.clone();
        async move {
            store
                .append(&stream, ExpectedVersion::Any, vec![NewEvent::new(event)])
                .await
        }
    };
    let forged = refused(
        Event::ErasureReceiptRecorded(hybridstore::events::ErasureReceiptRecorded {
            receipt_id: "x".into(),
            receipt: hybridstore::events::JsonText::parse(r#"{"complete":true}"#).unwrap(),
        }),
        StreamId::bot(&bot()),
    )
    .await;
    assert!(
        matches!(
            forged,
            Err(StoreError::Input(InputError::ErasureKeysReserved { .. }))
        ),
        "{forged:?}"
    );
    let chat = refused(
        Event::ChatErased(hybridstore::events::ChatErased { keys: Vec::new() }),
        StreamId::conversation(&bot(), 1),
    )
    .await;
    assert!(matches!(
        chat,
        Err(StoreError::Input(InputError::ErasureKeysReserved { .. }))
    ));
    let keyed = refused(
        Event::UserErased(hybridstore::events::UserErased {
            keys: vec![hybridstore::events::ErasedKey {
                stream: "user-shred-1".into(),
                epoch: 1,
            }],
        }),
        StreamId::user(&bot(), 1),
    )
    .await;
    assert!(matches!(
        keyed,
        Err(StoreError::Input(InputError::ErasureKeysReserved { .. }))
    ));
    let old_style = refused(
        Event::UserErased(hybridstore::events::UserErased { keys: Vec::new() }),
        StreamId::user(&bot(), 1),
    )
    .await;
    assert!(old_style.is_ok(), "{old_style:?}");
    store.close().await.unwrap();
}

/// Proves keys made by many appenders at once (a burst of new chats, made in shared rewrites of
/// the key store) give each subject exactly one key, and every acknowledged event opens after a
/// reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_subjects_gets_one_key_each() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|chat| {
            let store = store.clone();
            tokio::spawn(async move {
                append(
                    &store,
                    &StreamId::conversation(&bot(), chat),
                    vec![received(&format!("hello {chat}"))],
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let subjects = store.keyring().subjects();
    assert_eq!(subjects.len(), 32);
    for (stream, keys) in &subjects {
        assert_eq!(keys.live, vec![1], "{stream}: {keys:?}");
        assert_eq!(keys.current, Some(1), "{stream}");
    }
    let rewrites = store.keyring().generation();
    assert!((1..=32).contains(&rewrites), "{rewrites}");
    store.close().await.unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    for chat in 0..32 {
        let events = all_events(&store, &StreamId::conversation(&bot(), chat)).await;
        assert_eq!(events[0].event, received(&format!("hello {chat}")));
    }
    store.close().await.unwrap();
}
