//! The cache in front of Postgres for `database-only` components (design §6): tier 1 in
//! process memory, tier 2 in Redis (shared by every process of a namespace), read-through
//! from Postgres by the router, invalidated after each committed batch by the cache sink
//! ([`crate::sink::cache`]).
//!
//! # Positions and floors
//! Every cached value carries the log position it reflects (the source's `applied_end`: every
//! event below it has taken effect in the value). The rules, the same in both tiers, each
//! applied atomically per key (moka's `and_compute_with`; one Lua script in Redis):
//! 1. A put never replaces a value of a later position.
//! 2. An invalidation sets a **floor** (the end of the committed batch), not a plain delete:
//!    a value below the floor is replaced by the floor; a value at or past it stays.
//! 3. A put below the key's floor is refused, so a slow read-through that read before the
//!    batch committed cannot put its older value back after the invalidation.
//! 4. A get answers only with a value (not a floor), and with `min_position` only if
//!    [`crate::read::reached`]`(position, min_position)`.
//!
//! Tier 1 adds a watermark for the floors it forgets (evictions, flushes; see
//! the `memory` module's docs), and tier 2 a namespace-wide floor that an invalidator raises when
//! it starts without knowing what it missed.
//!
//! # Across processes
//! Each invalidation is published on `{namespace}:v1:invalidations` with a sequence number
//! taken in the same script that sets the floors. Every cache with both tiers subscribes and
//! applies the floors to its tier 1; a gap in the sequence, or a (re)subscription, flushes its
//! tier 1, since messages may have been missed.
//!
//! # Redis failures never fail a read
//! Every Redis operation has a timeout; failures are counted and open a circuit breaker, while
//! which tier 2 is skipped; one trial after the open period closes it again. Redis unreachable
//! at [`Cache::open`] is not an error: tier 2 starts with its breaker open. Only
//! [`Cache::invalidate`] reports a tier-2 failure, because its caller (the cache sink) must
//! retry it: a floor missing in Redis would let other processes read a stale value.
//!
//! # Layout
//! - [`config`]: [`CacheConfig`], [`RedisConfig`] (the bot's `REDIS_*` variables).
//! - `memory`: tier 1. `redis`: tier 2, its scripts and key layout, and the invalidation
//!   subscriber. `breaker`: the circuit breaker. `stats`: the counters.

pub mod config;

mod breaker;
mod memory;
mod redis;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use hybridstore_wal::Position;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::ids::{BotId, Component};
use crate::projection::{
    ConversationHead, DailyCounters, Keys, MessageView, ProfileDocument, UserView,
};
use crate::read::reached;

pub use breaker::BreakerState;
pub use config::{BreakerConfig, CacheConfig, RedisConfig, Ttls};
pub use stats::{CacheStats, Counters};

use self::memory::Memory;
use self::redis::{Notice, RedisTier};
use self::stats::{Event, Stats};

/// The version of the cached values' encoding, part of every Redis key: bump it when a cached
/// type changes shape, and processes of both versions share a Redis without reading each
/// other's entries.
pub const SCHEMA_VERSION: u32 = 1;

/// What is cached: one entry per read of the hot path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKey {
    /// A user (bot, user id).
    User(BotId, i64),
    /// A profile document (bot, chat id).
    Profile(BotId, i64),
    /// A conversation head (bot, chat id).
    Head(BotId, i64),
    /// A chat's last [`CacheConfig::messages_cached`] messages (bot, chat id); a read of at
    /// most that many is served from it, a larger one bypasses the cache.
    Messages(BotId, i64),
    /// A configuration value (bot, scope, key).
    Config(BotId, String, String),
    /// A day's analytics counters (bot, days since 1970-01-01).
    Daily(BotId, i64),
}

impl CacheKey {
    /// The component whose reads the entry answers (its TTL, its counters).
    pub fn component(&self) -> Component {
        match self {
            CacheKey::User(..) => Component::Users,
            CacheKey::Profile(..) => Component::Profiles,
            CacheKey::Head(..) | CacheKey::Messages(..) => Component::Conversations,
            CacheKey::Config(..) => Component::Configuration,
            CacheKey::Daily(..) => Component::Analytics,
        }
    }

