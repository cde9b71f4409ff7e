//! The `hybridstore-audit` binary: parses arguments, calls the library, and maps the outcome to
//! the exit code (0 clean, 1 problems found, 2 could not run; a broken pipe on stdout exits 0
//! quietly).

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use hybridstore_audit::check::LogDir;
use hybridstore_audit::dump::{DumpRange, Filter};
use hybridstore_audit::{dump, is_broken_pipe, repair, stat, subjects, verify, Format, Verdict};
use hybridstore_wal::io::StdFs;
use hybridstore_wal::Position;

/// Verify, inspect, dump and repair hybridstore log segments.
///
/// Every command but `repair` is read-only and takes no lock. Exit codes: 0 clean, 1 problems
/// found, 2 could not run.
#[derive(Debug, Parser)]
#[command(name = "hybridstore-audit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every frame of every segment, the marker and the log id; exit 1 if any problem is
    /// found.
    Verify(CommonArgs),
    /// The log id, counts, positions, bytes, the clean-shutdown marker and a per-segment table.
    Stat(CommonArgs),
    /// Print records decoded as events, one per line, from a position on.
    ///
    /// A record that does not decode is printed with its decode error and its bytes (exit 0
    /// unless frames are damaged).
    Dump(DumpArgs),
    /// Print the events of a stream, the event with an id, or the events with an idempotency
    /// key (like `dump`; JSON Lines with --format json). Exit 0 when something matched, 1 when
    /// nothing did (or frames are damaged), 2 when it could not run.
    #[command(group(clap::ArgGroup::new("what").required(true)))]
    Find(FindArgs),
    /// List the subjects (chat partners `conv-B-C`, users `user-B-U`): their events, how many
    /// have personal fields sealed, erased, locked or in plaintext, their erasures and keys.
    ///
    /// Exit 0 when every record decodes, 1 when one does not (counted, and named on stderr) or
    /// frames are damaged (the listing stops there), 2 when it could not run (a damaged key
    /// store included).
    Subjects(SubjectsArgs),
    /// Cut a torn or corrupt log back to its last valid frame, backing up what is cut.
    ///
    /// Takes the writer lock (refuses while a writer has the log open), copies everything it cuts
    /// into `repair-backup/` inside the log directory, cuts, and verifies again. Exit 0 when the
    /// log is clean afterwards; with --dry-run nothing changes, so exit 1 while problems exist.
    Repair(RepairArgs),
}

/// Arguments every command takes.
#[derive(Debug, Args)]
struct CommonArgs {
    /// The data directory (its `wal/` subdirectory is used when it holds segments) or the log
    /// directory itself.
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Same as DIR, for scripts and the environment; DIR wins when both are given.
    #[arg(
        long = "data-dir",
        value_name = "DIR",
        env = "HYBRIDSTORE_DATA_DIR",
        default_value = "./data"
    )]
    data_dir: PathBuf,

    /// Output format: `human` lines, or `json` (JSON Lines `{type, data}`; `stat`: one document).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

impl CommonArgs {
    fn dir(&self) -> &PathBuf {
        self.dir.as_ref().unwrap_or(&self.data_dir)
    }
}

#[derive(Debug, Args)]
struct DumpArgs {
    #[command(flatten)]
    common: CommonArgs,

    /// First position to print (default: the first in the log).
    #[arg(long, value_name = "POS")]
    from: Option<u64>,

    /// Print at most N records.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,

    /// Also print every record's bytes (`payload_hex` in JSON; the frame and payload for people),
    /// not only those of records that do not decode.
    #[arg(long)]
    raw: bool,
}

#[derive(Debug, Args)]
struct FindArgs {
    #[command(flatten)]
    common: CommonArgs,

    /// The events of this stream (`bot-B`, `user-B-U`, `conv-B-C`, `telemetry-B`).
    #[arg(long, value_name = "STREAM", group = "what")]
    stream: Option<String>,

    /// The event with this id (a UUID).
    #[arg(long, value_name = "UUID", group = "what")]
    event_id: Option<uuid::Uuid>,

    /// The events with this idempotency key.
    #[arg(long, value_name = "KEY", group = "what")]
    key: Option<String>,

    /// With --key: only this bot's events (keys belong to a bot).
    #[arg(long, value_name = "BOT", requires = "key")]
    bot: Option<String>,

    /// Print at most N events.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

#[derive(Debug, Args)]
struct SubjectsArgs {
    #[command(flatten)]
    common: CommonArgs,

    /// Only this bot's subjects.
    #[arg(long, value_name = "BOT")]
    bot: Option<String>,
}

#[derive(Debug, Args)]
struct RepairArgs {
    #[command(flatten)]
    common: CommonArgs,

    /// Print what would be done, change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    let result = run(&cli, &mut out).and_then(|verdict| {
        out.flush().context("cannot write output")?;
        Ok(verdict)
    });
    match result {
        Ok(verdict) => ExitCode::from(verdict.exit_code()),
        // The reader of our output went away (`dump | head`): not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // Whatever was printed before the error goes out first; failures here are moot.
            let _ = out.flush();
            eprintln!("hybridstore-audit: error: {error:#}");
            ExitCode::from(hybridstore_audit::EXIT_COULD_NOT_RUN)
        }
    }
}

fn run(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<Verdict> {
    let fs = StdFs;
    let common = match &cli.command {
        Command::Verify(common) | Command::Stat(common) => common,
        Command::Dump(args) => &args.common,
        Command::Find(args) => &args.common,
        Command::Subjects(args) => &args.common,
        Command::Repair(args) => &args.common,
    };
    let log = LogDir::locate(&fs, common.dir())?;
    match &cli.command {
        Command::Verify(args) => verify::verify(&fs, &log, args.format, out),
        Command::Stat(args) => stat::stat(&fs, &log, args.format, out),
        Command::Dump(args) => {
            let range = DumpRange {
                from: args.from.map(Position),
                limit: args.limit,
                raw: args.raw,
                filter: None,
            };
            dump::dump(
                &fs,
                &log,
                range,
                common.format,
                out,
                &mut io::stderr().lock(),
            )
        }
        Command::Find(args) => {
            let filter = match (&args.stream, args.event_id, &args.key) {
                (Some(stream), _, _) => Filter::Stream(stream.clone()),
                (_, Some(id), _) => Filter::EventId(id),
                (_, _, Some(key)) => Filter::Key {
                    key: key.clone(),
                    bot: args.bot.clone(),
                },
                (None, None, None) => {
                    anyhow::bail!("say what to find: --stream, --event-id or --key")
                }
            };
            let range = DumpRange {
                limit: args.limit,
                filter: Some(filter),
                ..DumpRange::default()
            };
            dump::dump(
                &fs,
                &log,
                range,
                common.format,
                out,
                &mut io::stderr().lock(),
            )
        }
        Command::Subjects(args) => subjects::subjects(
            &fs,
            &log,
            args.bot.as_deref(),
            common.format,
            out,
            &mut io::stderr().lock(),
        ),
        Command::Repair(args) => repair::repair(&fs, &log, args.dry_run, args.common.format, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Proves the clap definition is consistent (no clashing names or bad defaults).
    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
