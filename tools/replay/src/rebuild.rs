//! Rebuilding the read models: replay the log into fresh tables in a staging schema, chunk by
//! chunk, then swap them in atomically.
//!
//! # Protocol
//! 1. Create the staging schema with a copy of each chosen table (`LIKE ... INCLUDING ALL`, so the
//!    migrations stay the one definition of columns, keys and indexes) and a `replay_state` row
//!    saying what is being rebuilt and how far it is. With `--from`, the live tables' rows are
//!    copied in first, from one snapshot, at their checkpoint.
//! 2. One thread reads and decodes the log, applies each event to an in-memory projection and
//!    encodes message rows for `COPY`; every chunk it hands the chunk's messages and the entries
//!    the chunk touched to the writer.
//! 3. The writer commits each chunk in one transaction: `COPY` of the messages, set-based upserts
//!    of the touched entries, `replay_state.next_position`. Interrupted, a rebuild resumes from
//!    the last committed chunk (the projection is reloaded from the staging tables).
//! 4. At the end, one transaction locks the checkpoints and the live tables, drops them, moves the
//!    staging tables into their place and sets the components' checkpoints to the rebuild's end.
//!    Readers wait for the swap (milliseconds) and then see the new tables; the live projector
//!    sees its checkpoint moved and resumes from the new one.

use std::fmt;
use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use hybridstore::ids::{Component, ComponentSet};
use hybridstore::projection::keys::{self, Keys};
use hybridstore::projection::{event_at, replay_log, Projection};
use hybridstore::sink::postgres::model::{self, component_tables, MessageRow, Rows};
use hybridstore::sink::{check_identity, Cursor};
use hybridstore_wal::Position;
use hybridstore_wal::{LogId, Wal};
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::progress::Progress;
use crate::swap::swap_in;

/// The schema a rebuild builds its tables in.
pub const STAGING_SCHEMA: &str = "hybridstore_replay";

/// Where a rebuild starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// From the first event, into empty tables.
    Start,
    /// From this position, on top of the live tables, which must stand at it (a checkpoint).
    Position(Position),
    /// From the live tables' checkpoint, on top of them.
    Checkpoint,
}

impl std::str::FromStr for From {
    type Err = String;
    fn from_str(text: &str) -> Result<From, String> {
        match text {
            "start" | "0" => Ok(From::Start),
            "checkpoint" => Ok(From::Checkpoint),
            n => n
                .parse::<u64>()
                .map(|n| From::Position(Position(n)))
                .map_err(|_| format!("{n:?} is not a position, `start` or `checkpoint`")),
        }
    }
}

impl fmt::Display for From {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            From::Start => f.write_str("start"),
            From::Position(p) => write!(f, "{}", p.0),
            From::Checkpoint => f.write_str("checkpoint"),
        }
    }
}

/// What to rebuild.
#[derive(Debug, Clone)]
pub struct RebuildConfig {
    /// The store's data directory (the log is in `DIR/wal`).
    pub data_dir: PathBuf,
    /// The components to rebuild.
    pub components: ComponentSet,
    /// Where to start.
    pub from: From,
    /// Where to stop (exclusive); the log's end at start when `None`.
    pub to: Option<Position>,
    /// Events per committed chunk (the most an interrupt loses).
    pub chunk_events: usize,
    /// Discard an interrupted rebuild with other arguments instead of refusing to start.
    pub fresh: bool,
    /// No progress output.
    pub quiet: bool,
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildSummary {
    /// The components rebuilt.
    pub components: ComponentSet,
    /// Position the rebuild started from.
    pub from: Position,
    /// Position it ended at (exclusive): the components' checkpoints now.
    pub to: Position,
    /// Where this run resumed an interrupted rebuild, if it did.
    pub resumed_at: Option<Position>,
    /// Events replayed by this run.
    pub events: u64,
    /// Rows in the swapped-in tables.
    pub rows: u64,
    /// Time taken by this run.
    pub elapsed: Duration,
}

impl RebuildSummary {
    /// Events per second of this run.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for RebuildSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replay: {} events in {:.2}s ({:.0} events/s), {} rows in the rebuilt tables of {}; \
             positions {}..{}",
            self.events,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.rows,
            self.components,
            self.from,
            self.to
        )?;
        if let Some(at) = self.resumed_at {
            write!(f, " (resumed at {at})")?;
        }
        write!(f, "; swapped in, checkpoints at {}", self.to)
    }
}