    /// Whether `value` is of the kind this key caches.
    pub fn holds(&self, value: &CachedValue) -> bool {
        matches!(
            (self, value),
            (CacheKey::User(..), CachedValue::User(_))
                | (CacheKey::Profile(..), CachedValue::Profile(_))
                | (CacheKey::Head(..), CachedValue::Head(_))
                | (CacheKey::Messages(..), CachedValue::Messages(_))
                | (CacheKey::Config(..), CachedValue::Config(_))
                | (CacheKey::Daily(..), CachedValue::Daily(_))
        )
    }
}

/// A cached answer (`None`: the source answered that there is none, which is cached too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachedValue {
    /// For [`CacheKey::User`].
    User(Option<UserView>),
    /// For [`CacheKey::Profile`].
    Profile(Option<Arc<ProfileDocument>>),
    /// For [`CacheKey::Head`].
    Head(Option<ConversationHead>),
    /// For [`CacheKey::Messages`]: the last messages, oldest first (shared: a hit copies a
    /// reference count, the caller slices).
    Messages(Arc<[MessageView]>),
    /// For [`CacheKey::Config`].
    Config(#[serde(with = "present")] Option<serde_json::Value>),
    /// For [`CacheKey::Daily`] (counts only, [`DailyCounters::counts_only`]).
    Daily(Option<DailyCounters>),
}

/// `Option<Value>` as `[]` or `[value]`: plain serde would read back a JSON `null` value as
/// `None` (a value set to `null` is not an unset one).
mod present {
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<serde_json::Value>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.as_slice().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<serde_json::Value>, D::Error> {
        let mut items = Vec::<serde_json::Value>::deserialize(deserializer)?;
        if items.len() > 1 {
            return Err(serde::de::Error::custom("more than one value"));
        }
        Ok(items.pop())
    }
}

/// A cache tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Tier 1: this process's memory.
    Memory = 0,
    /// Tier 2: Redis.
    Redis = 1,
}

/// An entry as a tier holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// A value and the position it reflects.
    Value {
        /// The value.
        value: CachedValue,
        /// Every event below it has taken effect in the value.
        position: Position,
    },
    /// A floor: no value below this position may be stored.
    Floor(Position),
}

impl Stored {
    /// The value's position or the floor.
    pub fn position(&self) -> Position {
        match self {
            Stored::Value { position, .. } | Stored::Floor(position) => *position,
        }
    }
}

/// Why a cache operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// A configuration value cannot be used.
    #[error("{variable}: {reason}")]
    Config {
        /// The variable.
        variable: String,
        /// Why.
        reason: String,
    },
    /// A Redis operation failed.
    #[error("Redis at {target}: {operation} failed: {reason}")]
    Redis {
        /// `redis://host:port/db` (never the password).
        target: String,
        /// What was being done.
        operation: &'static str,
        /// The driver's reason, in one line.
        reason: String,
    },
    /// A Redis operation did not answer in time.
    #[error("Redis at {target}: {operation} did not answer within {after:?}")]
    Timeout {
        /// The server.
        target: String,
        /// What was being done.
        operation: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// Tier 2 was skipped: its circuit breaker is open after failures.
    #[error("Redis at {target} skipped: the circuit breaker is open after failures")]
    BreakerOpen {
        /// The server.
        target: String,
    },
    /// An entry in Redis does not decode (written by another version, or by hand).
    #[error("the Redis entry {key} cannot be read: {reason}")]
    Decode {
        /// The Redis key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The two-tier cache. Cheap to clone (one shared state); `Send + Sync`.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    memory: Option<Arc<Memory>>,
    redis: Option<Arc<RedisTier>>,
    stats: Arc<Stats>,
    ttl: Ttls,
    messages_cached: usize,
    plain_delete: bool,
    /// This cache's id in the notices it publishes.
    origin: Uuid,
    /// Dropped with the last clone: the subscriber task ends.
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("memory", &self.inner.memory.is_some())
            .field("redis", &self.inner.redis.as_ref().map(|r| r.target()))
            .field("origin", &self.inner.origin)
            .finish()
    }
}

