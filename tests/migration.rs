//! Migration states and read routing against a real PostgreSQL (a database per test): the
//! transition rule and its guards, shadow reads, the automatic rollback when Postgres fails,
//! and one component walked through every state on a live store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hybridstore::events::{
    ComponentStateChanged, Event, MessageReceived, ProfileCreated, ProfileRenamed,
};
use hybridstore::hybrid::{Hybrid, HybridConfig, HybridError, SetOptions};
use hybridstore::migration::TransitionError;
use hybridstore::read::shadow::{self, WindowRule};
use hybridstore::read::{Query, ReadSource, Source};
use hybridstore::sink::postgres::PgConfig;
use hybridstore::testing::{projected_past, TcpProxy, TestDb};
use hybridstore::{
    BotId, Component, ExpectedVersion, MigrationState, NewEvent, StoreConfig, StreamId,
};
use hybridstore_wal::Position;

use MigrationState::{DatabaseOnly, Disabled, DualWrite, Enabled};

fn bot() -> BotId {
    BotId::new("mig").unwrap()
}

/// The tests' configuration: Postgres `postgres` (or none), shadow-reading every key, a window
/// of `reads_min` matches and no minimum time, fast supervisor rounds and short timeouts.
fn test_config(dir: &std::path::Path, postgres: Option<PgConfig>, reads_min: u64) -> HybridConfig {
    let mut config = HybridConfig::new(StoreConfig::new(dir));
    config.postgres = postgres;
    config.routing.shadow_rate = 1.0;
    config.window = WindowRule {
        reads_min,
        duration_min: Duration::ZERO,
    };
    config.supervisor.poll = Duration::from_millis(20);
    config.supervisor.health_interval = Duration::from_millis(100);
    // Generous: a timeout is a failure (a rollback), and a loaded CI machine is slow, not down;
    // the outages here are cut connections, which fail at once.
    config.supervisor.probe_timeout = Duration::from_secs(2);
    config.routing.postgres_timeout = Duration::from_secs(2);
    config
}

/// Routing for the replicas of these tests (timeouts as [`test_config`]'s).
fn replica_routing() -> hybridstore::read::RoutingConfig {
    hybridstore::read::RoutingConfig {
        postgres_timeout: Duration::from_secs(2),
        ..hybridstore::read::RoutingConfig::default()
    }
}

/// A handle on `dir` with Postgres at `db` (or none), configured as [`test_config`].
async fn open(dir: &std::path::Path, db: Option<&TestDb>, reads_min: u64) -> Hybrid {
    let config = test_config(dir, db.map(|db| db.config.clone()), reads_min);
    Hybrid::open(config).await.expect("the store opens")
}

/// A handle whose Postgres is reached through `proxy`.
async fn open_through(
    dir: &std::path::Path,
    db: &TestDb,
    proxy: &TcpProxy,
    reads_min: u64,
) -> Hybrid {
    let mut config = test_config(dir, Some(db.config_through(proxy)), reads_min);
    config.postgres_read_wait = Duration::from_millis(300);
    Hybrid::open(config).await.expect("the store opens")
}

/// Appends `event` to conversation `chat`'s stream; its position.
async fn append_to(hybrid: &Hybrid, chat: i64, event: Event) -> Position {
    hybrid
        .store()
        .unwrap()
        .append(
            &StreamId::conversation(&bot(), chat),
            ExpectedVersion::Any,
            vec![NewEvent::new(event)],
        )
        .await
        .unwrap()
        .last_position
}

async fn create_profile(hybrid: &Hybrid, chat: i64, name: &str) -> Position {
    let name = name.into();
    append_to(hybrid, chat, Event::ProfileCreated(ProfileCreated { name })).await
}

async fn rename(hybrid: &Hybrid, chat: i64, name: &str) -> Position {
    let name = name.into();
    append_to(hybrid, chat, Event::ProfileRenamed(ProfileRenamed { name })).await
}

async fn message(hybrid: &Hybrid, chat: i64, text: &str) -> Position {
    let received = MessageReceived {
        telegram_message_id: None,
        text: text.into(),
        content_type: "text".into(),
        legacy_ts: None,
    };
    append_to(hybrid, chat, Event::MessageReceived(received)).await
}

