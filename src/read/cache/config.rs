//! How the cache is configured: the tier-1 bound, the TTL of each component, the Redis server
//! of tier 2 (from the bot's `REDIS_*` variables or `REDIS_URL`), the circuit breaker and the
//! Redis timeout.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo as _, RedisConnectionInfo};

use super::CacheError;
use crate::ids::Component;

/// Tier 1's bound by default: 64 MiB of (approximately weighed) entries.
pub const MEMORY_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// How many of a chat's last messages are cached by default (a read of more bypasses the cache).
pub const MESSAGES_CACHED_DEFAULT: usize = 50;
/// The Redis key prefix by default.
pub const NAMESPACE_DEFAULT: &str = "hybridstore";
/// How long one Redis operation may take before it counts as a failure and the read goes on
/// without tier 2.
pub const REDIS_TIMEOUT_DEFAULT: Duration = Duration::from_millis(100);
/// Redis connections by default (multiplexed: each carries many operations at once).
pub const REDIS_CONNECTIONS_DEFAULT: usize = 2;
/// The Redis port when `REDIS_PORT` is not set.
pub const REDIS_PORT_DEFAULT: u16 = 6379;

/// How long an entry of each component lives in both tiers.
///
/// Values and floors share the TTL: a floor outlives every value it protects against, since
/// a value older than the floor was read before the floor was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ttls {
    /// Per component; a component without an entry uses `default`.
    pub by_component: BTreeMap<Component, Duration>,
    /// For components not in `by_component`.
    pub default: Duration,
}

impl Default for Ttls {
    /// Ten minutes, one minute for configuration (an operator's change shows within a minute
    /// even if an invalidation were lost).
    fn default() -> Ttls {
        Ttls {
            by_component: BTreeMap::from([(Component::Configuration, Duration::from_secs(60))]),
            default: Duration::from_secs(600),
        }
    }
}

impl Ttls {
    /// The TTL of `component` (at least a millisecond: Redis refuses `PX 0`).
    pub fn of(&self, component: Component) -> Duration {
        self.by_component
            .get(&component)
            .copied()
            .unwrap_or(self.default)
            .max(Duration::from_millis(1))
    }
}

/// When tier 2 is skipped after failures, and when it is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed Redis operations that open the breaker.
    pub failures_to_open: u32,
    /// How long the breaker stays open before one trial operation is let through (half-open).
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_secs(2),
        }
    }
}

/// The cache's configuration.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Tier 1's bound in bytes, as weighed by an approximation of each entry's heap size; `0`
    /// turns tier 1 off (every read goes to tier 2, then the source).
    pub memory_bytes: u64,
    /// TTL per component, in both tiers.
    pub ttl: Ttls,
    /// How many of a chat's last messages a `Messages` entry holds; a read of at most this many
    /// is served from it (sliced by the caller), a larger one bypasses the cache.
    pub messages_cached: usize,
    /// The prefix of every Redis key and of the invalidation channel: one namespace per log.
    pub namespace: String,
    /// Tier 2; `None` turns it off.
    pub redis: Option<RedisConfig>,
    /// The circuit breaker in front of Redis.
    pub breaker: BreakerConfig,
    /// How long one Redis operation may take (a cut connection must not stall reads).
    pub redis_timeout: Duration,
    /// Test-only: invalidation deletes entries instead of setting a floor (the mutation the
    /// cache race test must catch). Never set it outside tests.
    #[doc(hidden)]
    pub plain_delete_for_tests: bool,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            memory_bytes: MEMORY_BYTES_DEFAULT,
            ttl: Ttls::default(),
            messages_cached: MESSAGES_CACHED_DEFAULT,
            namespace: NAMESPACE_DEFAULT.to_owned(),
            redis: None,
            breaker: BreakerConfig::default(),
            redis_timeout: REDIS_TIMEOUT_DEFAULT,
            plain_delete_for_tests: false,
        }
    }
}

