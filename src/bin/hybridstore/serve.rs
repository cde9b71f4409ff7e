//! `hybridstore serve`: builds the daemon's configuration from flags and the environment, logs
//! it (without secrets), runs [`hybridstore::server::serve`] until SIGTERM or SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use hybridstore::hybrid::{Hybrid, HybridConfig};
use hybridstore::server::auth::Tokens;
use hybridstore::server::{Listen, ServeConfig};
use hybridstore::sink::postgres::PgConfig;

use super::{runtime, DbArgs};

/// The file a running daemon keeps in its data directory: its pid and addresses, so that a
/// command meeting the directory's lock can say who holds it.
pub const DAEMON_FILE: &str = "daemon.pid";

/// What `serve` was asked.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Where to listen: HOST:PORT or unix:PATH (repeatable).
    #[arg(
        long,
        env = "HYBRIDSTORE_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:8740"
    )]
    pub listen: Vec<Listen>,
    /// Serve the database-only components from Postgres + Redis, with no data directory
    /// (writes are refused).
    #[arg(long)]
    pub replica: bool,
    /// Largest request body, in bytes (default: the event size limit, 1 MiB).
    #[arg(long, default_value_t = hybridstore::store::EVENT_SIZE_MAX_BYTES_DEFAULT)]
    pub body_limit_bytes: usize,
    /// Longest a request may take, in seconds (subscriptions and long polls excepted).
    #[arg(long, default_value_t = 30)]
    pub request_timeout_s: u64,
    /// Requests handled at once, at most.
    #[arg(long, default_value_t = 1024)]
    pub concurrency_max: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_s: u64,
    /// Share of keys (0 to 1) shadow-read in dual-write.
    #[arg(long, default_value_t = 0.1)]
    pub shadow_rate: f64,
    /// Matching shadow reads without a mismatch that dual-write -> database-only needs.
    #[arg(long, default_value_t = 1000)]
    pub shadow_window_reads: u64,
    /// Seconds without a mismatch that dual-write -> database-only needs.
    #[arg(long, default_value_t = 900)]
    pub shadow_window_s: u64,
}

/// `serve`: exit 0 after a clean stop, 2 when it could not run or stop cleanly.
pub fn serve_command(data_dir: &Path, args: ServeArgs) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let fail = |what: String| {
            eprintln!("error: {what}");
            ExitCode::from(2)
        };
        let tokens = match Tokens::from_vars(|name| std::env::var(name).ok()) {
            Ok(tokens) => tokens,
            Err(error) => return fail(error.to_string()),
        };
        let postgres = match PgConfig::resolve(args.db.database_url.as_deref(), args.replica) {
            Ok(postgres) => postgres,
            Err(error) => return fail(error.to_string()),
        };
        let cache = match super::cache_config() {
            Ok(cache) => cache,
            Err(error) => return fail(error),
        };
        let mut config = ServeConfig::new(args.listen.clone());
        config.tokens = tokens;
        config.body_limit_bytes = args.body_limit_bytes;
        config.request_timeout = Duration::from_secs(args.request_timeout_s.max(1));
        config.concurrency_max = args.concurrency_max;
        config.shutdown_grace = Duration::from_secs(args.shutdown_grace_s);
        // Before opening anything: a configuration refused leaves no data directory behind.
        if let Err(error) = config.check() {
            return fail(error.to_string());
        }
        let redis = cache
            .as_ref()
            .and_then(|c| c.redis.as_ref())
            .map_or_else(|| "none (tier 2 off)".to_owned(), |r| r.target());
        tracing::info!(
            data_dir = %data_dir.display(),
            replica = args.replica,
            listen = ?args.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
            postgres = %postgres.as_ref().map_or_else(|| "none (log only)".to_owned(), PgConfig::target),
            redis = %redis,
            tokens = ?config.tokens,
            body_limit_bytes = config.body_limit_bytes,
            request_timeout_s = args.request_timeout_s,
            "hybridstore serve: effective configuration"
        );
        eprintln!(
            "hybridstore serve: {} on {}; postgres {}; redis {}; tokens {:?}",
            if args.replica { "replica".to_owned() } else { format!("data directory {}", data_dir.display()) },
            args.listen.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            postgres.as_ref().map_or_else(|| "none (log only)".to_owned(), PgConfig::target),
            redis,
            config.tokens,
        );
        let hybrid = if args.replica {
            let Some(postgres) = &postgres else {
                return fail("--replica needs a database (DATABASE_URL or DB_HOST/DB_NAME)".into());
            };
            let routing = hybridstore::read::RoutingConfig::default();
            match Hybrid::open_replica(postgres, cache, routing, Duration::from_secs(1)).await {
                Ok(hybrid) => hybrid,
                Err(error) => return fail(hybridstore::error::one_line(&error)),
            }
        } else {
            if !(0.0..=1.0).contains(&args.shadow_rate) {
                return fail(format!("--shadow-rate {} is not between 0 and 1", args.shadow_rate));
            }
            let store_config = match hybridstore::StoreConfig::new(data_dir).with_master_key_from_env() {
                Ok(config) => config,
                Err(error) => return fail(error.to_string()),
            };
            let mut hybrid_config = HybridConfig::new(store_config);
            hybrid_config.routing.shadow_rate = args.shadow_rate;
            hybrid_config.window = hybridstore::read::shadow::WindowRule {
                reads_min: args.shadow_window_reads,
                duration_min: Duration::from_secs(args.shadow_window_s),
            };
            hybrid_config.cache = if postgres.is_some() { cache } else { None };
            hybrid_config.postgres = postgres;
            match Hybrid::open(hybrid_config).await {
                Ok(hybrid) => hybrid,
                Err(error) => {
                    return fail(format!(
                        "cannot open the store in {}: {}",
                        data_dir.display(),
                        hybridstore::error::one_line(&error)
                    ))
                }
            }
        };
        let daemon_file = (!args.replica).then(|| data_dir.join(DAEMON_FILE));
        if let Some(file) = &daemon_file {
            let listen: Vec<String> = args.listen.iter().map(ToString::to_string).collect();
            let _ = std::fs::write(file, format!("{}\n{}\n", std::process::id(), listen.join("\n")));
        }
        let served = hybridstore::server::serve(hybrid, config, stop_signal()).await;
        if let Some(file) = &daemon_file {
            let _ = std::fs::remove_file(file);
        }
        match served {
            Ok(()) => {
                eprintln!("hybridstore serve: stopped cleanly");
                ExitCode::SUCCESS
            }
            Err(error) => fail(hybridstore::error::one_line(&error)),
        }
    })
}

/// Resolves at the first SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The daemon holding `data_dir`, if its file names a live process: "pid N, listening on …".
pub fn running_daemon(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(DAEMON_FILE)).ok()?;
    let mut lines = text.lines();
    let pid: u32 = lines.next()?.trim().parse().ok()?;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    let listen: Vec<&str> = lines.collect();
    Some(format!("pid {pid}, listening on {}", listen.join(", ")))
}
