//! `hybridstore migrate status|set` and `hybridstore read`: the migration states and the typed
//! reads from the command line, through the library's [`hybridstore::hybrid::Hybrid`].

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use hybridstore::hybrid::{Hybrid, HybridConfig, HybridError, SetOptions};
use hybridstore::read::{Query, Routed};
use hybridstore::sink::postgres::PgConfig;
use hybridstore::{BotId, Component, MigrationState, Timestamp};

use super::{print_line, runtime, DbArgs, Format};

/// What `read` reads.
#[derive(Debug, clap::Subcommand)]
pub enum ReadWhat {
    /// A chat partner's profile document.
    Profile {
        /// The chat id.
        chat: i64,
    },
    /// A conversation's head (counts, last activity).
    Head {
        /// The chat id.
        chat: i64,
    },
    /// The last messages of a conversation, oldest first.
    Messages {
        /// The chat id.
        chat: i64,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A user.
    User {
        /// The user id.
        id: i64,
    },
    /// A configuration value.
    Config {
        /// The scope.
        scope: String,
        /// The key.
        key: String,
    },
    /// A day's analytics counters.
    Day {
        /// `YYYY-MM-DD` (UTC).
        date: String,
    },
}

impl ReadWhat {
    /// The daemon's route for this read (API v1).
    ///
    /// # Errors
    /// A date that does not parse.
    pub fn path(&self, bot: &BotId, min_position: Option<u64>) -> Result<String, String> {
        let base = format!("/v1/bots/{bot}");
        let mut path = match self {
            ReadWhat::Profile { chat } => format!("{base}/profiles/{chat}?"),
            ReadWhat::Head { chat } => format!("{base}/conversations/{chat}/head?"),
            ReadWhat::Messages { chat, limit } => {
                format!("{base}/conversations/{chat}/messages?limit={limit}&")
            }
            ReadWhat::User { id } => format!("{base}/users/{id}?"),
            ReadWhat::Config { scope, key } => {
                format!("{base}/config/{}/{}?", encode(scope), encode(key))
            }
            ReadWhat::Day { date } => {
                Timestamp::parse_date(date)
                    .ok_or_else(|| format!("{date:?} is not a date (expected YYYY-MM-DD)"))?;
                format!("{base}/analytics/{date}?")
            }
        };
        if let Some(min) = min_position {
            path.push_str(&format!("min_position={min}"));
        }
        Ok(path.trim_end_matches(['?', '&']).to_owned())
    }
}

/// `text` as one URL path segment: unreserved characters as they are, every other byte
/// percent-encoded.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Opens the handle the commands use: the store in `data_dir`, Postgres when configured (the
/// flag, `DATABASE_URL` or `DB_HOST`…), the cache when Redis is configured.
async fn open(data_dir: &Path, db: &DbArgs) -> Result<Hybrid, ExitCode> {
    let postgres = PgConfig::resolve(db.database_url.as_deref(), false).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })?;
    let mut config = HybridConfig::new(super::store_config(data_dir)?);
    config.postgres = postgres;
    config.cache = super::cache_config().map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })?;
    if config.postgres.is_none() {
        config.cache = None;
    }
    Hybrid::open(config).await.map_err(|error| {
        match &error {
            HybridError::Store(store) => super::explain_open_error(data_dir, store),
            other => eprintln!(
                "error: cannot open the store in {}: {}",
                data_dir.display(),
                hybridstore::error::one_line(other)
            ),
        }
        ExitCode::from(2)
    })
}

/// Runs `command` on a fresh runtime with the handle open, then closes it.
pub(crate) fn with_hybrid<F>(data_dir: &Path, db: &DbArgs, command: F) -> ExitCode
where
    F: AsyncFnOnce(&Hybrid) -> ExitCode,
{
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let hybrid = match open(data_dir, db).await {
            Ok(hybrid) => hybrid,
            Err(code) => return code,
        };
        let code = command(&hybrid).await;
        if let Err(error) = hybrid.close().await {
            eprintln!("error: closing the store: {error}");
            return ExitCode::from(2);
        }
        code
    })
}