/// Waits (at most 30 s) until `condition` holds, looking every 10 ms.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut condition: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn set(to: MigrationState) -> (MigrationState, SetOptions) {
    (
        to,
        SetOptions {
            wait: Duration::from_secs(30),
            ..SetOptions::default()
        },
    )
}

async fn step(hybrid: &Hybrid, component: Component, to: MigrationState) {
    let (to, options) = set(to);
    hybrid
        .set_component_state(&bot(), component, to, &options)
        .await
        .unwrap_or_else(|e| panic!("{component} -> {to}: {e}"));
}

/// The state as of the bot stream's last event (a transition just made included).
async fn state(hybrid: &Hybrid, component: Component) -> MigrationState {
    let head = hybrid
        .store()
        .unwrap()
        .stream_head(&StreamId::bot(&bot()))
        .map(|(_, position)| position);
    hybrid
        .reads()
        .component_state(&bot(), component, head)
        .await
        .unwrap()
        .value
}

/// Proves the rule: forward one step at a time, back to any earlier state, never to the same
/// state; nothing leaves `disabled` without a database, even forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transition_rule() {
    let dir = tempfile::tempdir().unwrap();
    let log_only = open(dir.path(), None, 0).await;
    let (to, options) = set(Enabled);
    let forced = SetOptions {
        force: true,
        ..options.clone()
    };
    let refused = log_only
        .set_component_state(&bot(), Component::Users, to, &forced)
        .await;
    assert!(
        matches!(
            refused,
            Err(HybridError::Refused(TransitionError::NoDatabase { .. }))
        ),
        "{refused:?}"
    );
    log_only.close().await.unwrap();

    let db = TestDb::create("mig_rule").await;
    let hybrid = open(dir.path(), Some(&db), 0).await;
    for to in [DualWrite, DatabaseOnly] {
        let skipped = hybrid
            .set_component_state(&bot(), Component::Users, to, &options)
            .await;
        assert!(
            matches!(
                &skipped,
                Err(HybridError::Refused(TransitionError::SkipsAhead {
                    next: Enabled,
                    ..
                }))
            ),
            "{skipped:?}"
        );
    }
    let same = hybrid
        .set_component_state(&bot(), Component::Users, Disabled, &options)
        .await;
    assert!(
        matches!(
            same,
            Err(HybridError::Refused(TransitionError::AlreadyThere { .. }))
        ),
        "{same:?}"
    );
    // Walk forward, then back to every earlier state from every later one.
    for (from, to) in [
        (DatabaseOnly, Disabled),
        (DatabaseOnly, Enabled),
        (DatabaseOnly, DualWrite),
        (DualWrite, Disabled),
        (DualWrite, Enabled),
        (Enabled, Disabled),
    ] {
        while state(&hybrid, Component::Users).await < from {
            let next = state(&hybrid, Component::Users).await.next().unwrap();
            step(&hybrid, Component::Users, next).await;
        }
        while state(&hybrid, Component::Users).await > from {
            step(&hybrid, Component::Users, from).await;
        }
        step(&hybrid, Component::Users, to).await;
        assert_eq!(state(&hybrid, Component::Users).await, to);
    }
    hybrid.close().await.unwrap();
}

