//! The Postgres projection against a real PostgreSQL (a database per test): migrations, the live
//! projector's equality with the log projection, exactly-once across kill -9 of the projector
//! process, surviving a database outage, and one-line errors for bad configuration.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hybridstore::sink::postgres::verify::verify;
use hybridstore::sink::postgres::{PgSink, ProjectorConfig};
use hybridstore::sink::runner::StopReason;
use hybridstore::sink::RunnerConfig;
use hybridstore::testing::{
    append_workload, dump_tables, password_refusing_server, TcpProxy, TestDb,
};
use hybridstore::{ComponentSet, Store, StoreConfig};
use hybridstore_wal::Position;
use rand::{Rng as _, SeedableRng as _};

const BIN: &str = env!("CARGO_BIN_EXE_hybridstore");

/// Runs the `hybridstore` binary with `args`, without the suite's database variables.
fn hybridstore(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DB_HOST")
        .env_remove("DB_NAME")
        .output()
        .expect("run hybridstore")
}

/// Projects `store` into `db` in-process until every durable event is committed.
async fn project_all(store: &Store, db: &TestDb) {
    let pool = db.pool().await;
    let projector = PgSink::start(store.clone(), pool, ProjectorConfig::default())
        .await
        .expect("projector starts");
    assert!(
        projector
            .wait_for(store.last_position().unwrap(), Duration::from_secs(60))
            .await,
        "the projector did not catch up: {:?}",
        projector.status()
    );
    projector.stop().await;
}

/// The differences `verify` finds, as lines (empty = the tables equal the log projection).
async fn differences(db: &TestDb, data_dir: &std::path::Path) -> Vec<String> {
    let report = verify(&db.pool().await, data_dir, ComponentSet::ALL)
        .await
        .expect("verify runs");
    report.differences.iter().map(ToString::to_string).collect()
}

/// Every component's checkpoint is `end` and the tables equal the log projection there.
async fn assert_caught_up(db: &TestDb, data_dir: &std::path::Path, end: Position) {
    let at = checkpoints(db).await;
    assert_eq!(at.len(), 5, "{at:?}");
    assert!(
        at.iter().all(|(_, p)| *p == end.0 as i64),
        "{at:?} vs {end}"
    );
    assert_eq!(differences(db, data_dir).await, Vec::<String>::new());
}

/// The checkpoints, or none when a killed projector had not yet created the tables (killed while
/// it was still opening the store: rebuilding the projection, opening the sealed fields).
async fn checkpoints_if_any(db: &TestDb) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT component, next_position FROM projector_checkpoints ORDER BY 1")
        .fetch_all(&db.pool().await)
        .await
        .unwrap_or_default()
}

async fn checkpoints(db: &TestDb) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT component, next_position FROM projector_checkpoints ORDER BY 1")
        .fetch_all(&db.pool().await)
        .await
        .expect("read checkpoints")
}

/// Proves `db migrate` applies the migrations once and a second run applies none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once() {
    let db = TestDb::create("migrate").await;
    let first = hybridstore(&["db", "migrate", "--database-url", &db.url()]);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        "db migrate: 4 migration(s) applied"
    );
    let again = hybridstore(&["db", "migrate", "--database-url", &db.url()]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "db migrate: 0 migration(s) applied"
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND \
         table_name IN ('users', 'profiles', 'messages', 'projector_checkpoints')",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(tables, 4);
}

/// Proves the live projector's tables equal the log projection over every event type, that
/// checkpoints reach the log's end, and that "last N messages of a chat" is an index range scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_equals_log_projection() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let end = append_workload(&store, 1500, 7).await;
    let db = TestDb::create("projector").await;
    project_all(&store, &db).await;
    assert_caught_up(&db, dir.path(), end).await;

    // A projector started on caught-up tables knows it is caught up.
    project_all(&store, &db).await;

    // More events after a restart of the projector: it resumes from its checkpoints.
    let end = append_workload(&store, 300, 8).await;
    project_all(&store, &db).await;
    assert_caught_up(&db, dir.path(), end).await;

    let pool = db.pool().await;
    sqlx::query("ANALYZE messages")
        .execute(&pool)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT * FROM messages WHERE bot_id = 'bot_a' AND chat_id = 7 ORDER BY position \
         DESC LIMIT 20",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    // A range of the key (bot_id, chat_id, position): an index scan (backward when the chat is
    // long, a bitmap scan and a small sort when it holds a few dozen rows), never a table scan.
    assert!(
        plan.iter().any(|line| line.contains("on messages_pkey"))
            && !plan.iter().any(|line| line.contains("Seq Scan")),
        "{plan:#?}"
    );
    store.close().await.unwrap();
}