/// `migrate status`: exit 0, or 2 when it could not run.
pub fn status_command(
    data_dir: &Path,
    db: &DbArgs,
    bot: Option<&BotId>,
    format: Format,
) -> ExitCode {
    with_hybrid(data_dir, db, async |hybrid| {
        if let Some(supervisor) = hybrid.supervisor() {
            // Let the projector load its checkpoints so the lag is where it stands.
            supervisor.settle(Duration::from_secs(5)).await;
        }
        let reports = match hybrid.migration_status(bot).await {
            Ok(reports) => reports,
            Err(error) => {
                eprintln!("error: {}", hybridstore::error::one_line(&error));
                return ExitCode::from(2);
            }
        };
        if reports.is_empty() {
            if format == Format::Text {
                print_line(format_args!(
                    "no component state was ever set: every component of every bot is disabled (served by the log projection)"
                ));
            }
            return ExitCode::SUCCESS;
        }
        for report in &reports {
            match format {
                Format::Json => print_line(format_args!(
                    "{}",
                    serde_json::json!({"type": "component", "data": report})
                )),
                Format::Text => {
                    let since = report
                        .since
                        .map(|t| format!(" since {}", t.to_rfc3339()))
                        .unwrap_or_default();
                    let how = match (&report.reason, report.automatic) {
                        (Some(reason), true) => format!(" (automatic: {reason})"),
                        (Some(reason), false) => format!(" ({reason})"),
                        (None, _) => String::new(),
                    };
                    let projector = match &report.projector {
                        Some(p) => format!(
                            "; projector at {} (lag {}){}",
                            p.committed.0,
                            p.lag,
                            p.last_error
                                .as_ref()
                                .map(|e| format!(", retrying after: {e}"))
                                .unwrap_or_default()
                        ),
                        None => String::new(),
                    };
                    let shadow = match &report.shadow {
                        Some(s) => format!(
                            "; shadow: {} matched, {} mismatched, {} lagging, {} errors, {} timeouts; window {} matches since {}",
                            s.totals.matched,
                            s.totals.mismatched,
                            s.totals.lagging,
                            s.totals.errors,
                            s.totals.timeouts,
                            s.window_matched,
                            s.window_start.to_rfc3339()
                        ),
                        None => String::new(),
                    };
                    print_line(format_args!(
                        "{} {}: {}{since}{how}{projector}{shadow}",
                        report.bot, report.component, report.state
                    ));
                    if let Some(s) = &report.shadow {
                        for m in &s.last_mismatches {
                            print_line(format_args!(
                                "  mismatch {} at {}: log@{} {} / postgres@{} {}",
                                m.key,
                                m.at.to_rfc3339(),
                                m.log_position.0,
                                m.log,
                                m.postgres_position.0,
                                m.postgres
                            ));
                        }
                    }
                }
            }
        }
        ExitCode::SUCCESS
    })
}

/// `migrate set`: exit 0 when every component moved, 1 when one was refused (the ones before it
/// moved), 2 when it could not run.
pub fn set_command(
    data_dir: &Path,
    db: &DbArgs,
    bot: &BotId,
    components: &[Component],
    to: MigrationState,
    options: SetOptions,
) -> ExitCode {
    with_hybrid(data_dir, db, async |hybrid| {
        for component in components {
            match hybrid
                .set_component_state(bot, *component, to, &options)
                .await
            {
                Ok(made) => print_line(format_args!(
                    "{} {}: {} -> {} at position {}{}",
                    made.bot,
                    made.component,
                    made.from,
                    made.to,
                    made.position.0,
                    if made.forced { " (forced)" } else { "" }
                )),
                Err(HybridError::Refused(refused)) => {
                    eprintln!("refused: {refused}");
                    return ExitCode::from(1);
                }
                Err(error) => {
                    eprintln!("error: {}", hybridstore::error::one_line(&error));
                    return ExitCode::from(2);
                }
            }
        }
        ExitCode::SUCCESS
    })
}

/// `read`: exit 0 when found, 1 when there is nothing there (no such profile, no messages), 2
/// when it could not run.
pub fn read_command(
    data_dir: &Path,
    db: &DbArgs,
    bot: &BotId,
    what: &ReadWhat,
    min_position: Option<u64>,
    format: Format,
) -> ExitCode {
    let query = match what {
        ReadWhat::Profile { chat } => Query::Profile {
            bot: bot.clone(),
            chat_id: *chat,
        },
        ReadWhat::Head { chat } => Query::Head {
            bot: bot.clone(),
            chat_id: *chat,
        },
        ReadWhat::Messages { chat, limit } => Query::Messages {
            bot: bot.clone(),
            chat_id: *chat,
            limit: *limit,
        },
        ReadWhat::User { id } => Query::User {
            bot: bot.clone(),
            user_id: *id,
        },
        ReadWhat::Config { scope, key } => Query::Config {
            bot: bot.clone(),
            scope: scope.clone(),
            key: key.clone(),
        },
        ReadWhat::Day { date } => match Timestamp::parse_date(date) {
            Some(day) => Query::Daily {
                bot: bot.clone(),
                day,
            },
            None => {
                eprintln!("error: {date:?} is not a date (expected YYYY-MM-DD)");
                return ExitCode::from(2);
            }
        },
    };
    with_hybrid(data_dir, db, async |hybrid| {
        if let Some(supervisor) = hybrid.supervisor() {
            supervisor.settle(Duration::from_secs(5)).await;
        }
        let min = min_position.map(hybridstore_wal::Position);
        match hybrid.reads().read(&query, min).await {
            Ok(routed) => print_routed(&routed, format),
            Err(error) => {
                eprintln!("error: {}", hybridstore::error::one_line(&error));
                ExitCode::from(2)
            }
        }
    })
}

fn print_routed(routed: &Routed, format: Format) -> ExitCode {
    let value = serde_json::to_value(&routed.answer).unwrap_or_default();
    let found = !(value.is_null() || value.as_array().is_some_and(Vec::is_empty));
    match format {
        Format::Json => print_line(format_args!(
            "{}",
            serde_json::json!({"type": "read", "data": {
                "value": value,
                "source": routed.source,
                "state": routed.state,
                "applied_end": routed.applied_end.0,
            }})
        )),
        Format::Text => {
            print_line(format_args!(
                "# from {} ({}; applied end {})",
                routed.source.as_str(),
                routed.state,
                routed.applied_end.0
            ));
            let text = serde_json::to_string_pretty(&value).unwrap_or_default();
            print_line(format_args!("{text}"));
        }
    }
    if found {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