/// How a rebuild ended.
#[derive(Debug)]
pub enum Outcome {
    /// Rebuilt and swapped in.
    Done(RebuildSummary),
    /// Interrupted; every event below `at` is in the staging tables, and running the same
    /// command again resumes there.
    Interrupted {
        /// Where a resumed run starts.
        at: Position,
    },
}

/// One committed unit of a rebuild.
struct Chunk {
    /// `COPY ... FROM STDIN` text of the chunk's messages.
    copy: Vec<u8>,
    /// The entries the chunk touched, as the projection has them after it.
    entries: Projection,
    keys: Keys,
    /// Position of the chunk's first event.
    start: Position,
    /// Position after the chunk's last event.
    end: Position,
}

/// The rebuild's own row in the staging schema.
#[derive(Debug, Clone, PartialEq)]
struct State {
    /// What is rebuilt from what: the live schema, the log's directory, the schema version. A
    /// resume must match it (another log, or tables of another version, must not be mixed in).
    source: String,
    components: String,
    from_spec: String,
    from_position: i64,
    to_position: i64,
    next_position: i64,
}

fn position_sql(p: Position) -> i64 {
    i64::try_from(p.0).unwrap_or(i64::MAX)
}

fn position_of(n: i64) -> Position {
    Position(u64::try_from(n).unwrap_or(0))
}

/// Rebuilds the tables of `config.components`; stops early (keeping what was committed) when
/// `interrupt` completes.
///
/// # Errors
/// When the log cannot be read, the database refuses, or the arguments do not fit an
/// interrupted rebuild left in the staging schema.
pub async fn rebuild(
    pool: &PgPool,
    config: &RebuildConfig,
    interrupt: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    ensure!(!config.components.is_empty(), "no component to rebuild");
    ensure!(config.chunk_events > 0, "--chunk-events must be at least 1");
    let started = Instant::now();
    hybridstore::sink::postgres::migrate(pool).await?;
    let log = hybridstore::sink::postgres::verify::open_log(&config.data_dir)?;
    let log_id = log.log_id().with_context(|| {
        format!(
            "the log in {} has no id yet (it was written before logs had ids): open it once with \
             the store (any hybridstore command on this data directory, or the bot's process), \
             then run the replay again",
            config.data_dir.display()
        )
    })?;
    // Strict: a sealed event whose key is not at hand fails the replay (blanks are never
    // projected for texts that could not be opened); erased ones replay as erased.
    let keys = std::sync::Arc::new(
        hybridstore::crypto::Keyring::for_tool(&config.data_dir, Some(log_id), true)
            .with_context(|| format!("the key store of {}", config.data_dir.display()))?,
    );
    let live = live_schema(pool).await?;
    let source = describe_source(pool, &live, log_id, config).await?;
    // A connection of its own (not pooled): the rebuild's advisory lock lives and dies with it.
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("connecting")?;
    lock_out_other_rebuilds(&mut conn).await?;
    let state = resume_or_create(&mut conn, &log, &keys, log_id, &live, &source, config).await?;
    let from = position_of(state.from_position);
    let to = position_of(state.to_position);
    let next = position_of(state.next_position);
    let log_end = log.durable_end();
    ensure!(
        to <= log_end,
        "the interrupted replay ends at {to}, beyond the end of the log ({log_end})"
    );
    // The key store again, now that the replay's end is fixed: a subject's key made since the
    // first read is in it (every event below `to` has its key in this read).
    let keys = std::sync::Arc::new(
        hybridstore::crypto::Keyring::for_tool(&config.data_dir, Some(log_id), true)
            .with_context(|| format!("the key store of {}", config.data_dir.display()))?,
    );
    let resumed_at = (next > from).then_some(next);
    if let Some(at) = resumed_at {
        tracing::info!(%at, "resuming an interrupted replay");
    }
    // What the swap records as the last event applied: the sinks check it against the log.
    let cursor = Cursor {
        next: to,
        last_event: match to.0.checked_sub(1) {
            Some(last) => event_at(&log, Position(last), &keys)?.map(|e| e.event_id),
            None => None,
        },
    };
    // The projection to continue from: what the staging tables hold (empty for a fresh start).
    let mut projection = Projection::with_components(0, config.components);
    if next > Position(0) {
        let mut tx = conn.begin_staging().await?;
        model::load(&mut tx, Rows::All, &mut projection).await?;
        tx.commit().await?;
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "staging ready"
    );
    let span = Span { from, next, to };
    let next = match replay_chunks(
        &mut conn,
        log,
        keys.clone(),
        projection,
        span,
        config,
        interrupt,
    )
    .await?
    {
        Replayed::Done(next) => next,
        Replayed::Interrupted(at) => return Ok(Outcome::Interrupted { at }),
    };
    ensure!(
        next == to,
        "the log ended at {next} before the replay's end {to}"
    );
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replayed; swapping in"
    );
    let rows = swap_in(&mut conn, &live, config.components, log_id, cursor).await?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "swapped in"
    );
    Ok(Outcome::Done(RebuildSummary {
        components: config.components,
        from,
        to,
        resumed_at,
        events: to.0 - span.next.0,
        rows,
        elapsed: started.elapsed(),
    }))
}

