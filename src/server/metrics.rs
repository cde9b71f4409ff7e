//! `/metrics`: the Prometheus recorder, the HTTP middleware counting requests by route and
//! status, and the gauges refreshed at each scrape (sink lag and errors, cache tiers, shadow
//! outcomes, the log's durable end).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::App;
use crate::read::cache::Tier;

/// Buckets of every latency histogram (seconds): 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// The process's recorder (installed once; a second daemon in one process shares it).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    if metrics::set_global_recorder(recorder).is_err() {
                        tracing::warn!("a metrics recorder was installed already; /metrics shows only what this one sees");
                    }
                    handle
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics buckets refused; /metrics without histograms");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// Counts each request by route (its pattern, not its path) and status, and times it.
pub async fn track(State(_app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("hybridstore_http_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("hybridstore_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Sets the gauges that are read off the running parts at scrape time.
pub fn refresh(app: &App) {
    if let Some(store) = app.hybrid.store() {
        let end = store.durable_end();
        metrics::gauge!("hybridstore_log_durable_end").set(end.0 as f64);
        if let Some(status) = app.hybrid.projector_status() {
            for (component, standing) in &status.components {
                let labels = [("sink", status.sink), ("component", component.as_str())];
                metrics::gauge!("hybridstore_sink_lag_events", &labels)
                    .set(standing.lag(end) as f64);
                metrics::gauge!("hybridstore_sink_committed_position", &labels)
                    .set(standing.committed.0 as f64);
                metrics::gauge!("hybridstore_sink_failing", &labels).set(
                    if standing.last_error.is_some() {
                        1.0
                    } else {
                        0.0
                    },
                );
            }
            metrics::gauge!("hybridstore_sink_stopped", "sink" => status.sink)
                .set(if status.stopped.is_some() { 1.0 } else { 0.0 });
        }
    }
    let reads = app.hybrid.reads();
    metrics::gauge!("hybridstore_postgres_up").set(if reads.health().is_up() { 1.0 } else { 0.0 });
    for ((bot, component), counts) in reads.shadow_stats().local() {
        for (outcome, n) in [
            ("match", counts.matched),
            ("mismatch", counts.mismatched),
            ("lagging", counts.lagging),
            ("error", counts.errors),
            ("timeout", counts.timeouts),
        ] {
            metrics::counter!("hybridstore_shadow_reads_total", "bot" => bot.to_string(), "component" => component.as_str(), "outcome" => outcome).absolute(n);
        }
    }
    if let Some(cache) = reads.cache() {
        let stats = cache.stats();
        for (tier, per) in [(Tier::Memory, &stats.memory), (Tier::Redis, &stats.redis)] {
            let tier = match tier {
                Tier::Memory => "memory",
                Tier::Redis => "redis",
            };
            for (component, c) in per {
                let labels = [("tier", tier), ("component", component.as_str())];
                metrics::counter!("hybridstore_cache_hits_total", &labels).absolute(c.hits);
                metrics::counter!("hybridstore_cache_misses_total", &labels).absolute(c.misses);
                metrics::counter!("hybridstore_cache_errors_total", &labels).absolute(c.errors);
            }
        }
        if let Some(breaker) = stats.breaker {
            let open = !matches!(breaker, crate::read::cache::BreakerState::Closed);
            metrics::gauge!("hybridstore_cache_redis_breaker_open").set(if open {
                1.0
            } else {
                0.0
            });
        }
        metrics::gauge!("hybridstore_cache_memory_bytes").set(stats.memory_bytes as f64);
    }
}
