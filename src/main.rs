//! The `hybridstore` binary: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hybridstore::demo::{self, DemoConfig};

#[derive(Debug, Parser)]
#[command(
    name = "hybridstore",
    version,
    about = "Event-sourced write-ahead log store for a Telegram chat bot"
)]
struct Cli {
    /// Data directory (the log lives in DIR/wal).
    #[arg(
        long,
        global = true,
        env = "HYBRIDSTORE_DATA_DIR",
        default_value = "./data"
    )]
    data_dir: PathBuf,
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

/// mimalloc: per-thread heaps. The store decodes on one thread and frees on another (rebuild,
/// projector); glibc's arena lock made that a third of the rebuild's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::ImportLegacy {
            bot,
            girls_dir,
            conversations_dir,
        } => import_legacy_command(
            &cli.data_dir,
            &bot.bot,
            girls_dir.as_deref(),
            conversations_dir.as_deref(),
        ),
        Command::ExportLegacy { bot, out } => export_legacy_command(&cli.data_dir, &bot.bot, &out),
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
            println!("{}", config.banner(&cli.data_dir));
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(code) => return code,
            };
            match runtime.block_on(demo::run(&cli.data_dir, &config)) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
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

/// The bot whose chats a legacy import or export concerns.
#[derive(Debug, clap::Args)]
struct BotArg {
    /// The bot's id (1-64 of A-Z a-z 0-9 _).
    #[arg(long, env = "HYBRIDSTORE_BOT_ID", default_value = "default", value_parser = parse_bot_id)]
    bot: hybridstore::BotId,
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
        let config = hybridstore::StoreConfig::new(data_dir);
        let store = match hybridstore::Store::open(config).await {
            Ok(store) => store,
            Err(error) => {
                eprintln!(
                    "error: cannot open the store in {}: {error}",
                    data_dir.display()
                );
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

/// Prints a line on stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
