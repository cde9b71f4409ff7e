//! The cache tiers against a real Redis (a key namespace per test, deleted at the end) and the
//! cache sink against a real Postgres: the floor rules in each tier, the cache race (and its
//! mutation check), Redis cut mid-run behind the breaker, invalidations across processes with
//! gaps and resubscriptions, invalidation only after Postgres committed, and the Redis
//! configuration variables.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybridstore::ids::{BotId, StreamId, StreamKind};
use hybridstore::projection::{ConversationHead, DailyCounters, ProfileDocument};
use hybridstore::read::cache::{
    BreakerConfig, BreakerState, Cache, CacheKey, CachedValue, RedisConfig, Stored, Tier,
};
use hybridstore::sink::cache::{CacheSink, CacheSinkConfig};
use hybridstore::sink::postgres::{PgSink, ProjectorConfig};
use hybridstore::sink::RunnerConfig;
use hybridstore::testing::{
    build_event, redis_addr, redis_url, EventSpec, RedisNamespace as Namespace, TcpProxy, TestDb,
};
use hybridstore::{ExpectedVersion, NewEvent, Store, StoreConfig};
use hybridstore_wal::Position;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Waits (bounded) until `condition` holds, re-checking after short pauses. The pauses only
/// pace the polling; what a test asserts is the condition, not the time it took.
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `fut` finishes within a generous bound (a cache operation must never hang on Redis).
async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .expect("a cache operation hung")
}

fn bot() -> BotId {
    BotId::new("bot_a").expect("valid")
}

/// A value of `key`'s kind that says which position it was read at.
fn value_at(key: &CacheKey, position: u64) -> CachedValue {
    match key {
        CacheKey::Head(..) => CachedValue::Head(Some(ConversationHead {
            messages_in: position,
            ..Default::default()
        })),
        CacheKey::Profile(_, chat) => CachedValue::Profile(Some(Arc::new(ProfileDocument {
            chat_id: *chat,
            name: format!("read at {position}"),
            last_activity: None,
            message_count: position,
            summary: Default::default(),
            profile: Default::default(),
            previous_response_id: None,
        }))),
        CacheKey::Config(..) => CachedValue::Config(Some(serde_json::json!(position))),
        CacheKey::Daily(..) => {
            let mut counters = DailyCounters::default();
            counters.messages_in = position;
            CachedValue::Daily(Some(counters))
        }
        CacheKey::User(..) | CacheKey::Messages(..) => CachedValue::Messages(Arc::from(vec![])),
    }
}

async fn position_in(cache: &Cache, tier: Tier, key: &CacheKey) -> Option<Stored> {
    cache.stored(tier, key).await.expect("the tier answers")
}

/// Runs the floor rules on `cache`, checking each tier in `tiers` directly.
async fn check_floor_rules(cache: &Cache, tiers: &[Tier], key: &CacheKey) {
    let expect = |want: Stored| {
        let tiers = tiers.to_vec();
        async move {
            for tier in tiers {
                let got = position_in(cache, tier, key).await;
                let matches = match (&got, &want) {
                    (Some(Stored::Value { position, .. }), Stored::Value { position: p, .. }) => {
                        position == p
                    }
                    (Some(Stored::Floor(f)), Stored::Floor(w)) => f == w,
                    _ => false,
                };
                assert!(matches, "{tier:?}: {got:?}, expected {want:?}");
            }
        }
    };
    let value = |p: u64| Stored::Value {
        value: value_at(key, p),
        position: Position(p),
    };
    cache
        .put(key.clone(), value_at(key, 10), Position(10))
        .await;
    expect(value(10)).await;
    assert!(matches!(
        cache.get(key, None).await,
        Some((_, Position(10), _))
    ));
    cache
        .invalidate(vec![key.clone()], Position(12))
        .await
        .expect("invalidated");
    expect(Stored::Floor(Position(12))).await;
    assert!(
        cache.get(key, None).await.is_none(),
        "below the floor: a miss"
    );
    cache
        .put(key.clone(), value_at(key, 11), Position(11))
        .await;
    expect(Stored::Floor(Position(12))).await;
    assert!(
        cache.get(key, None).await.is_none(),
        "a put below the floor is refused"
    );
    cache
        .put(key.clone(), value_at(key, 12), Position(12))
        .await;
    expect(value(12)).await;
    cache
        .put(key.clone(), value_at(key, 15), Position(15))
        .await;
    cache.put(key.clone(), value_at(key, 9), Position(9)).await;
    expect(value(15)).await;
    let (got, at, _) = cache.get(key, None).await.expect("a hit");
    assert_eq!((got, at), (value_at(key, 15), Position(15)));
    assert!(
        cache.get(key, Some(Position(15))).await.is_none(),
        "15 has not applied event 15"
    );
    assert!(cache.get(key, Some(Position(14))).await.is_some());
    cache
        .invalidate(vec![key.clone()], Position(13))
        .await
        .expect("invalidated");
    expect(value(15)).await;
}