/// The schema of the live read models (the connection's current schema).
async fn live_schema(pool: &PgPool) -> anyhow::Result<String> {
    let live: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(pool)
        .await
        .context("reading the current schema")?;
    ensure!(
        !live.is_empty()
            && live
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "the read models' schema {live:?} is not a plain lower-case identifier"
    );
    Ok(live)
}

/// What is rebuilt from what: the live schema, the log (its id and directory), the schema
/// version. A resume must match it: another log, or tables of another version, must not be
/// mixed in.
async fn describe_source(
    pool: &PgPool,
    live: &str,
    log_id: LogId,
    config: &RebuildConfig,
) -> anyhow::Result<String> {
    let version: i64 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .context("reading the schema version")?;
    let log_dir = config
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| config.data_dir.clone());
    Ok(format!(
        "schema {live}, log {log_id} in {}, migration {version}",
        log_dir.display()
    ))
}

/// Step 1: the interrupted rebuild to resume (with the same arguments and source), or a new
/// staging schema.
async fn resume_or_create(
    conn: &mut PgConnection,
    log: &Wal,
    keys: &hybridstore::crypto::Keyring,
    log_id: LogId,
    live: &str,
    source: &str,
    config: &RebuildConfig,
) -> anyhow::Result<State> {
    match read_state(conn).await? {
        Some(state) if !config.fresh => {
            if state.source != source {
                bail!(
                    "an interrupted replay of another source ({}) is in schema \
                     {STAGING_SCHEMA}; this one is {source}: finish it from there, or add \
                     --fresh to discard it",
                    state.source
                );
            }
            let same = state.components == config.components.to_string()
                && state.from_spec == config.from.to_string()
                && config
                    .to
                    .is_none_or(|to| position_sql(to) == state.to_position);
            if !same {
                bail!(
                    "an interrupted replay of {} (from {}, to {}) is in schema {STAGING_SCHEMA}: \
                     run it again with the same arguments to resume it, or add --fresh to \
                     discard it",
                    state.components,
                    state.from_spec,
                    state.to_position
                );
            }
            Ok(state)
        }
        _ => {
            let log_end = log.durable_end();
            let to = match config.to {
                Some(to) if to > log_end => {
                    bail!("--to {to} is beyond the end of the log ({log_end})")
                }
                Some(to) => to,
                None => log_end,
            };
            create_staging(conn, log, keys, log_id, live, source, config, to).await
        }
    }
}

/// Where a replay stands: it started at `from`, goes on at `next`, ends at `to`.
#[derive(Debug, Clone, Copy)]
struct Span {
    from: Position,
    next: Position,
    to: Position,
}

/// How [`replay_chunks`] ended: where every committed chunk reaches.
enum Replayed {
    /// The reader ran out of events (at `to`, or earlier if the log ended).
    Done(Position),
    /// `interrupt` came first.
    Interrupted(Position),
}

