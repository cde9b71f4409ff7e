//! The `hybridstore-replay` binary against a real Postgres: a rebuild equals the live projector's
//! output and runs beside a live store, swaps in place under readers, resumes after an interrupt
//! or a kill, continues from a checkpoint, rebuilds a subset of components, `--verify` names every
//! tampered entry, and a bad configuration is one line on stderr with exit code 2.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hybridstore::sink::postgres::{PgSink, ProjectorConfig};
use hybridstore::testing::{append_workload, dump_tables, password_refusing_server, TestDb};
use hybridstore::{Component, ComponentSet, Store, StoreConfig};
use sqlx::PgPool;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_hybridstore-replay");

/// How long a rebuild may take to show progress (or to stop) before the test gives up.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(output: Output) -> Run {
        Run {
            code: output.status.code(),
            signal: output.status.signal(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics, showing the whole run, unless it exited with `code`.
    #[track_caller]
    fn expect_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{self}");
        assert!(!self.stderr.contains("panicked"), "{self}");
    }

    /// The stdout lines starting with `prefix`.
    fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {:?}, signal {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.signal, self.stdout, self.stderr
        )
    }
}

/// The binary with `args`, output captured, without the caller's log filter.
fn replay_command<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `command` to its end (on a blocking thread: the runtime keeps serving other tasks).
async fn run(mut command: Command) -> Run {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    Run::of(output)
}

/// Waits for a spawned run to end.
async fn finish(child: Child) -> Run {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    Run::of(output)
}

/// A store holding a random workload in a temporary directory; the store stays open (live).
struct Fixture {
    dir: TempDir,
    store: Store,
}

impl Fixture {
    async fn new(appends: usize, seed: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
        append_workload(&store, appends, seed).await;
        Fixture { dir, store }
    }

    /// The log's end now.
    fn end(&self) -> i64 {
        i64::try_from(self.store.durable_end().0).unwrap()
    }

    /// The binary on this store's data directory and `db`, with `args`.
    fn command(&self, db: &TestDb, args: &[&str]) -> Command {
        let mut full = vec![
            "--data-dir".to_owned(),
            self.dir.path().to_str().unwrap().to_owned(),
            "--database-url".to_owned(),
            db.url(),
        ];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        replay_command(full)
    }

    /// Runs the binary on this store and `db` to its end.
    async fn replay(&self, db: &TestDb, args: &[&str]) -> Run {
        run(self.command(db, args)).await
    }

    /// A quiet rebuild of `db` with `args`, which must succeed.
    async fn rebuild(&self, db: &TestDb, args: &[&str]) -> Run {
        let mut args = args.to_vec();
        args.push("-q");
        let done = self.replay(db, &args).await;
        done.expect_code(0);
        done
    }

    /// `--verify` of `db`, which must find the tables equal to the log.
    async fn verify_equal(&self, db: &TestDb) {
        let verified = self.replay(db, &["--verify"]).await;
        verified.expect_code(0);
        assert!(verified.stdout.contains("; 0 differences"), "{verified}");
    }

    /// Projects the whole log into `pool` with the in-process projector, then stops it.
    async fn project(&self, pool: &PgPool) {
        let projector = PgSink::start(self.store.clone(), pool.clone(), ProjectorConfig::default())
            .await
            .unwrap();
        assert!(
            projector
                .wait_for(self.store.last_position().unwrap(), Duration::from_secs(60))
                .await,
            "the projector did not reach the end: {:?}",
            projector.status()
        );
        projector.stop().await;
    }

    /// The tables a full rebuild of this log gives, in a database of its own.
    async fn full_replay_dump(&self) -> Dump {
        let db = TestDb::create("replay_full").await;
        self.rebuild(&db, &[]).await;
        dump_tables(&db.pool().await).await
    }
}

type Dump = Vec<(String, Vec<String>)>;