/// Proves the floor rules (a value below a floor is gone, a put below it refused, a put at it
/// accepted, an older put never replaces a newer value) in tier 1 alone, tier 2 alone, and
/// both; and that a fresh process sharing Redis reads the value from tier 2, promotes it, and
/// refuses an older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floors_in_each_tier() {
    let ns = Namespace::new();
    let url = redis_url();
    let memory_only = Cache::open(ns.config(None, true)).await.expect("opens");
    check_floor_rules(&memory_only, &[Tier::Memory], &CacheKey::Head(bot(), 1)).await;

    let redis_only = Cache::open(ns.config(Some(&url), false))
        .await
        .expect("opens");
    check_floor_rules(&redis_only, &[Tier::Redis], &CacheKey::Profile(bot(), 2)).await;
    assert!(redis_only.stats().total(Tier::Redis).hits > 0);

    // A namespace of its own: a cache subscribing to one where floors up to 12 were published
    // refuses tier-1 puts below 12 for keys it holds nothing for (its watermark).
    let ns = Namespace::new();
    let both = Cache::open(ns.config(Some(&url), true))
        .await
        .expect("opens");
    let key = CacheKey::Config(bot(), "scope:with:colons".into(), "key".into());
    check_floor_rules(&both, &[Tier::Memory, Tier::Redis], &key).await;

    let fresh = Cache::open(ns.config(Some(&url), true))
        .await
        .expect("opens");
    assert!(position_in(&fresh, Tier::Memory, &key).await.is_none());
    let (value, at, tier) = fresh.get(&key, None).await.expect("tier 2 has it");
    assert_eq!(
        (value, at, tier),
        (value_at(&key, 15), Position(15), Tier::Redis)
    );
    assert!(matches!(
        position_in(&fresh, Tier::Memory, &key).await,
        Some(Stored::Value {
            position: Position(15),
            ..
        })
    ));
    fresh.put(key.clone(), value_at(&key, 9), Position(9)).await;
    for tier in [Tier::Memory, Tier::Redis] {
        assert!(matches!(
            position_in(&fresh, tier, &key).await,
            Some(Stored::Value {
                position: Position(15),
                ..
            })
        ));
    }
}

fn race_keys() -> Vec<CacheKey> {
    vec![
        CacheKey::Head(bot(), 1),
        CacheKey::Profile(bot(), 2),
        CacheKey::Config(bot(), "s".into(), "k".into()),
        CacheKey::Daily(bot(), 20_000),
    ]
}

/// Randomized read-throughs and invalidations over a few keys, then, per key, one slow
/// read-through forced to land after the invalidation that followed its read. Returns the last
/// committed position of each key.
///
/// A read-through takes the key's committed position (what a Postgres read would reflect),
/// yields, then puts a value at it; an invalidation bumps the committed position (a batch
/// committed), yields, then sets the floor there.
async fn race(cache: &Cache, keys: &[CacheKey], operations: usize, seed: u64) -> Vec<u64> {
    let committed: Arc<Vec<AtomicU64>> = Arc::new(keys.iter().map(|_| AtomicU64::new(1)).collect());
    let tasks = 8;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let cache = cache.clone();
        let keys = keys.to_vec();
        let committed = committed.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 100 + task);
            for _ in 0..operations / tasks as usize {
                let k = rng.gen_range(0..keys.len());
                let key = &keys[k];
                if rng.gen_bool(0.7) {
                    if cache.get(key, None).await.is_some() && rng.gen_bool(0.5) {
                        continue;
                    }
                    let read_at = committed[k].load(Ordering::SeqCst);
                    for _ in 0..rng.gen_range(0..4) {
                        tokio::task::yield_now().await;
                    }
                    cache
                        .put(key.clone(), value_at(key, read_at), Position(read_at))
                        .await;
                } else {
                    let floor = committed[k].fetch_add(rng.gen_range(1..3), Ordering::SeqCst);
                    let floor = committed[k].load(Ordering::SeqCst).max(floor);
                    for _ in 0..rng.gen_range(0..2) {
                        tokio::task::yield_now().await;
                    }
                    cache
                        .invalidate(vec![key.clone()], Position(floor))
                        .await
                        .expect("Redis is up");
                }
            }
        }));
    }
    for handle in handles {
        handle.await.expect("a race task panicked");
    }
    // The slow read-through, made certain: it read before the last batch committed and puts
    // after that batch's invalidation (and after this cache's subscriber applied its own
    // notices, so nothing but the floor stands between the put and the tier).
    let mut slow = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let read_at = committed[k].load(Ordering::SeqCst);
        let floor = committed[k].fetch_add(1, Ordering::SeqCst) + 1;
        cache
            .invalidate(vec![key.clone()], Position(floor))
            .await
            .expect("Redis is up");
        slow.push((key, read_at));
    }
    if cache.stats().subscribed {
        wait_until("the subscriber applied every notice", || async {
            let stats = cache.stats();
            stats.invalidations_received >= stats.invalidations_published
        })
        .await;
    }
    for (key, read_at) in slow {
        cache
            .put(key.clone(), value_at(key, read_at), Position(read_at))
            .await;
    }
    committed.iter().map(|c| c.load(Ordering::SeqCst)).collect()
}