/// Proves the guards: `enabled -> dual-write` waits for the projector (and is refused when it
/// cannot catch up in time), `dual-write -> database-only` needs the clean window and `--force`
/// overrides it; the state and every transition (reason, automatic flag) survive a restart and
/// are events of the bot stream as the audit dump prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_force_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_guards").await;
    let hybrid = open(dir.path(), Some(&db), 5).await;
    for chat in 1..=50 {
        create_profile(&hybrid, chat, "Ann").await;
    }
    step(&hybrid, Component::Profiles, Enabled).await;
    // With the projector held back (its checkpoint row locked), the catch-up guard refuses.
    let pool = db.pool().await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE projector_checkpoints IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    create_profile(&hybrid, 51, "Bea").await;
    let not_yet = hybrid
        .set_component_state(
            &bot(),
            Component::Profiles,
            DualWrite,
            &SetOptions {
                wait: Duration::from_millis(200),
                ..SetOptions::default()
            },
        )
        .await;
    assert!(
        matches!(
            &not_yet,
            Err(HybridError::Refused(TransitionError::Guard { why, .. })) if why.contains("projector")
        ),
        "{not_yet:?}"
    );
    blocker.rollback().await.unwrap();
    let asked_at = hybrid.store().unwrap().durable_end();
    step(&hybrid, Component::Profiles, DualWrite).await;
    let status = hybrid.projector_status().unwrap();
    assert!(status.components[&Component::Profiles].committed >= asked_at);

    // No shadow reads yet: the window refuses; force moves it anyway.
    let (to, options) = set(DatabaseOnly);
    let refused = hybrid
        .set_component_state(&bot(), Component::Profiles, to, &options)
        .await;
    assert!(
        matches!(
            &refused,
            Err(HybridError::Refused(TransitionError::Guard { why, .. })) if why.contains("shadow window")
        ),
        "{refused:?}"
    );
    let forced = hybrid
        .set_component_state(
            &bot(),
            Component::Profiles,
            to,
            &SetOptions {
                force: true,
                reason: Some("ticket 42".into()),
                ..options
            },
        )
        .await
        .unwrap();
    assert!(forced.forced);
    hybrid.close().await.unwrap();

    let again = open(dir.path(), Some(&db), 5).await;
    assert_eq!(state(&again, Component::Profiles).await, DatabaseOnly);
    let history = again
        .store()
        .unwrap()
        .component_history(&bot(), Component::Profiles, 10)
        .await
        .unwrap();
    let steps: Vec<(MigrationState, MigrationState, bool)> = history
        .iter()
        .map(|t| (t.change.from, t.change.to, t.change.automatic))
        .collect();
    assert_eq!(
        steps,
        vec![
            (DualWrite, DatabaseOnly, false),
            (Enabled, DualWrite, false),
            (Disabled, Enabled, false)
        ]
    );
    assert_eq!(history[0].change.reason, "ticket 42");
    // The audit dump prints each record as the serde form of `RecordedEvent`.
    let events = again
        .store()
        .unwrap()
        .read_all(history[0].position, 1)
        .await
        .unwrap();
    let dumped = serde_json::to_value(&events[0]).unwrap();
    let text = dumped.to_string();
    assert!(text.contains("ComponentStateChanged"), "{text}");
    assert!(
        text.contains("\"database-only\"") && text.contains("ticket 42"),
        "{text}"
    );
    let migrations = again.migration_status(Some(&bot())).await.unwrap();
    let profiles = migrations
        .iter()
        .find(|r| r.component == Component::Profiles)
        .unwrap();
    assert_eq!(profiles.state, DatabaseOnly);
    assert_eq!(profiles.reason.as_deref(), Some("ticket 42"));
    again.close().await.unwrap();
}

/// Proves shadow reads: equal sides are matches; a row changed behind the sink's back is a
/// mismatch carrying both values and both positions; a Postgres held behind the log is lagging,
/// not a mismatch; a mismatch restarts the window, so the step to database-only is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reads_match_mismatch_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_shadow").await;
    let hybrid = open(dir.path(), Some(&db), 3).await;
    let created = create_profile(&hybrid, 7, "Ann").await;
    step(&hybrid, Component::Profiles, Enabled).await;
    step(&hybrid, Component::Profiles, DualWrite).await;
    let stats = hybrid.reads().shadow_stats().clone();
    let counts = move || {
        stats
            .local()
            .get(&(bot(), Component::Profiles))
            .copied()
            .unwrap_or_default()
    };
    for _ in 0..3 {
        let read = hybrid
            .reads()
            .profile(&bot(), 7, Some(created))
            .await
            .unwrap();
        assert_eq!(read.value.unwrap().name, "Ann");
    }
    eventually("three shadow matches", async || counts().matched >= 3).await;

    let pool = db.pool().await;
    sqlx::query(
        "UPDATE profiles SET name = 'tampered', document = jsonb_set(document, '{name}', '\"tampered\"') \
         WHERE chat_id = 7",
    )
    .execute(&pool)
    .await
    .unwrap();
    let read = hybrid.reads().profile(&bot(), 7, None).await.unwrap();
    assert_eq!(
        read.value.unwrap().name,
        "Ann",
        "dual-write answers from the log"
    );
    eventually("a mismatch", async || counts().mismatched >= 1).await;
    hybrid.reads().shadow_stats().flush(&pool).await.unwrap();
    let report = shadow::report(&pool, &bot(), Component::Profiles)
        .await
        .unwrap()
        .unwrap();
    let mismatch = &report.last_mismatches[0];
    assert_eq!(mismatch.key, "profile 7");
    assert_eq!(mismatch.log["name"], "Ann");
    assert_eq!(mismatch.postgres["name"], "tampered");
    assert_eq!(mismatch.log_position, mismatch.postgres_position);
    assert_eq!(report.window_matched, 0);
    let (to, options) = set(DatabaseOnly);
    let refused = hybrid
        .set_component_state(&bot(), Component::Profiles, to, &options)
        .await;
    assert!(
        matches!(&refused, Err(HybridError::Refused(TransitionError::Guard { why, .. })) if why.contains("last mismatch profile 7")),
        "{refused:?}"
    );

    // Postgres held behind the log: lagging, never a mismatch.
    let mismatched_before = counts().mismatched;
    let lagging_before = counts().lagging;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE projector_checkpoints IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let created = create_profile(&hybrid, 8, "Bea").await;
    let read = hybrid
        .reads()
        .profile(&bot(), 8, Some(created))
        .await
        .unwrap();
    assert_eq!(read.value.unwrap().name, "Bea");
    eventually("a lagging shadow read", async || {
        counts().lagging > lagging_before
    })
    .await;
    assert_eq!(counts().mismatched, mismatched_before);
    blocker.rollback().await.unwrap();
    hybrid.close().await.unwrap();
}

