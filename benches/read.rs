//! Benchmarks of the read path: the bot's typed reads through the real [`Router`] of a
//! [`Hybrid`] (log projection, tier 1, tier 2, Postgres), against the real PostgreSQL and Redis
//! of the test suite, each figure read as a ratio against a baseline measured in the same run
//! (style guide, "Tests, fuzzing, benches").
//!
//! # The data
//! Two bots with the same history ([`append_chat_history_of`]: per chat a user, a profile,
//! `exchanges` message pairs, an analysis every 10 exchanges): `bench`, whose `profiles` and
//! `conversations` are walked through the migration states, and `bench_twin`, left `disabled`,
//! whose reads are the log projection's baseline in every phase. The phases reopen the same
//! data directory and database with three cache set-ups: both tiers; tier 1 off
//! (`memory_bytes: 0`, so reads hit Redis); no cache (`HybridConfig.cache = None`, so every
//! `database-only` read goes to Postgres). Every measured read's `routed.source` (and state) is
//! checked, and the bench panics if a read came from another source than the one measured.
//!
//! # What is measured
//! | criterion id | what |
//! |---|---|
//! | `shadow/disabled/profile` | **baseline**: `bench_twin`'s profiles (`disabled`, the log projection), chats in a fixed random order |
//! | `shadow/dual_write_{1pct,100pct}/profile` | `bench`'s profiles in `dual-write` through a router with `shadow_rate` 0.01 / 1.0 |
//! | `read_by_source/log/{profile,messages_20}` | **baseline**: `bench_twin` (`disabled`) |
//! | `read_by_source/memory/…` | `bench` in `database-only`, both tiers, every key read once before (tier-1 hits) |
//! | `read_by_source/redis/…` | `bench` in `database-only`, tier 1 off (tier-2 hits) |
//! | `read_by_source/postgres/…` | `bench` in `database-only`, no cache (Postgres every read) |
//! | report (stdout; only with the filter `report`) | the block below |
//!
//! The report, one block:
//! 1. Read latency (p50/p99/p999) by source for the profile and the last 20 messages, each in
//!    alternating rounds with its baselines: the log projection (`bench_twin`) for every source;
//!    for the Redis hit a raw `GET` of the very entry (its bytes read once through a connection
//!    of the bench's own, then `GET` repeatedly; target: Redis hit p99 ≤ 1.5× raw `GET` p99); for
//!    the Postgres miss a raw one-statement `SELECT` of the same rows (target: ≤ 1 ms p99).
//!    Diagnostics beside them, to say where the time goes: a raw `GET` plus decoding the entry
//!    as the tier does; one Postgres round trip (`SELECT 1`), a pool acquire (sqlx pings the
//!    connection first), and the read's five statements sent raw.
//! 2. A bot-like load on `bench` in `database-only` with both tiers: chats drawn from a Zipf
//!    distribution (exponent 1.0, fixed seed), 10 reads (profile, head or the last 20 messages)
//!    per write (a `MessageReceived` appended with `Store::append`, durable); a pass from a cold
//!    cache, then the measured pass: the share of reads each source answered (and the cache's own
//!    counters) and the read p99.
//! 3. The cost of shadow reads: `bench`'s reads in `dual-write` through routers with
//!    `shadow_rate` 0.01 and 1.0 (and 0: the dual-write path's own bookkeeping), as a
//!    throughput ratio of `bench_twin`'s (`disabled`), rounds alternating; the shadow outcomes
//!    counted.
//!
//! # Reading the ratios
//! Only compare numbers from one run. Everything shares the 2 cores: the read loop (one task),
//! the runtime's workers (the projector, the cache invalidation, the shadow reads), Postgres and
//! Redis. `Instant::now()` is inside every per-op figure.
//!
//! # Running
//! ```text
//! cargo bench --bench read -- report                 # only the report (~1–2 minutes)
//! cargo bench --bench read                           # the criterion benches (no report)
//! cargo bench --bench read -- read_by_source/redis   # one criterion bench (criterion's filter)
//! cargo bench --bench read -- --test                 # smoke: every bench once, tiny sizes
//! HYBRIDSTORE_BENCH_QUICK=1 cargo bench --bench read -- report   # the report on tiny sizes
//! ```
//! Postgres: `HYBRIDSTORE_TEST_DATABASE_URL`, `DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test` (a database of the bench's own is created and
//! dropped); Redis: `REDIS_URL`, else `redis://127.0.0.1:6379` (a key namespace of its own,
//! deleted at the end). `tools/services.sh` starts both.
//!
//! # Environment
//! - `HYBRIDSTORE_BENCH_DIR`: where the data directory goes (default `<repo>/target/bench-data`).
//! - `HYBRIDSTORE_BENCH_QUICK=1`: tiny sizes, a smoke run; criterion's test mode implies it.
//! - `HYBRIDSTORE_BENCH_READ_CHATS` (default 2000, quick 40): chats per bot.
//! - `HYBRIDSTORE_BENCH_READ_OPS` (default 20000, quick 200): reads per kind and source of the
//!   in-memory sources in the report; Redis gets half as many, Postgres a fifth.
//! - `HYBRIDSTORE_BENCH_LOAD_READS` (default 20000, quick 400): reads per pass of the bot-like
//!   load.

mod common;

