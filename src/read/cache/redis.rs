//! Tier 2: Redis, shared by every process of a namespace, behind the circuit breaker; and the
//! subscriber that applies other processes' invalidations to this process's tier 1.
//!
//! # Keys (one namespace per log; `v1` is [`super::SCHEMA_VERSION`])
//! - `{ns}:v1:{bot}:{component}:{id}`: an entry, `{position:020}v{json}` (a value and the
//!   position it reflects) or `{position:020}f` (a floor). Positions are zero-padded to 20
//!   digits so the scripts compare them as strings, exactly, over the whole `u64` range.
//! - `{ns}:v1:floor-all`: a floor for every key of the namespace (raised when an invalidator
//!   starts without cursors and cannot tell what it missed).
//! - `{ns}:v1:invalidation-seq`, `{ns}:v1:floor-max`: the last invalidation's sequence number
//!   and the highest floor ever published.
//! - `{ns}:v1:cursor:{component}`, `{ns}:v1:cursor-log`: the cache sink's cursors.
//!
//! # The invalidation channel `{ns}:v1:invalidations`
//! Each message is `{seq} {floor_max:020} {json}`, where the JSON is a [`Notice`]. The script
//! that sets the floors takes the next `seq` (`INCR`) and publishes in the same atomic step, so
//! messages arrive in sequence order and a missing number means a lost message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use hybridstore_wal::Position;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, RedisError, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::breaker::{Breaker, Permit};
use super::config::{CacheConfig, RedisConfig};
use super::memory::Memory;
use super::stats::Stats;
use super::{CacheError, CacheKey, CachedValue, Stored, SCHEMA_VERSION};

/// Sets a value unless a later value, a higher floor or the namespace floor says it is older.
/// KEYS: entry, floor-all. ARGV: position (20 digits), payload, TTL in ms. Returns 1 if set.
const PUT: &str = r"
local pos = ARGV[1]
local all = redis.call('GET', KEYS[2])
if all and pos < all then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur then
  local at = string.sub(cur, 1, 20)
  local kind = string.sub(cur, 21, 21)
  if kind == 'v' and at > pos then return 0 end
  if kind == 'f' and pos < at then return 0 end
end
redis.call('SET', KEYS[1], pos .. 'v' .. ARGV[2], 'PX', ARGV[3])
return 1
";

/// Sets the floor of each entry (unless it holds a value or floor at or past it), then takes
/// the next sequence number and publishes the notice. KEYS: seq, floor-max, entries...
/// ARGV: floor (20 digits), channel, notice JSON, then a TTL in ms per entry. Returns the seq.
const INVALIDATE: &str = r"
local floor = ARGV[1]
for i = 3, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if not (cur and string.sub(cur, 1, 20) >= floor) then
    redis.call('SET', KEYS[i], floor .. 'f', 'PX', ARGV[i + 1])
  end
end
local max = redis.call('GET', KEYS[2])
if (not max) or max < floor then
  redis.call('SET', KEYS[2], floor)
  max = floor
end
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[2], seq .. ' ' .. max .. ' ' .. ARGV[3])
return seq
";

/// The test-only mutation: deletes the entries instead of setting floors, then publishes as
/// [`INVALIDATE`] does. Same KEYS and ARGV.
const DELETE: &str = r"
local floor = ARGV[1]
for i = 3, #KEYS do
  redis.call('DEL', KEYS[i])
end
local max = redis.call('GET', KEYS[2])
if (not max) or max < floor then
  redis.call('SET', KEYS[2], floor)
  max = floor
end
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[2], seq .. ' ' .. max .. ' ' .. ARGV[3])
return seq
";

/// Raises the namespace floor, then publishes. KEYS: seq, floor-max, floor-all. ARGV: floor,
/// channel, notice JSON. Returns the seq.
const INVALIDATE_ALL: &str = r"
local floor = ARGV[1]
local all = redis.call('GET', KEYS[3])
if (not all) or all < floor then redis.call('SET', KEYS[3], floor) end
local max = redis.call('GET', KEYS[2])
if (not max) or max < floor then
  redis.call('SET', KEYS[2], floor)
  max = floor
