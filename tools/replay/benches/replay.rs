//! Benchmarks of the Postgres side (real PostgreSQL: `tools/services.sh` starts it).
//!
//! | part | what | unit |
//! |---|---|---|
//! | criterion `replay/small-log` | `rebuild` of a small log into a fresh database | time |
//! | report: replay vs COPY | `rebuild` of a large log (events/s, target ≥ 100k/s) against a plain `COPY FROM STDIN` of the very rows it produced into an empty copy of the schema, measured in the same run (target ≥ 0.5x) | events/s, ratio |
//! | report: projector lag | a steady 1k events/s of live appends (durability `always`): time from an append's acknowledgement (its records durable) to the projector's commit that covers it, p50/p99/max (target p99 ≤ 50 ms) | ms |
//!
//! ```text
//! cargo bench -p hybridstore-replay --bench replay              # criterion group + report
//! cargo bench -p hybridstore-replay --bench replay -- report    # only the report
//! ```
//! Environment: `HYBRIDSTORE_BENCH_REPLAY_CHATS` (default 5000 chats of ~105 events: 525k events),
//! `HYBRIDSTORE_BENCH_LAG_SECS` (default 10), `HYBRIDSTORE_TEST_DATABASE_URL` / `DATABASE_URL`
//! (the server; default postgres://postgres@127.0.0.1:5432/test).

#[path = "../../../benches/common/mod.rs"]
mod common;

use std::future::pending;
use std::time::{Duration, Instant};

use common::{env_number, RunMode};
use criterion::Criterion;
use futures_util::StreamExt as _;
use hybridstore::sink::postgres::model::component_tables;
use hybridstore::sink::postgres::{PgSink, ProjectorConfig};
use hybridstore::testing::{append_chat_history, TestDb};
use hybridstore::{Component, ComponentSet, Store, StoreConfig};
use hybridstore_replay::rebuild::{rebuild, From, Outcome, RebuildConfig, RebuildSummary};
use hybridstore_wal::Durability;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A log of a bot's realistic history (`chats` chats of 50 exchanges: ~105 events a chat),
/// written without fsync (it is only read here).
fn build_log(runtime: &tokio::runtime::Runtime, dir: &std::path::Path, chats: i64) -> u64 {
    runtime.block_on(async {
        let mut config = StoreConfig::new(dir);
        config.wal.durability = Durability::Never;
        let store = Store::open(config).await.expect("open the store");
        let end = append_chat_history(&store, chats, 50).await;
        store.close().await.expect("close the store");
        end.0
    })
}

fn rebuild_config(dir: &std::path::Path) -> RebuildConfig {
    RebuildConfig {
        data_dir: dir.to_owned(),
        components: ComponentSet::ALL,
        from: From::Start,
        to: None,
        chunk_events: 20_000,
        fresh: true,
        quiet: true,
    }
}

async fn replay_into(db: &TestDb, dir: &std::path::Path) -> RebuildSummary {
    let pool = db.pool().await;
    match rebuild(&pool, &rebuild_config(dir), pending()).await {
        Ok(Outcome::Done(summary)) => summary,
        other => panic!("the replay did not finish: {other:?}"),
    }
}

fn criterion_group(c: &mut Criterion, mode: &RunMode, runtime: &tokio::runtime::Runtime) {
    let dir = mode.temp_dir("replay-small");
    build_log(runtime, dir.path(), if mode.quick { 5 } else { 100 });
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.bench_function("small-log", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += runtime.block_on(async {
                    let db = TestDb::create("bench_small").await;
                    let started = Instant::now();
                    replay_into(&db, dir.path()).await;
                    started.elapsed()
                });
            }
            total
        });
    });
    group.finish();
}

/// The rows of every read-model table, as `COPY TO STDOUT` text.
async fn copy_out(pool: &sqlx::PgPool) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut conn = pool.acquire().await.expect("a connection");
    for component in Component::ALL {
        for table in component_tables(component) {
            let mut data = Vec::new();
            let mut stream = conn
                .copy_out_raw(&format!("COPY {table} TO STDOUT"))
                .await
                .expect("COPY TO");
            while let Some(chunk) = stream.next().await {
                data.extend_from_slice(&chunk.expect("COPY TO data"));
            }
            drop(stream);
            out.push((*table, data));
        }
    }
    out
}