/// The same allocator as the `hybridstore` binary, so the figures are the shipped ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{env_number, nanos, LatencyRun, RunMode, Timing};
use criterion::{Criterion, SamplingMode};
use hybridstore::events::{Event, MessageReceived};
use hybridstore::hybrid::{Hybrid, HybridConfig, SetOptions};
use hybridstore::read::cache::{
    config::MEMORY_BYTES_DEFAULT, CacheConfig, CacheStats, CachedValue, Tier, SCHEMA_VERSION,
};
use hybridstore::read::router::PgHealth;
use hybridstore::read::shadow::Counts as ShadowCounts;
use hybridstore::read::{
    Answer, LogSource, PgSource, Query, ReadSource as _, Routed, Router, RoutingConfig, Source,
};
use hybridstore::testing::{append_chat_history_of, redis_url, RedisNamespace, TestDb};
use hybridstore::{
    BotId, Component, ExpectedVersion, MigrationState, NewEvent, StoreConfig, StreamId,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use tokio::runtime::Runtime;

// ---------------------------------------------------------------------------------------------
// Sizes, seeds, timings
// ---------------------------------------------------------------------------------------------

/// The bot walked through the migration states.
const BOT: &str = "bench";
/// The bot with the same history, left `disabled`: the log projection's baseline.
const TWIN: &str = "bench_twin";
/// The components the measured reads answer from (profile; head and messages).
const COMPONENTS: [Component; 2] = [Component::Profiles, Component::Conversations];
/// Messages the hot path reads.
const HISTORY_LEN: usize = 20;
/// Exchanges (a message in, a reply out) per chat: 50 messages, all in the log projection's
/// in-memory tail (50 by default), and as many as a cached conversation holds.
const EXCHANGES: u64 = 25;
/// Exchanges per chat in quick mode (still at least [`HISTORY_LEN`] messages).
const EXCHANGES_QUICK: u64 = 12;
const CHATS_DEFAULT: i64 = 2000;
const CHATS_QUICK: i64 = 40;
const READ_OPS_DEFAULT: usize = 20_000;
const READ_OPS_QUICK: usize = 200;
const LOAD_READS_DEFAULT: usize = 20_000;
const LOAD_READS_QUICK: usize = 400;
/// Reads per kind and router in each round of the shadow comparison.
const SHADOW_OPS_DEFAULT: usize = 100_000;
const SHADOW_OPS_QUICK: usize = 500;
/// Rounds of every comparison (each: the source, then its baselines), summed.
const ROUNDS: usize = 3;
/// The Zipf exponent of the bot-like load's chats.
const ZIPF_EXPONENT: f64 = 1.0;
/// Reads per write in the bot-like load.
const READS_PER_WRITE: usize = 10;
/// The longest the projector may take to catch up before a measurement.
const CATCH_UP_MAX: Duration = Duration::from_secs(180);

const SEED_ORDER: u64 = 0x6879_6273_7265_6101;
const SEED_LOAD: u64 = 0x6879_6273_7265_6102;

/// `read_by_source` and `shadow`.
const TIMING_READS: Timing = Timing {
    warm_up: Duration::from_millis(500),
    measurement: Duration::from_secs(2),
    sampling: SamplingMode::Flat,
};

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// What this run does, from the command line (as criterion reads it) and the environment.
#[derive(Debug)]
struct Settings {
    mode: RunMode,
    chats: i64,
    exchanges: u64,
    read_ops: usize,
    load_reads: usize,
    shadow_ops: usize,
}

impl Settings {
    /// Reads the command line and the environment (explicit values win over quick mode).
    ///
    /// # Panics
    /// On a variable that is set to something unusable.
    fn from_args_and_env() -> Settings {
        let mode = RunMode::from_args_and_env("report");
        let quick = mode.quick;

        let chats = env_number("HYBRIDSTORE_BENCH_READ_CHATS").unwrap_or(if quick {
            CHATS_QUICK
        } else {
            CHATS_DEFAULT
        });
        let read_ops = env_number("HYBRIDSTORE_BENCH_READ_OPS").unwrap_or(if quick {
            READ_OPS_QUICK
        } else {
            READ_OPS_DEFAULT
        });
        let load_reads = env_number("HYBRIDSTORE_BENCH_LOAD_READS").unwrap_or(if quick {
            LOAD_READS_QUICK
        } else {
            LOAD_READS_DEFAULT
        });
        assert!(
            chats >= 10,
            "HYBRIDSTORE_BENCH_READ_CHATS must be at least 10"
        );
        assert!(
            read_ops >= 10,
            "HYBRIDSTORE_BENCH_READ_OPS must be at least 10"
        );
        assert!(
            load_reads >= 10,
            "HYBRIDSTORE_BENCH_LOAD_READS must be at least 10"
        );
        Settings {
            mode,
            chats,
            exchanges: if quick { EXCHANGES_QUICK } else { EXCHANGES },
            read_ops,
            load_reads,
            shadow_ops: if quick {
                SHADOW_OPS_QUICK
            } else {
                SHADOW_OPS_DEFAULT
            },
        }
    }

    /// Whether the report was asked for: criterion's filter is `report` (the criterion benches'
    /// ids do not contain it, so they are all skipped then). Never in a plain run or in
    /// `cargo test --benches`: the report measures for a minute or two.
    fn report_asked(&self) -> bool {
        self.mode.report && self.mode.filter.as_deref() == Some("report")
    }
}

// ---------------------------------------------------------------------------------------------
// The reads
// ---------------------------------------------------------------------------------------------

/// A kind of hot-path read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// `Query::Profile`.
    Profile,
    /// `Query::Head`.
    Head,
    /// `Query::Messages` with a limit of [`HISTORY_LEN`].
    Messages,
}

impl ReadKind {
    /// The kinds item 1 and the criterion benches measure.
    const MEASURED: [ReadKind; 2] = [ReadKind::Profile, ReadKind::Messages];

    /// Its name in ids and reports.
    fn id(self) -> &'static str {
        match self {
            ReadKind::Profile => "profile",
            ReadKind::Head => "head",
            ReadKind::Messages => "messages_20",
        }
    }

    /// The query of this kind for `chat_id` of `bot`.
    fn query(self, bot: &BotId, chat_id: i64) -> Query {
        let bot = bot.clone();
        match self {
            ReadKind::Profile => Query::Profile { bot, chat_id },
            ReadKind::Head => Query::Head { bot, chat_id },
            ReadKind::Messages => Query::Messages {
                bot,
                chat_id,
                limit: HISTORY_LEN,
            },
        }
    }

    /// Queries of this kind for each of `chats` of `bot`, in that order.
    fn queries(self, bot: &BotId, chats: &[i64]) -> Vec<Query> {
        chats.iter().map(|chat| self.query(bot, *chat)).collect()
    }
}

/// `bench`.
fn bot() -> BotId {
    BotId::new(BOT).expect("a valid bot id")
}

/// `bench_twin`.
fn twin() -> BotId {
    BotId::new(TWIN).expect("a valid bot id")
}

/// Panics unless `routed` came from `source` with the component in `state`: a bench that
/// measures another path than the one it names is worthless.
fn check_routed(routed: &Routed, source: Source, state: MigrationState, query: &Query) {
    assert!(
        routed.source == source && routed.state == state,
        "{query:?} was answered by {} in {}, but the bench measures {} in {}",
        routed.source.as_str(),
        routed.state,
        source.as_str(),
        state,
    );
}

/// Reads `query` through `router` and checks where the answer came from ([`check_routed`]).
///
/// # Panics
/// When the read fails or came from elsewhere.
async fn routed_read(
    router: &Router,
    query: &Query,
    source: Source,
    state: MigrationState,
) -> Routed {
    let routed = router
        .read(query, None)
        .await
        .unwrap_or_else(|e| panic!("{query:?} failed: {e}"));
    check_routed(&routed, source, state, query);
    routed
}

/// The log projection's answer to `query` (what every source must answer while nothing is
/// appended).
async fn log_answer(log: &LogSource, query: &Query) -> Answer {
    match query {
        Query::Profile { bot, chat_id } => Answer::Profile(
            log.profile(bot, *chat_id, None)
                .await
                .unwrap_or_else(|e| panic!("the log projection failed {query:?}: {e}"))
                .value,
        ),
        Query::Head { bot, chat_id } => Answer::Head(
            log.head(bot, *chat_id, None)
                .await
                .unwrap_or_else(|e| panic!("the log projection failed {query:?}: {e}"))
                .value,
        ),
        Query::Messages {
            bot,
            chat_id,
            limit,
        } => Answer::Messages(
            log.messages(bot, *chat_id, *limit, None)
                .await
                .unwrap_or_else(|e| panic!("the log projection failed {query:?}: {e}"))
                .value,
        ),
        other => panic!("the bench does not read {other:?}"),
    }
}

/// Reads each of `queries` once through `router` (which fills the cache on a miss) and checks
/// the answer against the log projection's; then reads it again and checks that the second
/// read came from `then` in `state`. Not timed.
///
/// # Panics
/// On a failed read, an answer that differs from the log projection's, or a second read from
/// another source.
async fn warm_and_check(
    router: &Router,
    log: &LogSource,
    queries: &[Query],
    then: Source,
    state: MigrationState,
) {
    for query in queries {
        let first = router
            .read(query, None)
            .await
            .unwrap_or_else(|e| panic!("{query:?} failed: {e}"));
        let expected = log_answer(log, query).await;
        assert!(
            first.answer == expected,
            "{query:?} from {}: {:?}\n differs from the log projection's {expected:?}",
            first.source.as_str(),
            first.answer
        );
        let second = routed_read(router, query, then, state).await;
        assert!(
            second.answer == expected,
            "{query:?} from {}: {:?}\n differs from the log projection's {expected:?}",
            second.source.as_str(),
            second.answer
        );
    }
}

