//! Tier 1: the in-process cache (moka), bounded by approximate bytes, with a TTL per component.
//!
//! It holds [`Stored`] entries — a value with the position it reflects, or a floor — under the
//! same rules as tier 2, each applied in one `and_compute_with` (moka serializes those per key,
//! so a put and an invalidation of one key cannot interleave).
//!
//! # The watermark
//! A per-key floor protects only while the entry exists. Tier 1 forgets entries: moka evicts
//! them for size or expiry, and a flush (a gap in the invalidations, a resubscription) drops
//! them all. A slow read-through that lands after its key's floor was forgotten would put an
//! older value back. So tier 1 keeps a watermark: the highest position of any entry evicted or
//! expired, and at a flush the highest floor it had seen or been told about. A put for a key
//! that holds no entry is refused below the watermark. It is conservative (it may refuse a put
//! that was fresh enough, which costs a later miss), never wrong.

use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybridstore_wal::Position;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::Expiry;

use super::config::Ttls;
use super::{CacheKey, CachedValue, Stored};

/// Tier 1.
pub(super) struct Memory {
    cache: moka::future::Cache<CacheKey, Stored>,
    /// See the module docs. Shared with the eviction listener.
    watermark: Arc<AtomicU64>,
    /// The highest floor this tier was given (what a flush raises the watermark to).
    floor_seen: AtomicU64,
    /// Test-only mutation: invalidation removes the entry instead of setting a floor.
    plain_delete: bool,
}

/// Expiry by the key's component; an update restarts the TTL (a value refreshed by a newer
/// read-through, or a floor raised, lives a full TTL from then).
struct ByComponent(Ttls);

impl Expiry<CacheKey, Stored> for ByComponent {
    fn expire_after_create(&self, key: &CacheKey, _: &Stored, _: Instant) -> Option<Duration> {
        Some(self.0.of(key.component()))
    }

    fn expire_after_update(
        &self,
        key: &CacheKey,
        _: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.0.of(key.component()))
    }
}