end
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[2], seq .. ' ' .. max .. ' ' .. ARGV[3])
return seq
";

/// What one invalidation said, as published on the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Notice {
    /// The process that invalidated (a random id per [`super::Cache`]).
    pub origin: Uuid,
    /// The floor.
    pub floor: u64,
    /// The entries (empty with `all`).
    #[serde(default)]
    pub keys: Vec<CacheKey>,
    /// Every entry of the namespace.
    #[serde(default)]
    pub all: bool,
}

/// The names of a namespace.
#[derive(Debug, Clone)]
pub(super) struct KeySpace {
    prefix: String,
}

impl KeySpace {
    pub(super) fn new(namespace: &str) -> KeySpace {
        KeySpace {
            prefix: format!("{namespace}:v{SCHEMA_VERSION}"),
        }
    }

    pub(super) fn entry(&self, key: &CacheKey) -> String {
        let p = &self.prefix;
        match key {
            CacheKey::User(bot, id) => format!("{p}:{bot}:users:{id}"),
            CacheKey::Profile(bot, chat) => format!("{p}:{bot}:profiles:{chat}"),
            CacheKey::Head(bot, chat) => format!("{p}:{bot}:heads:{chat}"),
            CacheKey::Messages(bot, chat) => format!("{p}:{bot}:messages:{chat}"),
            // The scope's length first: scopes and keys may hold `:` themselves.
            CacheKey::Config(bot, scope, name) => {
                format!("{p}:{bot}:config:{}:{scope}:{name}", scope.len())
            }
            CacheKey::Daily(bot, day) => format!("{p}:{bot}:daily:{day}"),
        }
    }

    pub(super) fn named(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn channel(&self) -> String {
        self.named("invalidations")
    }
}

/// Encodes a position as the scripts compare it.
pub(super) fn padded(position: Position) -> String {
    format!("{:020}", position.0)
}

fn parse_padded(text: &[u8]) -> Option<Position> {
    if text.len() != 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok().map(Position)
}

/// A value as tier 2 holds it: the value, and for messages how many were cached (a process
/// configured to cache more must not take a shorter tail for the whole conversation).
#[derive(Serialize)]
struct PayloadRef<'a> {
    cached: usize,
    value: &'a CachedValue,
}

#[derive(Deserialize)]
struct Payload {
    cached: usize,
    value: CachedValue,
}

/// Tier 2.
pub(super) struct RedisTier {
    client: redis::Client,
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    pub(super) keys: KeySpace,
    pub(super) breaker: Arc<Breaker>,
    timeout: Duration,
    target: String,
    messages_cached: usize,
    plain_delete: bool,
    put: Script,
    invalidate: Script,
    delete: Script,
    invalidate_all: Script,
}