/// Per-op latencies collected over rounds, and the wall time they took in all.
#[derive(Debug, Default)]
struct Samples {
    latencies_ns: Vec<u64>,
    wall: Duration,
}

impl Samples {
    /// Times `ops` calls of `op` (given the op's index), one after the other, adding each
    /// call's latency and the run's wall time.
    async fn run<F: AsyncFnMut(usize)>(&mut self, ops: usize, mut op: F) {
        self.latencies_ns.reserve(ops);
        let started = Instant::now();
        for i in 0..ops {
            let t = Instant::now();
            op(i).await;
            self.latencies_ns.push(nanos(t.elapsed()));
        }
        self.wall += started.elapsed();
    }

    /// The samples as a [`LatencyRun`] named `label`.
    fn into_run(self, label: impl Into<String>) -> LatencyRun {
        LatencyRun::new(label, self.latencies_ns, self.wall)
    }
}

/// Times `ops` routed reads of `queries` (cycled), each checked to come from `source` in
/// `state`, adding them to `samples`.
async fn timed_reads(
    samples: &mut Samples,
    router: &Router,
    queries: &[Query],
    ops: usize,
    source: Source,
    state: MigrationState,
) {
    samples
        .run(ops, async |i| {
            let query = &queries[i % queries.len()];
            let routed = router
                .read(query, None)
                .await
                .unwrap_or_else(|e| panic!("{query:?} failed: {e}"));
            check_routed(&routed, source, state, query);
            std::hint::black_box(routed);
        })
        .await;
}

/// "met" or "**missed**".
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

// ---------------------------------------------------------------------------------------------
// The fixture: data, services, the open handle
// ---------------------------------------------------------------------------------------------

/// Which cache a phase opens the handle with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Tier 1 (64 MiB: every key of the bench fits) and tier 2.
    BothTiers,
    /// Tier 1 off (`memory_bytes: 0`): every cached read is a Redis read.
    RedisOnly,
    /// No cache: every `database-only` read goes to Postgres.
    NoCache,
}

impl Setup {
    /// The cache configuration on `namespace`.
    fn cache(self, namespace: &RedisNamespace) -> Option<CacheConfig> {
        let url = redis_url();
        match self {
            Setup::BothTiers => Some(CacheConfig {
                memory_bytes: MEMORY_BYTES_DEFAULT,
                ..namespace.config(Some(&url), true)
            }),
            Setup::RedisOnly => Some(namespace.config(Some(&url), false)),
            Setup::NoCache => None,
        }
    }
}

/// The data directory, the database, the Redis namespace, and the handle open on them now.
///
/// Only one handle can own the data directory, so a phase that needs another cache set-up
/// closes the open one and reopens the same data ([`Fixture::hybrid`]); the migration states
/// are in the log and survive it.
struct Fixture {
    /// Every task of the handles runs here; it outlives them (see `Drop`).
    runtime: Runtime,
    /// The handle and its set-up.
    open: Option<(Setup, Hybrid)>,
    /// Where `bench`'s components stand.
    state: MigrationState,
    /// Chats of each bot, in a fixed random order.
    chats: Vec<i64>,
    /// Events in the log after the fill.
    events: u64,
    db: TestDb,
    redis: RedisNamespace,
    data_dir: PathBuf,
    _dir: TempDir,
}

impl Fixture {
    /// Creates the database and the namespace, opens the store with both tiers and fills both
    /// bots' histories (components `disabled`).
    ///
    /// # Panics
    /// When Postgres or Redis cannot be reached, or a step of the set-up fails.
    fn new(settings: &Settings) -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let db = runtime.block_on(TestDb::create("bench_read"));
        let redis = RedisNamespace::new();
        let dir = settings.mode.temp_dir("read");
        let data_dir = dir.path().join("data");
        let mut chats: Vec<i64> = (1..=settings.chats).collect();
        chats.shuffle(&mut StdRng::seed_from_u64(SEED_ORDER));
        let mut fixture = Fixture {
            runtime,
            open: None,
            state: MigrationState::Disabled,
            chats,
            events: 0,
            db,
            redis,
            data_dir,
            _dir: dir,
        };
        let hybrid = fixture.hybrid(Setup::BothTiers);
        let started = Instant::now();
        let end = fixture.runtime.block_on(async {
            let store = hybrid.store().expect("a store");
            append_chat_history_of(store, &bot(), settings.chats, settings.exchanges).await;
            append_chat_history_of(store, &twin(), settings.chats, settings.exchanges).await
        });
        fixture.events = end.0;
        println!(
            "filled {} chats x {} exchanges for {BOT} and {TWIN}: {} events in {:.1} s",
            settings.chats,
            settings.exchanges,
            end.0,
            started.elapsed().as_secs_f64()
        );
        fixture
    }

    /// The handle with `setup`, reopening the data with it if another is open, the projector
    /// caught up with `bench`'s components once they are past `disabled`.
    ///
    /// # Panics
    /// When the store does not open or close, or the projector does not catch up.
    fn hybrid(&mut self, setup: Setup) -> Hybrid {
        if let Some((open_setup, hybrid)) = &self.open {
            if *open_setup == setup {
                return hybrid.clone();
            }
        }
        if let Some((_, old)) = self.open.take() {
            self.runtime
                .block_on(old.close())
                .expect("the store closes cleanly");
        }
        let mut config = HybridConfig::new(StoreConfig::new(&self.data_dir));
        config.postgres = Some(self.db.config.clone());
        config.cache = setup.cache(&self.redis);
        // Transitions settle within a poll: the set-up walks through the states quickly.
        config.supervisor.poll = Duration::from_millis(20);
        let hybrid = self
            .runtime
            .block_on(Hybrid::open(config))
            .expect("the store opens");
        if self.state > MigrationState::Disabled {
            self.runtime.block_on(wait_caught_up(&hybrid));
        }
        self.open = Some((setup, hybrid.clone()));
        hybrid
    }

    /// Moves `bench`'s components to `to` (forward one forced step at a time, back in one
    /// step) on the handle with `setup`, and waits for the projector to catch up.
    ///
    /// # Panics
    /// When a transition fails or the projector does not catch up.
    fn move_to(&mut self, setup: Setup, to: MigrationState) -> Hybrid {
        let hybrid = self.hybrid(setup);
        let options = SetOptions {
            force: true,
            wait: Duration::from_secs(60),
            ..SetOptions::default()
        };
        let bot = bot();
        let backfill = self.state == MigrationState::Disabled && to > MigrationState::Disabled;
        let db = &self.db;
        self.runtime.block_on(async {
            while self.state != to {
                let next = if to < self.state {
                    to
                } else {
                    self.state.next().expect("a state after one before `to`")
                };
                for component in COMPONENTS {
                    hybrid
                        .set_component_state(&bot, component, next, &options)
                        .await
                        .unwrap_or_else(|e| panic!("{component} -> {next}: {e}"));
                }
                self.state = next;
            }
            if to > MigrationState::Disabled {
                wait_caught_up(&hybrid).await;
            }
            if backfill {
                vacuum_analyze(db).await;
            }
        });
        hybrid
    }

    /// Chats of each bot, in the fixed random order.
    fn chats(&self) -> &[i64] {
        &self.chats
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some((_, hybrid)) = self.open.take() {
            if let Err(error) = self.runtime.block_on(hybrid.close()) {
                eprintln!("the bench store did not close cleanly: {error}");
            }
        }
    }
}

