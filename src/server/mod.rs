//! `hybridstore serve`: one daemon that owns the data directory and serves every bot process over
//! HTTP/JSON (API v1, `docs/api-v1.md`), on TCP and/or a Unix socket.
//!
//! # Layout
//! - this file: [`ServeConfig`], [`Listen`], [`serve`] (bind, serve, stop).
//! - [`routes`]: the handlers. [`problem`]: errors as `application/problem+json`.
//! - [`auth`]: bearer tokens. [`metrics`]: `/metrics` and the request middleware.
//!
//! # Stopping
//! When `shutdown` resolves (SIGTERM/SIGINT in the binary): stop accepting, end the
//! subscriptions and long polls, let in-flight requests finish within
//! [`ServeConfig::shutdown_grace`], then close the handle (the supervisor, then the log, cleanly:
//! the next open takes the fast path).

pub mod auth;
pub mod metrics;
pub mod problem;
pub mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::hybrid::Hybrid;
use auth::Tokens;

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (`127.0.0.1:8740`; port 0 picks one).
    Tcp(SocketAddr),
    /// A Unix socket (`unix:/run/hybridstore.sock`), created with mode 0600.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path (unix:/run/hybridstore.sock)".into());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            format!("{text:?} is not an address (HOST:PORT, e.g. 127.0.0.1:8740, or unix:PATH)")
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "http://{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How the daemon serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen (at least one).
    pub listen: Vec<Listen>,
    /// The bearer tokens; none = no auth, loopback and Unix sockets only.
    pub tokens: Tokens,
    /// Largest request body.
    pub body_limit_bytes: usize,
    /// Longest a request (other than a subscription or long poll) may take.
    pub request_timeout: Duration,
    /// Requests handled at once, at most (the others wait).
    pub concurrency_max: usize,
    /// How long in-flight requests may take to finish after the stop signal.
    pub shutdown_grace: Duration,
}

impl ServeConfig {
    /// Defaults for `listen`: no tokens, a 1 MiB body limit (the event limit), 30 s per request,
    /// 1024 at once, 10 s to finish at the stop.
    pub fn new(listen: Vec<Listen>) -> ServeConfig {
        ServeConfig {
            listen,
            tokens: Tokens::default(),
            body_limit_bytes: crate::store::EVENT_SIZE_MAX_BYTES_DEFAULT,
            request_timeout: Duration::from_secs(30),
            concurrency_max: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServeConfig {
    /// Refuses what cannot be served: no listener, or an address other machines reach while no
    /// token is configured. (Warns when serving without tokens.)
    ///
    /// # Errors
    /// [`ServeError::Config`] saying what to change.
    pub fn check(&self) -> Result<(), ServeError> {
        if self.listen.is_empty() {
            return Err(ServeError::Config(
            "no --listen address (e.g. --listen 127.0.0.1:8740 or --listen unix:/run/hybridstore.sock)".into(),
        ));
        }
        if !self.tokens.any() {
            if let Some(open) = self.listen.iter().find(|l| !is_local(l)) {
                return Err(ServeError::Config(format!(
                "{open} is reachable from other machines and no token is configured: set HYBRIDSTORE_WRITE_TOKEN / HYBRIDSTORE_READ_TOKEN / HYBRIDSTORE_ADMIN_TOKEN, or listen on loopback or a Unix socket"
            )));
            }
            tracing::warn!("no token configured: every local client may read, write and administer (loopback and Unix sockets only)");
        }
        Ok(())
    }
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A configuration that cannot be served.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// Where.
        listen: Listen,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The handle did not close cleanly.
    #[error("closing: {0}")]
    Close(String),
}

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The store and what runs around it.
    pub hybrid: Hybrid,
    /// The tokens.
    pub tokens: Tokens,
    /// The metrics.
    pub metrics: PrometheusHandle,
    /// Turns true at the stop signal: subscriptions and long polls end.
    pub shutdown: watch::Receiver<bool>,
}

/// The routes of API v1 over `app`.
pub fn router(app: Arc<App>, config: &ServeConfig) -> Router {
    use tower_http::timeout::TimeoutLayer;
    let timed = Router::new()
        .route("/v1/streams/{stream}/events", post(routes::append))
        .route("/v1/streams/{stream}", get(routes::read_stream))
        .route("/v1/bots/{bot}/profiles/{chat}", get(routes::profile))
        .route(
            "/v1/bots/{bot}/conversations/{chat}/head",
            get(routes::head),
        )
        .route(
            "/v1/bots/{bot}/conversations/{chat}/messages",
            get(routes::messages),
        )
        .route("/v1/bots/{bot}/users/{user}", get(routes::user))
        .route("/v1/bots/{bot}/config/{scope}/{key}", get(routes::config))
        .route("/v1/bots/{bot}/analytics/{day}", get(routes::analytics))
        .route(
            "/v1/bots/{bot}/components/{component}",
            get(routes::component_state),
        )
        .route("/v1/migrations", get(routes::migrations))
        .route("/livez", get(routes::livez))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            config.request_timeout,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.concurrency_max.max(1),
        ));
    // Subscriptions and long polls last as long as they must (the stop signal ends them) and
    // hold no slot of the concurrency bound; a transition waits for its guard (`wait_s`, at
    // most 600 s) and must not be cut after its event landed.
    let untimed = Router::new()
        .route("/v1/all", get(routes::read_all))
        .route("/v1/subscribe", get(routes::subscribe))
        .route(
            "/v1/migrations/{bot}/{component}",
            post(routes::set_migration),
        )
        .route("/v1/bots/{bot}/erasures", post(routes::erase))
        .route("/v1/bots/{bot}/erasures/{id}", get(routes::erasure_receipt));
    timed
        .merge(untimed)
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .with_state(app)
}