/// Steps 2 and 3: the reader thread produces chunks, this task commits them.
async fn replay_chunks(
    conn: &mut PgConnection,
    log: Wal,
    keyring: std::sync::Arc<hybridstore::crypto::Keyring>,
    projection: Projection,
    span: Span,
    config: &RebuildConfig,
    interrupt: impl Future<Output = ()>,
) -> anyhow::Result<Replayed> {
    let Span { from, mut next, to } = span;
    let mut progress = Progress::new(to.0.saturating_sub(from.0), config.quiet);
    progress.set(next.0.saturating_sub(from.0));
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<anyhow::Result<Chunk>>(2);
    let components = config.components;
    let chunk_events = config.chunk_events;
    let start = next;
    let producer = std::thread::Builder::new()
        .name("hybridstore-replay-read".into())
        .spawn(move || {
            produce(
                &log,
                &keyring,
                projection,
                start..to,
                components,
                chunk_events,
                &sender,
            )
        })
        .context("starting the reader thread")?;
    let write_all = async {
        // Where the time goes: writing (Postgres) or waiting for the reader (decoding).
        let (mut writing, mut waiting) = (Duration::ZERO, Duration::ZERO);
        loop {
            let asked = Instant::now();
            let Some(chunk) = receiver.recv().await else {
                break;
            };
            let chunk = chunk?;
            let got = Instant::now();
            waiting += got - asked;
            write_chunk(conn, &chunk).await?;
            writing += got.elapsed();
            next = chunk.end;
            progress.set(next.0.saturating_sub(from.0));
        }
        tracing::info!(
            writing_ms = writing.as_millis() as u64,
            waiting_for_reader_ms = waiting.as_millis() as u64,
            "replayed"
        );
        anyhow::Ok(())
    };
    let interrupted = tokio::select! {
        written = write_all => { written?; false }
        () = interrupt => true,
    };
    drop(receiver);
    let _ = producer.join();
    progress.finish();
    Ok(if interrupted {
        Replayed::Interrupted(next)
    } else {
        Replayed::Done(next)
    })
}

/// A transaction whose unqualified table names are the staging tables.
trait BeginStaging {
    async fn begin_staging(&mut self) -> anyhow::Result<sqlx::Transaction<'_, sqlx::Postgres>>;
}

impl BeginStaging for PgConnection {
    async fn begin_staging(&mut self) -> anyhow::Result<sqlx::Transaction<'_, sqlx::Postgres>> {
        use sqlx::Connection as _;
        let mut tx = self.begin().await.context("BEGIN")?;
        // Asynchronous commit: a server crash may lose the last chunks, but never a chunk's rows
        // without its `replay_state` (they commit together), so the rebuild resumes correctly.
        sqlx::raw_sql(&format!(
            "SET LOCAL search_path TO {STAGING_SCHEMA}; SET LOCAL synchronous_commit TO off"
        ))
        .execute(&mut *tx)
        .await
        .context("SET search_path")?;
        Ok(tx)
    }
}

/// The advisory lock key of rebuilds ("hyreplay"), known to the store's supervisor too.
const REBUILD_LOCK_KEY: i64 = hybridstore::sink::postgres::REBUILD_LOCK_KEY;

/// How long a rebuild waits for another one on the same database (or for a killed one's server
/// session to end) before giving up.
const REBUILD_LOCK_WAIT: &str = "10s";

/// One rebuild at a time per database: two would replay the same chunks into the same staging
/// tables. A killed rebuild's lock goes with its server session, after its last commit.
async fn lock_out_other_rebuilds(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query(&format!("SET lock_timeout = '{REBUILD_LOCK_WAIT}'"))
        .execute(&mut *conn)
        .await?;
    let locked = sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(REBUILD_LOCK_KEY)
        .execute(&mut *conn)
        .await;
    sqlx::query("SET lock_timeout = 0")
        .execute(&mut *conn)
        .await?;
    locked.map_err(|e| {
        anyhow::anyhow!(
            "another replay is running on this database (waited {REBUILD_LOCK_WAIT}): {}",
            hybridstore::sink::postgres::describe(&e)
        )
    })?;
    Ok(())
}

async fn read_state(conn: &mut PgConnection) -> anyhow::Result<Option<State>> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND \
         table_name = 'replay_state')",
    )
    .bind(STAGING_SCHEMA)
    .fetch_one(&mut *conn)
    .await
    .context("looking for an interrupted replay")?;
    if !exists {
        return Ok(None);
    }
    let row: Option<(String, String, String, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT source, components, from_spec, from_position, to_position, next_position FROM \
         {STAGING_SCHEMA}.replay_state"
    ))
    .fetch_optional(&mut *conn)
    .await
    .context("reading the interrupted replay's state")?;
    Ok(row.map(
        |(source, components, from_spec, from_position, to_position, next_position)| State {
            source,
            components,
            from_spec,
            from_position,
            to_position,
            next_position,
        },
    ))
}