/// Where the Redis server of tier 2 is. Its `Debug` shows the target, never the password.
#[derive(Clone)]
pub struct RedisConfig {
    /// Address, database, credentials, TLS (`rediss://`).
    pub connection: ConnectionInfo,
    /// Multiplexed connections for reads, puts and invalidations (round-robin), besides the
    /// one the invalidation subscriber holds.
    pub max_connections: usize,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("target", &self.target())
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl RedisConfig {
    /// The configuration in the process environment; `None` when Redis is not configured
    /// (tier 2 off).
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the variable whose value cannot be used.
    pub fn from_env() -> Result<Option<RedisConfig>, CacheError> {
        RedisConfig::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// The configuration in a set of variables (`lookup` returns a variable's value):
    /// `REDIS_URL` (`redis://[user:password@]host[:port][/db]`, `rediss://` for TLS), or
    /// `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`; `REDIS_MAX_CONNECTIONS` with either. `None`
    /// when none of them is set.
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the variable whose value cannot be used, or one set without
    /// `REDIS_HOST` or `REDIS_URL` (half a configuration: a bot that set a password and forgot
    /// the host would otherwise lose its shared cache silently).
    pub fn from_vars(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<RedisConfig>, CacheError> {
        let lookup = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let connection = if let Some(url) = lookup("REDIS_URL") {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(config_error(
                    "REDIS_URL",
                    "must start with redis:// (or rediss:// for TLS)",
                ));
            }
            url.as_str().into_connection_info().map_err(|e| {
                // The driver's message may quote the URL; only its kind is safe to show.
                config_error(
                    "REDIS_URL",
                    &format!("is not a valid Redis URL ({:?})", e.kind()),
                )
            })?
        } else if let Some(host) = lookup("REDIS_HOST") {
            let port = match lookup("REDIS_PORT") {
                Some(port) => port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    config_error("REDIS_PORT", &format!("{port:?} is not a port (1-65535)"))
                })?,
                None => REDIS_PORT_DEFAULT,
            };
            let mut settings = RedisConnectionInfo::default();
            if let Some(password) = lookup("REDIS_PASSWORD") {
                settings = settings.set_password(password);
            }
            ConnectionAddr::Tcp(host, port)
                .into_connection_info()
                .map_err(|e| {
                    config_error("REDIS_HOST", &format!("cannot be used ({:?})", e.kind()))
                })?
                .set_redis_settings(settings)
        } else {
            let partial = ["REDIS_PORT", "REDIS_PASSWORD", "REDIS_MAX_CONNECTIONS"]
                .into_iter()
                .find(|name| lookup(name).is_some());
            if let Some(variable) = partial {
                return Err(config_error(
                    variable,
                    "is set, but neither REDIS_HOST nor REDIS_URL says which server: set one \
                     to use Redis, or unset it to run without the shared cache",
                ));
            }
            return Ok(None);
        };
        let max_connections = match lookup("REDIS_MAX_CONNECTIONS") {
            Some(max) => max
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    config_error(
                        "REDIS_MAX_CONNECTIONS",
                        &format!("{max:?} is not a positive integer"),
                    )
                })?,
            None => REDIS_CONNECTIONS_DEFAULT,
        };
        Ok(Some(RedisConfig {
            connection,
            max_connections,
        }))
    }

    /// A configuration for `url` with the default connection count.
    ///
    /// # Errors
    /// [`CacheError::Config`] when the URL does not parse.
    pub fn from_url(url: &str) -> Result<RedisConfig, CacheError> {
        RedisConfig::from_vars(|name| (name == "REDIS_URL").then(|| url.to_owned()))?
            .ok_or_else(|| config_error("REDIS_URL", "is empty"))
    }

    /// `redis://host:port/db` (`rediss://` with TLS), with the user but never the password:
    /// for logs and errors.
    pub fn target(&self) -> String {
        let settings = self.connection.redis_settings();
        let user = settings
            .username()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let (scheme, address) = match self.connection.addr() {
            ConnectionAddr::Tcp(host, port) => ("redis", format!("{host}:{port}")),
            ConnectionAddr::TcpTls { host, port, .. } => ("rediss", format!("{host}:{port}")),
            ConnectionAddr::Unix(path) => ("redis+unix", path.display().to_string()),
            // The enum is non-exhaustive: a future address kind still prints without secrets.
            other => ("redis", other.to_string()),
        };
        format!("{scheme}://{user}{address}/{}", settings.db())
    }
}

fn config_error(variable: &str, reason: &str) -> CacheError {
    CacheError::Config {
        variable: variable.to_owned(),
        reason: reason.to_owned(),
    }
}