/// Proves a component enabled later is backfilled from the start of the log while the others
/// go on from their checkpoints, ending equal to the log projection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_enabled_later_is_backfilled() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    append_workload(&store, 500, 9).await;
    let db = TestDb::create("backfill").await;
    let some = ComponentSet::parse_list("users,conversations").unwrap();
    let projector = PgSink::start(
        store.clone(),
        db.pool().await,
        ProjectorConfig {
            components: some,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        projector
            .wait_for(store.last_position().unwrap(), Duration::from_secs(60))
            .await
    );
    projector.stop().await;
    let profiles: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(profiles, 0, "profiles was not enabled yet");
    let end = append_workload(&store, 200, 10).await;
    project_all(&store, &db).await;
    assert_caught_up(&db, dir.path(), end).await;
    store.close().await.unwrap();
}

/// Proves exactly once: a projector process killed with SIGKILL at random points and restarted
/// ends with tables equal to the log projection and to a projection made in one go (no event
/// lost or applied twice), and the kills landed mid-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
        let end = append_workload(&store, 4000, 11).await;
        store.close().await.unwrap();
        end
    };
    let db = TestDb::create("killed").await;
    let data_dir = dir.path().to_str().unwrap();
    let url = db.url();
    let args = [
        "--data-dir",
        data_dir,
        "project",
        "--database-url",
        url.as_str(),
        "--batch-events",
        "25",
        "--until-caught-up",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut killed_mid_run = 0;
    let mut finished = false;
    for _ in 0..30 {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The child first opens the store (a rebuild of 4000 events, slow in a debug build on
        // a loaded machine): the kill comes a random 0-150 ms after it committed something new,
        // so it lands while the child projects, however long its start took.
        let before = checkpoints_if_any(&db)
            .await
            .iter()
            .map(|(_, p)| *p)
            .min()
            .unwrap_or(0);
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            let now = checkpoints_if_any(&db).await;
            if now.iter().map(|(_, p)| *p).min().unwrap_or(0) > before {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the projector made no progress in 120 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let deadline = Instant::now() + Duration::from_millis(rng.gen_range(0..150));
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the projector failed: {status}");
            finished = true;
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let at = checkpoints_if_any(&db).await;
        if at.iter().any(|(_, p)| *p > 0 && *p < end.0 as i64) {
            killed_mid_run += 1;
        }
    }
    if !finished {
        let mut last = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while last.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = last.try_wait().unwrap();
        if status.is_none() {
            last.kill().unwrap();
        }
        assert!(
            status.is_some_and(|s| s.success()),
            "the last projector run did not catch up: {status:?}, checkpoints {:?}",
            checkpoints(&db).await
        );
    }
    assert!(
        killed_mid_run >= 3,
        "only {killed_mid_run} kills landed mid-run"
    );
    assert_caught_up(&db, dir.path(), end).await;
    // The same tables as a projection that was never interrupted.
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let clean = TestDb::create("unkilled").await;
    project_all(&store, &clean).await;
    assert!(dump_tables(&db.pool().await).await == dump_tables(&clean.pool().await).await);
    store.close().await.unwrap();
}

/// Proves a Postgres outage (every connection cut, new ones refused) never fails an append or a
/// log-projection read, the projector reports it and retries, and resumes to tables equal to
/// the log projection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_database_outage() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let db = TestDb::create("outage").await;
    let target = format!(
        "{}:{}",
        db.config.connect.get_host(),
        db.config.connect.get_port()
    );
    let target = tokio::net::lookup_host(target)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(target).await;
    let mut through_proxy = db.config.clone();
    through_proxy.connect = through_proxy
        .connect
        .host(&proxy.addr.ip().to_string())
        .port(proxy.addr.port());
    let pool = through_proxy.connect().await.unwrap();
    let projector = PgSink::start(
        store.clone(),
        pool,
        ProjectorConfig {
            runner: RunnerConfig {
                backoff_max: Duration::from_millis(300),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let writer = {
        let store = store.clone();
        // Appends keep coming during the outage; append_workload panics if one fails.
        tokio::spawn(async move {
            for seed in 0..30 {
                append_workload(&store, 40, 100 + seed).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    let mut saw_retry = false;
    let outage_end = Instant::now() + Duration::from_millis(1200);
    let mut reads = 0;
    while Instant::now() < outage_end {
        saw_retry |= projector.status().retrying_after().is_some();
        // Reads of the log projection, read-your-writes included, go on meanwhile.
        let durable = store.durable_end();
        let applied = store
            .read_projection(Some(durable), |p| p.applied_end())
            .await
            .expect("a log-projection read during the outage");
        assert!(applied >= durable);
        reads += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reads > 10);
    let committed_during_outage = projector.status().committed;
    proxy.restore();
    writer.await.expect("no append failed during the outage");
    assert!(saw_retry, "the projector never reported the outage");
    let end = store.durable_end();
    assert!(committed_during_outage < end);
    assert!(
        projector
            .wait_for(store.last_position().unwrap(), Duration::from_secs(60))
            .await,
        "the projector did not resume: {:?}",
        projector.status()
    );
    assert_eq!(projector.status().retrying_after(), None);
    projector.stop().await;
    assert_caught_up(&db, dir.path(), end).await;
    store.close().await.unwrap();
}

/// Proves bad configuration gives exit code 2 and one clear error line (no retries, no panic):
/// a refused password, an unreachable host, a missing database, a server certificate that does
/// not verify (`sslmode=verify-full`), a bad variable, and no database at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_one_line() {
    let refusing = password_refusing_server().await;
    let refusing_url = format!("postgres://bot:wrong@127.0.0.1:{}/bot", refusing.port());
    let admin = hybridstore::sink::postgres::PgConfig::from_url(&hybridstore::testing::admin_url())
        .unwrap();
    let server = format!(
        "postgres://{}@{}:{}",
        admin.connect.get_username(),
        admin.connect.get_host(),
        admin.connect.get_port()
    );
    let missing = format!("{server}/hs_no_such_database");
    let tls = format!("{server}/test?sslmode=verify-full");
    // (flags, environment, what the one line must say)
    type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 6] = [
        (
            vec!["--database-url", refusing_url.as_str()],
            &[],
            "password authentication failed",
        ),
        (
            vec!["--database-url", "postgres://postgres@127.0.0.1:1/test"],
            &[],
            "refused",
        ),
        (
            vec!["--database-url", missing.as_str()],
            &[],
            "does not exist",
        ),
        // A Debian server's certificate is self-signed (verify-full must refuse it); a server
        // without TLS must be refused too, not silently used in the clear.
        (vec!["--database-url", tls.as_str()], &[], "certificate|TLS"),
        (
            vec![],
            &[("DB_HOST", "127.0.0.1"), ("DB_PORT", "none")],
            "DB_PORT",
        ),
        (vec![], &[], "no database configured"),
    ];
    for (flags, env, expected) in cases {
        let started = Instant::now();
        let mut command = Command::new(BIN);
        command
            .args(["db", "migrate"])
            .args(&flags)
            .env_remove("DATABASE_URL")
            .env_remove("DB_HOST")
            .env_remove("DB_NAME");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert_eq!(lines.len(), 1, "{flags:?}: {stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
        assert!(
            expected.split('|').any(|e| lines[0].contains(e)),
            "{flags:?}: {stderr}"
        );
        assert!(!lines[0].contains("wrong"), "the password leaked: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{flags:?} retried"
        );
    }
}

/// Proves the store opens and appends with no database configured (log-only, as before), and
/// `project` refuses to start without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_database_is_log_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let end = append_workload(&store, 20, 13).await;
    assert!(end > Position(0));
    store.close().await.unwrap();
    let output = hybridstore(&["--data-dir", dir.path().to_str().unwrap(), "project"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no database configured"));
}

/// Proves a failure that would repeat (a row that is not a valid entry, changed by hand) stops
/// the projector with the reason instead of retrying forever, and `project` exits 2 saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_failure_stops_the_projector() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    append_workload(&store, 300, 14).await;
    let db = TestDb::create("stops").await;
    project_all(&store, &db).await;
    sqlx::query("UPDATE users SET settings = '[1]'")
        .execute(&db.pool().await)
        .await
        .unwrap();
    // Events for every user of both bots: the next batch loads a broken row.
    for bot in ["bot_a", "bot_b"] {
        let bot = hybridstore::BotId::new(bot).unwrap();
        for user in 1..=20 {
            store
                .append(
                    &hybridstore::StreamId::user(&bot, user),
                    hybridstore::ExpectedVersion::Any,
                    vec![hybridstore::NewEvent::new(
                        hybridstore::events::Event::UserBlocked(hybridstore::events::UserBlocked {
                            reason: None,
                        }),
                    )],
                )
                .await
                .unwrap();
        }
    }
    let projector = PgSink::start(store.clone(), db.pool().await, ProjectorConfig::default())
        .await
        .unwrap();
    let mut status = projector.watch();
    let stopped = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.stopped.is_some()),
    )
    .await
    .expect("the projector must stop, not retry forever")
    .unwrap()
    .stopped
    .clone()
    .unwrap()
    .to_string();
    assert!(stopped.contains("settings is not an object"), "{stopped}");
    projector.stop().await;
    store.close().await.unwrap();

    let output = hybridstore(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "project",
        "--database-url",
        &db.url(),
        "--until-caught-up",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the projector stopped"), "{stderr}");
    assert!(stderr.contains("not retried"), "{stderr}");
}

/// Proves `sslmode=verify-full` connects over TLS when the certificate verifies against the
/// given root and the host name matches (here the server's own certificate, for `localhost`).
/// A server without TLS, or one that is not local, leaves nothing to check here: the refusals
/// are proven by `bad_configuration_is_one_line`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_connects() {
    let db = TestDb::create("tls").await;
    let pool = db.pool().await;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .unwrap();
    let cert: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&pool)
        .await
        .unwrap();
    let host = db.config.connect.get_host().to_owned();
    let local = ["127.0.0.1", "localhost", "::1"].contains(&host.as_str());
    if ssl != "on" || !local || !std::path::Path::new(&cert).is_file() {
        eprintln!("no local TLS server (ssl={ssl}, host {host}, cert {cert}): nothing to check");
        return;
    }
    let url = format!(
        "postgres://{}@localhost:{}/{}?sslmode=verify-full&sslrootcert={cert}",
        db.config.connect.get_username(),
        db.config.connect.get_port(),
        db.name
    );
    let verified = hybridstore::sink::postgres::PgConfig::from_url(&url)
        .unwrap()
        .connect()
        .await
        .expect("verify-full against the server's own certificate");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&verified)
            .await
            .unwrap();
    assert!(encrypted, "the connection is not encrypted");
}

/// Starts the Postgres sink of `store` on `db` and waits until it stops by itself, returning
/// why (the sink must refuse, not run).
async fn refusal(store: &Store, db: &TestDb) -> String {
    let sink = PgSink::start(store.clone(), db.pool().await, ProjectorConfig::default())
        .await
        .unwrap();
    let mut status = sink.watch();
    let stopped = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.stopped.is_some()),
    )
    .await
    .expect("the sink must refuse at once")
    .unwrap()
    .stopped
    .clone()
    .unwrap();
    let status = sink.status();
    assert_eq!(
        status.events, 0,
        "a refusing sink applies nothing: {status:?}"
    );
    sink.stop().await;
    assert!(
        matches!(stopped, StopReason::Identity(_)),
        "not an identity refusal: {stopped:?}"
    );
    stopped.to_string()
}

/// Proves a second, fresh log pointed at a database another log projected into is refused, with
/// an error naming both logs, and that the database is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_log_is_refused() {
    let first_dir = tempfile::tempdir().unwrap();
    let first = Store::open(StoreConfig::new(first_dir.path()))
        .await
        .unwrap();
    append_workload(&first, 200, 21).await;
    let db = TestDb::create("foreign").await;
    project_all(&first, &db).await;
    let before = dump_tables(&db.pool().await).await;

    let second_dir = tempfile::tempdir().unwrap();
    let second = Store::open(StoreConfig::new(second_dir.path()))
        .await
        .unwrap();
    append_workload(&second, 300, 22).await;
    let reason = refusal(&second, &db).await;
    assert!(reason.contains(&first.log_id().to_string()), "{reason}");
    assert!(reason.contains(&second.log_id().to_string()), "{reason}");
    assert!(reason.contains("belong to log"), "{reason}");
    assert_eq!(dump_tables(&db.pool().await).await, before);

    // The CLI says the same in one line and exits 2.
    second.close().await.unwrap();
    let output = hybridstore(&[
        "--data-dir",
        second_dir.path().to_str().unwrap(),
        "project",
        "--until-caught-up",
        "--database-url",
        &db.url(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("belong to log"), "{stderr}");
    first.close().await.unwrap();
}

/// Proves an older copy of the same data directory (a restored backup) is refused: first while
/// it is shorter than the database's checkpoint, then after it has grown past the checkpoint
/// with other events; each error names the log and the position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_older_backup_is_refused() {
    let live_dir = tempfile::tempdir().unwrap();
    let backup_dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(live_dir.path()))
        .await
        .unwrap();
    append_workload(&store, 100, 31).await;
    store.close().await.unwrap();
    // A backup is the log with its key store (the keys of the sealed fields).
    for part in ["wal", hybridstore::crypto::KEYS_SUBDIR] {
        copy_dir(&live_dir.path().join(part), &backup_dir.path().join(part));
    }

    let store = Store::open(StoreConfig::new(live_dir.path()))
        .await
        .unwrap();
    append_workload(&store, 100, 32).await;
    let db = TestDb::create("backup").await;
    project_all(&store, &db).await;
    let checkpoint = store.durable_end();
    let log_id = store.log_id();
    store.close().await.unwrap();

    let restored = Store::open(StoreConfig::new(backup_dir.path()))
        .await
        .unwrap();
    assert_eq!(restored.log_id(), log_id, "a copy is the same log");
    assert!(restored.durable_end() < checkpoint);
    let reason = refusal(&restored, &db).await;
    assert!(reason.contains("past the end of log"), "{reason}");
    assert!(reason.contains(&checkpoint.to_string()), "{reason}");
    assert!(reason.contains(&log_id.to_string()), "{reason}");

    // The restored copy goes on with other events, past the database's checkpoint.
    while restored.durable_end() <= checkpoint {
        append_workload(&restored, 50, 33).await;
    }
    let reason = refusal(&restored, &db).await;
    assert!(reason.contains("holds"), "{reason}");
    assert!(
        reason.contains(&format!("position {}", checkpoint.0 - 1)),
        "{reason}"
    );
    restored.close().await.unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Proves what Postgres cannot hold as it is reaches it mapped and comes back exact: U+0000 in
/// message texts, names, summaries, facts and configuration, and the earliest and latest times
/// the old bot could write (the legacy fixture chat 100006, and i64's extremes) are projected,
/// verified equal to the log projection, and stored without a NUL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_and_extreme_times_project_exactly() {
    use hybridstore::events::{ConfigValueSet, Event, JsonText, MessageReceived};
    use hybridstore::{BotId, ExpectedVersion, NewEvent, StreamId, Timestamp};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let bot = BotId::new("nulbot").unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy");
    let report = hybridstore::legacy::import_legacy(
        &store,
        &bot,
        Some(&fixtures.join("girls_data")),
        Some(&fixtures.join("conversations")),
        |_| {},
    )
    .await
    .unwrap();
    assert!(!report.chats_failed.contains(&100_006), "{report}");
    let message = |text: &str| {
        Event::MessageReceived(MessageReceived {
            telegram_message_id: None,
            text: text.into(),
            content_type: "text".into(),
            legacy_ts: Some(JsonText::from_value(
                &serde_json::json!({"\u{0}": "\u{E000}0"}),
            )),
        })
    };
    store
        .append(
            &StreamId::conversation(&bot, 7),
            ExpectedVersion::Any,
            vec![
                NewEvent::new(message("a\u{0}b\u{E000}")).at(Timestamp(i64::MIN)),
                NewEvent::new(message("\u{E000}0")).at(Timestamp(i64::MAX)),
            ],
        )
        .await
        .unwrap();
    store
        .append(
            &StreamId::bot(&bot),
            ExpectedVersion::Any,
            vec![NewEvent::new(Event::ConfigValueSet(ConfigValueSet {
                scope: "s\u{0}".into(),
                key: "k\u{0}".into(),
                value: JsonText::from_value(&serde_json::json!(["\u{0}"])),
            }))],
        )
        .await
        .unwrap();
    let db = TestDb::create("nul").await;
    project_all(&store, &db).await;
    assert_caught_up(&db, dir.path(), store.durable_end()).await;
    let pool = db.pool().await;
    let nul_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM messages WHERE text LIKE '%' || chr(57344) || '0%') + \
         (SELECT count(*) FROM profiles WHERE name LIKE '%' || chr(57344) || '0%')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(nul_rows >= 3, "the NULs are stored mapped: {nul_rows}");
    let extremes: (i64, i64) =
        sqlx::query_as("SELECT min(at), max(at) FROM messages WHERE bot_id = 'nulbot'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(extremes, (i64::MIN, i64::MAX));
    store.close().await.unwrap();
}