impl RedisTier {
    /// Connects (lazily: an unreachable server is not an error, the breaker starts open).
    pub(super) async fn open(
        redis: &RedisConfig,
        config: &CacheConfig,
    ) -> Result<RedisTier, CacheError> {
        let target = redis.target();
        let client =
            redis::Client::open(redis.connection.clone()).map_err(|e| CacheError::Redis {
                target: target.clone(),
                operation: "open",
                reason: one_line(&e),
            })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.redis_timeout))
            .set_connection_timeout(Some(connect_timeout(config.redis_timeout)))
            // Few, quick reconnection attempts: the breaker decides when to try again.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let connections = (0..redis.max_connections.max(1))
            .map(|_| {
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CacheError::Redis {
                target: target.clone(),
                operation: "open",
                reason: one_line(&e),
            })?;
        let mut tier = RedisTier {
            client,
            connections,
            next: AtomicUsize::new(0),
            keys: KeySpace::new(&config.namespace),
            breaker: Arc::new(Breaker::new(config.breaker.clone(), target.clone(), false)),
            timeout: config.redis_timeout,
            target,
            messages_cached: config.messages_cached,
            plain_delete: config.plain_delete_for_tests,
            put: Script::new(PUT),
            invalidate: Script::new(INVALIDATE),
            delete: Script::new(DELETE),
            invalidate_all: Script::new(INVALIDATE_ALL),
        };
        let ping = tier
            .run("ping", |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await;
        if let Err(error) = ping {
            tracing::warn!(redis = %tier.target, %error, "Redis does not answer at open");
            tier.breaker = Arc::new(Breaker::new(
                config.breaker.clone(),
                tier.target.clone(),
                true,
            ));
        }
        Ok(tier)
    }

    /// `redis://host:port/db`, without the password.
    pub(super) fn target(&self) -> &str {
        &self.target
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    /// Runs one operation with the timeout, without the breaker.
    async fn run<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        match tokio::time::timeout(self.timeout, op(self.connection())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CacheError::Redis {
                target: self.target.clone(),
                operation,
                reason: one_line(&error),
            }),
            Err(_) => Err(CacheError::Timeout {
                target: self.target.clone(),
                operation,
                after: self.timeout,
            }),
        }
    }

    /// Runs one operation through the breaker: skipped while it is open
    /// ([`CacheError::BreakerOpen`]), its outcome reported to it.
    async fn guarded<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let permit: Permit = self.breaker.permit().ok_or(CacheError::BreakerOpen {
            target: self.target.clone(),
        })?;
        let result = self.run(operation, op).await;
        match &result {
            Ok(_) => permit.succeeded(),
            Err(_) => permit.failed(),
        }
        result
    }

    /// The entry of `key` as tier 2 holds it (a value below the namespace floor shows as that
    /// floor). `guard`: through the breaker.
    pub(super) async fn get(
        &self,
        key: &CacheKey,
        guard: bool,
    ) -> Result<Option<Stored>, CacheError> {
        let keys = [self.keys.entry(key), self.keys.named("floor-all")];
        let op = |mut c: ConnectionManager| async move {
            c.mget::<_, Vec<Option<Vec<u8>>>>(&keys).await
        };
        let found = if guard {
            self.guarded("get", op).await?
        } else {
            self.run("get", op).await?
        };
        let mut found = found.into_iter();
        let (Some(entry), floor_all) = (found.next().flatten(), found.next().flatten()) else {
            return Ok(None);
        };
        let stored = self.decode(key, &entry)?;
        let floor_all = floor_all.as_deref().and_then(parse_padded);
        Ok(Some(match floor_all {
            Some(all) if stored.position() < all => Stored::Floor(all),
            _ => stored,
        }))
    }

    fn decode(&self, key: &CacheKey, bytes: &[u8]) -> Result<Stored, CacheError> {
        let bad = |reason: String| CacheError::Decode {
            key: self.keys.entry(key),
            reason,
        };
        let position = bytes
            .get(..20)
            .and_then(parse_padded)
            .ok_or_else(|| bad("no 20-digit position".into()))?;
        match bytes.get(20) {
            Some(b'f') => Ok(Stored::Floor(position)),
            Some(b'v') => {
                let payload: Payload = serde_json::from_slice(&bytes[21..])
                    .map_err(|e| bad(format!("the value does not decode: {e}")))?;
                if !key.holds(&payload.value) {
                    return Err(bad("the value is of another component".into()));
                }
                if matches!(payload.value, CachedValue::Messages(_))
                    && payload.cached < self.messages_cached
                {
                    // Cached by a process that keeps fewer messages: not enough for us.
                    return Ok(Stored::Floor(position));
                }
                Ok(Stored::Value {
                    value: payload.value,
                    position,
                })
            }
            _ => Err(bad("neither a value nor a floor".into())),
        }
    }

    /// Stores `value` at `position` under the script's rules. Returns whether it was stored.
    pub(super) async fn put(
        &self,
        key: &CacheKey,
        value: &CachedValue,
        position: Position,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let payload = serde_json::to_string(&PayloadRef {
            cached: self.messages_cached,
            value,
        })
        .map_err(|e| CacheError::Decode {
            key: self.keys.entry(key),
            reason: format!("the value does not encode: {e}"),
        })?;
        let mut invocation = self.put.key(self.keys.entry(key));
        invocation
            .key(self.keys.named("floor-all"))
            .arg(padded(position))
            .arg(payload)
            .arg(ttl_ms(ttl));
        let stored: i64 = self
            .guarded("put", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(stored == 1)
    }

    /// Sets the floor of each of `keys` and publishes the notice. Returns its sequence number.
    pub(super) async fn invalidate(
        &self,
        keys: &[(CacheKey, Duration)],
        floor: Position,
        notice: &Notice,
    ) -> Result<u64, CacheError> {
        let script = if self.plain_delete {
            &self.delete
        } else {
            &self.invalidate
        };
        let mut invocation = script.key(self.keys.named("invalidation-seq"));
        invocation.key(self.keys.named("floor-max"));
        for (key, _) in keys {
            invocation.key(self.keys.entry(key));
        }
        invocation
            .arg(padded(floor))
            .arg(self.keys.channel())
            .arg(notice_json(notice));
        for (_, ttl) in keys {
            invocation.arg(ttl_ms(*ttl));
        }
        self.guarded("invalidate", |mut c| async move {
            invocation.invoke_async(&mut c).await
        })
        .await
    }

    /// Raises the namespace floor to `floor` and publishes the notice.
    pub(super) async fn invalidate_all(
        &self,
        floor: Position,
        notice: &Notice,
    ) -> Result<u64, CacheError> {
        let mut invocation = self.invalidate_all.key(self.keys.named("invalidation-seq"));
        invocation
            .key(self.keys.named("floor-max"))
            .key(self.keys.named("floor-all"))
            .arg(padded(floor))
            .arg(self.keys.channel())
            .arg(notice_json(notice));
        self.guarded("invalidate all", |mut c| async move {
            invocation.invoke_async(&mut c).await
        })
        .await
    }

    /// Reads plain string keys of the namespace (`names` without the prefix), bypassing the
    /// breaker (the cache sink's cursors: the sink retries on its own).
    pub(super) async fn read_names(
        &self,
        names: &[String],
    ) -> Result<Vec<Option<String>>, CacheError> {
        let keys: Vec<String> = names.iter().map(|n| self.keys.named(n)).collect();
        self.run("read", |mut c| async move {
            c.mget::<_, Vec<Option<String>>>(&keys).await
        })
        .await
    }

    /// Writes plain string keys of the namespace (no TTL), in one `MSET`.
    pub(super) async fn write_names(&self, pairs: &[(String, String)]) -> Result<(), CacheError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| (self.keys.named(n), v.clone()))
            .collect();
        self.run(
            "write",
            |mut c| async move { c.mset::<_, _, ()>(&pairs).await },
        )
        .await
    }

    /// A `PING`, bypassing the breaker.
    pub(super) async fn ping(&self) -> Result<(), CacheError> {
        self.run("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    /// Starts the subscriber that applies published invalidations to `memory`; it ends when
    /// `shutdown`'s sender is dropped. Returns once the first subscription flushed tier 1, or
    /// failed, or the connection timeout passed: a cache used before its first flush would
    /// lose what it cached meanwhile.
    pub(super) async fn subscribe(
        self: &Arc<RedisTier>,
        memory: Arc<Memory>,
        stats: Arc<Stats>,
        shutdown: watch::Receiver<()>,
    ) {
        let tier = self.clone();
        let (ready, first) = oneshot::channel();
        tokio::spawn(async move { tier.subscriber(memory, stats, shutdown, ready).await });
        let _ = tokio::time::timeout(connect_timeout(self.timeout), first).await;
    }

    /// The subscriber's loop.
    ///
    /// 1. Connect a dedicated pub/sub connection and `SUBSCRIBE` the channel.
    /// 2. Read the last sequence number and the highest floor published, then flush tier 1
    ///    (raising its watermark to that floor): while not subscribed, messages may have been
    ///    missed. A message published between 1 and 2 arrives with a number already counted;
    ///    it is applied, which is harmless.
    /// 3. Apply each message's floors to tier 1, then count it. A number past the next one
    ///    means lost messages: flush (watermark: the message's highest floor), then apply.
    /// 4. When the connection ends, wait (backoff) and go to 1.
    async fn subscriber(
        self: Arc<RedisTier>,
        memory: Arc<Memory>,
        stats: Arc<Stats>,
        mut shutdown: watch::Receiver<()>,
        ready: oneshot::Sender<()>,
    ) {
        let mut backoff = Duration::from_millis(20);
        let mut ready = Some(ready);
        loop {
            let session = tokio::select! {
                result = self.session(&memory, &stats, &mut ready) => result,
                _ = shutdown.changed() => return,
            };
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            stats.set_subscribed(false);
            match session {
                Ok(()) => backoff = Duration::from_millis(20),
                Err(error) => {
                    stats.subscriber_error();
                    tracing::debug!(redis = %self.target, %error, "invalidation subscriber failed");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One subscription, until its connection ends. `Ok` if it got as far as subscribing.
    async fn session(
        &self,
        memory: &Memory,
        stats: &Stats,
        ready: &mut Option<oneshot::Sender<()>>,
    ) -> Result<(), CacheError> {
        let limit = connect_timeout(self.timeout);
        let failed = |operation: &'static str| {
            let target = self.target.clone();
            move |error: RedisError| CacheError::Redis {
                target,
                operation,
                reason: one_line(&error),
            }
        };
        let timed_out = |operation: &'static str| CacheError::Timeout {
            target: self.target.clone(),
            operation,
            after: limit,
        };
        let mut pubsub = tokio::time::timeout(limit, self.client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("subscribe"))?
            .map_err(failed("subscribe"))?;
        tokio::time::timeout(limit, pubsub.subscribe(self.keys.channel()))
            .await
            .map_err(|_| timed_out("subscribe"))?
            .map_err(failed("subscribe"))?;
        let names = [
            self.keys.named("invalidation-seq"),
            self.keys.named("floor-max"),
        ];
        let mut conn = self.connection();
        let state: Vec<Option<String>> = tokio::time::timeout(limit, conn.mget(&names))
            .await
            .map_err(|_| timed_out("read the invalidation state"))?
            .map_err(failed("read the invalidation state"))?;
        let mut last: u64 = state
            .first()
            .cloned()
            .flatten()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let floor_max = state
            .get(1)
            .cloned()
            .flatten()
            .and_then(|s| parse_padded(s.as_bytes()))
            .unwrap_or(Position(0));
        memory.flush(floor_max);
        stats.subscribed(last);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let Some((seq, floor_max, notice)) = parse_message(message.get_payload_bytes()) else {
                // Unreadable: whatever it said is lost, as in a gap.
                tracing::warn!(redis = %self.target, "an invalidation message does not parse; flushing tier 1");
                stats.gap();
                memory.flush(Position(0));
                continue;
            };
            if seq > last.saturating_add(1) {
                tracing::info!(redis = %self.target, after = last, got = seq, "gap in the invalidations; flushing tier 1");
                stats.gap();
                memory.flush(floor_max);
            }
            let floor = Position(notice.floor);
            if notice.all {
                memory.flush(floor);
            }
            for key in &notice.keys {
                memory.invalidate(key, floor).await;
            }
            last = last.max(seq);
            stats.received(seq);
        }
        Ok(())
    }
}

fn parse_message(payload: &[u8]) -> Option<(u64, Position, Notice)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (seq, rest) = text.split_once(' ')?;
    let (floor_max, json) = rest.split_once(' ')?;
    Some((
        seq.parse().ok()?,
        parse_padded(floor_max.as_bytes())?,
        serde_json::from_str(json).ok()?,
    ))
}

fn notice_json(notice: &Notice) -> String {
    // A notice is ids and numbers: it always encodes.
    serde_json::to_string(notice).unwrap_or_else(|_| "{}".to_owned())
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Connecting may take longer than one operation, but not long.
fn connect_timeout(operation: Duration) -> Duration {
    (operation * 10).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// The driver's error in one line, without the server address (which the caller names).
fn one_line(error: &RedisError) -> String {
    error.to_string().replace('\n', " ")
}
