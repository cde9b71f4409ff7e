//! The typed read seam against a real Postgres: the log projection and the Postgres read models
//! answer every typed read alike once the sink has caught up (over the shared event generator and
//! the legacy fixtures, NULs and extreme times included), and each source follows the one
//! read-your-writes rule: a read with `min_position = P` sees the event at `P`.

use std::time::Duration;

use hybridstore::events::{Event, MessageReceived};
use hybridstore::ids::Component;
use hybridstore::read::{LogSource, PgSource, ReadError, ReadSource};
use hybridstore::sink::postgres::{PgSink, ProjectorConfig};
use hybridstore::testing::{append_workload, TestDb};
use hybridstore::{BotId, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId};
use hybridstore_wal::Position;

fn received(text: &str) -> Event {
    Event::MessageReceived(MessageReceived {
        telegram_message_id: None,
        text: text.into(),
        content_type: "text".into(),
        legacy_ts: None,
    })
}

async fn import_fixtures(store: &Store, bot: &BotId) {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy");
    let report = hybridstore::legacy::import_legacy(
        store,
        bot,
        Some(&fixtures.join("girls_data")),
        Some(&fixtures.join("conversations")),
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.chats_imported >= 5, "{report}");
}

/// Asserts both sources give the same answer to one read, at the same position.
macro_rules! agree {
    ($log:expr, $pg:expr, $what:literal, |$source:ident| $read:expr) => {{
        let from_log = {
            let $source = &$log;
            $read.await.unwrap()
        };
        let from_pg = {
            let $source = &$pg;
            $read.await.unwrap()
        };
        assert_eq!(from_log, from_pg, "{}", $what);
        from_log.value
    }};
}

/// Proves the log projection and Postgres answer every typed read alike (the same values, at the
/// same position) for every entry the log projection holds, and for absent ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_projection_and_postgres_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    append_workload(&store, 1200, 51).await;
    import_fixtures(&store, &BotId::new("bot_a").unwrap()).await;
    let db = TestDb::create("read_agree").await;
    let sink = PgSink::start(store.clone(), db.pool().await, ProjectorConfig::default())
        .await
        .unwrap();
    let last = store.last_position().unwrap();
    assert!(sink.wait_for(last, Duration::from_secs(60)).await);
    let log = LogSource::new(store.clone());
    let pg = PgSource::new(db.pool().await, Duration::from_secs(5)).following(sink.watch());
    let snapshot = store.projection_snapshot().await.unwrap();
    let min = Some(last);
    let mut compared = 0;
    for (bot, user) in snapshot.users_iter() {
        let found = agree!(log, pg, "user", |s| s.user(bot, user.user_id, min));
        assert!(found.is_some());
        compared += 1;
    }
    for (bot, profile) in snapshot.profiles_iter() {
        agree!(log, pg, "profile", |s| s.profile(bot, profile.chat_id, min));
        compared += 1;
    }
    for (bot, chat, _) in snapshot.conversations_iter() {
        agree!(log, pg, "head", |s| s.head(bot, chat, min));
        for limit in [1, 5, 20, 1000] {
            agree!(log, pg, "messages", |s| s.messages(bot, chat, limit, min));
        }
        compared += 1;
    }
    for (bot, scope, key, _) in snapshot.config_iter() {
        agree!(log, pg, "config", |s| s.config_value(bot, scope, key, min));
        compared += 1;
    }
    for bot in ["bot_a", "bot_b"].map(|b| BotId::new(b).unwrap()) {
        for component in [
            Component::Users,
            Component::Profiles,
            Component::Configuration,
            Component::Conversations,
            Component::Analytics,
        ] {
            agree!(log, pg, "component state", |s| s
                .component_state(&bot, component, min));
        }
        // Absent entries are absent in both.
        assert_eq!(
            agree!(log, pg, "absent user", |s| s.user(&bot, 999_999, min)),
            None
        );
        assert_eq!(
            agree!(log, pg, "absent profile", |s| s.profile(&bot, 999_999, min)),
            None
        );
        assert_eq!(
            agree!(log, pg, "absent messages", |s| s
                .messages(&bot, 999_999, 20, min)),
            Vec::new()
        );
    }
    for (bot, day, _) in snapshot.analytics_iter() {
        let counters = agree!(log, pg, "daily", |s| s.daily(bot, day, min));
        assert!(counters.is_some());
        compared += 1;
    }
    assert!(compared > 100, "too few entries compared: {compared}");
    // The NUL chat of the legacy fixtures came back exact from Postgres too.
    let bot_a = BotId::new("bot_a").unwrap();
    let profile = pg
        .profile(&bot_a, 100_006, min)
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(profile.name, "Zo\u{0}e");
    // Postgres tied to this log answers; tied to another log, it refuses instead of answering
    // from another history.
    let own = PgSource::new(db.pool().await, Duration::from_secs(5)).of_log(store.log_id());
    assert!(own
        .profile(&bot_a, 100_006, min)
        .await
        .unwrap()
        .value
        .is_some());
    let other = PgSource::new(db.pool().await, Duration::from_secs(5))
        .of_log(hybridstore_wal::LogId::from_bytes([7; 16]));
    let refused = other.profile(&bot_a, 100_006, min).await.unwrap_err();
    assert!(refused.to_string().contains("not this log"), "{refused}");
    sink.stop().await;
    store.close().await.unwrap();
}

/// Proves the one read-your-writes rule on each source: with the event at `P` applied (and no
/// later one), a read with `min_position = P` answers and sees it, one with `P + 1` does not
/// (an off-by-one either way fails this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_position_sees_the_event_at_that_position_on_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        read_wait_max: Duration::from_millis(200),
        ..StoreConfig::new(dir.path())
    })
    .await
    .unwrap();
    let bot = BotId::new("ryw").unwrap();
    let db = TestDb::create("read_ryw").await;
    let sink = PgSink::start(store.clone(), db.pool().await, ProjectorConfig::default())
        .await
        .unwrap();
    let pg = PgSource::new(db.pool().await, Duration::from_secs(30)).following(sink.watch());
    let log = LogSource::new(store.clone());
    for n in 1..=20 {
        let appended = store
            .append(
                &StreamId::conversation(&bot, 1),
                ExpectedVersion::Any,
                vec![NewEvent::new(received(&format!("m{n}")))],
            )
            .await
            .unwrap();
        let at = Some(appended.last_position);
        for source in [&log as &dyn ReadSource, &pg] {
            let head = source.head(&bot, 1, at).await.unwrap();
            assert_eq!(
                head.value.map(|h| h.messages_in),
                Some(n),
                "{} must see the append at {}",
                source.name(),
                appended.last_position
            );
            assert!(head.applied_end > appended.last_position);
            let last = source.messages(&bot, 1, 1, at).await.unwrap().value;
            assert_eq!(&*last[0].text, format!("m{n}"), "{}", source.name());
        }
    }
    // Nothing is at the log's end yet: neither source can have applied it.
    let end = store.durable_end();
    let short = PgSource::new(db.pool().await, Duration::from_millis(200));
    for source in [&log as &dyn ReadSource, &short] {
        let error = source.head(&bot, 1, Some(end)).await.unwrap_err();
        assert!(
            matches!(
                &error,
                ReadError::NotCaughtUp { applied, .. } if *applied == end
            ) || matches!(
                &error,
                ReadError::Store(hybridstore::StoreError::NotCaughtUp { applied, .. }) if *applied == end
            ),
            "{}: {error:?}",
            source.name()
        );
    }
    assert_eq!(end, Position(20));
    sink.stop().await;
    store.close().await.unwrap();
}