/// Proves migration 0002 keeps what a database of 0001 held: times become the same
/// milliseconds, days the same day numbers, and a U+E000 already in a text reads back unchanged
/// through the mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0002_keeps_existing_values() {
    use hybridstore::projection::Projection;
    use hybridstore::sink::postgres::model::{self, Rows};
    use hybridstore::{BotId, Timestamp};
    let db = TestDb::create("upgrade").await;
    let pool = db.pool().await;
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let sql = |name: &str| std::fs::read_to_string(migrations.join(name)).unwrap();
    sqlx::raw_sql(&sql("0001_read_models.sql"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO users VALUES ('b', 1, true, 'r\u{E000}', '{\"first_name\": \"A\u{E000}\"}', \
         '{}', '2026-11-18T11:06:40.123Z'); \
         INSERT INTO messages VALUES ('b', 1, 5, 'in', 'x\u{E000}y', '2026-11-18T11:06:40.123Z', \
         NULL); \
         INSERT INTO analytics_daily VALUES ('b', date '2026-11-18', 1, 0, 1, 0, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql(&sql("0002_exact_values_and_log_identity.sql"))
        .execute(&pool)
        .await
        .unwrap();
    // The later migrations add tables a load reads; they change none of these rows.
    sqlx::raw_sql(&sql("0004_erasures.sql"))
        .execute(&pool)
        .await
        .unwrap();
    let at = Timestamp(1_795_000_000_123);
    let bot = BotId::new("b").unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut projection = Projection::with_components(0, ComponentSet::ALL);
    model::load(&mut conn, Rows::All, &mut projection)
        .await
        .unwrap();
    let user = projection.user(&bot, 1).unwrap();
    assert_eq!(user.blocked_reason.as_deref(), Some("r\u{E000}"));
    assert_eq!(user.identity.first_name.as_deref(), Some("A\u{E000}"));
    assert_eq!(user.registered_at, at);
    assert_eq!(
        projection.daily_by_day(&bot, at.day()).unwrap().messages_in,
        1
    );
    let messages = model::load_last_messages(&mut conn, &bot, 1, 10)
        .await
        .unwrap();
    assert_eq!(&*messages[0].text, "x\u{E000}y");
    assert_eq!(messages[0].at, at);
}