/// Panics with the first differing table and row unless the dumps are equal.
#[track_caller]
fn assert_same_tables(left: &Dump, right: &Dump, what: &str) {
    assert_eq!(left.len(), right.len(), "{what}: table lists differ");
    for ((table, a), (other, b)) in left.iter().zip(right) {
        assert_eq!(table, other, "{what}: table lists differ");
        if a != b {
            let first = a.iter().zip(b).position(|(x, y)| x != y);
            panic!(
                "{what}: {table} differs ({} rows vs {}); first difference at row {first:?}: \
                 {:?} vs {:?}",
                a.len(),
                b.len(),
                first.map(|i| &a[i]),
                first.map(|i| &b[i]),
            );
        }
    }
}

/// Each component's checkpoint.
async fn checkpoints(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as("SELECT component, next_position FROM projector_checkpoints")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Every component's checkpoint at `at`.
fn all_at(at: i64) -> BTreeMap<String, i64> {
    Component::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), at))
        .collect()
}

/// How far an interrupted rebuild is (`None`: none in the staging schema).
async fn staged_position(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT next_position FROM hybridstore_replay.replay_state")
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

/// A pool of exactly one connection on `db`, so that "every other client" is well defined.
async fn lone_pool(db: &TestDb) -> PgPool {
    let mut config = db.config.clone();
    (config.pool_min, config.pool_max) = (1, 1);
    config.connect().await.unwrap()
}

/// Waits until `pool` (of one connection) is the database's only client: a killed run's server
/// processes finish what it sent before it died (a `COMMIT` among it) before they exit.
async fn wait_until_alone(pool: &PgPool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid \
             <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if others == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{others} connections outlive their process"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until a running rebuild has committed a chunk beyond `beyond`; returns where it is.
async fn wait_for_progress(pool: &PgPool, beyond: i64) -> i64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(at) = staged_position(pool).await.filter(|at| *at > beyond) {
            return at;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild showed no progress beyond {beyond}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Rebuilds
// ---------------------------------------------------------------------------------------------

/// Proves a rebuild of a live store's log gives exactly the in-process projector's tables, and
/// `--verify` finds them equal to the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_equals_projector_and_runs_beside_a_live_store() {
    let fixture = Fixture::new(600, 1).await;
    let end = fixture.end();
    let (projected, replayed) = (
        TestDb::create("replay_a").await,
        TestDb::create("replay_b").await,
    );
    let projected_pool = projected.pool().await;
    fixture.project(&projected_pool).await;
    let report = hybridstore::sink::postgres::verify::verify(
        &projected_pool,
        fixture.dir.path(),
        ComponentSet::ALL,
    )
    .await
    .unwrap();
    assert!(report.differences.is_empty(), "{:?}", report.differences);

    // The store is still open (it holds the log's lock): the rebuild reads beside it.
    let done = fixture.rebuild(&replayed, &[]).await;
    let lines: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{done}");
    assert!(lines[0].starts_with("replay:"), "{done}");
    assert!(
        lines[0].contains(&format!("positions 0..{end}"))
            && lines[0].ends_with(&format!("checkpoints at {end}")),
        "{done}"
    );
    let replayed_pool = replayed.pool().await;
    assert_eq!(checkpoints(&replayed_pool).await, all_at(end));
    assert_same_tables(
        &dump_tables(&projected_pool).await,
        &dump_tables(&replayed_pool).await,
        "projector vs replay",
    );
    fixture.verify_equal(&replayed).await;
    // The live store is untouched and still appends.
    append_workload(&fixture.store, 5, 2).await;
    assert!(fixture.end() > end);
}

/// Proves a rebuild swapped into the database readers use never fails a read, leaves the same
/// rows, and moves every checkpoint to the log's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_in_place_keeps_reads_working() {
    let fixture = Fixture::new(600, 3).await;
    let db = TestDb::create("replay_swap").await;
    let pool = db.pool().await;
    fixture.project(&pool).await;
    let before = dump_tables(&pool).await;

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (pool, stop, reads, errors) =
            (pool.clone(), stop.clone(), reads.clone(), errors.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for sql in [
                    "SELECT count(*) FROM messages",
                    "SELECT count(*) FROM users",
                ] {
                    match sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await {
                        Ok(_) => reads.fetch_add(1, Ordering::SeqCst),
                        Err(error) => {
                            errors.lock().unwrap().push(format!("{sql}: {error}"));
                            0
                        }
                    };
                }
            }
        })
    };
    let reads_before = loop {
        // The reader is under way before the rebuild starts.
        let n = reads.load(Ordering::SeqCst);
        if n > 0 {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    fixture.rebuild(&db, &[]).await;
    let reads_during = reads.load(Ordering::SeqCst) - reads_before;
    stop.store(true, Ordering::SeqCst);
    reader.await.unwrap();

    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} reads failed, the first: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(reads_during > 0, "no read ran during the rebuild");
    assert_same_tables(
        &before,
        &dump_tables(&pool).await,
        "before vs after the swap",
    );
    assert_eq!(checkpoints(&pool).await, all_at(fixture.end()));
}