/// Proves the automatic rollback: with profiles `database-only` and Postgres cut (the TCP proxy)
/// under steady appends and reads, no read fails, reads are answered by the log projection with
/// every write seen, and an automatic `dual-write` transition naming the failure is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_rolls_back_without_failing_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_outage").await;
    let proxy = db.proxy().await;
    let hybrid = open_through(dir.path(), &db, &proxy, 0).await;
    for chat in 1..=10 {
        create_profile(&hybrid, chat, "Ann").await;
    }
    step(&hybrid, Component::Profiles, Enabled).await;
    step(&hybrid, Component::Profiles, DualWrite).await;
    step(&hybrid, Component::Profiles, DatabaseOnly).await;
    let settled = hybrid.store().unwrap().last_position().unwrap();
    projected_past(&hybrid, settled).await;
    let read = hybrid
        .reads()
        .read(
            &Query::Profile {
                bot: bot(),
                chat_id: 3,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(read.source, Source::Postgres);

    let reads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let hybrid = hybrid.clone();
        let reads = reads.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let chat = (n % 10) as i64 + 1;
                let last = rename(&hybrid, chat, &format!("name {n}")).await;
                let read = hybrid
                    .reads()
                    .read(
                        &Query::Profile {
                            bot: bot(),
                            chat_id: chat,
                        },
                        Some(last),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("read {n} failed: {e}"));
                match read.answer {
                    hybridstore::read::Answer::Profile(Some(p)) => {
                        assert_eq!(p.name, format!("name {n}"), "read {n} saw its write");
                    }
                    other => panic!("read {n}: {other:?}"),
                }
                n += 1;
                reads.store(n, Ordering::Relaxed);
            }
        })
    };
    eventually("reads running", async || {
        reads.load(Ordering::Relaxed) >= 20
    })
    .await;
    proxy.cut();
    eventually("the automatic rollback", async || {
        state(&hybrid, Component::Profiles).await == DualWrite
    })
    .await;
    let at_rollback = reads.load(Ordering::Relaxed);
    eventually("reads going on after the rollback", async || {
        reads.load(Ordering::Relaxed) >= at_rollback + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    reader.await.expect("no read failed");
    let read = hybrid
        .reads()
        .read(
            &Query::Profile {
                bot: bot(),
                chat_id: 3,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(read.source, Source::Log);
    let history = hybrid
        .store()
        .unwrap()
        .component_history(&bot(), Component::Profiles, 1)
        .await
        .unwrap();
    let ComponentStateChanged {
        from,
        to,
        automatic,
        reason,
        ..
    } = &history[0].change;
    assert_eq!((*from, *to, *automatic), (DatabaseOnly, DualWrite, true));
    assert!(reason.starts_with("automatic rollback"), "{reason}");
    proxy.restore();
    hybrid.close().await.unwrap();
}

/// Proves one component walked through every state on a live store — disabled → enabled
/// (backfill) → dual-write (a clean window) → database-only → Postgres outage → automatic
/// rollback → forward again — with appends and reads running throughout, no read failing, and
/// the routed answers equal to the log projection's at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_component_through_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_walk").await;
    let proxy = db.proxy().await;
    let hybrid = open_through(dir.path(), &db, &proxy, 20).await;
    for chat in 1..=20 {
        create_profile(&hybrid, chat, "Ann").await;
        message(&hybrid, chat, "hello").await;
    }
    let reads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let hybrid = hybrid.clone();
        let reads = reads.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let chat = (n % 20) as i64 + 1;
                let last = message(&hybrid, chat, &format!("text {n}")).await;
                let read = hybrid
                    .reads()
                    .read(
                        &Query::Messages {
                            bot: bot(),
                            chat_id: chat,
                            limit: 5,
                        },
                        Some(last),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("read {n} failed: {e}"));
                match read.answer {
                    hybridstore::read::Answer::Messages(m) => {
                        assert_eq!(&*m.last().unwrap().text, format!("text {n}"));
                    }
                    other => panic!("read {n}: {other:?}"),
                }
                n += 1;
                reads.store(n, Ordering::Relaxed);
            }
        })
    };
    let c = Component::Conversations;
    step(&hybrid, c, Enabled).await;
    step(&hybrid, c, DualWrite).await;
    let stats = hybrid.reads().shadow_stats().clone();
    let matched = move || stats.local().get(&(bot(), c)).map_or(0, |s| s.matched);
    eventually("a clean shadow window", async || matched() >= 20).await;
    step(&hybrid, c, DatabaseOnly).await;
    eventually("reads served in database-only", async || {
        let r = hybrid
            .reads()
            .read(
                &Query::Head {
                    bot: bot(),
                    chat_id: 1,
                },
                None,
            )
            .await
            .unwrap();
        r.source == Source::Postgres
    })
    .await;
    proxy.cut();
    eventually("the automatic rollback", async || {
        state(&hybrid, c).await == DualWrite
    })
    .await;
    proxy.restore();
    eventually("postgres healthy again", async || {
        hybrid.reads().health().is_up()
    })
    .await;
    let before = matched();
    eventually("a clean window after the outage", async || {
        matched() >= before + 20
    })
    .await;
    step(&hybrid, c, DatabaseOnly).await;
    let at = reads.load(Ordering::Relaxed);
    eventually("reads going on", async || {
        reads.load(Ordering::Relaxed) >= at + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    worker.await.expect("no read failed");

    let end = hybrid.store().unwrap().last_position().unwrap();
    let log = hybridstore::read::LogSource::new(hybrid.store().unwrap().clone());
    for chat in 1..=20 {
        let routed = hybrid
            .reads()
            .messages(&bot(), chat, 20, Some(end))
            .await
            .unwrap();
        let expected = log.messages(&bot(), chat, 20, Some(end)).await.unwrap();
        assert_eq!(routed.value, expected.value, "chat {chat}");
        let routed = hybrid.reads().head(&bot(), chat, Some(end)).await.unwrap();
        let expected = log.head(&bot(), chat, Some(end)).await.unwrap();
        assert_eq!(routed.value, expected.value, "chat {chat}");
    }
    hybrid.close().await.unwrap();
}

/// Proves a reader without a data directory serves the database-only components from Postgres
/// and refuses the others (and every transition) with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serves_database_only_components() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_replica").await;
    let hybrid = open(dir.path(), Some(&db), 0).await;
    create_profile(&hybrid, 5, "Ann").await;
    let last = message(&hybrid, 5, "hi").await;
    for to in [Enabled, DualWrite, DatabaseOnly] {
        step(&hybrid, Component::Profiles, to).await;
    }
    step(&hybrid, Component::Conversations, Enabled).await;
    let settled = hybrid.store().unwrap().last_position().unwrap();
    let supervisor = hybrid.supervisor().unwrap();
    let mut status = supervisor.watch();
    status
        .wait_for(|s| {
            s.components.values().all(|c| c.committed > settled) && !s.components.is_empty()
        })
        .await
        .unwrap();

    let replica = Hybrid::open_replica(
        &db.config,
        None,
        replica_routing(),
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    let read = replica
        .reads()
        .read(
            &Query::Profile {
                bot: bot(),
                chat_id: 5,
            },
            Some(last),
        )
        .await
        .unwrap();
    assert_eq!(read.source, Source::Postgres);
    match read.answer {
        hybridstore::read::Answer::Profile(Some(p)) => assert_eq!(p.name, "Ann"),
        other => panic!("{other:?}"),
    }
    let refused = replica
        .reads()
        .read(
            &Query::Head {
                bot: bot(),
                chat_id: 5,
            },
            None,
        )
        .await;
    assert!(
        matches!(
            &refused,
            Err(hybridstore::read::ReadError::NotServedHere { state: Enabled, .. })
        ),
        "{refused:?}"
    );
    let (to, options) = set(Disabled);
    assert!(matches!(
        replica
            .set_component_state(&bot(), Component::Profiles, to, &options)
            .await,
        Err(HybridError::NoLog)
    ));
    replica.close().await.unwrap();
    hybrid.close().await.unwrap();
}

const BIN: &str = env!("CARGO_BIN_EXE_hybridstore");

/// Runs the `hybridstore` binary on `dir` with `args` against `db`.
fn cli(dir: &std::path::Path, db: &TestDb, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("DATABASE_URL", db.url())
        .env_remove("DB_HOST")
        .env_remove("REDIS_URL")
        .env_remove("REDIS_HOST")
        .output()
        .expect("run hybridstore")
}

/// Proves the CLI: `migrate set` walks a component forward (refusing a skip and an unmet guard
/// with exit 1 and the reason, taking `--force`), `migrate status --format json` reports each
/// component, and `read` says which source answered in each state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_cli").await;
    let hybrid = open(dir.path(), None, 0).await;
    create_profile(&hybrid, 9, "Ann").await;
    hybrid.close().await.unwrap();
    let d = dir.path();
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    let skip = cli(
        d,
        &db,
        &[
            "migrate",
            "set",
            "--bot",
            "mig",
            "profiles",
            "--to",
            "dual-write",
        ],
    );
    assert_eq!(skip.status.code(), Some(1), "{}", text(&skip));
    assert!(
        text(&skip).contains("one step at a time"),
        "{}",
        text(&skip)
    );
    for to in ["enabled", "dual-write"] {
        let out = cli(
            d,
            &db,
            &["migrate", "set", "--bot", "mig", "profiles", "--to", to],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(&format!("-> {to}")), "{}", text(&out));
    }
    let read = cli(
        d,
        &db,
        &["read", "--bot", "mig", "--format", "json", "profile", "9"],
    );
    assert!(read.status.success(), "{}", text(&read));
    let line: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(line["type"], "read");
    assert_eq!(line["data"]["source"], "log");
    assert_eq!(line["data"]["state"], "dual-write");
    assert_eq!(line["data"]["value"]["name"], "Ann");

    let guard = cli(
        d,
        &db,
        &[
            "migrate",
            "set",
            "--bot",
            "mig",
            "profiles",
            "--to",
            "database-only",
        ],
    );
    assert_eq!(guard.status.code(), Some(1), "{}", text(&guard));
    assert!(text(&guard).contains("shadow window"), "{}", text(&guard));
    let forced = cli(
        d,
        &db,
        &[
            "migrate",
            "set",
            "--bot",
            "mig",
            "profiles",
            "--to",
            "database-only",
            "--force",
            "--reason",
            "by hand",
        ],
    );
    assert!(forced.status.success(), "{}", text(&forced));
    let read = cli(
        d,
        &db,
        &["read", "--bot", "mig", "--format", "json", "profile", "9"],
    );
    let line: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(line["data"]["source"], "postgres", "{}", text(&read));
    assert_eq!(line["data"]["value"]["name"], "Ann");
    let missing = cli(d, &db, &["read", "--bot", "mig", "profile", "10"]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));

    let status = cli(
        d,
        &db,
        &["migrate", "status", "--bot", "mig", "--format", "json"],
    );
    assert!(status.status.success(), "{}", text(&status));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&status.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let profiles = lines
        .iter()
        .find(|l| l["data"]["component"] == "profiles")
        .unwrap();
    assert_eq!(profiles["data"]["state"], "database-only");
    assert_eq!(profiles["data"]["reason"], "by hand");
    assert_eq!(profiles["data"]["projector"]["lag"], 0, "{profiles}");

    let back = cli(
        d,
        &db,
        &[
            "migrate", "set", "--bot", "mig", "profiles", "--to", "disabled",
        ],
    );
    assert!(back.status.success(), "{}", text(&back));
    let read = cli(
        d,
        &db,
        &["read", "--bot", "mig", "--format", "json", "profile", "9"],
    );
    let line: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(line["data"]["source"], "log");
}