/// Waits until the Postgres projector has committed every event durable now for `bench`'s
/// components.
///
/// # Panics
/// After [`CATCH_UP_MAX`].
async fn wait_caught_up(hybrid: &Hybrid) {
    let target = hybrid.store().expect("a store").durable_end();
    let mut status = hybrid.supervisor().expect("a supervisor").watch();
    let caught_up = tokio::time::timeout(
        CATCH_UP_MAX,
        status.wait_for(|s| {
            COMPONENTS.iter().all(|c| {
                s.components
                    .get(c)
                    .is_some_and(|status| status.committed >= target)
            })
        }),
    )
    .await;
    assert!(
        matches!(caught_up, Ok(Ok(_))),
        "the projector did not catch up with position {} within {CATCH_UP_MAX:?}: {:?}",
        target.0,
        hybrid.projector_status()
    );
}

/// `VACUUM ANALYZE` of the bench's database, so autovacuum (woken by the backfill's inserts)
/// does not run in the middle of a measurement, and the planner knows the tables' sizes.
async fn vacuum_analyze(db: &TestDb) {
    let pool = db.pool().await;
    sqlx::query("VACUUM ANALYZE")
        .execute(&pool)
        .await
        .expect("VACUUM ANALYZE");
    pool.close().await;
}

/// A router over `hybrid`'s store and database (no cache) that shadow-reads `rate` of the keys
/// of `dual-write` components: the shadow comparison needs two rates in one handle.
fn shadow_router(hybrid: &Hybrid, pool: &sqlx::PgPool, rate: f64) -> Router {
    let store = hybrid.store().expect("a store");
    let supervisor = hybrid.supervisor().expect("a supervisor");
    let config = RoutingConfig {
        shadow_rate: rate,
        ..RoutingConfig::default()
    };
    let postgres = PgSource::new(pool.clone(), Duration::from_secs(1))
        .following(supervisor.watch())
        .of_log(store.log_id());
    let (health, _failures) = PgHealth::new();
    Router::new(
        LogSource::new(store.clone()),
        Some(postgres),
        None,
        health,
        config,
    )
}

/// Waits until `router`'s shadow reads have stopped finishing (none in flight any more), at
/// most the shadow budget plus the Postgres timeout; returns the outcomes recorded so far.
async fn drain_shadow(router: &Router) -> BTreeMap<(BotId, Component), ShadowCounts> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = router.shadow_stats().local();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = router.shadow_stats().local();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Waits until the cache is settled after writes: the projector has caught up, then the cache
/// invalidation has published nothing new for 200 ms (it invalidates each batch once Postgres
/// has committed it, within milliseconds).
async fn settle_cache(hybrid: &Hybrid) {
    wait_caught_up(hybrid).await;
    let cache = hybrid.reads().cache().expect("a cache");
    let mut last = cache.stats().invalidations_published;
    let mut quiet = 0;
    while quiet < 4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = cache.stats().invalidations_published;
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
}

// ---------------------------------------------------------------------------------------------
// The bot-like load
// ---------------------------------------------------------------------------------------------