/// Proves `--verify` names each row changed, added or removed behind the projector's back (and
/// nothing else), and a rebuild repairs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_tampering() {
    let fixture = Fixture::new(600, 4).await;
    let db = TestDb::create("replay_tamper").await;
    let pool = db.pool().await;
    fixture.rebuild(&db, &[]).await;

    let (flipped_bot, flipped_user): (String, i64) =
        sqlx::query_as("SELECT bot_id, user_id FROM users ORDER BY bot_id, user_id LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let (deleted_bot, deleted_user): (String, i64) = sqlx::query_as(
        "SELECT bot_id, user_id FROM users ORDER BY bot_id DESC, user_id DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (message_bot, message_chat, message_position): (String, i64, i64) = sqlx::query_as(
        "SELECT bot_id, chat_id, position FROM messages WHERE position = (SELECT \
         min(position) FROM messages)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for sql in [
        "UPDATE users SET blocked = NOT blocked WHERE (bot_id, user_id) = (SELECT bot_id, \
         user_id FROM users ORDER BY bot_id, user_id LIMIT 1)",
        "DELETE FROM users WHERE (bot_id, user_id) = (SELECT bot_id, user_id FROM users ORDER \
         BY bot_id DESC, user_id DESC LIMIT 1)",
        "UPDATE messages SET text = 'tampered' WHERE position = (SELECT min(position) FROM \
         messages)",
        "INSERT INTO config_values VALUES ('bot_a', 'global', 'stray', '1')",
    ] {
        let changed = sqlx::query(sql).execute(&pool).await.unwrap();
        assert_eq!(changed.rows_affected(), 1, "{sql}");
    }

    let verified = fixture.replay(&db, &["--verify"]).await;
    verified.expect_code(1);
    let differs = verified.lines_starting("differs: ");
    let stray = verified.lines_starting("not in the log: ");
    let missing = verified.lines_starting("missing in Postgres: ");
    assert_eq!(
        (differs.len(), stray.len(), missing.len()),
        (2, 1, 1),
        "{verified}"
    );
    let user_line = format!("differs: users {flipped_bot}/{flipped_user}: blocked: ");
    let message_line =
        format!("differs: messages {message_bot}/{message_chat}@{message_position}: text: ");
    assert!(
        differs.iter().any(|l| l.starts_with(&user_line)),
        "{verified}"
    );
    assert!(
        differs
            .iter()
            .any(|l| l.starts_with(&message_line) && l.contains("\"tampered\"")),
        "{verified}"
    );
    assert!(
        stray[0].starts_with(r#"not in the log: config_values bot_a/["global","stray"] = 1"#),
        "{verified}"
    );
    assert!(
        missing[0].starts_with(&format!(
            "missing in Postgres: users {deleted_bot}/{deleted_user} = "
        )),
        "{verified}"
    );
    assert!(verified.stdout.contains("; 4 differences"), "{verified}");

    fixture.rebuild(&db, &[]).await;
    fixture.verify_equal(&db).await;
}

