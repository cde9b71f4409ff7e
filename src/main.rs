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
    /// Simulate a bot's message loop on the embedded default (log only, no servers) and report
    /// throughput and latency; leaves a log the audit tool can inspect.
    Demo {
        /// Chats to simulate.
        #[arg(long, default_value_t = 200)]
        chats: u64,
        /// Message exchanges (one received + one sent message) per chat.
        #[arg(long, default_value_t = 50)]
        exchanges: u64,
        /// Concurrent handler threads.
        #[arg(long, default_value_t = 16)]
        handlers: usize,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            chats,
            exchanges,
            handlers,
        } => {
            if chats == 0 || exchanges == 0 || handlers == 0 {
                eprintln!("error: --chats, --exchanges and --handlers must be at least 1");
                return ExitCode::from(2);
            }
            let config = DemoConfig {
                chats,
                exchanges_per_chat: exchanges,
                handlers,
            };
            println!(
                "hybridstore demo: {chats} chats x {exchanges} exchanges, {handlers} handlers, durable appends (fdatasync) into {}",
                cli.data_dir.join(hybridstore::WAL_SUBDIR).display()
            );
            match demo::run(&cli.data_dir, &config) {
                Ok(report) => {
                    let rate = report.appends as f64 / report.append_elapsed.as_secs_f64();
                    let [p50, p99, max] = report.append_latency;
                    println!(
                        "appended {} exchanges ({} records) in {:.2?}: {rate:.0} exchanges/s; latency p50 {p50:.0?}, p99 {p99:.0?}, max {max:.0?}",
                        report.appends,
                        report.appends * 2,
                        report.append_elapsed
                    );
                    println!(
                        "read back and checked {} records in {:.2?}; the log now ends at position {}",
                        report.records_read, report.read_elapsed, report.durable_end
                    );
                    println!(
                        "inspect it: cargo run -p hybridstore-audit -- stat {}   (or verify / dump)",
                        cli.data_dir.display()
                    );
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