impl Memory {
    /// A tier of at most `bytes` (weighed approximately).
    pub(super) fn new(bytes: u64, ttl: Ttls, plain_delete: bool) -> Memory {
        let watermark = Arc::new(AtomicU64::new(0));
        let listener_watermark = watermark.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(bytes)
            .weigher(|key: &CacheKey, entry: &Stored| weigh(key, entry))
            .expire_after(ByComponent(ttl))
            .eviction_listener(move |_key, entry: Stored, cause| {
                // Replaced and explicitly removed entries were superseded on purpose; evicted
                // and expired ones take their floor with them.
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    listener_watermark.fetch_max(entry.position().0, Ordering::SeqCst);
                }
            })
            .build();
        Memory {
            cache,
            watermark,
            floor_seen: AtomicU64::new(0),
            plain_delete,
        }
    }

    /// The entry of `key`.
    pub(super) async fn get(&self, key: &CacheKey) -> Option<Stored> {
        self.cache.get(key).await
    }

    /// Stores `value` at `position` unless the entry holds a later value or a higher floor (or
    /// holds nothing and `position` is below the watermark). Returns whether it was stored.
    pub(super) async fn put(&self, key: CacheKey, value: CachedValue, position: Position) -> bool {
        let result = self
            .cache
            .entry(key.clone())
            .and_compute_with(|current| {
                let watermark = Position(self.watermark.load(Ordering::SeqCst));
                let accept = match current.as_ref().map(moka::Entry::value) {
                    Some(Stored::Value { position: at, .. }) => *at <= position,
                    Some(Stored::Floor(floor)) => position >= *floor,
                    None => position >= watermark,
                };
                ready(if accept {
                    Op::Put(Stored::Value { value, position })
                } else {
                    Op::Nop
                })
            })
            .await;
        let stored = matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        );
        // A flush may have raised the watermark between the check above and the insert (and
        // dropped the floor this put should have met): take the value out again.
        if stored && position.0 < self.watermark.load(Ordering::SeqCst) {
            self.cache
                .entry(key)
                .and_compute_with(|current| {
                    ready(match current.as_ref().map(moka::Entry::value) {
                        Some(Stored::Value { position: at, .. }) if *at == position => Op::Remove,
                        _ => Op::Nop,
                    })
                })
                .await;
            return false;
        }
        stored
    }

    /// Sets the floor of `key`: a value below it is replaced by the floor, a later value or a
    /// higher floor stays.
    pub(super) async fn invalidate(&self, key: &CacheKey, floor: Position) {
        self.floor_seen.fetch_max(floor.0, Ordering::SeqCst);
        if self.plain_delete {
            self.cache.invalidate(key).await;
            return;
        }
        self.cache
            .entry(key.clone())
            .and_compute_with(|current| {
                let keep = current
                    .as_ref()
                    .is_some_and(|e| e.value().position() >= floor);
                ready(if keep {
                    Op::Nop
                } else {
                    Op::Put(Stored::Floor(floor))
                })
            })
            .await;
    }

    /// Drops every entry, first raising the watermark to `at_least` and to every floor this
    /// tier has seen (so no put older than what was dropped comes back).
    pub(super) fn flush(&self, at_least: Position) {
        let seen = self.floor_seen.load(Ordering::SeqCst);
        self.watermark
            .fetch_max(seen.max(at_least.0), Ordering::SeqCst);
        self.floor_seen.fetch_max(at_least.0, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    /// The watermark (see the module docs).
    pub(super) fn watermark(&self) -> Position {
        Position(self.watermark.load(Ordering::SeqCst))
    }

    /// Entries and their weighed size (approximate until moka's pending work has run).
    pub(super) fn size(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

/// Approximate heap bytes of an entry: enough to bound the tier by memory, cheap to compute.
fn weigh(key: &CacheKey, entry: &Stored) -> u32 {
    let key_bytes = 64
        + match key {
            CacheKey::Config(_, scope, name) => scope.len() + name.len(),
            _ => 0,
        };
    let value_bytes = match entry {
        Stored::Floor(_) => 16,
        Stored::Value { value, .. } => value_weight(value),
    };
    u32::try_from(key_bytes + value_bytes).unwrap_or(u32::MAX)
}

fn value_weight(value: &CachedValue) -> usize {
    match value {
        CachedValue::User(user) => user.as_ref().map_or(16, |u| {
            200 + u
                .settings
                .iter()
                .map(|(k, v)| k.len() + json_weight(v))
                .sum::<usize>()
                + u.blocked_reason.as_ref().map_or(0, String::len)
        }),
        CachedValue::Profile(profile) => profile.as_ref().map_or(16, |p| {
            200 + p.name.len()
                + p.summary
                    .iter()
                    .map(|(k, v)| 48 + k.len() + v.len())
                    .sum::<usize>()
                + p.profile
                    .iter()
                    .map(|(k, v)| 48 + k.len() + json_weight(v))
                    .sum::<usize>()
                + p.last_activity.as_ref().map_or(0, json_weight)
                + p.previous_response_id.as_ref().map_or(0, String::len)
        }),
        CachedValue::Head(_) | CachedValue::Daily(_) => 96,
        CachedValue::Messages(messages) => messages
            .iter()
            .map(|m| 96 + m.text.len() + m.legacy_ts.as_ref().map_or(0, json_weight))
            .sum::<usize>(),
        CachedValue::Config(value) => 32 + value.as_ref().map_or(0, json_weight),
    }
}

fn json_weight(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 16,
        Value::String(s) => 24 + s.len(),
        Value::Array(items) => 24 + items.iter().map(json_weight).sum::<usize>(),
        Value::Object(map) => {
            48 + map
                .iter()
                .map(|(k, v)| 32 + k.len() + json_weight(v))
                .sum::<usize>()
        }
    }
}
