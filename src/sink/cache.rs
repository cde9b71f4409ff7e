//! [`CacheSink`]: invalidates the cache entries each batch touched, once Postgres committed it.
//!
//! # One batch
//! 1. Wait (at most `commit_wait`) until the Postgres sink's status shows every component of
//!    the batch committed at or past the batch's end. Invalidating earlier would let a reader
//!    fill the cache from Postgres before the batch is there, at a position the floor accepts.
//!    On timeout the batch fails as transient and the runner retries it.
//! 2. Compute the batch's [`Keys`] ([`Keys::note`]) and set their floor to the batch's end in
//!    both tiers, publishing the invalidation ([`Cache::invalidate`]). A tier-2 failure fails
//!    the batch as transient: a floor missing in Redis would let other processes read stale
//!    values, so the batch is retried until Redis has it.
//! 3. With Redis, store the cursors there (`{ns}:v1:cursor:{component}`, `{ns}:v1:cursor-log`),
//!    so a restart resumes where it stood. A crash between 2 and 3 invalidates the batch again,
//!    which is harmless: invalidation is idempotent.
//!
//! # Starting without cursors
//! Without Redis (or with a namespace that holds no cursors) the sink cannot tell what it
//! missed. It starts where the Postgres sink stands (every batch before that is committed, and
//! any value read from Postgres reflects it), first raising a floor under the whole namespace
//! at the highest of those positions ([`Cache::invalidate_all`]): a value cached before then
//! may predate batches nobody invalidated.
//!
//! Two cache sinks on one namespace only repeat each other's work; the cursors are a resume
//! point, not a lock.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use hybridstore_wal::{LogId, Position};
use tokio::sync::watch;
use uuid::Uuid;

use crate::ids::{Component, ComponentSet};
use crate::projection::Keys;
use crate::read::cache::{keys_of, Cache, CacheError};
use crate::sink::runner::{self, RunnerConfig, SinkHandle, SinkStatus};
use crate::sink::{Batch, Cursor, Cursors, Sink, SinkError, SinkErrorKind};
use crate::store::Store;

/// How long a batch waits for the Postgres sink by default.
pub const COMMIT_WAIT_DEFAULT: Duration = Duration::from_secs(10);

/// What the cache sink invalidates and how it follows the log.
#[derive(Debug, Clone)]
pub struct CacheSinkConfig {
    /// The components to invalidate; each must be one the Postgres sink projects.
    pub components: ComponentSet,
    /// How long a batch waits for the Postgres sink to commit it before failing as transient.
    pub commit_wait: Duration,
    /// Batching and retries.
    pub runner: RunnerConfig,
}

impl Default for CacheSinkConfig {
    fn default() -> CacheSinkConfig {
        CacheSinkConfig {
            components: ComponentSet::ALL,
            commit_wait: COMMIT_WAIT_DEFAULT,
            runner: RunnerConfig::default(),
        }
    }
}

/// The cache invalidator as a sink (see the module docs).
#[derive(Debug)]
pub struct CacheSink {
    cache: Cache,
    store: Store,
    components: ComponentSet,
    postgres: watch::Receiver<SinkStatus>,
    commit_wait: Duration,
}

impl CacheSink {
    /// A sink invalidating `cache` for `config.components` of `store`'s log, behind the
    /// Postgres sink whose status `postgres` follows ([`SinkHandle::watch`]).
    ///
    /// # Errors
    /// [`CacheError::Config`] when a component is not one the Postgres sink projects (its
    /// batches would wait for ever).
    pub fn new(
        cache: Cache,
        store: Store,
        postgres: watch::Receiver<SinkStatus>,
        config: &CacheSinkConfig,
    ) -> Result<CacheSink, CacheError> {
        {
            let status = postgres.borrow();
            if let Some(missing) = config
                .components
                .iter()
                .find(|c| !status.components.contains_key(c))
            {
                return Err(CacheError::Config {
                    variable: "components".into(),
                    reason: format!(
                        "the cache sink cannot invalidate {missing}: the {} sink does not project it",
                        status.sink
                    ),
                });
            }
        }
        Ok(CacheSink {
            cache,
            store,
            components: config.components,
            postgres,
            commit_wait: config.commit_wait,
        })
    }