impl Cache {
    /// Opens the tiers `config` names and, with both, starts the invalidation subscriber (in a
    /// task of the current tokio runtime).
    ///
    /// # Errors
    /// [`CacheError::Redis`] only when the Redis client cannot be built from the configuration;
    /// an unreachable server is not an error (tier 2 starts with its breaker open).
    pub async fn open(config: CacheConfig) -> Result<Cache, CacheError> {
        let memory = (config.memory_bytes > 0).then(|| {
            Arc::new(Memory::new(
                config.memory_bytes,
                config.ttl.clone(),
                config.plain_delete_for_tests,
            ))
        });
        let redis = match &config.redis {
            Some(redis) => Some(Arc::new(RedisTier::open(redis, &config).await?)),
            None => None,
        };
        let stats = Arc::new(Stats::default());
        let (shutdown, shutdown_rx) = watch::channel(());
        if let (Some(memory), Some(redis)) = (&memory, &redis) {
            redis
                .subscribe(memory.clone(), stats.clone(), shutdown_rx)
                .await;
        }
        Ok(Cache {
            inner: Arc::new(Inner {
                memory,
                redis,
                stats,
                ttl: config.ttl,
                messages_cached: config.messages_cached,
                plain_delete: config.plain_delete_for_tests,
                origin: Uuid::now_v7(),
                _shutdown: shutdown,
            }),
        })
    }

    /// How many messages a [`CacheKey::Messages`] entry holds.
    pub fn messages_cached(&self) -> usize {
        self.inner.messages_cached
    }

