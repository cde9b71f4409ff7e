//! Shared test support (feature `testing`): a generator of valid events of every type, a
//! random workload over several bots, users and chats, a Postgres database per test, a TCP proxy
//! that can cut connections, a fake server that refuses every password, table dumps for
//! comparing databases, and a Redis key namespace per test. Used by the integration tests, the replay tool's tests and the benches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::events::{
    AnalyticsRecorded, ComponentStateChanged, ConfigValueSet, ConfigValueUnset,
    ConversationAnalyzed, Event, FollowupCancelled, FollowupFired, FollowupScheduled, Generation,
    HistoryCleared, Identity, JsonText, MessageReceived, MessageSent, ProfileCreated,
    ProfileDeleted, ProfileFactsRecorded, ProfileLegacyStateImported, ProfileRenamed, UserBlocked,
    UserErased, UserIdentityUpdated, UserRegistered, UserSettingsChanged, UserUnblocked,
};
use crate::ids::{BotId, Component, MigrationState, StreamId, StreamKind, Timestamp};
use crate::read::cache::{CacheConfig, RedisConfig};
use crate::sink::postgres::model::component_tables;
use crate::sink::postgres::PgConfig;
use crate::store::{ExpectedVersion, NewEvent, Store};

/// 2026-11-18T00:00:00Z: the first day of generated events.
pub const DAY_ZERO_MS: i64 = 20_775 * 86_400_000;

/// One event to build: a selector (which type, among those of the stream's kind), an argument
/// that varies its content, and the day it happened.
#[derive(Debug, Clone, Copy)]
pub struct EventSpec {
    /// Which type, among those of the stream's kind.
    pub selector: u8,
    /// Varies the content.
    pub argument: u8,
    /// Days after [`DAY_ZERO_MS`].
    pub day: i64,
}

/// A JSON value as events carry it.
pub fn json_text(value: serde_json::Value) -> JsonText {
    JsonText::from_value(&value)
}

