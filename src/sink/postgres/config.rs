//! Where the Postgres read models live: configuration from the environment (the variables the bot
//! already uses) or a URL, the connection pool, and one-line descriptions of connection failures.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::Connection as _;

use super::PgError;

/// Smallest pool by default: the projector and a few readers keep this many connections warm.
pub const POOL_MIN_DEFAULT: u32 = 5;
/// Largest pool by default (`DB_MAX_POOL_SIZE` overrides it).
pub const POOL_MAX_DEFAULT: u32 = 20;
/// How long connecting (or waiting for a pooled connection) may take before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the database holding the read models.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Host, port, database, user, password, TLS.
    pub connect: PgConnectOptions,
    /// Connections the pool keeps open.
    pub pool_min: u32,
    /// Connections the pool opens at most.
    pub pool_max: u32,
}

impl PgConfig {
    /// The configuration in the process environment; `None` when no database is configured (the
    /// store then runs log-only).
    ///
    /// # Errors
    /// [`PgError::Config`] naming the variable whose value cannot be used.
    pub fn from_env() -> Result<Option<PgConfig>, PgError> {
        PgConfig::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// The configuration in a set of variables (`lookup` returns a variable's value):
    /// `DATABASE_URL`, or `DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER`, `DB_PASSWORD`, `DB_SSLMODE`,
    /// `DB_SSLROOTCERT`; and `DB_MAX_POOL_SIZE`, `DB_MIN_POOL_SIZE` with either. `None` when
    /// none of them is set (log-only).
    ///
    /// # Errors
    /// [`PgError::Config`] naming the variable whose value cannot be used, or one set without
    /// `DB_HOST`/`DB_NAME`/`DATABASE_URL` (half a configuration).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<PgConfig>, PgError> {
        let connect = if let Some(url) = lookup("DATABASE_URL") {
            parse_url("DATABASE_URL", &url)?
        } else if lookup("DB_HOST").is_some() || lookup("DB_NAME").is_some() {
            let mut options = PgConnectOptions::new_without_pgpass()
                .host(lookup("DB_HOST").as_deref().unwrap_or("localhost"))
                .username(lookup("DB_USER").as_deref().unwrap_or("postgres"))
                .database(lookup("DB_NAME").as_deref().unwrap_or("postgres"))
                .application_name("hybridstore");
            if let Some(port) = lookup("DB_PORT") {
                options = options.port(parse_number::<u16>("DB_PORT", &port)?);
            }
            if let Some(password) = lookup("DB_PASSWORD") {
                options = options.password(&password);
            }
            if let Some(mode) = lookup("DB_SSLMODE") {
                let mode = PgSslMode::from_str(&mode).map_err(|_| PgError::Config {
                    variable: "DB_SSLMODE".into(),
                    reason: format!(
                        "{mode:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                    ),
                })?;
                options = options.ssl_mode(mode);
            }
            if let Some(root) = lookup("DB_SSLROOTCERT") {
                options = options.ssl_root_cert(root);
            }
            options
        } else {
            // Half a configuration is a mistake, not a wish to run log-only: a bot that set its
            // credentials and forgot the host would otherwise lose its database silently.
            let partial = [
                "DB_USER",
                "DB_PASSWORD",
                "DB_PORT",
                "DB_SSLMODE",
                "DB_SSLROOTCERT",
            ]
            .into_iter()
            .find(|name| lookup(name).is_some());
            if let Some(variable) = partial {
                return Err(PgError::Config {
                    variable: variable.into(),
                    reason: "is set, but neither DB_HOST nor DB_NAME (nor DATABASE_URL) says \
                             which database: set them to use Postgres, or unset it to run \
                             log-only"
                        .into(),
                });
            }
            return Ok(None);
        };
        let mut config = PgConfig::new(connect);
        if let Some(max) = lookup("DB_MAX_POOL_SIZE") {
            config.pool_max = parse_number::<u32>("DB_MAX_POOL_SIZE", &max)?;
        }
        if let Some(min) = lookup("DB_MIN_POOL_SIZE") {
            config.pool_min = parse_number::<u32>("DB_MIN_POOL_SIZE", &min)?;
        }
        config.check()?;
        Ok(Some(config))
    }

    /// The configuration for a command: `url` (a `--database-url` flag) if given, else the
    /// environment; the pool variables of the environment apply to both.
    ///
    /// # Errors
    /// [`PgError::Config`] as [`PgConfig::from_vars`]; also when neither names a database
    /// (`required` commands cannot run log-only).
    pub fn resolve(url: Option<&str>, required: bool) -> Result<Option<PgConfig>, PgError> {
        let config = PgConfig::from_vars(|name| {
            if name == "DATABASE_URL" && url.is_some() {
                return url.map(str::to_owned);
            }
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })?;
        if config.is_none() && required {
            return Err(PgError::Config {
                variable: "DATABASE_URL".into(),
                reason: "no database configured: pass --database-url, or set DATABASE_URL or \
                         DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD"
                    .into(),
            });
        }
        Ok(config)
    }

    /// The configuration a URL (`postgres://user:password@host:port/db?sslmode=verify-full`) gives.
    ///
    /// # Errors
    /// [`PgError::Config`] when the URL does not parse.
    pub fn from_url(url: &str) -> Result<PgConfig, PgError> {
        let config = PgConfig::new(parse_url("--database-url", url)?);
        config.check()?;
        Ok(config)
    }

    /// Default pool bounds around `connect`.
    pub fn new(connect: PgConnectOptions) -> PgConfig {
        PgConfig {
            connect,
            pool_min: POOL_MIN_DEFAULT,
            pool_max: POOL_MAX_DEFAULT,
        }
    }

    fn check(&self) -> Result<(), PgError> {
        if self.pool_max == 0 {
            return Err(PgError::Config {
                variable: "DB_MAX_POOL_SIZE".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// `user@host:port/database`, for messages (never the password).
    pub fn target(&self) -> String {
        let c = &self.connect;
        format!(
            "{}@{}:{}/{}",
            c.get_username(),
            c.get_host(),
            c.get_port(),
            c.get_database().unwrap_or(c.get_username())
        )
    }

    /// A copy pointing at another database on the same server.
    pub fn with_database(&self, database: &str) -> PgConfig {
        PgConfig {
            connect: self.connect.clone().database(database),
            ..self.clone()
        }
    }

    /// Opens the pool, making one connection first so that a bad configuration (wrong password,
    /// missing database, unreachable host) is reported at once, in one line.
    ///
    /// # Errors
    /// [`PgError::Connect`] describing why the first connection failed.
    pub async fn connect(&self) -> Result<PgPool, PgError> {
        // One connection by hand first: the pool retries a failing connect until its timeout
        // and then reports only that it timed out, where this reports the reason at once.
        let first = tokio::time::timeout(
            CONNECT_TIMEOUT,
            sqlx::PgConnection::connect_with(&self.connect),
        )
        .await
        .map_err(|_| PgError::Connect {
            target: self.target(),
            reason: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        })?
        .map_err(|e| PgError::Connect {
            target: self.target(),
            reason: describe(&e),
        })?;
        let _ = first.close().await;
        PgPoolOptions::new()
            .min_connections(self.pool_min.min(self.pool_max))
            .max_connections(self.pool_max)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(self.connect.clone())
            .await
            .map_err(|e| PgError::Connect {
                target: self.target(),
                reason: describe(&e),
            })
    }
}

impl PgConfig {
    /// A pool that connects when first used: for a store that must serve from the log while
    /// Postgres is down at its start (each use then fails, and is retried, on its own).
    pub fn connect_lazy(&self) -> PgPool {
        self.connect_lazy_sized(self.pool_max)
    }

    /// [`PgConfig::connect_lazy`] with at most `connections` connections.
    pub fn connect_lazy_sized(&self, connections: u32) -> PgPool {
        PgPoolOptions::new()
            .min_connections(0)
            .max_connections(connections.max(1))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(self.connect.clone())
    }
}

fn parse_url(variable: &str, url: &str) -> Result<PgConnectOptions, PgError> {
    // sqlx reads any scheme as Postgres; a MySQL or Redis URL here is a mistake to report.
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(PgError::Config {
            variable: variable.into(),
            reason: "not a Postgres URL (expected postgres://user:password@host:port/database)"
                .into(),
        });
    }
    PgConnectOptions::from_str(url)
        .map(|o| o.application_name("hybridstore"))
        .map_err(|e| PgError::Config {
            variable: variable.into(),
            reason: format!("not a usable Postgres URL: {}", describe(&e)),
        })
}

fn parse_number<T: FromStr>(variable: &str, value: &str) -> Result<T, PgError> {
    value.trim().parse().map_err(|_| PgError::Config {
        variable: variable.into(),
        reason: format!("{value:?} is not a number in range"),
    })
}

/// One line saying what went wrong, without sqlx's nesting: the server's message and SQLSTATE
/// for database errors, the OS error for I/O.
pub fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        sqlx::Error::PoolTimedOut => format!(
            "no connection within {}s (server unreachable or pool exhausted)",
            CONNECT_TIMEOUT.as_secs()
        ),
        sqlx::Error::Configuration(reason) => reason.to_string(),
        other => other.to_string().replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    /// Proves no database variables means log-only, and DB_* variables build the target.
    #[test]
    fn env_variables() {
        assert!(PgConfig::from_vars(vars(&[])).unwrap().is_none());
        let config = PgConfig::from_vars(vars(&[
            ("DB_HOST", "db.internal"),
            ("DB_PORT", "6543"),
            ("DB_NAME", "bot"),
            ("DB_USER", "botuser"),
            ("DB_PASSWORD", "secret"),
            ("DB_MAX_POOL_SIZE", "7"),
            ("DB_SSLMODE", "verify-full"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.target(), "botuser@db.internal:6543/bot");
        assert_eq!((config.pool_min, config.pool_max), (5, 7));
        assert!(matches!(
            config.connect.get_ssl_mode(),
            PgSslMode::VerifyFull
        ));
        assert!(!config.target().contains("secret"));
    }

    /// Proves DATABASE_URL wins over DB_* and carries its sslmode.
    #[test]
    fn database_url() {
        let config = PgConfig::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u@h:1234/d?sslmode=verify-full"),
            ("DB_HOST", "ignored"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.target(), "u@h:1234/d");
        assert!(matches!(
            config.connect.get_ssl_mode(),
            PgSslMode::VerifyFull
        ));
    }

    /// Proves unusable values are refused naming the variable.
    #[test]
    fn bad_values() {
        for (pairs, variable) in [
            (vec![("DB_HOST", "h"), ("DB_PORT", "port")], "DB_PORT"),
            (vec![("DB_HOST", "h"), ("DB_PORT", "70000")], "DB_PORT"),
            (
                vec![("DB_HOST", "h"), ("DB_SSLMODE", "maybe")],
                "DB_SSLMODE",
            ),
            (
                vec![("DB_HOST", "h"), ("DB_MAX_POOL_SIZE", "0")],
                "DB_MAX_POOL_SIZE",
            ),
            (vec![("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            // Half a configuration is refused, not taken as log-only.
            (vec![("DB_USER", "bot"), ("DB_PASSWORD", "pw")], "DB_USER"),
            (vec![("DB_PASSWORD", "pw")], "DB_PASSWORD"),
        ] {
            let error = PgConfig::from_vars(vars(&pairs)).unwrap_err();
            assert!(
                matches!(&error, PgError::Config { variable: v, .. } if v == variable),
                "{pairs:?}: {error}"
            );
        }
    }
}
