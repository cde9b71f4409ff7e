//! The `hybridstore` binary: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
mod demo;
mod erase;
mod migrate;
mod remote;
mod serve;

use demo::DemoConfig;

#[derive(Debug, Parser)]
#[command(
    name = "hybridstore",
    version,
    about = "Event-sourced write-ahead log store for a Telegram chat bot"
)]
struct Cli {
    /// Data directory (the log lives in DIR/wal). Default: `HYBRIDSTORE_DATA_DIR`, else
    /// `./data`; `demo` uses a directory of its own (`./hybridstore-demo`) unless this flag is
    /// given, so a demo's events never land in a real store.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Import the old bot's `girls_data/*.json` and `conversations/*.json` into the log. Running
    /// it again imports only what is new; malformed files are reported and skipped (exit 1).
    #[command(group(clap::ArgGroup::new("sources").required(true).multiple(true)))]
    ImportLegacy {
        #[command(flatten)]
        bot: BotArg,
        /// The old bot's `girls_data` directory (profile documents).
        #[arg(long, value_name = "DIR", group = "sources")]
        girls_dir: Option<PathBuf>,
        /// The old bot's `conversations` directory (message logs).
        #[arg(long, value_name = "DIR", group = "sources")]
        conversations_dir: Option<PathBuf>,
    },
    /// Export profiles and conversations to the old bot's layout (OUT/girls_data,
    /// OUT/conversations): the rollback path to the old bot.
    ExportLegacy {
        #[command(flatten)]
        bot: BotArg,
        /// Directory to write `girls_data/` and `conversations/` into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Manage the Postgres read models.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Project the log into the Postgres read models: backfill each component from its
    /// checkpoint, then follow new events until Ctrl-C (or, with --until-caught-up, until every
    /// event durable at start is committed).
    Project {
        #[command(flatten)]
        db: DbArgs,
        /// Components to project (comma-separated; `all` for every one).
        #[arg(long, env = "HYBRIDSTORE_PG_COMPONENTS", default_value = "all", value_parser = parse_components)]
        component: hybridstore::ComponentSet,
        /// Most events per transaction.
        #[arg(long, default_value_t = 2000)]
        batch_events: usize,
        /// Exit once every event durable at start is committed.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Run the daemon: own the data directory, run the sinks, serve HTTP/JSON (API v1,
    /// docs/api-v1.md) on TCP and/or a Unix socket until SIGTERM/SIGINT.
    Serve(serve::ServeArgs),
    /// The migration states: which projection serves each component's reads.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// A typed read through the router, saying which source answered (for operators, and for
    /// checking a migration by hand).
    Read {
        #[command(flatten)]
        bot: BotArg,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Read-your-writes: see at least the event at this position.
        #[arg(long, value_name = "POSITION")]
        min_position: Option<u64>,
        /// Output: `text`, or `json` (one JSON line `{type, data}`).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(subcommand)]
        what: migrate::ReadWhat,
    },
    /// Erase a person (a chat partner, or a user and their private chat) from the log, the key
    /// store and every projection, and print the receipt (JSON): exit 0 when every sink reached
    /// the erasure, 1 when one did not in time (ask again with --receipt), 2 when it could not
    /// run.
    #[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
    Erase {
        #[command(flatten)]
        bot: BotArg,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        /// The chat partner's chat id.
        #[arg(
            long,
            value_name = "CHAT",
            group = "target",
            allow_hyphen_values = true
        )]
        chat: Option<i64>,
        /// The user's id (their private chat goes too).
        #[arg(
            long,
            value_name = "USER",
            group = "target",
            allow_hyphen_values = true
        )]
        user: Option<i64>,
        /// Ask again for this receipt (checking the sinks that had not reached the erasure).
        #[arg(long, value_name = "ID", group = "target")]
        receipt: Option<uuid::Uuid>,
        /// Longest wait for the sinks, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        wait: u64,
    },
    /// Simulate the bot's message loop through the store on the embedded default (log only, no
    /// servers) and report throughput and latency; leaves a log the audit tool can inspect.
    Demo {
        /// Chats to simulate.
        #[arg(long, default_value_t = 200)]
        chats: u64,
        /// Message exchanges (one received + one sent message) per chat.
        #[arg(long, default_value_t = 50)]
        exchanges: u64,
        /// Concurrent handler tasks, each over its own chats.
        #[arg(long, default_value_t = 16)]
        handlers: usize,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateCommand {
    /// Per bot and component: state, since when and why, projector lag, shadow counts, the last
    /// mismatches.
    Status {
        /// Only this bot (default: every bot with a state set).
        #[arg(long, env = "HYBRIDSTORE_BOT", value_parser = parse_bot_id)]
        bot: Option<hybridstore::BotId>,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Output: `text`, or `json` (JSON Lines `{type, data}`).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Move components to a state: forward one step at a time (with its guard), back to any
    /// earlier state at any time.
    Set {
        #[command(flatten)]
        bot: BotArg,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        /// The components (users, profiles, configuration, conversations, analytics).
        #[arg(required = true, value_parser = parse_component)]
        components: Vec<hybridstore::Component>,
        /// The state: disabled, enabled, dual-write, database-only.
        #[arg(long, value_parser = parse_state)]
        to: hybridstore::MigrationState,
        /// Skip the guard of a step forward (the projector caught up; a clean shadow window).
        #[arg(long)]
        force: bool,
        /// Why (recorded in the transition event).
        #[arg(long)]
        reason: Option<String>,
        /// Seconds `enabled -> dual-write` waits for the projector to catch up.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
}

/// Output format of the commands that print records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// JSON Lines, `{type, data}`.
    Json,
}

fn parse_component(name: &str) -> Result<hybridstore::Component, hybridstore::InputError> {
    name.parse()
}

fn parse_state(name: &str) -> Result<hybridstore::MigrationState, String> {
    name.parse()
}

/// The cache of the database-only reads: tier 1 in memory, and tier 2 when Redis is configured
/// (`REDIS_URL`, or `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`, `REDIS_MAX_CONNECTIONS`), its keys
/// under `HYBRIDSTORE_CACHE_NAMESPACE` (default `hybridstore`).
fn cache_config() -> Result<Option<hybridstore::read::cache::CacheConfig>, String> {
    let redis = hybridstore::read::cache::RedisConfig::from_env().map_err(|e| e.to_string())?;
    let mut config = hybridstore::read::cache::CacheConfig {
        redis,
        ..Default::default()
    };
    if let Some(namespace) = std::env::var("HYBRIDSTORE_CACHE_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
    {
        config.namespace = namespace;
    }
    Ok(Some(config))
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Apply the migrations the database has not seen (the projector also does at start).
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
}

/// A running daemon to talk to instead of opening the data directory (which the daemon holds).
#[derive(Debug, clap::Args)]
struct RemoteArgs {
    /// The daemon's URL (`http://127.0.0.1:8740`); its token comes from `HYBRIDSTORE_TOKEN`.
    #[arg(long, env = "HYBRIDSTORE_URL", value_name = "URL")]
    url: Option<String>,
}

impl RemoteArgs {
    fn remote(&self) -> Option<remote::Remote> {
        self.url.as_ref().map(|url| remote::Remote {
            url: url.clone(),
            token: std::env::var("HYBRIDSTORE_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }
}

/// Where the read models are; without the flag, `DATABASE_URL` or `DB_HOST`, `DB_PORT`,
/// `DB_NAME`, `DB_USER`, `DB_PASSWORD` (`DB_MAX_POOL_SIZE`, `DB_SSLMODE`, `DB_SSLROOTCERT`).
#[derive(Debug, clap::Args)]
struct DbArgs {
    /// `postgres://user:password@host:port/database?sslmode=verify-full`.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

fn parse_components(list: &str) -> Result<hybridstore::ComponentSet, hybridstore::InputError> {
    hybridstore::ComponentSet::parse_list(list)
}

/// mimalloc: per-thread heaps. The store decodes on one thread and frees on another (rebuild,
/// projector); glibc's arena lock made that a third of the rebuild's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The data directory of every command but `demo`.
const DATA_DIR_DEFAULT: &str = "./data";
/// The demo's own data directory.
const DEMO_DATA_DIR_DEFAULT: &str = "./hybridstore-demo";

fn main() -> ExitCode {
    hybridstore::init_logging();
    let mut cli = Cli::parse();
    let demo = matches!(cli.command, Command::Demo { .. });
    // The demo ignores HYBRIDSTORE_DATA_DIR: that names the production store.
    cli.data_dir = Some(match cli.data_dir.take() {
        Some(dir) => dir,
        None if demo => PathBuf::from(DEMO_DATA_DIR_DEFAULT),
        None => std::env::var_os("HYBRIDSTORE_DATA_DIR")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DATA_DIR_DEFAULT), PathBuf::from),
    });
    let data_dir = cli.data_dir.clone().unwrap_or_default();
    match cli.command {
        Command::ImportLegacy {
            bot,
            girls_dir,
            conversations_dir,
        } => import_legacy_command(
            &data_dir,
            &bot.bot,
            girls_dir.as_deref(),
            conversations_dir.as_deref(),
        ),
        Command::ExportLegacy { bot, out } => export_legacy_command(&data_dir, &bot.bot, &out),
        Command::Db {
            command: DbCommand::Migrate { db },
        } => db_migrate_command(&db),
        Command::Project {
            db,
            component,
            batch_events,
            until_caught_up,
        } => project_command(&data_dir, &db, component, batch_events, until_caught_up),
        Command::Serve(args) => serve::serve_command(&data_dir, args),
        Command::Migrate {
            command:
                MigrateCommand::Status {
                    bot,
                    db,
                    remote,
                    format,
                },
        } => match remote.remote() {
            Some(remote) => on_runtime(remote::status(&remote, bot.as_ref())),
            None => migrate::status_command(&data_dir, &db, bot.as_ref(), format),
        },
        Command::Migrate {
            command:
                MigrateCommand::Set {
                    bot,
                    db,
                    remote,
                    components,
                    to,
                    force,
                    reason,
                    wait,
                },
        } => {
            let options = hybridstore::hybrid::SetOptions {
                force,
                reason,
                wait: std::time::Duration::from_secs(wait),
            };
            match remote.remote() {
                Some(remote) => {
                    on_runtime(remote::set(&remote, &bot.bot, &components, to, &options))
                }
                None => migrate::set_command(&data_dir, &db, &bot.bot, &components, to, options),
            }
        }
        Command::Read {
            bot,
            db,
            remote,
            min_position,
            format,
            what,
        } => match remote.remote() {
            Some(remote) => match what.path(&bot.bot, min_position) {
                Ok(path) => on_runtime(remote::read(&remote, &path)),
                Err(problem) => {
                    eprintln!("error: {problem}");
                    ExitCode::from(2)
                }
            },
            None => migrate::read_command(&data_dir, &db, &bot.bot, &what, min_position, format),
        },
        Command::Erase {
            bot,
            db,
            remote,
            chat,
            user,
            receipt,
            wait,
        } => {
            let target = match (chat, user, receipt) {
                (Some(chat), _, _) => erase::Target::Chat(chat),
                (_, Some(user), _) => erase::Target::User(user),
                (_, _, Some(id)) => erase::Target::Receipt(id),
                _ => unreachable!("clap requires one target"),
            };
            let wait = std::time::Duration::from_secs(wait);
            match remote.remote() {
                Some(remote) => on_runtime(erase::erase_remote(&remote, &bot.bot, target, wait)),
                None => erase::erase_command(&data_dir, &db, &bot.bot, target, wait),
            }
        }
        Command::Demo {
            chats,
            exchanges,
            handlers,
        } => {
            let config = DemoConfig {
                chats,
                exchanges_per_chat: exchanges,
                handlers,
            };
            if let Err(problem) = config.validate() {
                eprintln!("error: {problem}");
                return ExitCode::from(2);
            }
            print_line(format_args!("{}", config.banner(&data_dir)));
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(code) => return code,
            };
            match runtime.block_on(demo::run(&data_dir, &config)) {
                Ok(report) => {
                    print_text(format_args!("{report}"));
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {}", hybridstore::error::one_line(error.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A multi-threaded tokio runtime for one command; exit code 2 (with the reason on stderr) if it
/// cannot start.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::from(2)
        })
}

/// Runs `work` on a fresh runtime.
fn on_runtime(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match runtime() {
        Ok(runtime) => runtime.block_on(work),
        Err(code) => code,
    }
}

/// Connects to the configured database: one line and exit code 2 when it cannot.
async fn connect(db: &DbArgs) -> Result<sqlx::PgPool, ExitCode> {
    let config = hybridstore::sink::postgres::PgConfig::resolve(db.database_url.as_deref(), true)
        .map_err(|error| {
            eprintln!("error: {error}");
            ExitCode::from(2)
        })?
        .expect("a required configuration is present");
    config.connect().await.map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })
}

/// `db migrate`: exit 0 when the schema is current, 2 when it could not be made so.
fn db_migrate_command(db: &DbArgs) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let pool = match connect(db).await {
            Ok(pool) => pool,
            Err(code) => return code,
        };
        match hybridstore::sink::postgres::migrate(&pool).await {
            Ok(applied) => {
                print_line(format_args!("db migrate: {applied} migration(s) applied"));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        }
    })
}

/// `project`: exit 0 when stopped (Ctrl-C) or caught up, 2 when it could not run.
fn project_command(
    data_dir: &std::path::Path,
    db: &DbArgs,
    components: hybridstore::ComponentSet,
    batch_events: usize,
    until_caught_up: bool,
) -> ExitCode {
    if batch_events == 0 {
        eprintln!("error: --batch-events must be at least 1");
        return ExitCode::from(2);
    }
    with_store(data_dir, async |store| {
        let pool = match connect(db).await {
            Ok(pool) => pool,
            Err(code) => return code,
        };
        let config = hybridstore::sink::postgres::ProjectorConfig {
            components,
            runner: hybridstore::sink::RunnerConfig {
                batch_events_max: batch_events,
                ..Default::default()
            },
        };
        let target = store.durable_end();
        let projector =
            match hybridstore::sink::postgres::PgSink::start(store.clone(), pool.clone(), config)
                .await
            {
                Ok(projector) => projector,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
        let mut status = projector.watch();
        // `None`: interrupted or caught up; `Some(reason)`: the projector stopped on its own.
        let stopped = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            s = status.wait_for(|s| s.stopped.is_some() || (until_caught_up && s.committed >= target)) => {
                match s {
                    Ok(s) => s.stopped.as_ref().map(ToString::to_string),
                    Err(_) => Some("the projector ended unexpectedly".to_owned()),
                }
            }
        };
        let last = projector.status();
        projector.stop().await;
        print_line(format_args!(
            "project: {} events in {} batches committed; every event below {} is in Postgres",
            last.events, last.batches, last.committed
        ));
        match stopped {
            Some(reason) => {
                eprintln!("error: the projector stopped: {reason}");
                ExitCode::from(2)
            }
            None => ExitCode::SUCCESS,
        }
    })
}

/// The bot whose chats a legacy import or export concerns.
#[derive(Debug, clap::Args)]
struct BotArg {
    /// The bot's id (1-64 of A-Z a-z 0-9 _).
    /// Required: the store holds the chats of many bots, and an import under the wrong one
    /// would mix them.
    #[arg(long, env = "HYBRIDSTORE_BOT", value_parser = parse_bot_id)]
    bot: hybridstore::BotId,
}

/// The store's configuration for `data_dir`, with the master key from the environment. Exit 2
/// (said why) on a bad master key.
pub(crate) fn store_config(
    data_dir: &std::path::Path,
) -> Result<hybridstore::StoreConfig, ExitCode> {
    hybridstore::StoreConfig::new(data_dir)
        .with_master_key_from_env()
        .map_err(|error| {
            eprintln!("error: {error}");
            ExitCode::from(2)
        })
}

fn parse_bot_id(id: &str) -> Result<hybridstore::BotId, hybridstore::InputError> {
    hybridstore::BotId::new(id)
}

/// Opens the store in `data_dir` on a fresh runtime, runs `command`, closes the store. Exit 2 when
/// the store cannot be opened or closed cleanly.
fn with_store<F>(data_dir: &std::path::Path, command: F) -> ExitCode
where
    F: AsyncFnOnce(&hybridstore::Store) -> ExitCode,
{
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let config = match store_config(data_dir) {
            Ok(config) => config,
            Err(code) => return code,
        };
        let store = match hybridstore::Store::open(config).await {
            Ok(store) => store,
            Err(error) => {
                explain_open_error(data_dir, &error);
                return ExitCode::from(2);
            }
        };
        let code = command(&store).await;
        if let Err(error) = store.close().await {
            eprintln!("error: closing the store: {error}");
            return ExitCode::from(2);
        }
        code
    })
}

/// `import-legacy`: exit 0 when every file imported, 1 when some failed, 2 when it could not run.
fn import_legacy_command(
    data_dir: &std::path::Path,
    bot: &hybridstore::BotId,
    girls_dir: Option<&std::path::Path>,
    conversations_dir: Option<&std::path::Path>,
) -> ExitCode {
    use std::io::IsTerminal as _;
    // Progress is for a person watching; piped output stays quiet.
    let show_progress = std::io::stderr().is_terminal();
    with_store(data_dir, async |store| {
        let progress = |p: &hybridstore::legacy::ImportProgress| {
            if show_progress && (p.chats_done.is_multiple_of(1000) || p.chats_done == p.chats_total)
            {
                eprintln!(
                    "{}/{} chats, {} events appended, {} already imported",
                    p.chats_done, p.chats_total, p.events_appended, p.events_already_imported
                );
            }
        };
        let imported =
            hybridstore::legacy::import_legacy(store, bot, girls_dir, conversations_dir, progress)
                .await;
        match imported {
            Ok(report) => {
                for failure in &report.failures {
                    eprintln!("error: {failure}");
                }
                for skipped in &report.files_skipped {
                    eprintln!(
                        "warning: skipped {}: not a {{chat_id}}.json file (a backup or temporary file of the old bot?)",
                        skipped.display()
                    );
                }
                print_line(format_args!("import-legacy (bot {bot}): {report}"));
                if report.is_complete() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        }
    })
}

/// `export-legacy`: exit 0 when every file was written, 2 otherwise.
fn export_legacy_command(
    data_dir: &std::path::Path,
    bot: &hybridstore::BotId,
    out: &std::path::Path,
) -> ExitCode {
    with_store(
        data_dir,
        async |store| match hybridstore::legacy::export_legacy(store, bot, out).await {
            Ok(report) => {
                if report.profiles_written == 0 && report.conversations_written == 0 {
                    eprintln!(
                        "warning: the store holds no profiles or conversations for bot {bot}"
                    );
                }
                print_line(format_args!(
                    "export-legacy (bot {bot}): {report} into {}",
                    out.display()
                ));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
    )
}

/// Says why the store in `data_dir` did not open, with what to do: a daemon holding the directory
/// is named (it runs the projector and serves the migrations itself), a damaged log points at the
/// audit tool.
fn explain_open_error(data_dir: &std::path::Path, error: &hybridstore::StoreError) {
    let locked = matches!(
        error,
        hybridstore::StoreError::Log(hybridstore_wal::Error::Locked { .. })
    );
    if let (true, Some(daemon)) = (locked, serve::running_daemon(data_dir)) {
        eprintln!(
            "error: a hybridstore daemon ({daemon}) holds {}: it runs the projector and the \
             migration states itself; use its API (GET/POST /v1/migrations, the typed reads) \
             or stop it first",
            data_dir.display()
        );
        return;
    }
    eprintln!(
        "error: cannot open the store in {}: {}",
        data_dir.display(),
        hybridstore::error::one_line(error)
    );
    if error.is_corruption() {
        let wal = data_dir.join(hybridstore::WAL_SUBDIR);
        eprintln!(
            "hint: `hybridstore-audit verify {0}` lists every damaged frame; \
             `hybridstore-audit repair {0}` cuts the damage (backing up what it \
             cuts) so the store opens again",
            wal.display()
        );
    }
}

/// Prints a line on stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print_line(line: std::fmt::Arguments<'_>) {
    print_text(format_args!("{line}\n"));
}

/// Prints text on stdout as it is; a closed pipe (`| head`) is not an error worth a panic: the
/// reader has gone, and the command finishes (closing the store cleanly) without it.
fn print_text(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_fmt(text);
}