/// Proves the cache across processes: a reader without a data directory sharing Redis with the
/// store's process serves database-only reads from its tiers, and once it has received the
/// invalidation of a committed change it never serves the value from before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sharing_redis_never_serves_an_invalidated_value() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_redis").await;
    let namespace = hybridstore::testing::RedisNamespace::new();
    let url = hybridstore::testing::redis_url();
    let mut config = HybridConfig::new(StoreConfig::new(dir.path()));
    config.postgres = Some(db.config.clone());
    config.cache = Some(namespace.config(Some(&url), true));
    config.supervisor.poll = Duration::from_millis(20);
    let hybrid = Hybrid::open(config).await.unwrap();
    let created = create_profile(&hybrid, 11, "Ann").await;
    let forced = SetOptions {
        force: true,
        wait: Duration::from_secs(30),
        ..SetOptions::default()
    };
    for to in [Enabled, DualWrite, DatabaseOnly] {
        hybrid
            .set_component_state(&bot(), Component::Profiles, to, &forced)
            .await
            .unwrap();
    }
    let replica = Hybrid::open_replica(
        &db.config,
        Some(namespace.config(Some(&url), true)),
        replica_routing(),
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    projected_past(&hybrid, created).await;
    let query = Query::Profile {
        bot: bot(),
        chat_id: 11,
    };
    eventually("the replica sees profiles database-only", async || {
        replica
            .reads()
            .state_of(&bot(), Component::Profiles)
            .await
            .unwrap()
            == DatabaseOnly
    })
    .await;
    let first = replica.reads().read(&query, Some(created)).await.unwrap();
    assert_eq!(first.source, Source::Postgres);
    let second = replica.reads().read(&query, None).await.unwrap();
    assert_eq!(
        second.source,
        Source::Memory,
        "the second read is a tier-1 hit"
    );
    // The store's own process reads it from Redis (filled by the replica's read-through).
    let from_redis = hybrid.reads().read(&query, None).await.unwrap();
    assert_eq!(from_redis.source, Source::Redis);

    let cache = replica.reads().cache().unwrap().clone();
    let received = cache.stats().invalidations_received;
    rename(&hybrid, 11, "Bea").await;
    eventually("the replica received the invalidation", async || {
        cache.stats().invalidations_received > received
    })
    .await;
    for _ in 0..20 {
        let read = replica.reads().read(&query, None).await.unwrap();
        match read.answer {
            hybridstore::read::Answer::Profile(Some(p)) => {
                assert_eq!(p.name, "Bea", "from {:?}", read.source);
            }
            other => panic!("{other:?}"),
        }
    }
    replica.close().await.unwrap();
    hybrid.close().await.unwrap();
}