/// Chat ranks drawn from a Zipf distribution: rank `k` (0-based) with weight `1 / (k + 1)^s`,
/// by inverse transform over the cumulative weights (`rand_distr` is not a dependency).
#[derive(Debug)]
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks with exponent `s`.
    fn new(n: usize, s: f64) -> Zipf {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(s);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// A rank.
    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// One pass of the bot-like load: latencies of the reads (all, and by the source that
/// answered) and of the writes, and the cache's counters before and after.
#[derive(Debug)]
struct LoadPass {
    reads: LatencyRun,
    writes: LatencyRun,
    by_source: BTreeMap<&'static str, Vec<u64>>,
    before: CacheStats,
    after: CacheStats,
}

/// Runs `reads` reads (profile, head or the last 20 messages, uniformly) of chats drawn by
/// `zipf` (rank `k` is `chats[k]`), with a durable `MessageReceived` appended to a chat drawn
/// the same way after every [`READS_PER_WRITE`] reads, one after the other.
///
/// # Panics
/// When a read fails or is not answered from the cache or Postgres (a read the log projection
/// answered in `database-only` means Postgres was taken to be failing), or a write fails.
async fn bot_load(
    hybrid: &Hybrid,
    chats: &[i64],
    zipf: &Zipf,
    rng: &mut StdRng,
    reads: usize,
    label: &str,
) -> LoadPass {
    let router = hybrid.reads();
    let store = hybrid.store().expect("a store");
    let cache = router.cache().expect("a cache");
    let bot = bot();
    let before = cache.stats();
    let mut read_ns = Vec::with_capacity(reads);
    let mut write_ns = Vec::with_capacity(reads / READS_PER_WRITE + 1);
    let mut by_source: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    let started = Instant::now();
    let mut done = 0;
    let mut op = 0u64;
    while done < reads {
        op += 1;
        let chat = chats[zipf.sample(rng)];
        if op.is_multiple_of(READS_PER_WRITE as u64 + 1) {
            let event = Event::MessageReceived(MessageReceived {
                telegram_message_id: None,
                text: format!("a message of the load ({op})"),
                content_type: "text".into(),
                legacy_ts: None,
            });
            let t = Instant::now();
            store
                .append(
                    &StreamId::conversation(&bot, chat),
                    ExpectedVersion::Any,
                    vec![NewEvent::new(event)],
                )
                .await
                .expect("a load append");
            write_ns.push(nanos(t.elapsed()));
            continue;
        }
        let kind = [ReadKind::Profile, ReadKind::Head, ReadKind::Messages][rng.gen_range(0..3)];
        let query = kind.query(&bot, chat);
        let t = Instant::now();
        let routed = router
            .read(&query, None)
            .await
            .unwrap_or_else(|e| panic!("{query:?} failed: {e}"));
        let elapsed = nanos(t.elapsed());
        assert!(
            routed.state == MigrationState::DatabaseOnly && routed.source != Source::Log,
            "{query:?} was answered by {} in {}: the load measures the cache and Postgres \
             (Postgres taken to be failing? {:?})",
            routed.source.as_str(),
            routed.state,
            router.health().last_failure()
        );
        read_ns.push(elapsed);
        by_source
            .entry(routed.source.as_str())
            .or_default()
            .push(elapsed);
        done += 1;
    }
    let wall = started.elapsed();
    LoadPass {
        reads: LatencyRun::new(format!("{label}: reads"), read_ns, wall),
        writes: LatencyRun::new(format!("{label}: writes (durable)"), write_ns, wall),
        by_source,
        before,
        after: cache.stats(),
    }
}

/// Writes the figures of a load pass: the share of reads per source, the cache's own hit
/// ratio per tier (from its counters), the read and write latencies.
fn write_load_pass(out: &mut String, pass: &LoadPass) {
    let reads = pass.reads.ops() as f64;
    let _ = writeln!(out, "{}", pass.reads.line());
    let shares: Vec<String> = ["memory", "redis", "postgres"]
        .iter()
        .map(|source| {
            let n = pass.by_source.get(source).map_or(0, Vec::len);
            format!("{source} {:.1}%", 100.0 * n as f64 / reads)
        })
        .collect();
    let _ = writeln!(out, "  answered by (routed.source): {}", shares.join(", "));
    for (source, latencies) in &pass.by_source {
        let run = LatencyRun::new(format!("  {source}"), latencies.clone(), pass.reads.wall);
        let _ = writeln!(
            out,
            "  {source:<9} p50 {:>8.2} µs  p99 {:>8.2} µs  ({} reads)",
            run.percentile_us(0.5),
            run.percentile_us(0.99),
            run.ops()
        );
    }
    let delta = |tier: Tier| {
        let (a, b) = (pass.before.total(tier), pass.after.total(tier));
        (
            b.hits - a.hits,
            b.misses - a.misses,
            b.stored - a.stored,
            b.refused - a.refused,
        )
    };
    let (memory_hits, memory_misses, memory_stored, memory_refused) = delta(Tier::Memory);
    let (redis_hits, redis_misses, redis_stored, redis_refused) = delta(Tier::Redis);
    let ratio = |hits: u64, misses: u64| 100.0 * hits as f64 / ((hits + misses).max(1)) as f64;
    let _ = writeln!(
        out,
        "  cache counters: tier 1 hit ratio {:.1}% ({memory_hits} hits, {memory_misses} misses); \
         tier 2 hit ratio {:.1}% of tier 1's misses ({redis_hits} hits, {redis_misses} misses); \
         {} invalidations published; puts stored/refused: tier 1 {memory_stored}/{memory_refused}, \
         tier 2 {redis_stored}/{redis_refused}",
        ratio(memory_hits, memory_misses),
        ratio(redis_hits, redis_misses),
        pass.after.invalidations_published - pass.before.invalidations_published
    );
    let _ = writeln!(out, "{}", pass.writes.line());
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// One kind's p99s (µs) of item 1, for the summary table; each source with the log
/// projection's p99 measured beside it on the same handle.
#[derive(Debug, Default, Clone, Copy)]
struct SummaryRow {
    memory: (f64, f64),
    redis: (f64, f64),
    raw_get: f64,
    postgres: (f64, f64),
    raw_select: f64,
}

/// The summary rows by kind (in the order of [`ReadKind::MEASURED`]).
type Summary = BTreeMap<(usize, &'static str), SummaryRow>;

/// The summary row of `kind`.
fn summary_row(summary: &mut Summary, kind: ReadKind) -> &mut SummaryRow {
    let index = ReadKind::MEASURED
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(usize::MAX);
    summary.entry((index, kind.id())).or_default()
}

/// The p99 in µs of `run`.
fn p99(run: &LatencyRun) -> f64 {
    run.percentile_us(0.99)
}

/// Item 3: `bench`'s reads in `dual-write` through routers shadow-reading 1% and 100% of the
/// keys, against `bench_twin`'s (`disabled`), rounds alternating.
fn report_shadow(fx: &mut Fixture, settings: &Settings, out: &mut String) {
    let hybrid = fx.move_to(Setup::BothTiers, MigrationState::DualWrite);
    let chats = fx.chats().to_vec();
    let ops = settings.shadow_ops / ROUNDS;
    let _ = writeln!(
        out,
        "-- 3. shadow-read cost: {BOT} in dual-write (shadow_rate 0 / 0.01 / 1.0, budget and \
         slots as default) vs {TWIN} disabled, {ROUNDS} rounds of {ops} reads each, one task --"
    );
    let db = &fx.db;
    fx.runtime.block_on(async {
        let pool = db.config.connect_lazy();
        let none = shadow_router(&hybrid, &pool, 0.0);
        let one = shadow_router(&hybrid, &pool, 0.01);
        let all = shadow_router(&hybrid, &pool, 1.0);
        use MigrationState::{Disabled, DualWrite};
        for kind in ReadKind::MEASURED {
            let bench_q = kind.queries(&bot(), &chats);
            let twin_q = kind.queries(&twin(), &chats);
            for query in &twin_q {
                routed_read(&one, query, Source::Log, Disabled).await;
            }
            for query in &bench_q {
                routed_read(&none, query, Source::Log, DualWrite).await;
                routed_read(&one, query, Source::Log, DualWrite).await;
                routed_read(&all, query, Source::Log, DualWrite).await;
            }
            let component = kind.query(&bot(), 1).component();
            let counts = |stats: &BTreeMap<(BotId, Component), ShadowCounts>| {
                stats.get(&(bot(), component)).copied().unwrap_or_default()
            };
            let before_one = counts(&drain_shadow(&one).await);
            let before_all = counts(&drain_shadow(&all).await);
            let mut runs = [(); 4].map(|()| Samples::default());
            for _ in 0..ROUNDS {
                timed_reads(&mut runs[0], &one, &twin_q, ops, Source::Log, Disabled).await;
                timed_reads(&mut runs[1], &none, &bench_q, ops, Source::Log, DualWrite).await;
                timed_reads(&mut runs[2], &one, &bench_q, ops, Source::Log, DualWrite).await;
                drain_shadow(&one).await;
                timed_reads(&mut runs[3], &all, &bench_q, ops, Source::Log, DualWrite).await;
                drain_shadow(&all).await;
            }
            let after_one = counts(&drain_shadow(&one).await);
            let after_all = counts(&drain_shadow(&all).await);
            let [disabled, dw_none, dw_one, dw_all] = runs;
            let disabled = disabled.into_run(format!("{} disabled", kind.id()));
            let dw_none = dw_none.into_run(format!("{} dual-write, 0%", kind.id()));
            let dw_one = dw_one.into_run(format!("{} dual-write, 1%", kind.id()));
            let dw_all = dw_all.into_run(format!("{} dual-write, 100%", kind.id()));
            let _ = writeln!(out, "{}\n{}", disabled.line(), dw_none.line());
            let _ = writeln!(
                out,
                "  throughput {:.2}x disabled (the state lookup and the sampling check alone)",
                dw_none.ops_per_sec() / disabled.ops_per_sec()
            );
            for (run, before, after) in [
                (&dw_one, before_one, after_one),
                (&dw_all, before_all, after_all),
            ] {
                let _ = writeln!(out, "{}", run.line());
                let _ = writeln!(
                    out,
                    "  throughput {:.2}x disabled; shadow reads in the timed rounds: {} matched, \
                     {} mismatched, {} lagging, {} errors, {} timeouts (the rest found no free \
                     slot or were not sampled)",
                    run.ops_per_sec() / disabled.ops_per_sec(),
                    after.matched - before.matched,
                    after.mismatched - before.mismatched,
                    after.lagging - before.lagging,
                    after.errors - before.errors,
                    after.timeouts - before.timeouts,
                );
            }
        }
    });
}

/// Item 2: the bot-like load on `bench` in `database-only` with both tiers.
fn report_load(fx: &mut Fixture, settings: &Settings, out: &mut String) {
    let hybrid = fx.move_to(Setup::BothTiers, MigrationState::DatabaseOnly);
    let chats = fx.chats().to_vec();
    let zipf = Zipf::new(chats.len(), ZIPF_EXPONENT);
    let mut rng = StdRng::seed_from_u64(SEED_LOAD);
    let reads = settings.load_reads;
    let (cold, measured) = fx.runtime.block_on(async {
        let cold = bot_load(&hybrid, &chats, &zipf, &mut rng, reads, "cold-cache pass").await;
        let measured = bot_load(&hybrid, &chats, &zipf, &mut rng, reads, "measured pass").await;
        (cold, measured)
    });
    let _ = writeln!(
        out,
        "-- 2. bot-like load: {BOT} database-only, both tiers; {} chats drawn Zipf(s = \
         {ZIPF_EXPONENT}), {READS_PER_WRITE} reads (profile, head, last {HISTORY_LEN}; \
         min_position None) per durable MessageReceived, one task; {reads} reads per pass --",
        chats.len()
    );
    write_load_pass(out, &cold);
    write_load_pass(out, &measured);
}

/// Item 1, tier 1: `bench`'s reads (`database-only`, both tiers, every key read once before)
/// against `bench_twin`'s log projection reads, on one handle, rounds alternating.
fn report_memory(fx: &mut Fixture, settings: &Settings, out: &mut String, summary: &mut Summary) {
    use MigrationState::{DatabaseOnly, Disabled};
    let hybrid = fx.move_to(Setup::BothTiers, DatabaseOnly);
    let router = hybrid.reads().clone();
    let log = LogSource::new(hybrid.store().expect("a store").clone());
    let chats = fx.chats().to_vec();
    let ops = settings.read_ops / ROUNDS;
    let _ = writeln!(
        out,
        "-- 1a. tier-1 hits ({BOT}, database-only, both tiers, each key read once before) and \
         the log projection ({TWIN}, disabled), {ROUNDS} rounds alternating --"
    );
    fx.runtime.block_on(async {
        settle_cache(&hybrid).await;
        for kind in ReadKind::MEASURED {
            let bench_q = kind.queries(&bot(), &chats);
            let twin_q = kind.queries(&twin(), &chats);
            warm_and_check(&router, &log, &bench_q, Source::Memory, DatabaseOnly).await;
            warm_and_check(&router, &log, &twin_q, Source::Log, Disabled).await;
            let (mut base, mut hit) = (Samples::default(), Samples::default());
            for _ in 0..ROUNDS {
                timed_reads(&mut base, &router, &twin_q, ops, Source::Log, Disabled).await;
                timed_reads(
                    &mut hit,
                    &router,
                    &bench_q,
                    ops,
                    Source::Memory,
                    DatabaseOnly,
                )
                .await;
            }
            let base = base.into_run(format!("{} log projection", kind.id()));
            let hit = hit.into_run(format!("{} tier-1 hit", kind.id()));
            let _ = writeln!(out, "{}\n{}", base.line(), hit.line());
            let _ = writeln!(
                out,
                "  tier-1 hit p99 / log p99: {:.2}x",
                p99(&hit) / p99(&base)
            );
            summary_row(summary, kind).memory = (p99(&hit), p99(&base));
        }
    });
}

/// The Redis key of `bench`'s entry of `kind` for `chat` (the layout of the cache's tier 2).
fn entry_key(namespace: &str, kind: ReadKind, chat: i64) -> String {
    let component = match kind {
        ReadKind::Profile => "profiles",
        ReadKind::Head => "heads",
        ReadKind::Messages => "messages",
    };
    format!("{namespace}:v{SCHEMA_VERSION}:{BOT}:{component}:{chat}")
}

/// A tier-2 entry's value as the tier decodes it (`{position:020}v` then the JSON of the
/// value and how many messages were cached; only the value is kept here).
#[derive(Debug, serde::Deserialize)]
struct TierPayload {
    value: CachedValue,
}

/// Decodes a tier-2 entry (`{position:020}v{json}`) as the cache does on a hit: the diagnostic
/// between a raw `GET` and a Redis hit.
///
/// # Panics
/// On an entry that is not a value or does not decode.
fn decode_entry(bytes: &[u8]) -> CachedValue {
    assert!(bytes.get(20) == Some(&b'v'), "not a value");
    serde_json::from_slice::<TierPayload>(&bytes[21..])
        .expect("a cached value decodes")
        .value
}

/// Item 1, tier 2: `bench`'s reads with tier 1 off (every one a Redis hit after one read of
/// each key) against a raw `GET` of the same entries and the log projection, rounds
/// alternating.
fn report_redis(fx: &mut Fixture, settings: &Settings, out: &mut String, summary: &mut Summary) {
    use MigrationState::{DatabaseOnly, Disabled};
    let hybrid = fx.move_to(Setup::RedisOnly, DatabaseOnly);
    let router = hybrid.reads().clone();
    let log = LogSource::new(hybrid.store().expect("a store").clone());
    let chats = fx.chats().to_vec();
    let ops = (settings.read_ops / 2 / ROUNDS).max(10);
    let _ = writeln!(
        out,
        "-- 1b. Redis hits ({BOT}, database-only, tier 1 off: memory_bytes 0), a raw GET of the \
         same entries (baseline), the log projection ({TWIN}), {ROUNDS} rounds alternating --"
    );
    let namespace = &fx.redis;
    fx.runtime.block_on(async {
        let mut conn = namespace.redis().await;
        for kind in ReadKind::MEASURED {
            let bench_q = kind.queries(&bot(), &chats);
            let twin_q = kind.queries(&twin(), &chats);
            warm_and_check(&router, &log, &bench_q, Source::Redis, DatabaseOnly).await;
            let keys: Vec<String> = chats
                .iter()
                .map(|c| entry_key(&namespace.name, kind, *c))
                .collect();
            // Each entry's bytes, read once: a value (`{position:020}v{json}`), as the cache
            // stored it.
            let mut entry_bytes = 0;
            for key in &keys {
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("a raw GET");
                let bytes = bytes.unwrap_or_else(|| panic!("{key} is not in Redis"));
                assert!(bytes.get(20) == Some(&b'v'), "{key} holds no value");
                entry_bytes += bytes.len();
            }
            let (mut base, mut hit, mut raw, mut decoded) = (
                Samples::default(),
                Samples::default(),
                Samples::default(),
                Samples::default(),
            );
            for _ in 0..ROUNDS {
                timed_reads(&mut base, &router, &twin_q, ops, Source::Log, Disabled).await;
                timed_reads(
                    &mut hit,
                    &router,
                    &bench_q,
                    ops,
                    Source::Redis,
                    DatabaseOnly,
                )
                .await;
                raw.run(ops, async |i| {
                    let bytes: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&keys[i % keys.len()])
                        .query_async(&mut conn)
                        .await
                        .expect("a raw GET");
                    std::hint::black_box(bytes.expect("an entry"));
                })
                .await;
                decoded
                    .run(ops, async |i| {
                        let bytes: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(&keys[i % keys.len()])
                            .query_async(&mut conn)
                            .await
                            .expect("a raw GET");
                        std::hint::black_box(decode_entry(&bytes.expect("an entry")));
                    })
                    .await;
            }
            let base = base.into_run(format!("{} log projection", kind.id()));
            let hit = hit.into_run(format!("{} Redis hit", kind.id()));
            let raw = raw.into_run(format!("{} raw GET (baseline)", kind.id()));
            let decoded = decoded.into_run(format!("{} raw GET + decode", kind.id()));
            let _ = writeln!(
                out,
                "{}\n{}\n{}\n{}",
                base.line(),
                raw.line(),
                decoded.line(),
                hit.line()
            );
            let ratio = p99(&hit) / p99(&raw);
            let _ = writeln!(
                out,
                "  entries {:.0} bytes on average; Redis hit p99 / raw GET p99: {ratio:.2}x \
                 (target <= 1.5x: {}); p50 {:.2}x",
                entry_bytes as f64 / keys.len() as f64,
                verdict(ratio <= 1.5),
                hit.percentile_us(0.5) / raw.percentile_us(0.5)
            );
            let row = summary_row(summary, kind);
            row.redis = (p99(&hit), p99(&base));
            row.raw_get = p99(&raw);
        }
    });
}

/// A raw read of the rows `kind` reads for `chat` of `bench`: one statement on `conn`, as the
/// Postgres read source's own (`load_profiles`, `load_last_messages`).
async fn raw_select(conn: &mut sqlx::PgConnection, kind: ReadKind, chat: i64) {
    match kind {
        ReadKind::Profile => {
            let row: Option<(serde_json::Value,)> = sqlx::query_as(
                "SELECT document FROM profiles WHERE (bot_id, chat_id) IN (SELECT * FROM \
                 UNNEST($1::text[], $2::int8[]))",
            )
            .bind(vec![BOT.to_owned()])
            .bind(vec![chat])
            .fetch_optional(&mut *conn)
            .await
            .expect("a raw profile select");
            assert!(row.is_some(), "no profile row for chat {chat}");
        }
        ReadKind::Messages => {
            let rows: Vec<(i64, String, String, i64, Option<serde_json::Value>)> = sqlx::query_as(
                "SELECT position, direction, text, at, legacy_ts FROM messages WHERE bot_id = $1 \
                 AND chat_id = $2 ORDER BY position DESC LIMIT $3",
            )
            .bind(BOT)
            .bind(chat)
            .bind(HISTORY_LEN as i64)
            .fetch_all(&mut *conn)
            .await
            .expect("a raw messages select");
            assert!(
                rows.len() == HISTORY_LEN,
                "chat {chat} has {} messages",
                rows.len()
            );
        }
        ReadKind::Head => unreachable!("the Postgres figures read profiles and messages"),
    }
}

/// The statements of one Postgres read, raw on `conn`, as `PgSource` sends them: `BEGIN`, the
/// isolation level, the checkpoints, the rows ([`raw_select`]), `COMMIT`.
async fn raw_read_protocol(conn: &mut sqlx::PgConnection, kind: ReadKind, chat: i64) {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .expect("set transaction");
    let _: Vec<(String, i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT component, next_position, log_id, last_event_id FROM projector_checkpoints",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("checkpoints");
    raw_select(&mut tx, kind, chat).await;
    tx.commit().await.expect("commit");
}

/// Item 1, Postgres: `bench`'s reads with no cache (every one a Postgres read) against the
/// same rows read raw (one statement; and the read's five statements), one round trip, a pool
/// acquire, and the log projection, rounds alternating.
fn report_postgres(fx: &mut Fixture, settings: &Settings, out: &mut String, summary: &mut Summary) {
    use sqlx::Connection as _;
    use MigrationState::{DatabaseOnly, Disabled};
    let hybrid = fx.move_to(Setup::NoCache, DatabaseOnly);
    let router = hybrid.reads().clone();
    let log = LogSource::new(hybrid.store().expect("a store").clone());
    let chats = fx.chats().to_vec();
    let ops = (settings.read_ops / 5 / ROUNDS).max(10);
    fx.runtime.block_on(vacuum_analyze(&fx.db));
    let _ = writeln!(
        out,
        "-- 1c. Postgres reads ({BOT}, database-only, no cache), the same rows read raw on a \
         connection of the bench's own (one statement; the read's 5 statements), the log \
         projection ({TWIN}), {ROUNDS} rounds alternating --"
    );
    let db = &fx.db;
    fx.runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect_with(&db.config.connect)
            .await
            .expect("a raw connection");
        // A pool built as the handle's (`PgConfig::connect_lazy`): what taking a connection
        // from it costs.
        let acquire_pool = db.config.connect_lazy();
        for kind in ReadKind::MEASURED {
            let bench_q = kind.queries(&bot(), &chats);
            let twin_q = kind.queries(&twin(), &chats);
            warm_and_check(&router, &log, &bench_q, Source::Postgres, DatabaseOnly).await;
            let mut runs = [(); 6].map(|()| Samples::default());
            for _ in 0..ROUNDS {
                timed_reads(&mut runs[0], &router, &twin_q, ops, Source::Log, Disabled).await;
                timed_reads(
                    &mut runs[1],
                    &router,
                    &bench_q,
                    ops,
                    Source::Postgres,
                    DatabaseOnly,
                )
                .await;
                runs[2]
                    .run(ops, async |i| {
                        raw_select(&mut conn, kind, chats[i % chats.len()]).await
                    })
                    .await;
                runs[3]
                    .run(ops, async |i| {
                        raw_read_protocol(&mut conn, kind, chats[i % chats.len()]).await;
                    })
                    .await;
                runs[4]
                    .run(ops, async |_| {
                        sqlx::query("SELECT 1")
                            .execute(&mut conn)
                            .await
                            .expect("SELECT 1");
                    })
                    .await;
                runs[5]
                    .run(ops, async |_| {
                        drop(acquire_pool.acquire().await.expect("a pooled connection"));
                    })
                    .await;
            }
            let [base, miss, raw, protocol, round_trip, acquire] = runs;
            let round_trip = round_trip.into_run("one round trip (SELECT 1)");
            let acquire = acquire.into_run("pool acquire (the ping before it)");
            let base = base.into_run(format!("{} log projection", kind.id()));
            let miss = miss.into_run(format!("{} Postgres (router)", kind.id()));
            let raw = raw.into_run(format!("{} raw SELECT (baseline)", kind.id()));
            let protocol = protocol.into_run(format!("{} raw, the read's 5 stmts", kind.id()));
            let _ = writeln!(
                out,
                "{}\n{}\n{}\n{}\n{}\n{}",
                base.line(),
                round_trip.line(),
                acquire.line(),
                raw.line(),
                protocol.line(),
                miss.line()
            );
            let _ = writeln!(
                out,
                "  Postgres p99 {:.0} µs (target <= 1 ms: {}); / raw SELECT p99 {:.2}x; / the raw \
                 5 statements p99 {:.2}x",
                p99(&miss),
                verdict(p99(&miss) <= 1000.0),
                p99(&miss) / p99(&raw),
                p99(&miss) / p99(&protocol)
            );
            let row = summary_row(summary, kind);
            row.postgres = (p99(&miss), p99(&base));
            row.raw_select = p99(&raw);
        }
    });
}

/// Writes the summary table of item 1: p99 by source, each with its ratio to the log
/// projection's p99 measured beside it, and the targets.
fn write_summary(out: &mut String, summary: &Summary) {
    let _ = writeln!(
        out,
        "-- summary of 1: p99 in µs (x the log projection's p99 on the same handle) --\n\
         {:<12} {:>22} {:>22} {:>12} {:>22} {:>12}",
        "read", "tier-1 hit", "Redis hit", "raw GET", "Postgres (no cache)", "raw SELECT"
    );
    for ((_, kind), row) in summary {
        let cell = |(value, log): (f64, f64)| format!("{value:.1} ({:.0}x)", value / log);
        let _ = writeln!(
            out,
            "{kind:<12} {:>22} {:>22} {:>12.1} {:>22} {:>12.1}",
            cell(row.memory),
            cell(row.redis),
            row.raw_get,
            cell(row.postgres),
            row.raw_select
        );
    }
    for ((_, kind), row) in summary {
        let _ = writeln!(
            out,
            "{kind}: Redis hit <= 1.5x raw GET p99: {:.2}x, {}; Postgres <= 1 ms p99: {:.0} µs, {}",
            row.redis.0 / row.raw_get,
            verdict(row.redis.0 <= 1.5 * row.raw_get),
            row.postgres.0,
            verdict(row.postgres.0 <= 1000.0)
        );
    }
}

/// The report: one block of figures, on a fixture of its own (items in the order the states
/// are walked: 3 in `dual-write`, then 2 and 1 in `database-only`).
fn report(settings: &Settings) {
    println!("report: filling, then shadow reads, the load, and reads by source...");
    let started = Instant::now();
    let mut fx = Fixture::new(settings);
    let mut out = String::new();
    let mut summary = Summary::new();
    report_shadow(&mut fx, settings, &mut out);
    report_load(&mut fx, settings, &mut out);
    report_memory(&mut fx, settings, &mut out, &mut summary);
    report_redis(&mut fx, settings, &mut out, &mut summary);
    report_postgres(&mut fx, settings, &mut out, &mut summary);
    write_summary(&mut out, &summary);
    let mut header = String::from("\n== hybridstore read report ==\n");
    if settings.mode.quick {
        header.push_str("(quick mode: tiny sizes, a smoke run, NOT a measurement)\n");
    }
    let _ = writeln!(
        header,
        "data: {} chats x {} exchanges for each of {BOT} and {TWIN} ({} events); {}; report took \
         {:.0} s",
        settings.chats,
        settings.exchanges,
        fx.events,
        fx.runtime.block_on(server_versions(&fx.db)),
        started.elapsed().as_secs_f64()
    );
    drop(fx);
    print!("{header}{out}");
}

/// The Postgres and Redis versions, for the report's header.
async fn server_versions(db: &TestDb) -> String {
    let pool = db.pool().await;
    let postgres: (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&pool)
        .await
        .expect("the server version");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut RedisNamespace::new().redis().await)
        .await
        .expect("Redis INFO");
    let redis = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    format!("PostgreSQL {}, Redis {redis}", postgres.0)
}