/// Builds a valid event for a stream of `kind`.
pub fn build_event(kind: StreamKind, spec: EventSpec) -> Event {
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
                    Event::UserErased(UserErased { keys: Vec::new() })
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

/// Appends `appends` random appends (1-3 events each) over two bots, 20 users and 30 chats per
/// bot, mostly messages, every event type included; deterministic for a `seed`. Returns the
/// log's end.
///
/// # Panics
/// If an append fails (the generated events are valid).
pub async fn append_workload(
    store: &Store,
    appends: usize,
    seed: u64,
) -> hybridstore_wal::Position {
    let mut rng = StdRng::seed_from_u64(seed);
    let bots = [
        BotId::new("bot_a").expect("valid"),
        BotId::new("bot_b").expect("valid"),
    ];
    for _ in 0..appends {
        let bot = &bots[rng.gen_range(0..bots.len())];
        let stream = match rng.gen_range(0..20) {
            0 => StreamId::bot(bot),
            1 => StreamId::telemetry(bot),
            2..=4 => StreamId::user(bot, rng.gen_range(1..=20)),
            _ => StreamId::conversation(bot, rng.gen_range(1..=30)),
        };
        let count = rng.gen_range(1..=3);
        let events: Vec<NewEvent> = (0..count)
            .map(|_| {
                // Conversations: mostly messages (selectors 5-8), the rest of the types too.
                let selector = if stream.kind() == StreamKind::Conversation && rng.gen_bool(0.7) {
                    rng.gen_range(5..=8)
                } else {
                    rng.gen()
                };
                let spec = EventSpec {
                    selector,
                    argument: rng.gen(),
                    day: rng.gen_range(0..3),
                };
                NewEvent::new(build_event(stream.kind(), spec)).at(Timestamp(
                    DAY_ZERO_MS + spec.day * 86_400_000 + i64::from(spec.argument) * 1000,
                ))
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .expect("generated appends are valid");
    }
    store.durable_end()
}

/// Appends a bot's realistic history: `chats` chats of `exchanges` exchanges each (a message in,
/// a generated reply), a profile per chat, an analysis with facts every 10 exchanges, a user per
/// chat; chats are written a few hundred events per append. The bot is `bench`; see
/// [`append_chat_history_of`] for another. Returns the log's end.
///
/// # Panics
/// If an append fails.
pub async fn append_chat_history(
    store: &Store,
    chats: i64,
    exchanges: u64,
) -> hybridstore_wal::Position {
    let bot = BotId::new("bench").expect("valid");
    append_chat_history_of(store, &bot, chats, exchanges).await
}

/// [`append_chat_history`] for `bot`: the same events, so two bots filled alike hold the same
/// data under different keys (a bench compares one bot's reads from one source with the other's
/// from another).
///
/// # Panics
/// If an append fails.
pub async fn append_chat_history_of(
    store: &Store,
    bot: &BotId,
    chats: i64,
    exchanges: u64,
) -> hybridstore_wal::Position {
    for chat in 1..=chats {
        let at = |turn: u64| {
            Timestamp(DAY_ZERO_MS + chat * 1000 + i64::try_from(turn).unwrap_or(0) * 60_000)
        };
        store
            .append(
                &StreamId::user(bot, chat),
                ExpectedVersion::Any,
                vec![NewEvent::new(Event::UserRegistered(UserRegistered {
                    identity: Identity {
                        username: Some(format!("user{chat}")),
                        first_name: Some("Anna".into()),
                        last_name: None,
                        language_code: Some("en".into()),
                    },
                }))
                .at(at(0))],
            )
            .await
            .expect("append");
        let stream = StreamId::conversation(bot, chat);
        let mut events = vec![NewEvent::new(Event::ProfileCreated(ProfileCreated {
            name: format!("partner {chat}"),
        }))
        .at(at(0))];
        for turn in 0..exchanges {
            events.push(
                NewEvent::new(Event::MessageReceived(MessageReceived {
                    telegram_message_id: i64::try_from(turn * 2 + 1).ok(),
                    text: format!("hi! what are you up to tonight? ({turn})"),
                    content_type: "text".into(),
                    legacy_ts: None,
                }))
                .at(at(turn)),
            );
            events.push(
                NewEvent::new(Event::MessageSent(MessageSent {
                    text: format!("just got home, thinking about a film - any ideas? ({turn})"),
                    kind: "reply".into(),
                    generation: Some(Generation {
                        model: "gpt-4o-mini".into(),
                        response_id: Some(format!("resp_{chat}_{turn}")),
                        prompt_tokens: 400,
                        completion_tokens: 40,
                        latency_ms: 800,
                    }),
                    legacy_ts: None,
                }))
                .at(at(turn)),
            );
            if turn % 10 == 9 {
                events.push(
                    NewEvent::new(Event::ConversationAnalyzed(ConversationAnalyzed {
                        analysis_id: format!("analysis-{turn}"),
                        summary: "They talked about films and seemed cheerful.".into(),
                    }))
                    .at(at(turn)),
                );
                events.push(
                    NewEvent::new(Event::ProfileFactsRecorded(ProfileFactsRecorded {
                        snapshot_id: format!("analysis-{turn}"),
                        facts: json_text(json!({"mood": "cheerful", "interests": ["films"]})),
                    }))
                    .at(at(turn)),
                );
            }
            if events.len() >= 200 || turn + 1 == exchanges {
                store
                    .append(&stream, ExpectedVersion::Any, std::mem::take(&mut events))
                    .await
                    .expect("append");
            }
        }
    }
    store.durable_end()
}

/// The server tests use: `HYBRIDSTORE_TEST_DATABASE_URL`, else `DATABASE_URL` (which
/// `tools/test.sh` sets from `tools/services.sh`), else the local default.
pub fn admin_url() -> String {
    ["HYBRIDSTORE_TEST_DATABASE_URL", "DATABASE_URL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database of its own for one test, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// The database's name.
    pub name: String,
    /// How to reach it (pool of 1-5).
    pub config: PgConfig,
}

impl TestDb {
    /// Creates a fresh, empty database named after `tag`.
    ///
    /// # Panics
    /// If the server cannot be reached (the test suite needs it: run `tools/test.sh`).
    pub async fn create(tag: &str) -> TestDb {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let admin = PgConfig::from_url(&admin_url()).expect("the test database URL parses");
        let name = format!(
            "hs_test_{tag}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = PgConnection::connect_with(&admin.connect)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the tests need Postgres at {} (run tools/test.sh, which starts it): {}",
                    admin.target(),
                    crate::sink::postgres::describe(&e)
                )
            });
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .expect("drop an old test database");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let mut config = admin.with_database(&name);
        config.pool_min = 1;
        config.pool_max = 5;
        TestDb { name, config }
    }

    /// A TCP proxy in front of the database's server (for cutting the connections).
    ///
    /// # Panics
    /// If the server's address does not resolve.
    pub async fn proxy(&self) -> TcpProxy {
        let target = format!(
            "{}:{}",
            self.config.connect.get_host(),
            self.config.connect.get_port()
        );
        let target = tokio::net::lookup_host(target)
            .await
            .expect("the database's address resolves")
            .next()
            .expect("the database has an address");
        TcpProxy::start(target).await
    }

    /// The database's configuration reached through `proxy`.
    pub fn config_through(&self, proxy: &TcpProxy) -> PgConfig {
        let mut config = self.config.clone();
        config.connect = config
            .connect
            .host(&proxy.addr.ip().to_string())
            .port(proxy.addr.port());
        config
    }

    /// A pool on the database.
    ///
    /// # Panics
    /// If it cannot connect.
    pub async fn pool(&self) -> PgPool {
        self.config
            .connect()
            .await
            .expect("connect to the test database")
    }

    /// `postgres://user@host:port/name`, for command-line tools.
    pub fn url(&self) -> String {
        let c = &self.config.connect;
        format!(
            "postgres://{}@{}:{}/{}",
            c.get_username(),
            c.get_host(),
            c.get_port(),
            self.name
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = PgConfig::from_url(&admin_url()).ok()?;
                let mut conn = PgConnection::connect_with(&admin.connect).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Every row of every read-model table as text, sorted: equal dumps mean equal tables.
///
/// # Panics
/// If a query fails.
pub async fn dump_tables(pool: &PgPool) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for component in Component::ALL {
        for table in component_tables(component) {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT t::text FROM {table} t ORDER BY 1"))
                    .fetch_all(pool)
                    .await
                    .unwrap_or_else(|e| panic!("dump {table}: {e}"));
            out.push(((*table).to_owned(), rows));
        }
    }
    out
}

/// A TCP proxy in front of a server that can cut every connection and refuse new ones, then
/// let them through again: a database outage without stopping the shared server.
#[derive(Debug)]
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy to `target` on a free local port.
    ///
    /// # Panics
    /// If no local port can be bound.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = listener.local_addr().expect("a bound address");
        let down = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let task = {
            let down = down.clone();
            let cuts = cuts.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let mut cut = cuts.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        TcpProxy {
            addr,
            down,
            cuts,
            task,
        }
    }

    /// Cuts every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cuts.send_modify(|n| *n += 1);
    }
}

/// A server that speaks just enough of the Postgres protocol to ask for a password and refuse
/// it, as a server with password authentication does for a wrong one (SQLSTATE 28P01). The
/// shared test server trusts every local connection, so a real refusal cannot be had from it.
///
/// # Panics
/// If no local port can be bound.
pub async fn password_refusing_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = refuse_password(&mut client).await;
            });
        }
    });
    addr
}