/// Proves one slow Postgres read (its table locked by another session) is answered by the log
/// projection without rolling anything back, since the health check still answers; and the
/// read after the lock is released is Postgres's again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_read_rolls_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_slow").await;
    let hybrid = open(dir.path(), Some(&db), 0).await;
    let created = create_profile(&hybrid, 4, "Ann").await;
    for to in [Enabled, DualWrite, DatabaseOnly] {
        step(&hybrid, Component::Profiles, to).await;
    }
    projected_past(&hybrid, created).await;
    let query = Query::Profile {
        bot: bot(),
        chat_id: 4,
    };
    let read = hybrid.reads().read(&query, Some(created)).await.unwrap();
    assert_eq!(read.source, Source::Postgres);
    let pool = db.pool().await;
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE profiles IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let slow = hybrid.reads().read(&query, None).await.unwrap();
    assert_eq!(slow.source, Source::Log, "answered by the log projection");
    eventually("the health check clears Postgres again", async || {
        hybrid.reads().health().is_up()
    })
    .await;
    assert_eq!(state(&hybrid, Component::Profiles).await, DatabaseOnly);
    locker.rollback().await.unwrap();
    let read = hybrid.reads().read(&query, None).await.unwrap();
    assert_eq!(read.source, Source::Postgres);
    assert_eq!(state(&hybrid, Component::Profiles).await, DatabaseOnly);
    hybrid.close().await.unwrap();
}