// ---------------------------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------------------------

/// The fixture, created at the first bench that runs (a filter that selects none of them
/// creates none).
fn fixture<'a>(fixture: &'a mut Option<Fixture>, settings: &Settings) -> &'a mut Fixture {
    fixture.get_or_insert_with(|| Fixture::new(settings))
}

/// Reads prepared for one criterion bench: the router, the queries (cycled) and where each
/// answer must come from.
struct Prepared {
    router: Router,
    queries: Vec<Query>,
    source: Source,
    state: MigrationState,
    next: usize,
}

impl Prepared {
    /// Runs `iters` reads (one after the other, each checked) and returns their time.
    fn run(&mut self, runtime: &Runtime, iters: u64) -> Duration {
        runtime.block_on(async {
            let started = Instant::now();
            for _ in 0..iters {
                let query = &self.queries[self.next % self.queries.len()];
                self.next += 1;
                std::hint::black_box(
                    routed_read(&self.router, query, self.source, self.state).await,
                );
            }
            started.elapsed()
        })
    }
}

/// `shadow/*`: the profile read of `bench_twin` (`disabled`) and of `bench` in `dual-write`
/// through routers shadow-reading 1% and 100% of the keys.
fn bench_shadow(c: &mut Criterion, settings: &Settings, shared: &mut Option<Fixture>) {
    let mut group = c.benchmark_group("shadow");
    TIMING_READS.configure(&mut group, settings.mode.quick);
    group.throughput(criterion::Throughput::Elements(1));
    for (id, rate) in [
        ("disabled", 0.0),
        ("dual_write_1pct", 0.01),
        ("dual_write_100pct", 1.0),
    ] {
        let mut prepared: Option<Prepared> = None;
        group.bench_function(format!("{id}/profile"), |b| {
            let prepared = prepared.get_or_insert_with(|| {
                let fx = fixture(shared, settings);
                let hybrid = fx.move_to(Setup::BothTiers, MigrationState::DualWrite);
                let _runtime = fx.runtime.enter();
                let pool = fx.db.config.connect_lazy();
                let (bot, state) = if rate > 0.0 {
                    (bot(), MigrationState::DualWrite)
                } else {
                    (twin(), MigrationState::Disabled)
                };
                Prepared {
                    router: shadow_router(&hybrid, &pool, rate),
                    queries: ReadKind::Profile.queries(&bot, fx.chats()),
                    source: Source::Log,
                    state,
                    next: 0,
                }
            });
            let runtime = &fixture(shared, settings).runtime;
            b.iter_custom(|iters| prepared.run(runtime, iters));
            // Shadow reads still running must not run into the next bench.
            runtime.block_on(drain_shadow(&prepared.router));
        });
    }
    group.finish();
}