/// Proves an interrupted rebuild (SIGINT: exit 130) and a killed one (SIGKILL) keep their
/// committed chunks, and the next run resumes there and ends with a full rebuild's tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_interrupt_and_kill() {
    let fixture = Fixture::new(3000, 5).await;
    let end = fixture.end();
    let db = TestDb::create("replay_resume").await;
    let pool = lone_pool(&db).await;
    let args = ["--chunk-events", "50", "-q"];

    // SIGINT once the rebuild has committed a chunk (its handler is installed by then).
    let child = fixture.command(&db, &args).spawn().unwrap();
    wait_for_progress(&pool, 0).await;
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let interrupted = finish(child).await;
    interrupted.expect_code(130);
    wait_until_alone(&pool).await;
    assert!(interrupted.stderr.contains("resume"), "{interrupted}");
    let interrupted_at = staged_position(&pool)
        .await
        .expect("the staging state is kept");
    assert!(
        0 < interrupted_at && interrupted_at < end,
        "{interrupted_at} of {end}"
    );
    assert_eq!(checkpoints(&pool).await, all_at(0), "nothing swapped in");

    // SIGKILL once the resumed run has committed more.
    let mut child = fixture.command(&db, &args).spawn().unwrap();
    wait_for_progress(&pool, interrupted_at).await;
    child.kill().unwrap();
    let killed = finish(child).await;
    assert_eq!(killed.signal, Some(9), "{killed}");
    wait_until_alone(&pool).await;
    let killed_at = staged_position(&pool)
        .await
        .expect("the staging state is kept");
    assert!(
        interrupted_at < killed_at && killed_at < end,
        "{interrupted_at} < {killed_at} < {end}"
    );

    let resumed = fixture.replay(&db, &args).await;
    resumed.expect_code(0);
    assert!(
        resumed
            .stdout
            .contains(&format!("(resumed at {killed_at})")),
        "{resumed}"
    );
    assert_eq!(staged_position(&pool).await, None);
    assert_eq!(checkpoints(&pool).await, all_at(end));
    assert_same_tables(
        &fixture.full_replay_dump().await,
        &dump_tables(&pool).await,
        "full vs resumed",
    );
}

/// Proves `--to M` leaves every checkpoint at M, continuing from M (given as a position or as
/// `checkpoint`) gives a full rebuild's tables, and a `--from` that is not the checkpoint is
/// refused in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_checkpoint_equals_a_full_one() {
    let fixture = Fixture::new(600, 6).await;
    let end = fixture.end();
    let middle = end / 2;
    let full = fixture.full_replay_dump().await;
    for (tag, from) in [
        ("replay_from_position", middle.to_string()),
        ("replay_from_checkpoint", "checkpoint".to_owned()),
    ] {
        let db = TestDb::create(tag).await;
        let pool = db.pool().await;
        fixture.rebuild(&db, &["--to", &middle.to_string()]).await;
        assert_eq!(checkpoints(&pool).await, all_at(middle), "{tag}");
        let done = fixture.rebuild(&db, &["--from", &from]).await;
        assert!(
            done.stdout.contains(&format!("positions {middle}..{end}")),
            "{tag}: {done}"
        );
        assert_eq!(checkpoints(&pool).await, all_at(end), "{tag}");
        assert_same_tables(&full, &dump_tables(&pool).await, tag);

        let refused = fixture.replay(&db, &["--from", "3", "-q"]).await;
        refused.expect_code(2);
        let lines: Vec<&str> = refused.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "{refused}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains("checkpoint"),
            "{refused}"
        );
        assert_eq!(
            checkpoints(&pool).await,
            all_at(end),
            "{tag}: refused, unchanged"
        );
    }
}