    /// Starts a cache sink behind the Postgres sink `postgres`, in a task of the current tokio
    /// runtime.
    ///
    /// # Errors
    /// As [`CacheSink::new`].
    pub fn start(
        store: Store,
        cache: Cache,
        postgres: &SinkHandle,
        config: CacheSinkConfig,
    ) -> Result<SinkHandle, CacheError> {
        let sink = CacheSink::new(cache, store.clone(), postgres.watch(), &config)?;
        Ok(runner::start(store, sink, config.runner))
    }

    /// Cursors stored in Redis: `Ok(None)` without Redis, or when the namespace holds none
    /// (for some component).
    async fn stored_cursors(&self) -> Result<Option<Cursors>, SinkError> {
        let mut names = vec![CURSOR_LOG.to_owned()];
        names.extend(self.components.iter().map(cursor_name));
        let Some(found) = self.cache.read_names(&names).await else {
            return Ok(None);
        };
        let found = found.map_err(transient)?;
        let mut found = found.into_iter();
        let Some(log) = found.next().flatten() else {
            return Ok(None);
        };
        let log = Uuid::parse_str(&log)
            .map(|id| LogId::from_bytes(id.into_bytes()))
            .map_err(|_| bad_cursor(CURSOR_LOG, &log))?;
        let mut cursors = Cursors {
            log: Some(log),
            components: Default::default(),
        };
        for (component, text) in self.components.iter().zip(found) {
            let Some(text) = text else {
                return Ok(None);
            };
            let cursor =
                parse_cursor(&text).ok_or_else(|| bad_cursor(&cursor_name(component), &text))?;
            cursors.components.insert(component, cursor);
        }
        Ok(Some(cursors))
    }

    /// Where a sink without cursors starts: where the Postgres sink stands.
    async fn fresh_cursors(&mut self) -> Result<Cursors, SinkError> {
        // The Postgres runner publishes its status once it loaded its cursors; before that
        // every component shows 0 (correct, but the whole log would be invalidated again).
        if !self.postgres.has_changed().unwrap_or(true) {
            let _ = tokio::time::timeout(self.commit_wait, self.postgres.changed()).await;
        }
        let committed: Vec<(Component, Position)> = {
            let status = self.postgres.borrow_and_update();
            self.components
                .iter()
                .map(|c| {
                    (
                        c,
                        status
                            .components
                            .get(&c)
                            .map_or(Position(0), |s| s.committed),
                    )
                })
                .collect()
        };
        let mut cursors = Cursors {
            log: Some(self.store.log_id()),
            components: Default::default(),
        };
        for (component, next) in &committed {
            let last_event = if next.0 == 0 {
                None
            } else {
                let at = Position(next.0 - 1);
                let events = self.store.read_all(at, 1).await.map_err(|e| SinkError {
                    kind: SinkErrorKind::Transient,
                    message: format!("reading the event at {at}: {e}"),
                })?;
                let event = events.first().filter(|e| e.position == at).ok_or_else(|| SinkError {
                    kind: SinkErrorKind::Permanent,
                    message: format!(
                        "the postgres sink's {component} cursor ({next}) stands past the end of this log"
                    ),
                })?;
                Some(event.event_id)
            };
            cursors.components.insert(
                *component,
                Cursor {
                    next: *next,
                    last_event,
                },
            );
        }
        let floor = committed
            .iter()
            .map(|(_, p)| *p)
            .max()
            .unwrap_or(Position(0));
        self.cache.invalidate_all(floor).await.map_err(transient)?;
        tracing::info!(%floor, "cache sink starting without cursors: a floor under the whole cache");
        self.store_cursors(&cursors).await?;
        Ok(cursors)
    }

    async fn store_cursors(&self, cursors: &Cursors) -> Result<(), SinkError> {
        let mut pairs = Vec::new();
        if let Some(log) = cursors.log {
            pairs.push((CURSOR_LOG.to_owned(), log.to_string()));
        }
        for (component, cursor) in &cursors.components {
            pairs.push((cursor_name(*component), format_cursor(cursor)));
        }
        match self.cache.write_names(&pairs).await {
            None => Ok(()),
            Some(result) => result.map_err(transient),
        }
    }