/// `read_by_source/*`: the profile and the last 20 messages from the log projection
/// (`bench_twin`), tier 1, Redis (tier 1 off) and Postgres (no cache), `bench` in
/// `database-only`; each key read once (and checked against the log projection) before.
fn bench_read_by_source(c: &mut Criterion, settings: &Settings, shared: &mut Option<Fixture>) {
    let mut group = c.benchmark_group("read_by_source");
    TIMING_READS.configure(&mut group, settings.mode.quick);
    group.throughput(criterion::Throughput::Elements(1));
    let cases = [
        ("log", Setup::BothTiers, Source::Log),
        ("memory", Setup::BothTiers, Source::Memory),
        ("redis", Setup::RedisOnly, Source::Redis),
        ("postgres", Setup::NoCache, Source::Postgres),
    ];
    for (id, setup, source) in cases {
        for kind in ReadKind::MEASURED {
            let mut prepared: Option<Prepared> = None;
            group.bench_function(format!("{id}/{}", kind.id()), |b| {
                let prepared = prepared.get_or_insert_with(|| {
                    let fx = fixture(shared, settings);
                    let hybrid = fx.move_to(setup, MigrationState::DatabaseOnly);
                    let (bot, state) = if source == Source::Log {
                        (twin(), MigrationState::Disabled)
                    } else {
                        (bot(), MigrationState::DatabaseOnly)
                    };
                    let router = hybrid.reads().clone();
                    let queries = kind.queries(&bot, fx.chats());
                    let log = LogSource::new(hybrid.store().expect("a store").clone());
                    fx.runtime
                        .block_on(warm_and_check(&router, &log, &queries, source, state));
                    Prepared {
                        router,
                        queries,
                        source,
                        state,
                        next: 0,
                    }
                });
                let runtime = &fixture(shared, settings).runtime;
                b.iter_custom(|iters| prepared.run(runtime, iters));
            });
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() {
    let settings = Settings::from_args_and_env();
    settings.mode.announce("hybridstore read");
    let mut shared: Option<Fixture> = None;
    let mut c = Criterion::default().configure_from_args();
    bench_shadow(&mut c, &settings, &mut shared);
    bench_read_by_source(&mut c, &settings, &mut shared);
    drop(shared);
    if settings.report_asked() {
        report(&settings);
    }
    c.final_summary();
}
