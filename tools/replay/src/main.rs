//! The `hybridstore-replay` binary: parses arguments, builds a configuration, calls the library.
//! Exit codes: 0 done (or, with `--verify`, equal), 1 differences found (`--verify`), 2 could not
//! run, 130 interrupted (resumable).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hybridstore::sink::postgres::verify;
use hybridstore::ComponentSet;
use hybridstore_replay::rebuild::{self, From, Outcome, RebuildConfig};

/// Prints a line on stdout; a closed pipe (`| head`) is not an error worth a panic: the reader
/// has gone and the command finishes without it.
macro_rules! print_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
/// Most differences listed before the rest are only counted.
const DIFFERENCES_LISTED_MAX: usize = 100;

#[derive(Debug, Parser)]
#[command(
    name = "hybridstore-replay",
    version,
    about = "Rebuild hybridstore's Postgres read models from the log, or verify them against it"
)]
struct Cli {
    /// The store's data directory (the log is in DIR/wal).
    #[arg(long, env = "HYBRIDSTORE_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// `postgres://user:password@host:port/database`; without it, `DATABASE_URL` or the `DB_*`
    /// variables (`DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER`, `DB_PASSWORD`, `DB_SSLMODE`).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Components to rebuild or verify (comma-separated; `all` for every one).
    #[arg(long, default_value = "all", value_parser = ComponentSet::parse_list)]
    component: ComponentSet,
    /// Where to start: `start`, `checkpoint` (continue the live tables from their checkpoint), or
    /// a position that is their checkpoint.
    #[arg(long, default_value = "start")]
    from: From,
    /// Where to stop (exclusive position); the log's end by default.
    #[arg(long)]
    to: Option<u64>,
    /// Compare the read models with the log instead of rebuilding (exit 0 equal, 1 differences).
    #[arg(long)]
    verify: bool,
    /// Discard an interrupted rebuild started with other arguments.
    #[arg(long)]
    fresh: bool,
    /// Events per committed chunk (the most an interrupt loses).
    #[arg(long, default_value_t = 20_000)]
    chunk_events: usize,
    /// No progress output (the summary is still printed).
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    hybridstore::init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let config =
        match hybridstore::sink::postgres::PgConfig::resolve(cli.database_url.as_deref(), true) {
            Ok(config) => config.expect("a required configuration is present"),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        };
    let pool = match config.connect().await {
        Ok(pool) => pool,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.verify {
        return verify_command(&pool, &cli).await;
    }
    let rebuild_config = RebuildConfig {
        data_dir: cli.data_dir.clone(),
        components: cli.component,
        from: cli.from,
        to: cli.to.map(hybridstore_wal::Position),
        chunk_events: cli.chunk_events,
        fresh: cli.fresh,
        quiet: cli.quiet,
    };
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match rebuild::rebuild(&pool, &rebuild_config, interrupt).await {
        Ok(Outcome::Done(summary)) => {
            print_line!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Interrupted { at }) => {
            eprintln!(
                "replay: interrupted; every event below {at} is in the staging tables. Run the \
                 same command again to resume."
            );
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("error: {}", hybridstore::error::one_line(error.as_ref()));
            ExitCode::from(2)
        }
    }
}

async fn verify_command(pool: &sqlx::PgPool, cli: &Cli) -> ExitCode {
    match verify::verify(pool, &cli.data_dir, cli.component).await {
        Ok(report) => {
            for difference in report.differences.iter().take(DIFFERENCES_LISTED_MAX) {
                print_line!("{difference}");
            }
            if report.differences.len() > DIFFERENCES_LISTED_MAX {
                print_line!(
                    "... and {} more differences",
                    report.differences.len() - DIFFERENCES_LISTED_MAX
                );
            }
            let at: Vec<String> = report
                .checkpoints
                .iter()
                .map(|(c, p)| format!("{c} at {p}"))
                .collect();
            print_line!(
                "verify: {} entries compared ({}); {} differences",
                report.entries,
                at.join(", "),
                report.differences.len()
            );
            if report.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("error: {}", hybridstore::error::one_line(&error));
            ExitCode::from(2)
        }
    }
}