    /// Whether tier 2 (Redis) is configured.
    pub fn has_redis(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// A cached value of `key` and the position it reflects, from tier 1, else tier 2 (a
    /// tier-2 hit is put into tier 1). With `min_position`, only a value that has reached it
    /// ([`reached`]). Never fails: a Redis failure is counted and answers as a miss.
    pub async fn get(
        &self,
        key: &CacheKey,
        min_position: Option<Position>,
    ) -> Option<(CachedValue, Position, Tier)> {
        let inner = &self.inner;
        let component = key.component();
        let fresh = |position: Position| min_position.is_none_or(|min| reached(position, min));
        // What tier 1 knows of the key: tier 2 must not answer with anything older.
        let mut known = Position(0);
        if let Some(memory) = &inner.memory {
            match memory.get(key).await {
                Some(Stored::Value { value, position }) if fresh(position) => {
                    inner.stats.count(Tier::Memory, component, Event::Hit);
                    return Some((value, position, Tier::Memory));
                }
                Some(stored) => known = stored.position(),
                None => {}
            }
            inner.stats.count(Tier::Memory, component, Event::Miss);
        }
        let redis = inner.redis.as_ref()?;
        match redis.get(key, true).await {
            Ok(Some(Stored::Value { value, position })) if position >= known && fresh(position) => {
                inner.stats.count(Tier::Redis, component, Event::Hit);
                if let Some(memory) = &inner.memory {
                    let stored = memory.put(key.clone(), value.clone(), position).await;
                    self.count_put(Tier::Memory, component, stored);
                }
                Some((value, position, Tier::Redis))
            }
            Ok(_) => {
                inner.stats.count(Tier::Redis, component, Event::Miss);
                None
            }
            Err(error) => {
                self.count_error(component, &error);
                None
            }
        }
    }

    /// Puts a value read from the source at `applied_end` into both tiers (read-through). Each
    /// tier refuses it if it holds a later value or a floor above `applied_end`. Never fails:
    /// a Redis failure is counted.
    pub async fn put(&self, key: CacheKey, value: CachedValue, applied_end: Position) {
        let inner = &self.inner;
        let component = key.component();
        if !key.holds(&value) {
            tracing::error!(?key, "a cache put of a value of another kind; not cached");
            inner.stats.count(Tier::Memory, component, Event::Error);
            return;
        }
        if let Some(redis) = &inner.redis {
            match redis
                .put(&key, &value, applied_end, inner.ttl.of(component))
                .await
            {
                Ok(stored) => self.count_put(Tier::Redis, component, stored),
                Err(error) => self.count_error(component, &error),
            }
        }
        if let Some(memory) = &inner.memory {
            let stored = memory.put(key, value, applied_end).await;
            self.count_put(Tier::Memory, component, stored);
        }
    }

    /// Sets the floor of each of `keys` to `floor` in both tiers (a value below it is gone, a
    /// later put below it refused) and publishes the invalidation to other processes.
    ///
    /// # Errors
    /// The tier-2 failure (including [`CacheError::BreakerOpen`]) when Redis did not take the
    /// floors; tier 1 has them either way. The caller retries: invalidation is idempotent.
    pub async fn invalidate(&self, keys: Vec<CacheKey>, floor: Position) -> Result<(), CacheError> {
        let inner = &self.inner;
        if keys.is_empty() {
            return Ok(());
        }
        if let Some(memory) = &inner.memory {
            for key in &keys {
                memory.invalidate(key, floor).await;
            }
        }
        let Some(redis) = &inner.redis else {
            return Ok(());
        };
        let with_ttl: Vec<(CacheKey, Duration)> = keys
            .iter()
            .map(|k| (k.clone(), inner.ttl.of(k.component())))
            .collect();
        let notice = Notice {
            origin: inner.origin,
            floor: floor.0,
            keys,
            all: false,
        };
        let result = redis.invalidate(&with_ttl, floor, &notice).await;
        self.published(result, &notice)
    }

    /// Sets a floor under every entry of the namespace: tier 1 is flushed (its watermark
    /// raised to `floor`), tier 2 refuses and hides every value below `floor`, and other
    /// processes flush their tier 1. For an invalidator that cannot tell what it missed.
    ///
    /// # Errors
    /// As [`Cache::invalidate`].
    pub async fn invalidate_all(&self, floor: Position) -> Result<(), CacheError> {
        let inner = &self.inner;
        if let Some(memory) = &inner.memory {
            memory.flush(floor);
        }
        let Some(redis) = &inner.redis else {
            return Ok(());
        };
        let notice = Notice {
            origin: inner.origin,
            floor: floor.0,
            keys: Vec::new(),
            all: true,
        };
        let result = redis.invalidate_all(floor, &notice).await;
        self.published(result, &notice)
    }

    fn published(
        &self,
        result: Result<u64, CacheError>,
        notice: &Notice,
    ) -> Result<(), CacheError> {
        match result {
            Ok(seq) => {
                self.inner.stats.published();
                tracing::trace!(
                    seq,
                    floor = notice.floor,
                    keys = notice.keys.len(),
                    "invalidation published"
                );
                Ok(())
            }
            Err(error) => {
                for key in &notice.keys {
                    self.count_error(key.component(), &error);
                }
                Err(error)
            }
        }
    }

    /// Drops every tier-1 entry (its watermark raised to the highest floor it has seen).
    pub async fn flush_memory(&self) {
        if let Some(memory) = &self.inner.memory {
            memory.flush(Position(0));
        }
    }

    /// The entry of `key` in one tier, for inspection and tests (tier 2 read directly, with
    /// the timeout but not through the breaker). `None` when the tier is not configured or
    /// holds nothing.
    ///
    /// # Errors
    /// A Redis failure, or an entry that does not decode.
    pub async fn stored(&self, tier: Tier, key: &CacheKey) -> Result<Option<Stored>, CacheError> {
        match tier {
            Tier::Memory => Ok(match &self.inner.memory {
                Some(memory) => memory.get(key).await,
                None => None,
            }),
            Tier::Redis => match &self.inner.redis {
                Some(redis) => redis.get(key, false).await,
                None => Ok(None),
            },
        }
    }

    /// Tier 1's watermark: a put for a key tier 1 holds nothing for is refused below it.
    pub fn memory_watermark(&self) -> Option<Position> {
        self.inner.memory.as_ref().map(|m| m.watermark())
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let mut stats = self.inner.stats.snapshot();
        stats.breaker = self.inner.redis.as_ref().map(|r| r.breaker.state());
        if let Some(memory) = &self.inner.memory {
            (stats.memory_entries, stats.memory_bytes) = memory.size();
        }
        stats
    }

    /// Whether invalidation is the test-only plain delete.
    #[doc(hidden)]
    pub fn is_plain_delete(&self) -> bool {
        self.inner.plain_delete
    }

    /// Reads plain keys of the namespace (without its prefix) from Redis, bypassing the breaker.
    pub(crate) async fn read_names(
        &self,
        names: &[String],
    ) -> Option<Result<Vec<Option<String>>, CacheError>> {
        Some(self.inner.redis.as_ref()?.read_names(names).await)
    }

    /// Writes plain keys of the namespace (without its prefix) to Redis, without TTL.
    pub(crate) async fn write_names(
        &self,
        pairs: &[(String, String)],
    ) -> Option<Result<(), CacheError>> {
        Some(self.inner.redis.as_ref()?.write_names(pairs).await)
    }

    /// A `PING` of Redis, bypassing the breaker (`Ok` without tier 2).
    ///
    /// # Errors
    /// The Redis failure.
    pub async fn ping_redis(&self) -> Result<(), CacheError> {
        match &self.inner.redis {
            Some(redis) => redis.ping().await,
            None => Ok(()),
        }
    }

    fn count_put(&self, tier: Tier, component: Component, stored: bool) {
        let event = if stored {
            Event::Stored
        } else {
            Event::Refused
        };
        self.inner.stats.count(tier, component, event);
    }

    fn count_error(&self, component: Component, error: &CacheError) {
        if let CacheError::BreakerOpen { .. } = error {
            self.inner
                .stats
                .count(Tier::Redis, component, Event::Skipped);
        } else {
            tracing::debug!(%error, "tier 2 operation failed");
            self.inner.stats.count(Tier::Redis, component, Event::Error);
        }
    }
}

/// The cache entries a batch's [`Keys`] touch: profiles → [`CacheKey::Profile`], conversations
/// → [`CacheKey::Head`] and [`CacheKey::Messages`], users → [`CacheKey::User`], configuration
/// values → [`CacheKey::Config`], days → [`CacheKey::Daily`]. (A user's erasure touches their
/// profile and conversation too: [`Keys::note`] notes them.) Component states are not cached.
pub fn keys_of(keys: &Keys) -> Vec<CacheKey> {
    let mut out = Vec::with_capacity(
        keys.users.len()
            + keys.profiles.len()
            + 2 * keys.conversations.len()
            + keys.config.len()
            + keys.days.len(),
    );
    out.extend(
        keys.users
            .iter()
            .map(|(b, u)| CacheKey::User(b.clone(), *u)),
    );
    out.extend(
        keys.profiles
            .iter()
            .map(|(b, c)| CacheKey::Profile(b.clone(), *c)),
    );
    for (bot, chat) in &keys.conversations {
        out.push(CacheKey::Head(bot.clone(), *chat));
        out.push(CacheKey::Messages(bot.clone(), *chat));
    }
    out.extend(
        keys.config
            .iter()
            .map(|(b, s, k)| CacheKey::Config(b.clone(), s.clone(), k.clone())),
    );
    out.extend(
        keys.days
            .iter()
            .map(|(b, d)| CacheKey::Daily(b.clone(), *d)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> BotId {
        BotId::new("bot_a").expect("valid")
    }

    /// Proves a tier-1-only cache applies the floor rules: a value below a floor is gone, a
    /// put below it refused, a put at it accepted, and an older put never replaces a newer one.
    #[tokio::test]
    async fn memory_floor_rules() {
        let cache = Cache::open(CacheConfig::default()).await.expect("opens");
        let key = CacheKey::Head(bot(), 1);
        let head = |n| {
            CachedValue::Head(Some(ConversationHead {
                messages_in: n,
                ..Default::default()
            }))
        };
        cache.put(key.clone(), head(10), Position(10)).await;
        assert!(matches!(
            cache.get(&key, None).await,
            Some((_, Position(10), Tier::Memory))
        ));
        cache
            .invalidate(vec![key.clone()], Position(12))
            .await
            .expect("no tier 2");
        assert!(cache.get(&key, None).await.is_none());
        cache.put(key.clone(), head(11), Position(11)).await;
        assert!(cache.get(&key, None).await.is_none());
        cache.put(key.clone(), head(12), Position(12)).await;
        assert!(matches!(
            cache.get(&key, None).await,
            Some((_, Position(12), _))
        ));
        cache.put(key.clone(), head(15), Position(15)).await;
        cache.put(key.clone(), head(9), Position(9)).await;
        assert!(matches!(
            cache.get(&key, None).await,
            Some((_, Position(15), _))
        ));
        assert!(
            cache.get(&key, Some(Position(15))).await.is_none(),
            "15 has not applied event 15"
        );
        assert!(cache.get(&key, Some(Position(14))).await.is_some());
    }

    /// Proves a `null` configuration value survives the tier-2 encoding as a value, not as
    /// "unset".
    #[test]
    fn null_config_value_round_trips() {
        let value = CachedValue::Config(Some(serde_json::Value::Null));
        let text = serde_json::to_string(&value).expect("encodes");
        let back: CachedValue = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back, value);
        let unset: CachedValue = serde_json::from_str(
            &serde_json::to_string(&CachedValue::Config(None)).expect("encodes"),
        )
        .expect("decodes");
        assert_eq!(unset, CachedValue::Config(None));
    }
}