    /// Step 1: waits until Postgres committed every component of `batch` past its end.
    async fn wait_for_postgres(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let end = batch.end();
        let components = batch.components;
        let committed = |s: &SinkStatus| {
            components
                .iter()
                .all(|c| s.components.get(&c).is_some_and(|cs| cs.committed >= end))
        };
        let waited = tokio::time::timeout(
            self.commit_wait,
            self.postgres
                .wait_for(|s| committed(s) || s.stopped.is_some()),
        )
        .await
        .map(|ready| ready.is_ok());
        let status = self.postgres.borrow().clone();
        if committed(&status) {
            return Ok(());
        }
        let standing: Vec<String> = components
            .iter()
            .map(|c| {
                let at = status
                    .components
                    .get(&c)
                    .map_or(Position(0), |s| s.committed);
                format!("{c} at {at}")
            })
            .collect();
        let why = match (&waited, &status.stopped) {
            (Err(_), _) => format!("after waiting {:?}", self.commit_wait),
            (Ok(false), _) => "and its runner is gone".to_owned(),
            (Ok(true), Some(reason)) => format!("and it stopped: {reason}"),
            (Ok(true), None) => "yet".to_owned(),
        };
        Err(SinkError {
            kind: SinkErrorKind::Transient,
            message: format!(
                "waiting for the {} sink to commit up to {end} ({}) {why}",
                status.sink,
                standing.join(", ")
            ),
        })
    }
}

impl Sink for CacheSink {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn components(&self) -> ComponentSet {
        self.components
    }

    fn load_cursors(&mut self) -> BoxFuture<'_, Result<Cursors, SinkError>> {
        async move {
            match self.stored_cursors().await? {
                Some(cursors) => Ok(cursors),
                None => self.fresh_cursors().await,
            }
        }
        .boxed()
    }

    fn commit<'a>(&'a mut self, batch: &'a Batch<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        async move {
            self.wait_for_postgres(batch).await?;
            let mut keys = Keys::default();
            for event in batch.events {
                keys.note(event, batch.components);
            }
            self.cache
                .invalidate(keys_of(&keys), batch.end())
                .await
                .map_err(transient)?;
            let cursor = batch.cursor();
            let cursors = Cursors {
                log: Some(batch.log),
                components: batch.components.iter().map(|c| (c, cursor)).collect(),
            };
            self.store_cursors(&cursors).await
        }
        .boxed()
    }

    fn probe(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move { self.cache.ping_redis().await.map_err(transient) }.boxed()
    }
}

const CURSOR_LOG: &str = "cursor-log";

fn cursor_name(component: Component) -> String {
    format!("cursor:{component}")
}

/// `{next}:{last event id}` (the id empty at the start of the log).
fn format_cursor(cursor: &Cursor) -> String {
    match cursor.last_event {
        Some(id) => format!("{}:{}", cursor.next.0, id.hyphenated()),
        None => format!("{}:", cursor.next.0),
    }
}

fn parse_cursor(text: &str) -> Option<Cursor> {
    let (next, last) = text.split_once(':')?;
    Some(Cursor {
        next: Position(next.parse().ok()?),
        last_event: if last.is_empty() {
            None
        } else {
            Some(Uuid::parse_str(last).ok()?)
        },
    })
}

fn transient(error: CacheError) -> SinkError {
    SinkError {
        kind: SinkErrorKind::Transient,
        message: error.to_string(),
    }
}

fn bad_cursor(name: &str, text: &str) -> SinkError {
    SinkError {
        kind: SinkErrorKind::Permanent,
        message: format!(
            "the cache sink's cursor {name} in Redis is {text:?}, not a cursor (edited by hand?); \
             delete the namespace's cursor keys to start again from the Postgres sink"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves cursors round-trip through their Redis text, with and without an event id.
    #[test]
    fn cursor_text_round_trips() {
        for cursor in [
            Cursor::START,
            Cursor {
                next: Position(42),
                last_event: Some(Uuid::now_v7()),
            },
        ] {
            assert_eq!(parse_cursor(&format_cursor(&cursor)), Some(cursor));
        }
        assert_eq!(parse_cursor("x:"), None);
        assert_eq!(parse_cursor("12"), None);
    }
}