/// Step 1: the staging schema, its tables (with the live rows when starting from a checkpoint)
/// and the state row, in one transaction.
#[allow(clippy::too_many_arguments)]
async fn create_staging(
    conn: &mut PgConnection,
    log: &Wal,
    keys: &hybridstore::crypto::Keyring,
    log_id: LogId,
    live: &str,
    source: &str,
    config: &RebuildConfig,
    to: Position,
) -> anyhow::Result<State> {
    let mut tx = conn.begin().await.context("BEGIN")?;
    // One snapshot for the checkpoints and the rows copied under them.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {STAGING_SCHEMA} CASCADE"))
        .execute(&mut *tx)
        .await
        .context("dropping an old staging schema")?;
    sqlx::query(&format!("CREATE SCHEMA {STAGING_SCHEMA}"))
        .execute(&mut *tx)
        .await
        .context("creating the staging schema")?;
    let from_position = match config.from {
        From::Start => Position(0),
        From::Position(_) | From::Checkpoint => {
            // Continuing the live tables: they must follow this log, up to an event it holds.
            let cursors = model::cursors(&mut tx, false).await?;
            let log_end = log.durable_end();
            check_identity("postgres", &cursors, log_id, log_end, |at| {
                event_at(log, at, keys)?
                    .map(|e| e.event_id)
                    .ok_or_else(|| anyhow::anyhow!("no event at position {at}"))
            })??;
            let checkpoints = model::checkpoints(&mut tx, false).await?;
            let at: Vec<(Component, Position)> = config
                .components
                .iter()
                .map(|c| (c, checkpoints.get(&c).copied().unwrap_or(Position(0))))
                .collect();
            let first = at[0].1;
            if at.iter().any(|(_, p)| *p != first) {
                let listed: Vec<String> = at.iter().map(|(c, p)| format!("{c} at {p}")).collect();
                bail!(
                    "the components stand at different checkpoints ({}); replay them separately",
                    listed.join(", ")
                );
            }
            if let From::Position(wanted) = config.from {
                if wanted != first {
                    bail!(
                        "--from {wanted} is not the tables' checkpoint ({first}): a replay can \
                         continue the tables only from where they stand (use --from checkpoint, \
                         or replay from the start)"
                    );
                }
            }
            first
        }
    };
    ensure!(
        from_position <= to,
        "the start ({from_position}) is beyond the end ({to})"
    );
    for component in config.components.iter() {
        for table in component_tables(component) {
            // `messages` only ever grows by COPY during a rebuild: it gets its indexes once, at
            // the end (a bulk load's usual order), the other tables keep theirs for upserts.
            let indexes = if *table == DEFERRED_INDEX_TABLE {
                "EXCLUDING INDEXES"
            } else {
                ""
            };
            sqlx::query(&format!(
                "CREATE TABLE {STAGING_SCHEMA}.{table} (LIKE {live}.{table} INCLUDING ALL \
                 {indexes})"
            ))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("creating the staging table {table}"))?;
            if from_position > Position(0) {
                sqlx::query(&format!(
                    "INSERT INTO {STAGING_SCHEMA}.{table} SELECT * FROM {live}.{table}"
                ))
                .execute(&mut *tx)
                .await
                .with_context(|| format!("copying the live {table}"))?;
            }
        }
    }
    let state = State {
        source: source.to_owned(),
        components: config.components.to_string(),
        from_spec: config.from.to_string(),
        from_position: position_sql(from_position),
        to_position: position_sql(to),
        next_position: position_sql(from_position),
    };
    sqlx::query(&format!(
        "CREATE TABLE {STAGING_SCHEMA}.replay_state (source text NOT NULL, components text NOT \
         NULL, from_spec text NOT NULL, from_position bigint NOT NULL, to_position bigint NOT NULL, next_position bigint \
         NOT NULL, started_at timestamptz NOT NULL DEFAULT now())"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {STAGING_SCHEMA}.replay_state (source, components, from_spec, \
         from_position, to_position, next_position) VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(&state.source)
    .bind(&state.components)
    .bind(&state.from_spec)
    .bind(state.from_position)
    .bind(state.to_position)
    .bind(state.next_position)
    .execute(&mut *tx)
    .await?;
    tx.commit().await.context("COMMIT")?;
    Ok(state)
}

/// The table whose indexes a rebuild builds after loading it.
pub(crate) const DEFERRED_INDEX_TABLE: &str = "messages";

/// The most time between two chunks, so progress and resumption stay fine-grained on slow logs.
const CHUNK_INTERVAL: Duration = Duration::from_secs(1);

/// Step 2, on its own thread: read, decode, apply, encode; hand over a chunk at a time.
fn produce(
    log: &hybridstore_wal::Wal,
    keyring: &hybridstore::crypto::Keyring,
    mut projection: Projection,
    std::ops::Range {
        start: from,
        end: to,
    }: std::ops::Range<Position>,
    components: ComponentSet,
    chunk_events: usize,
    sender: &tokio::sync::mpsc::Sender<anyhow::Result<Chunk>>,
) {
    let messages = components.contains(Component::Conversations);
    let mut keys = Keys::default();
    let mut copy = Vec::new();
    let mut count = 0usize;
    let mut chunk_started = Instant::now();
    let mut start = from;
    let replayed = replay_log(
        log,
        from,
        Some(to),
        keyring,
        |_| {},
        |event| {
            keys.note(&event, components);
            if messages {
                if let Some(row) = MessageRow::from_event(&event) {
                    encode_copy_row(&mut copy, &row);
                }
            }
            let end = event.position.advance(1);
            projection.apply_owned(event);
            count += 1;
            if count >= chunk_events || chunk_started.elapsed() >= CHUNK_INTERVAL || end == to {
                let chunk = Chunk {
                    copy: std::mem::take(&mut copy),
                    entries: keys::subset(&projection, &keys),
                    keys: std::mem::take(&mut keys),
                    start,
                    end,
                };
                start = end;
                if sender.blocking_send(Ok(chunk)).is_err() {
                    return ControlFlow::Break(());
                }
                count = 0;
                chunk_started = Instant::now();
            }
            ControlFlow::Continue(())
        },
    );
    if let Err(error) = replayed {
        let _ = sender.blocking_send(Err(anyhow::Error::new(error).context("reading the log")));
    }
}

/// Appends one row in `COPY ... FROM STDIN` text format.
fn encode_copy_row(out: &mut Vec<u8>, row: &MessageRow) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "{}\t{}\t{}\t{}\t",
        row.bot_id, row.chat_id, row.position, row.direction
    );
    escape_copy(out, &row.text);
    out.push(b'\t');
    let _ = write!(out, "{}", row.at);
    out.push(b'\t');
    match &row.legacy_ts {
        Some(value) => escape_copy(out, &value.to_string()),
        None => out.extend_from_slice(b"\\N"),
    }
    out.push(b'\n');
}