/// Proves `--component` swaps in only the chosen components' tables and checkpoints, leaving the
/// others' tables and checkpoints as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_subset() {
    let fixture = Fixture::new(400, 7).await;
    let db = TestDb::create("replay_subset").await;
    let pool = db.pool().await;
    fixture.project(&pool).await;
    let projected_end = fixture.end();
    // More events the projector does not see: the chosen components go further than the rest.
    append_workload(&fixture.store, 100, 8).await;
    let end = fixture.end();
    let tables = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT relname::text, oid::int8 FROM pg_class WHERE relkind = 'r' AND \
             relnamespace = current_schema()::regnamespace",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect::<BTreeMap<String, i64>>()
    };
    let updated_at = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, String)>(
            "SELECT component, updated_at::text FROM projector_checkpoints",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect::<BTreeMap<String, String>>()
    };
    let (oids_before, stamps_before, dump_before) = (
        tables(pool.clone()).await,
        updated_at(pool.clone()).await,
        dump_tables(&pool).await,
    );

    let done = fixture
        .rebuild(&db, &["--component", "users,configuration"])
        .await;
    assert!(done.stdout.contains("of users,configuration"), "{done}");

    let mut expected = all_at(projected_end);
    expected.insert("users".into(), end);
    expected.insert("configuration".into(), end);
    assert_eq!(checkpoints(&pool).await, expected);
    let stamps_after = updated_at(pool.clone()).await;
    for component in ["profiles", "conversations", "analytics"] {
        assert_eq!(
            stamps_before[component], stamps_after[component],
            "{component}"
        );
    }
    let swapped: Vec<String> = {
        let after = tables(pool.clone()).await;
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            oids_before.keys().collect::<Vec<_>>()
        );
        after
            .iter()
            .filter(|(name, oid)| oids_before[*name] != **oid)
            .map(|(name, _)| name.clone())
            .collect()
    };
    assert_eq!(
        swapped,
        ["component_states", "config_values", "erasures", "users"]
    );
    let dump_after = dump_tables(&pool).await;
    for ((table, rows_before), (_, rows_after)) in dump_before.iter().zip(&dump_after) {
        if !swapped.contains(table) {
            assert!(rows_before == rows_after, "{table} changed");
        }
    }
    fixture.verify_equal(&db).await;
}

// ---------------------------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------------------------