/// Whether `listen` is reachable only from this machine.
fn is_local(listen: &Listen) -> bool {
    match listen {
        Listen::Tcp(addr) => addr.ip().is_loopback(),
        Listen::Unix(_) => true,
    }
}

/// Serves `hybrid` until `shutdown` resolves, then stops (see the module docs). Prints one line
/// `listening on ADDR` per listener on stdout once it accepts (with the port a `:0` got).
///
/// # Errors
/// A configuration refused (no listener; a non-local address without tokens), a listener that
/// cannot be bound, a handle that does not close cleanly.
pub async fn serve(
    hybrid: Hybrid,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.check()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = Arc::new(App {
        hybrid: hybrid.clone(),
        tokens: config.tokens.clone(),
        metrics: metrics::handle(),
        shutdown: stop_rx.clone(),
    });
    let routes = router(app, &config);
    match listen_all(&config, routes, &stop_rx).await {
        Ok(servers) => finish(hybrid, &config, shutdown, stop_tx, servers).await,
        Err(error) => {
            // Nothing was served: close the log cleanly all the same.
            if let Err(close) = hybrid.close().await {
                tracing::warn!(error = %crate::error::one_line(&close), "closing after a failed start");
            }
            Err(error)
        }
    }
}

/// Binds every listener and starts serving on each.
async fn listen_all(
    config: &ServeConfig,
    routes: Router,
    stop_rx: &watch::Receiver<bool>,
) -> Result<tokio::task::JoinSet<std::io::Result<()>>, ServeError> {
    let mut servers = tokio::task::JoinSet::new();
    for listen in &config.listen {
        let mut stopped = stop_rx.clone();
        let until = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        match listen {
            Listen::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind {
                        listen: listen.clone(),
                        source,
                    })?;
                let bound = listener.local_addr().map_err(|source| ServeError::Bind {
                    listen: listen.clone(),
                    source,
                })?;
                announce(&Listen::Tcp(bound));
                let routes = routes.clone();
                servers.spawn(async move {
                    axum::serve(listener, routes)
                        .with_graceful_shutdown(until)
                        .await
                });
            }
            Listen::Unix(path) => {
                let listener = bind_unix(path).map_err(|source| ServeError::Bind {
                    listen: listen.clone(),
                    source,
                })?;
                announce(listen);
                let routes = routes.clone();
                servers.spawn(async move {
                    axum::serve(listener, routes)
                        .with_graceful_shutdown(until)
                        .await
                });
            }
        }
    }
    Ok(servers)
}

/// Waits for `shutdown`, then stops (see the module docs).
async fn finish(
    hybrid: Hybrid,
    config: &ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    stop_tx: watch::Sender<bool>,
    mut servers: tokio::task::JoinSet<std::io::Result<()>>,
) -> Result<(), ServeError> {
    shutdown.await;
    tracing::info!("stopping: no new connections; in-flight requests finish");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while let Some(done) = servers.join_next().await {
            if let Ok(Err(error)) = done {
                tracing::warn!(%error, "a listener ended with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?config.shutdown_grace, "requests still running at the end of the grace period were cut");
        servers.abort_all();
    }
    for listen in &config.listen {
        if let Listen::Unix(path) = listen {
            let _ = std::fs::remove_file(path);
        }
    }
    hybrid
        .close()
        .await
        .map_err(|e| ServeError::Close(crate::error::one_line(&e)))
}

fn announce(listen: &Listen) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {listen}");
    let _ = out.flush();
}

/// Binds a Unix socket at `path` with mode 0600 (a stale socket file from a killed daemon is
/// replaced; any other file is not).
fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
    }
    // Bound under a temporary name, made 0600, then renamed into place: the socket never
    // appears at `path` with the umask's wider mode.
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = tokio::net::UnixListener::bind(&temporary)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&temporary, path)?;
    Ok(listener)
}