/// Proves a projector stopped for good (an event Postgres refuses: a configuration key too
/// long for its index) rolls the database-only components back, naming the stop, instead of
/// serving Postgres's answers frozen at the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_projector_rolls_back() {
    use rand::{Rng as _, SeedableRng as _};
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_stopped").await;
    let hybrid = open(dir.path(), Some(&db), 0).await;
    create_profile(&hybrid, 4, "Ann").await;
    for to in [Enabled, DualWrite, DatabaseOnly] {
        step(&hybrid, Component::Profiles, to).await;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let key: String = (0..20_000)
        .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
        .collect();
    hybrid
        .store()
        .unwrap()
        .append(
            &StreamId::bot(&bot()),
            ExpectedVersion::Any,
            vec![NewEvent::new(Event::ConfigValueSet(
                hybridstore::events::ConfigValueSet {
                    scope: "global".into(),
                    key,
                    value: hybridstore::testing::json_text(serde_json::json!(1)),
                },
            ))],
        )
        .await
        .unwrap();
    eventually("the automatic rollback", async || {
        state(&hybrid, Component::Profiles).await == DualWrite
    })
    .await;
    let history = hybrid
        .store()
        .unwrap()
        .component_history(&bot(), Component::Profiles, 1)
        .await
        .unwrap();
    assert!(history[0].change.automatic);
    assert!(
        history[0].change.reason.contains("projector stopped"),
        "{}",
        history[0].change.reason
    );
    hybrid.close().await.unwrap();
}