/// Proves a wrong password, an unreachable server, a missing database and no configuration at
/// all each exit 2 with one `error:` line on stderr saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let refusing = password_refusing_server().await;
    let with_url =
        |url: String| replay_command(["--data-dir", &data_dir, "--database-url", &url, "-q"]);
    let mut unconfigured = replay_command(["--data-dir", &data_dir, "-q"]);
    for variable in ["DATABASE_URL", "DB_HOST", "DB_NAME"] {
        unconfigured.env_remove(variable);
    }
    let cases = [
        (
            "wrong password",
            with_url(format!(
                "postgres://bot:wrong@127.0.0.1:{}/bot",
                refusing.port()
            )),
            "password authentication failed",
        ),
        (
            "unreachable",
            with_url("postgres://postgres@127.0.0.1:1/test".into()),
            "refused",
        ),
        (
            "missing database",
            with_url("postgres://postgres@127.0.0.1:5432/hs_no_such_db".into()),
            "does not exist",
        ),
        ("unconfigured", unconfigured, "no database configured"),
    ];
    // All at once: a slow failure does not add up.
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(name, command, reason)| (name, reason, tokio::spawn(run(command))))
        .collect();
    let mut wrong = Vec::new();
    for (name, reason, running) in runs {
        let done = running.await.unwrap();
        let lines: Vec<&str> = done
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let fine = done.code == Some(2)
            && lines.len() == 1
            && lines[0].starts_with("error:")
            && lines[0].contains(reason)
            && !done.stderr.contains("panicked");
        if !fine {
            wrong.push(format!("{name} (expected {reason:?}): {done}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Proves two rebuilds started together on one database take turns (one waits for the other's
/// lock) instead of replaying the same chunks twice: both succeed and the tables verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rebuilds_take_turns() {
    let fixture = Fixture::new(400, 21).await;
    let db = TestDb::create("replay_twice").await;
    let first = fixture
        .command(&db, &["-q", "--chunk-events", "50"])
        .spawn()
        .unwrap();
    let second = fixture
        .command(&db, &["-q", "--chunk-events", "50"])
        .spawn()
        .unwrap();
    let (first, second) = tokio::join!(finish(first), finish(second));
    first.expect_code(0);
    second.expect_code(0);
    fixture.verify_equal(&db).await;
    assert_same_tables(
        &dump_tables(&db.pool().await).await,
        &fixture.full_replay_dump().await,
        "after two concurrent rebuilds",
    );
}

/// Proves the swap keeps the privileges other roles hold on the live tables (a bot reading as
/// its own role keeps reading), which `CREATE TABLE ... LIKE` alone would drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_keeps_grants() {
    let fixture = Fixture::new(100, 31).await;
    let db = TestDb::create("replay_grants").await;
    fixture.rebuild(&db, &[]).await;
    let pool = db.pool().await;
    let role = format!("{}_reader", db.name);
    sqlx::query(&format!("CREATE ROLE {role}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("GRANT SELECT ON users, messages TO {role}"))
        .execute(&pool)
        .await
        .unwrap();
    fixture.rebuild(&db, &[]).await;
    for (table, expected) in [("users", true), ("messages", true), ("profiles", false)] {
        let granted: bool = sqlx::query_scalar("SELECT has_table_privilege($1, $2, 'SELECT')")
            .bind(&role)
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(granted, expected, "{table}");
    }
    sqlx::raw_sql(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .execute(&pool)
        .await
        .unwrap();
}

/// Proves an interrupted rebuild is not resumed from another log: the second run refuses with
/// one line naming both sources, and `--fresh` discards the interrupted one and rebuilds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_another_log() {
    let first = Fixture::new(3000, 41).await;
    let second = Fixture::new(50, 42).await;
    let db = TestDb::create("replay_other_log").await;
    let pool = lone_pool(&db).await;
    let child = first
        .command(&db, &["--chunk-events", "50", "-q"])
        .spawn()
        .unwrap();
    wait_for_progress(&pool, 0).await;
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until_alone(&pool).await;
    let refused = second.replay(&db, &["-q"]).await;
    refused.expect_code(2);
    assert!(refused.stderr.contains("another source"), "{refused}");
    second.rebuild(&db, &["--fresh"]).await;
    second.verify_equal(&db).await;
}

/// Proves progress output: plain periodic lines with events/s and ETA when stderr is piped, an
/// indicatif bar with events/s and ETA on a terminal (run under `script`, which gives it a pty),
/// nothing with `-q`; the summary line on stdout in every case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_output() {
    let fixture = Fixture::new(2000, 51).await;
    let db = TestDb::create("replay_progress").await;
    let mut piped = fixture.command(&db, &["--chunk-events", "100"]);
    piped.env("HYBRIDSTORE_PROGRESS_INTERVAL_MS", "1");
    let piped = run(piped).await;
    piped.expect_code(0);
    let lines: Vec<&str> = piped
        .stderr
        .lines()
        .filter(|l| l.starts_with("replay: "))
        .collect();
    assert!(!lines.is_empty(), "{piped}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" events (") && l.contains("events/s, ETA ")),
        "{piped}"
    );
    assert!(piped.stdout.starts_with("replay: "), "{piped}");

    let quiet = fixture.replay(&db, &["-q"]).await;
    quiet.expect_code(0);
    assert_eq!(quiet.stderr, "", "{quiet}");

    // Under a terminal: the bar's template shows the rate and the ETA.
    let command = format!(
        "{BIN} --data-dir {} --database-url {} --chunk-events 100",
        fixture.dir.path().display(),
        db.url()
    );
    let mut under_pty = Command::new("script");
    under_pty
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let on_terminal = run(under_pty).await;
    on_terminal.expect_code(0);
    assert!(
        on_terminal.stdout.contains("[00:00:0")
            && on_terminal.stdout.contains("ETA")
            && on_terminal.stdout.contains("events"),
        "{on_terminal}"
    );
}

/// Proves a rebuild of a log holding U+0000 and extreme times (the legacy fixture chat 100006)
/// gives the live projector's tables and verifies equal, and that the rebuilt database adopts
/// the log: the store's own sink goes on from it, another log's sink is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_maps_nuls_and_adopts_the_log() {
    let fixture = Fixture::new(50, 40).await;
    let bot = hybridstore::BotId::new("nulbot").unwrap();
    let legacy =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/legacy");
    let report = hybridstore::legacy::import_legacy(
        &fixture.store,
        &bot,
        Some(&legacy.join("girls_data")),
        Some(&legacy.join("conversations")),
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.chats_imported >= 5, "{report}");
    let (projected, replayed) = (
        TestDb::create("replay_nul_a").await,
        TestDb::create("replay_nul_b").await,
    );
    fixture.project(&projected.pool().await).await;
    fixture.rebuild(&replayed, &[]).await;
    assert_same_tables(
        &dump_tables(&projected.pool().await).await,
        &dump_tables(&replayed.pool().await).await,
        "projector vs replay",
    );
    fixture.verify_equal(&replayed).await;
    let log_ids: Vec<Option<String>> =
        sqlx::query_scalar("SELECT DISTINCT log_id FROM projector_checkpoints")
            .fetch_all(&replayed.pool().await)
            .await
            .unwrap();
    assert_eq!(log_ids, [Some(fixture.store.log_id().to_string())]);

    // The store's own sink continues the adopted tables.
    append_workload(&fixture.store, 20, 41).await;
    fixture.project(&replayed.pool().await).await;
    fixture.verify_equal(&replayed).await;

    // Another log's sink is refused.
    let other = Fixture::new(80, 42).await;
    let sink = PgSink::start(
        other.store.clone(),
        replayed.pool().await,
        ProjectorConfig::default(),
    )
    .await
    .unwrap();
    let mut status = sink.watch();
    let stopped = tokio::time::timeout(PATIENCE, status.wait_for(|s| s.stopped.is_some()))
        .await
        .expect("the other log's sink must refuse")
        .unwrap()
        .stopped
        .clone()
        .unwrap()
        .to_string();
    assert!(stopped.contains("belong to log"), "{stopped}");
    sink.stop().await;
}

/// Proves reads through the router never fail while a replay rebuilds and swaps the tables of
/// `database-only` components under a live store (the router answers from the log projection
/// while Postgres is locked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_reads_survive_a_swap() {
    use hybridstore::hybrid::{Hybrid, HybridConfig, SetOptions};
    use hybridstore::read::{Query, Source};
    use hybridstore::MigrationState;

    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("replay_routed").await;
    let mut config = HybridConfig::new(StoreConfig::new(dir.path()));
    config.postgres = Some(db.config.clone());
    config.routing.postgres_timeout = Duration::from_millis(200);
    let hybrid = Hybrid::open(config).await.unwrap();
    let store = hybrid.store().unwrap().clone();
    append_workload(&store, 600, 5).await;
    let bot = hybridstore::BotId::new("bot_a").unwrap();
    let forced = SetOptions {
        force: true,
        wait: Duration::from_secs(30),
        ..SetOptions::default()
    };
    for component in [Component::Profiles, Component::Conversations] {
        for to in [
            MigrationState::Enabled,
            MigrationState::DualWrite,
            MigrationState::DatabaseOnly,
        ] {
            hybrid
                .set_component_state(&bot, component, to, &forced)
                .await
                .unwrap();
        }
    }
    let last = store.last_position().unwrap();
    // The projector backfills both components first: the first read is Postgres's once it has.
    let mut projected = hybrid.supervisor().unwrap().watch();
    tokio::time::timeout(
        Duration::from_secs(60),
        projected.wait_for(|s| {
            [Component::Profiles, Component::Conversations]
                .iter()
                .all(|c| s.components.get(c).is_some_and(|c| c.committed > last))
        }),
    )
    .await
    .expect("the projector caught up within 60 s")
    .unwrap();
    // Answered by Postgres (a read slowed past its timeout by the other tests' load is answered
    // by the log projection instead, and Postgres is tried again once the probe clears it).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let routed = hybrid
            .reads()
            .read(
                &Query::Head {
                    bot: bot.clone(),
                    chat_id: 1,
                },
                Some(last),
            )
            .await
            .unwrap();
        if routed.source == Source::Postgres {
            break;
        }
        assert!(Instant::now() < deadline, "never answered by Postgres");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (hybrid, stop, reads, bot) = (hybrid.clone(), stop.clone(), reads.clone(), bot.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let chat = n % 30 + 1;
                for query in [
                    Query::Profile {
                        bot: bot.clone(),
                        chat_id: chat,
                    },
                    Query::Messages {
                        bot: bot.clone(),
                        chat_id: chat,
                        limit: 20,
                    },
                ] {
                    match hybrid.reads().read(&query, Some(last)).await {
                        Ok(_) => {
                            reads.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(error) => failures.push(format!("{query:?}: {error}")),
                    }
                }
                n += 1;
            }
            failures
        })
    };
    let reads_before = loop {
        let n = reads.load(Ordering::SeqCst);
        if n > 0 {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let rebuild = replay_command([
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--database-url",
        &db.url(),
        "-q",
    ]);
    let done = run(rebuild).await;
    done.expect_code(0);
    let reads_during = reads.load(Ordering::SeqCst) - reads_before;
    stop.store(true, Ordering::SeqCst);
    let failures = reader.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} reads failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(reads_during > 0, "no read ran during the rebuild");
    hybrid.close().await.unwrap();
}

/// Proves a replay into a fresh database reproduces an erasure: the erased chat's texts are in
/// no row, its erasure mark is, and the tables equal those the in-process projector made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reproduces_an_erasure() {
    use hybridstore::events::{Event, MessageReceived, ProfileCreated};
    let fixture = Fixture::new(100, 4).await;
    let bot = hybridstore::BotId::new("erased_bot").unwrap();
    let secret = format!(
        "secret-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let stream = hybridstore::StreamId::conversation(&bot, 77);
    fixture
        .store
        .append(
            &stream,
            hybridstore::ExpectedVersion::Any,
            vec![
                hybridstore::NewEvent::new(Event::ProfileCreated(ProfileCreated {
                    name: secret.clone(),
                })),
                hybridstore::NewEvent::new(Event::MessageReceived(MessageReceived {
                    telegram_message_id: None,
                    text: secret.clone(),
                    content_type: "text".into(),
                    legacy_ts: None,
                })),
            ],
        )
        .await
        .unwrap();
    fixture
        .store
        .erase(&hybridstore::ids::Subject::Chat {
            bot: bot.clone(),
            chat_id: 77,
        })
        .await
        .unwrap();
    let (projected, replayed) = (
        TestDb::create("erase_projected").await,
        TestDb::create("erase_replayed").await,
    );
    let projected_pool = projected.pool().await;
    fixture.project(&projected_pool).await;
    fixture.rebuild(&replayed, &[]).await;
    let replayed_pool = replayed.pool().await;
    let dump = dump_tables(&replayed_pool).await;
    assert!(
        !format!("{dump:?}").contains(&secret),
        "an erased text is in the replayed tables"
    );
    let marks: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT bot_id, kind, subject_id FROM erasures WHERE bot_id = 'erased_bot'")
            .fetch_all(&replayed_pool)
            .await
            .unwrap();
    assert_eq!(marks, [("erased_bot".to_owned(), "chat".to_owned(), 77)]);
    assert_same_tables(
        &dump_tables(&projected_pool).await,
        &dump,
        "projector vs replay after an erasure",
    );
    fixture.verify_equal(&replayed).await;
}