/// Every value a tier of `cache` holds that is older than its key's last committed position,
/// or whose content is not the one read at its position.
async fn stale_entries(
    cache: &Cache,
    tier: Tier,
    keys: &[CacheKey],
    committed: &[u64],
) -> Vec<String> {
    let mut stale = Vec::new();
    for (key, last) in keys.iter().zip(committed) {
        if let Some(Stored::Value { value, position }) = position_in(cache, tier, key).await {
            if position.0 < *last {
                stale.push(format!(
                    "{tier:?} {key:?}: a value at {position}, committed {last}"
                ));
            }
            if value != value_at(key, position.0) {
                stale.push(format!(
                    "{tier:?} {key:?}: the value is not the one read at {position}"
                ));
            }
        }
    }
    stale
}

/// Proves the cache race: thousands of randomized concurrent read-throughs and invalidations
/// (plus a read-through certain to land late) never leave tier 1 or tier 2 holding a value
/// older than its key's last committed position — in tier 1 alone, tier 2 alone and both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_race_never_leaves_an_older_value() {
    let url = redis_url();
    let keys = race_keys();
    for (memory, redis, tiers) in [
        (true, false, vec![Tier::Memory]),
        (false, true, vec![Tier::Redis]),
        (true, true, vec![Tier::Memory, Tier::Redis]),
    ] {
        let ns = Namespace::new();
        let cache = Cache::open(ns.config(redis.then_some(url.as_str()), memory))
            .await
            .expect("opens");
        let committed = race(&cache, &keys, 4000, 7).await;
        for tier in tiers {
            let stale = stale_entries(&cache, tier, &keys, &committed).await;
            assert!(stale.is_empty(), "{stale:#?}");
        }
        let stats = cache.stats();
        let refused = stats.total(Tier::Memory).refused + stats.total(Tier::Redis).refused;
        assert!(refused > 0, "the race never met a floor: {stats:?}");
    }
}

/// Proves the race check detects staleness: with invalidation made a plain delete (the
/// test-only switch), the same race leaves stale values in both tiers, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_delete_fails_the_race_check() {
    let url = redis_url();
    let keys = race_keys();
    let ns = Namespace::new();
    let mut config = ns.config(Some(&url), true);
    config.plain_delete_for_tests = true;
    let cache = Cache::open(config).await.expect("opens");
    assert!(cache.is_plain_delete());
    let committed = race(&cache, &keys, 400, 8).await;
    for tier in [Tier::Memory, Tier::Redis] {
        let stale = stale_entries(&cache, tier, &keys, &committed).await;
        assert_eq!(stale.len(), keys.len(), "{tier:?}: {stale:#?}");
    }
}