/// Proves a `database-only` component whose projector is held back (here: its commits blocked,
/// as another component's backfill would hold it) is answered by the log projection once it is
/// more than `lag_max_events` behind, so no read returns an answer that far out of date; and by
/// Postgres again once it has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_far_behind_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("mig_behind").await;
    let mut config = test_config(dir.path(), Some(db.config.clone()), 0);
    config.routing.lag_max_events = 5;
    let hybrid = Hybrid::open(config).await.unwrap();
    let created = create_profile(&hybrid, 6, "Ann").await;
    for to in [Enabled, DualWrite, DatabaseOnly] {
        step(&hybrid, Component::Profiles, to).await;
    }
    projected_past(&hybrid, created).await;
    let query = Query::Profile {
        bot: bot(),
        chat_id: 6,
    };
    let read = hybrid.reads().read(&query, None).await.unwrap();
    assert_eq!(read.source, Source::Postgres);
    let pool = db.pool().await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE projector_checkpoints IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    for i in 0..10 {
        message(&hybrid, 7, &format!("m{i}")).await;
    }
    let renamed = rename(&hybrid, 6, "Bea").await;
    // Wait until the log projection has the rename (a read of the log at it), then read with no
    // `min_position`: Postgres is 11 events behind, over the bound.
    log_applied(&hybrid, renamed).await;
    let read = hybrid.reads().read(&query, None).await.unwrap();
    assert_eq!(read.source, Source::Log, "{read:?}");
    match &read.answer {
        hybridstore::read::Answer::Profile(Some(p)) => assert_eq!(p.name, "Bea"),
        other => panic!("{other:?}"),
    }
    blocker.rollback().await.unwrap();
    projected_past(&hybrid, renamed).await;
    let read = hybrid.reads().read(&query, None).await.unwrap();
    assert_eq!(read.source, Source::Postgres);
    hybrid.close().await.unwrap();
}

/// Waits until the log projection has applied `position`.
async fn log_applied(hybrid: &Hybrid, position: Position) {
    hybridstore::read::LogSource::new(hybrid.store().unwrap().clone())
        .component_state(&bot(), Component::Profiles, Some(position))
        .await
        .unwrap();
}