async fn refuse_password(client: &mut TcpStream) -> std::io::Result<()> {
    const SSL_REQUEST: i32 = 80_877_103;
    loop {
        let len = client.read_i32().await?;
        let mut body = vec![0u8; usize::try_from(len - 4).unwrap_or(0)];
        client.read_exact(&mut body).await?;
        if body.len() >= 4
            && i32::from_be_bytes([body[0], body[1], body[2], body[3]]) == SSL_REQUEST
        {
            client.write_all(b"N").await?;
            continue;
        }
        break;
    }
    // AuthenticationCleartextPassword.
    client.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    let _tag = client.read_u8().await?;
    let len = client.read_i32().await?;
    let mut password = vec![0u8; usize::try_from(len - 4).unwrap_or(0)];
    client.read_exact(&mut password).await?;
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "password authentication failed for user \"bot\""),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(i32::try_from(fields.len() + 4).unwrap_or(0)).to_be_bytes());
    message.extend_from_slice(&fields);
    client.write_all(&message).await?;
    client.shutdown().await
}

/// The Redis tests use: `REDIS_URL` (which `tools/test.sh` sets from `tools/services.sh`), else
/// the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

/// The address of that Redis (for a [`TcpProxy`] in front of it).
///
/// # Panics
/// If the URL does not parse or name a TCP address.
pub async fn redis_addr() -> SocketAddr {
    use redis::IntoConnectionInfo as _;
    let info = redis_url()
        .into_connection_info()
        .expect("REDIS_URL parses");
    let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        panic!("the tests need Redis over plain TCP");
    };
    let mut found = tokio::net::lookup_host(format!("{host}:{port}"))
        .await
        .expect("resolve Redis");
    found.next().expect("an address")
}