/// Escapes a value for COPY's text format (backslash, tab, newline, carriage return).
fn escape_copy(out: &mut Vec<u8>, text: &str) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

/// Step 3: one chunk, one transaction.
async fn write_chunk(conn: &mut PgConnection, chunk: &Chunk) -> anyhow::Result<()> {
    let mut tx = conn.begin_staging().await?;
    if !chunk.copy.is_empty() {
        let mut copy = tx
            .copy_in_raw(
                "COPY messages (bot_id, chat_id, position, direction, text, at, legacy_ts) FROM \
                 STDIN",
            )
            .await
            .context("COPY messages")?;
        copy.send(chunk.copy.as_slice())
            .await
            .context("COPY messages")?;
        copy.finish().await.context("COPY messages")?;
    }
    let copied = Instant::now();
    model::write(&mut tx, &chunk.entries, &chunk.keys, None).await?;
    tracing::debug!(
        upserts_ms = copied.elapsed().as_millis() as u64,
        "chunk written"
    );
    let moved = sqlx::query("UPDATE replay_state SET next_position = $1 WHERE next_position = $2")
        .bind(position_sql(chunk.end))
        .bind(position_sql(chunk.start))
        .execute(&mut *tx)
        .await
        .context("recording the replay's progress")?;
    ensure!(
        moved.rows_affected() == 1,
        "the staging tables are not at position {} any more: another replay wrote them",
        chunk.start
    );
    tx.commit().await.context("COMMIT")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves COPY text escaping keeps backslashes, tabs and line breaks inside one field.
    #[test]
    fn copy_escaping() {
        let mut out = Vec::new();
        escape_copy(&mut out, "a\\b\tc\nd\re");
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re");
    }

    /// Proves `--from` parses positions and the two keywords, and refuses the rest.
    #[test]
    fn from_argument() {
        assert_eq!("start".parse::<From>(), Ok(From::Start));
        assert_eq!("checkpoint".parse::<From>(), Ok(From::Checkpoint));
        assert_eq!("42".parse::<From>(), Ok(From::Position(Position(42))));
        assert!("-1".parse::<From>().is_err());
    }
}
