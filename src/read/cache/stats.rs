//! The cache's counters: per tier and component, and the invalidation subscriber's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use super::breaker::BreakerState;
use super::Tier;
use crate::ids::Component;

/// One tier's counts for one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counters {
    /// Reads answered by the tier.
    pub hits: u64,
    /// Reads the tier could not answer (nothing cached, a floor, or not at `min_position`).
    pub misses: u64,
    /// Operations that failed (Redis errors and timeouts, values that did not decode).
    pub errors: u64,
    /// Operations that skipped the tier because its breaker was open.
    pub skipped: u64,
    /// Puts that stored their value.
    pub stored: u64,
    /// Puts refused: the tier holds a later value, a higher floor, or (tier 1) the put is below
    /// the watermark.
    pub refused: u64,
}

/// A snapshot of the cache's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CacheStats {
    /// Tier 1, per component.
    pub memory: BTreeMap<Component, Counters>,
    /// Tier 2, per component.
    pub redis: BTreeMap<Component, Counters>,
    /// Tier 2's breaker (`None` without tier 2).
    pub breaker: Option<BreakerState>,
    /// Entries in tier 1 and their approximate weight in bytes.
    pub memory_entries: u64,
    /// Approximate bytes of tier 1's entries.
    pub memory_bytes: u64,
    /// Invalidations this process published.
    pub invalidations_published: u64,
    /// Invalidation messages received (and applied to tier 1) from the channel, this process's
    /// own included.
    pub invalidations_received: u64,
    /// The sequence number of the last invalidation applied.
    pub last_sequence: u64,
    /// Gaps seen in the invalidation sequence (each flushed tier 1).
    pub gaps_seen: u64,
    /// Subscriptions made to the channel (the first, then each reconnection; each flushed
    /// tier 1).
    pub subscriptions: u64,
    /// Whether the subscriber is subscribed now.
    pub subscribed: bool,
    /// Subscriber connections that failed.
    pub subscriber_errors: u64,
}

/// What a counter counts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Event {
    Hit,
    Miss,
    Error,
    Skipped,
    Stored,
    Refused,
}

const EVENTS: usize = 6;

/// The live counters.
#[derive(Debug, Default)]
pub(super) struct Stats {
    tiers: [[[AtomicU64; EVENTS]; 5]; 2],
    published: AtomicU64,
    received: AtomicU64,
    last_sequence: AtomicU64,
    gaps: AtomicU64,
    subscriptions: AtomicU64,
    subscribed: AtomicBool,
    subscriber_errors: AtomicU64,
}

impl Stats {
    pub(super) fn count(&self, tier: Tier, component: Component, event: Event) {
        self.tiers[tier as usize][component as usize][event as usize]
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// A message applied; counted after its floors are in tier 1.
    pub(super) fn received(&self, seq: u64) {
        self.last_sequence.fetch_max(seq, Ordering::SeqCst);
        self.received.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn gap(&self) {
        self.gaps.fetch_add(1, Ordering::SeqCst);
    }

    /// Subscribed (tier 1 already flushed); the channel stood at `seq`.
    pub(super) fn subscribed(&self, seq: u64) {
        self.last_sequence.store(seq, Ordering::SeqCst);
        self.subscribed.store(true, Ordering::SeqCst);
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::SeqCst);
    }

    pub(super) fn subscriber_error(&self) {
        self.subscriber_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> CacheStats {
        let tier = |t: usize| {
            Component::ALL
                .into_iter()
                .map(|c| {
                    let n =
                        |e: Event| self.tiers[t][c as usize][e as usize].load(Ordering::Relaxed);
                    let counters = Counters {
                        hits: n(Event::Hit),
                        misses: n(Event::Miss),
                        errors: n(Event::Error),
                        skipped: n(Event::Skipped),
                        stored: n(Event::Stored),
                        refused: n(Event::Refused),
                    };
                    (c, counters)
                })
                .collect()
        };
        CacheStats {
            memory: tier(Tier::Memory as usize),
            redis: tier(Tier::Redis as usize),
            breaker: None,
            memory_entries: 0,
            memory_bytes: 0,
            invalidations_published: self.published.load(Ordering::Relaxed),
            invalidations_received: self.received.load(Ordering::SeqCst),
            last_sequence: self.last_sequence.load(Ordering::SeqCst),
            gaps_seen: self.gaps.load(Ordering::SeqCst),
            subscriptions: self.subscriptions.load(Ordering::SeqCst),
            subscribed: self.subscribed.load(Ordering::SeqCst),
            subscriber_errors: self.subscriber_errors.load(Ordering::Relaxed),
        }
    }
}

impl CacheStats {
    /// The sum over components of a tier's counters.
    pub fn total(&self, tier: Tier) -> Counters {
        let map = match tier {
            Tier::Memory => &self.memory,
            Tier::Redis => &self.redis,
        };
        map.values().fold(Counters::default(), |a, c| Counters {
            hits: a.hits + c.hits,
            misses: a.misses + c.misses,
            errors: a.errors + c.errors,
            skipped: a.skipped + c.skipped,
            stored: a.stored + c.stored,
            refused: a.refused + c.refused,
        })
    }
}