/// A Redis key namespace for one test; its keys are deleted when it is dropped.
#[derive(Debug)]
pub struct RedisNamespace {
    /// The prefix of its keys.
    pub name: String,
}

impl RedisNamespace {
    /// A fresh namespace.
    #[expect(
        clippy::new_without_default,
        reason = "each call is a new namespace, not a default value"
    )]
    pub fn new() -> RedisNamespace {
        RedisNamespace {
            name: format!("hs-test-{}", uuid::Uuid::now_v7()),
        }
    }

    /// A configuration on this namespace: `redis` through `url` (or none), tier 1 on or off.
    ///
    /// # Panics
    /// If `url` is not a Redis URL.
    pub fn config(&self, url: Option<&str>, memory: bool) -> CacheConfig {
        CacheConfig {
            memory_bytes: if memory { 16 * 1024 * 1024 } else { 0 },
            namespace: self.name.clone(),
            redis: url.map(|u| RedisConfig::from_url(u).expect("a valid URL")),
            ..CacheConfig::default()
        }
    }

    /// A connection of the test's own to that Redis.
    ///
    /// # Panics
    /// If Redis cannot be reached.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(redis_url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("the tests need Redis at REDIS_URL (run tools/test.sh, which starts it)")
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.name);
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

/// An HTTP response as a test sees it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON.
    ///
    /// # Panics
    /// If it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a test talks HTTP to a daemon.
#[derive(Debug, Clone)]
pub enum HttpTarget {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix socket.
    Unix(std::path::PathBuf),
}

/// One HTTP/1.1 request (`Connection: close`) and its whole response: a deliberately small
/// client, so the daemon's tests exercise the daemon, not a client library.
///
/// # Errors
/// When the connection fails or the response does not parse.
pub async fn http(
    target: &HttpTarget,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        // JSON unless the caller says otherwise.
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    let raw = match target {
        HttpTarget::Tcp(addr) => {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(&bytes).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            raw
        }
        HttpTarget::Unix(path) => {
            let mut stream = tokio::net::UnixStream::connect(path).await?;
            stream.write_all(&bytes).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            raw
        }
    };
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(|| bad("short chunk"))?);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        body = out;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Waits (at most 60 s) until `hybrid`'s Postgres projector has committed `position` for every
/// component it runs (a backfill on a loaded machine takes a while).
///
/// # Panics
/// If `hybrid` has no supervisor, or the projector does not get there in time.
pub async fn projected_past(hybrid: &crate::hybrid::Hybrid, position: hybridstore_wal::Position) {
    let mut status = hybrid.supervisor().expect("a handle with Postgres").watch();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        status.wait_for(|s| {
            !s.components.is_empty() && s.components.values().all(|c| c.committed > position)
        }),
    )
    .await
    .expect("the projector caught up within 60 s")
    .expect("the supervisor runs");
}