/// Proves a Redis cut mid-run never fails or hangs a get or a put, opens the breaker (the
/// stats say so, errors counted, tier 2 then skipped), and that after the connection is
/// restored a trial closes it and tier 2 answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_opens_then_closes_the_breaker() {
    let ns = Namespace::new();
    let proxy = TcpProxy::start(redis_addr().await).await;
    let mut config = ns.config(Some(&format!("redis://{}", proxy.addr)), false);
    config.breaker = BreakerConfig {
        failures_to_open: 2,
        open_for: Duration::from_millis(200),
    };
    config.redis_timeout = Duration::from_millis(100);
    let cache = Cache::open(config).await.expect("opens");
    let key = CacheKey::Head(bot(), 3);
    cache.put(key.clone(), value_at(&key, 5), Position(5)).await;
    assert!(matches!(
        cache.get(&key, None).await,
        Some((_, Position(5), Tier::Redis))
    ));
    assert_eq!(cache.stats().breaker, Some(BreakerState::Closed));

    proxy.cut();
    wait_until("the breaker opens", || async {
        assert!(
            bounded(cache.get(&key, None)).await.is_none(),
            "no tier answers while cut"
        );
        bounded(cache.put(key.clone(), value_at(&key, 6), Position(6))).await;
        cache.stats().breaker == Some(BreakerState::Open)
    })
    .await;
    let stats = cache.stats();
    assert!(stats.total(Tier::Redis).errors >= 2, "{stats:?}");
    let skipped = stats.total(Tier::Redis).skipped;
    assert!(bounded(cache.get(&key, None)).await.is_none());
    if cache.stats().breaker == Some(BreakerState::Open) {
        assert!(
            cache.stats().total(Tier::Redis).skipped > skipped,
            "open: tier 2 skipped"
        );
    }

    proxy.restore();
    wait_until("the breaker closes after a trial", || async {
        bounded(cache.get(&key, None)).await;
        cache.stats().breaker == Some(BreakerState::Closed)
    })
    .await;
    let hit = bounded(cache.get(&key, None)).await;
    assert!(
        matches!(hit, Some((_, Position(5), Tier::Redis))),
        "{hit:?}"
    );
}

/// Proves invalidations cross processes: B's invalidation, once A received it, keeps A from
/// serving its old tier-1 value; a gap in the sequence (a message published with numbers
/// skipped) flushes A's tier 1; and so does A's resubscription after its connection was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_cross_processes() {
    let ns = Namespace::new();
    let url = redis_url();
    let a = Cache::open(ns.config(Some(&url), true))
        .await
        .expect("opens");
    let b = Cache::open(ns.config(Some(&url), true))
        .await
        .expect("opens");
    wait_until("both subscribed", || async {
        a.stats().subscribed && b.stats().subscribed
    })
    .await;
    let key = CacheKey::Profile(bot(), 4);
    a.put(key.clone(), value_at(&key, 10), Position(10)).await;
    assert!(matches!(
        a.get(&key, None).await,
        Some((_, Position(10), Tier::Memory))
    ));

    let received = a.stats().invalidations_received;
    b.invalidate(vec![key.clone()], Position(12))
        .await
        .expect("invalidated");
    wait_until("A received B's invalidation", || async {
        a.stats().invalidations_received > received
    })
    .await;
    assert!(
        a.get(&key, None).await.is_none(),
        "A served a value older than the invalidation"
    );
    assert_eq!(
        position_in(&a, Tier::Memory, &key).await,
        Some(Stored::Floor(Position(12)))
    );

    // A gap: a message whose sequence number skips some (as if they were lost).
    let other = CacheKey::Head(bot(), 5);
    a.put(other.clone(), value_at(&other, 20), Position(20))
        .await;
    assert!(position_in(&a, Tier::Memory, &other).await.is_some());
    let mut conn = ns.redis().await;
    let seq: u64 = redis::cmd("GET")
        .arg(format!("{}:v1:invalidation-seq", ns.name))
        .query_async(&mut conn)
        .await
        .expect("the sequence");
    let notice = serde_json::json!({"origin": uuid::Uuid::now_v7(), "floor": 0, "keys": []});
    let message = format!("{} {:020} {notice}", seq + 5, 12);
    let gaps = a.stats().gaps_seen;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}:v1:invalidations", ns.name))
        .arg(message)
        .query_async(&mut conn)
        .await
        .expect("published");
    wait_until("A saw the gap", || async { a.stats().gaps_seen > gaps }).await;
    assert!(
        position_in(&a, Tier::Memory, &other).await.is_none(),
        "the gap flushed tier 1"
    );
    assert!(a.memory_watermark() >= Some(Position(12)));

    // A resubscription: C's connections cut and restored.
    let proxy = TcpProxy::start(redis_addr().await).await;
    let c = Cache::open(ns.config(Some(&format!("redis://{}", proxy.addr)), true))
        .await
        .expect("opens");
    wait_until("C subscribed", || async { c.stats().subscriptions == 1 }).await;
    let third = CacheKey::Daily(bot(), 20_001);
    c.put(third.clone(), value_at(&third, 30), Position(30))
        .await;
    assert!(position_in(&c, Tier::Memory, &third).await.is_some());
    proxy.cut();
    wait_until("C lost its subscription", || async {
        !c.stats().subscribed
    })
    .await;
    proxy.restore();
    wait_until("C subscribed again", || async {
        c.stats().subscriptions == 2
    })
    .await;
    assert!(
        position_in(&c, Tier::Memory, &third).await.is_none(),
        "the resubscription flushed tier 1"
    );
}