/// Times a plain `COPY FROM STDIN` of `tables` into freshly migrated tables.
async fn copy_in(db: &TestDb, tables: &[(&'static str, Vec<u8>)]) -> Duration {
    let pool = db.pool().await;
    hybridstore::sink::postgres::migrate(&pool)
        .await
        .expect("migrate");
    let mut conn = pool.acquire().await.expect("a connection");
    let started = Instant::now();
    for (table, data) in tables {
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} FROM STDIN"))
            .await
            .expect("COPY FROM");
        copy.send(data.as_slice()).await.expect("COPY data");
        copy.finish().await.expect("COPY finish");
    }
    started.elapsed()
}

fn report_replay(out: &mut String, mode: &RunMode, runtime: &tokio::runtime::Runtime) {
    let chats = if mode.quick {
        10
    } else {
        env_number("HYBRIDSTORE_BENCH_REPLAY_CHATS").unwrap_or(5_000)
    };
    let dir = mode.temp_dir("replay-large");
    let events = build_log(runtime, dir.path(), chats);
    runtime.block_on(async {
        let replayed = TestDb::create("bench_replay").await;
        let summary = replay_into(&replayed, dir.path()).await;
        let tables = copy_out(&replayed.pool().await).await;
        let copied = TestDb::create("bench_copy").await;
        let copy_time = copy_in(&copied, &tables).await;
        let rows: u64 = summary.rows;
        let replay_rate = summary.rate();
        let copy_rate = events as f64 / copy_time.as_secs_f64();
        out.push_str(&format!(
            "replay: {events} events ({rows} rows) in {:.2}s = {replay_rate:.0} events/s \
             (target >= 100000: {})\n\
             COPY of the same rows: {:.2}s = {copy_rate:.0} events/s equivalent\n\
             replay / COPY throughput: {:.2}x (target >= 0.5x: {})\n",
            summary.elapsed.as_secs_f64(),
            if replay_rate >= 100_000.0 {
                "met"
            } else {
                "MISSED"
            },
            copy_time.as_secs_f64(),
            replay_rate / copy_rate,
            if replay_rate / copy_rate >= 0.5 {
                "met"
            } else {
                "MISSED"
            },
        ));
    });
}

fn report_lag(out: &mut String, mode: &RunMode, runtime: &tokio::runtime::Runtime) {
    let seconds: u64 = if mode.quick {
        1
    } else {
        env_number("HYBRIDSTORE_BENCH_LAG_SECS").unwrap_or(10)
    };
    let dir = mode.temp_dir("replay-lag");
    runtime.block_on(async {
        let store = Store::open(StoreConfig::new(dir.path()))
            .await
            .expect("open the store");
        let db = TestDb::create("bench_lag").await;
        let projector = PgSink::start(store.clone(), db.pool().await, ProjectorConfig::default())
            .await
            .expect("projector");
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, Instant)>::new()));
        let commits = {
            let mut status = projector.watch();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while status.changed().await.is_ok() {
                    let committed = status.borrow_and_update().committed.0;
                    seen.push((committed, Instant::now()));
                }
                seen
            })
        };
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let bot = hybridstore::BotId::new("lag").expect("valid");
        let started = Instant::now();
        let mut sent = 0u64;
        let mut appenders = tokio::task::JoinSet::new();
        while started.elapsed() < Duration::from_secs(seconds) {
            ticker.tick().await;
            sent += 1;
            let store = store.clone();
            let acked = acked.clone();
            let stream = hybridstore::StreamId::conversation(&bot, (sent % 50) as i64);
            appenders.spawn(async move {
                let event = hybridstore::testing::build_event(
                    hybridstore::StreamKind::Conversation,
                    hybridstore::testing::EventSpec {
                        selector: 5 + (sent % 4) as u8,
                        argument: sent as u8,
                        day: 0,
                    },
                );
                let result = store
                    .append(
                        &stream,
                        hybridstore::ExpectedVersion::Any,
                        vec![hybridstore::NewEvent::new(event)],
                    )
                    .await
                    .expect("append");
                acked
                    .lock()
                    .expect("not poisoned")
                    .push((result.first_position.0, Instant::now()));
            });
        }
        while appenders.join_next().await.is_some() {}
        let last = store.last_position().expect("events appended");
        assert!(projector.wait_for(last, Duration::from_secs(30)).await);
        projector.stop().await;
        let commits = commits.await.expect("the watcher");
        let acked = acked.lock().expect("not poisoned").clone();
        let mut lags: Vec<f64> = acked
            .iter()
            .filter_map(|(position, at)| {
                let (_, committed_at) = commits.iter().find(|(c, _)| c > position)?;
                Some(committed_at.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        lags.sort_by(f64::total_cmp);
        let rank =
            |q: f64| lags[((lags.len() as f64 * q).ceil() as usize).clamp(1, lags.len()) - 1];
        let rate = acked.len() as f64 / started.elapsed().as_secs_f64();
        out.push_str(&format!(
            "projector lag at {rate:.0} events/s for {seconds}s ({} events): p50 {:.2} ms, p99 \
             {:.2} ms, max {:.2} ms (target p99 <= 50 ms: {})\n",
            lags.len(),
            rank(0.5),
            rank(0.99),
            rank(1.0),
            if rank(0.99) <= 50.0 { "met" } else { "MISSED" }
        ));
        store.close().await.expect("close");
    });
}

fn main() {
    let mode = RunMode::from_args_and_env("report");
    mode.announce("replay");
    let runtime = runtime();
    let mut criterion = Criterion::default().configure_from_args();
    if !mode.report || std::env::args().all(|a| a != "report") {
        criterion_group(&mut criterion, &mode, &runtime);
    }
    if mode.report {
        let mut out = String::from("\n== hybridstore Postgres report ==\n");
        report_replay(&mut out, &mode, &runtime);
        report_lag(&mut out, &mode, &runtime);
        println!("{out}");
    }
    criterion.final_summary();
}