async fn checkpoint(pool: &sqlx::PgPool, component: &str) -> u64 {
    let next: i64 =
        sqlx::query_scalar("SELECT next_position FROM projector_checkpoints WHERE component = $1")
            .bind(component)
            .fetch_one(pool)
            .await
            .expect("a checkpoint");
    u64::try_from(next).expect("not negative")
}

async fn append_message(store: &Store, chat: i64, argument: u8) -> Position {
    let event = build_event(
        StreamKind::Conversation,
        EventSpec {
            selector: 5,
            argument,
            day: 0,
        },
    );
    store
        .append(
            &StreamId::conversation(&bot(), chat),
            ExpectedVersion::Any,
            vec![NewEvent::new(event)],
        )
        .await
        .expect("appended")
        .first_position
}

/// Proves the cache sink invalidates behind Postgres: a profile cached at an old position stays
/// while Postgres cannot commit the batch that changes it (the sink waits, then retries), and
/// is replaced by a floor once Postgres committed, never above Postgres's checkpoint; its
/// cursors are kept in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_sink_invalidates_after_postgres_commits() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::open(StoreConfig::new(dir.path()))
        .await
        .expect("opens");
    let db = TestDb::create("cache_sink").await;
    let direct = db.pool().await;
    let target = format!(
        "{}:{}",
        db.config.connect.get_host(),
        db.config.connect.get_port()
    );
    let target = tokio::net::lookup_host(target)
        .await
        .expect("resolve Postgres")
        .next()
        .expect("an address");
    let proxy = TcpProxy::start(target).await;
    let mut through_proxy = db.config.clone();
    through_proxy.connect = through_proxy
        .connect
        .host(&proxy.addr.ip().to_string())
        .port(proxy.addr.port());
    let runner = RunnerConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..Default::default()
    };
    append_message(&store, 7, 1).await;
    let pg = PgSink::start(
        store.clone(),
        through_proxy.connect().await.expect("connects"),
        ProjectorConfig {
            runner: runner.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("the Postgres sink starts");
    assert!(pg.wait_for(Position(0), Duration::from_secs(20)).await);

    let ns = Namespace::new();
    let cache = Cache::open(ns.config(Some(&redis_url()), true))
        .await
        .expect("opens");
    let sink = CacheSink::start(
        store.clone(),
        cache.clone(),
        &pg,
        CacheSinkConfig {
            commit_wait: Duration::from_millis(300),
            runner: runner.clone(),
            ..Default::default()
        },
    )
    .expect("the cache sink starts");
    assert!(sink.wait_for(Position(0), Duration::from_secs(20)).await);

    let key = CacheKey::Profile(bot(), 7);
    cache.put(key.clone(), value_at(&key, 1), Position(1)).await;
    for tier in [Tier::Memory, Tier::Redis] {
        assert!(matches!(
            position_in(&cache, tier, &key).await,
            Some(Stored::Value {
                position: Position(1),
                ..
            })
        ));
    }

    proxy.cut();
    let changed = append_message(&store, 7, 2).await;
    wait_until(
        "the cache sink gave up waiting for Postgres once",
        || async { sink.status().retrying },
    )
    .await;
    assert_eq!(
        checkpoint(&direct, "profiles").await,
        1,
        "Postgres could not commit"
    );
    for tier in [Tier::Memory, Tier::Redis] {
        assert!(
            matches!(
                position_in(&cache, tier, &key).await,
                Some(Stored::Value {
                    position: Position(1),
                    ..
                })
            ),
            "{tier:?}: invalidated before Postgres committed"
        );
    }
    let why = sink.status().retrying_after().map(str::to_owned);
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("waiting for the postgres sink")),
        "{why:?}"
    );

    proxy.restore();
    wait_until("the floor appears in Redis", || async {
        matches!(
            position_in(&cache, Tier::Redis, &key).await,
            Some(Stored::Floor(_))
        )
    })
    .await;
    // The order itself is what the cut above proved (no floor while Postgres could not
    // commit); here the floor is the batch's end and Postgres stands at or past it.
    let Some(Stored::Floor(floor)) = position_in(&cache, Tier::Redis, &key).await else {
        panic!("the floor went away");
    };
    let committed = checkpoint(&direct, "profiles").await;
    assert_eq!(floor, changed.advance(1));
    assert!(
        committed >= floor.0,
        "invalidated at {floor}, Postgres at {committed}"
    );
    assert_eq!(
        position_in(&cache, Tier::Memory, &key).await,
        Some(Stored::Floor(floor))
    );
    assert!(cache.get(&key, None).await.is_none());
    assert!(sink.wait_for(changed, Duration::from_secs(20)).await);

    let mut conn = ns.redis().await;
    let cursor: String = redis::cmd("GET")
        .arg(format!("{}:v1:cursor:profiles", ns.name))
        .query_async(&mut conn)
        .await
        .expect("the cursor is in Redis");
    assert!(cursor.starts_with(&format!("{}:", floor.0)), "{cursor}");
    sink.stop().await;
    pg.stop().await;
    store.close().await.expect("closes");
}

fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Proves the Redis configuration variables: `REDIS_URL` (with TLS), host/port/password and
/// the connection count, no variables = tier 2 off, half configurations and bad values refused
/// naming the variable, and the password never in `target()` nor `Debug`.
#[test]
fn redis_config_from_vars() {
    let url = RedisConfig::from_vars(vars(&[(
        "REDIS_URL",
        "redis://:s3cret@cache.internal:6380/2",
    )]))
    .expect("valid")
    .expect("configured");
    assert_eq!(url.target(), "redis://cache.internal:6380/2");
    assert_eq!(url.connection.redis_settings().password(), Some("s3cret"));
    assert!(!format!("{url:?}").contains("s3cret"));

    let tls = RedisConfig::from_vars(vars(&[(
        "REDIS_URL",
        "rediss://bot:pw@secure.example:6390",
    )]))
    .expect("valid")
    .expect("configured");
    assert_eq!(tls.target(), "rediss://bot@secure.example:6390/0");

    let parts = RedisConfig::from_vars(vars(&[
        ("REDIS_HOST", "10.0.0.5"),
        ("REDIS_PORT", "6381"),
        ("REDIS_PASSWORD", "p@ss:word"),
        ("REDIS_MAX_CONNECTIONS", "8"),
    ]))
    .expect("valid")
    .expect("configured");
    assert_eq!(parts.target(), "redis://10.0.0.5:6381/0");
    assert_eq!(parts.max_connections, 8);
    assert_eq!(
        parts.connection.redis_settings().password(),
        Some("p@ss:word")
    );
    assert!(!format!("{parts:?}").contains("p@ss"));

    let host_only = RedisConfig::from_vars(vars(&[("REDIS_HOST", "localhost")]))
        .expect("valid")
        .expect("configured");
    assert_eq!(host_only.target(), "redis://localhost:6379/0");

    assert!(
        RedisConfig::from_vars(vars(&[])).expect("valid").is_none(),
        "no Redis: tier 2 off"
    );

    for (pairs, variable) in [
        (vec![("REDIS_PORT", "6379")], "REDIS_PORT"),
        (vec![("REDIS_PASSWORD", "x")], "REDIS_PASSWORD"),
        (
            vec![("REDIS_HOST", "h"), ("REDIS_PORT", "70000")],
            "REDIS_PORT",
        ),
        (vec![("REDIS_HOST", "h"), ("REDIS_PORT", "0")], "REDIS_PORT"),
        (
            vec![("REDIS_HOST", "h"), ("REDIS_MAX_CONNECTIONS", "0")],
            "REDIS_MAX_CONNECTIONS",
        ),
        (vec![("REDIS_URL", "http://h:1")], "REDIS_URL"),
        (
            vec![("REDIS_URL", "redis://:secret@h:notaport")],
            "REDIS_URL",
        ),
    ] {
        let error = RedisConfig::from_vars(vars(&pairs)).expect_err("refused");
        let text = error.to_string();
        assert!(text.starts_with(variable), "{pairs:?}: {text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
