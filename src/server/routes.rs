//! The handlers of API v1 (`docs/api-v1.md`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::Stream;
use hybridstore_wal::Position;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Access;
use super::problem::Problem;
use super::App;
use crate::events::Event;
use crate::hybrid::SetOptions;
use crate::ids::{BotId, Component, MigrationState, StreamId, StreamVersion, Timestamp};
use crate::read::{Query as ReadQuery, ReadSource as _};
use crate::store::{ExpectedVersion, NewEvent, ReadDirection, Store};

/// The longest a long poll of `/v1/all` waits.
const LONG_POLL_MAX: Duration = Duration::from_secs(30);
/// Most events one read returns.
const READ_LIMIT_MAX: usize = 10_000;

type Answer = Result<Response, Problem>;

fn store_of(app: &App) -> Result<&Store, Problem> {
    app.hybrid.store().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-served-here",
            "this daemon is a replica (no data directory): appends and log reads go to the daemon that owns the log",
        )
    })
}

fn stream_of(text: &str) -> Result<StreamId, Problem> {
    text.parse::<StreamId>()
        .map_err(|e| Problem::bad_request("stream", e.to_string()))
}

fn bot_of(text: &str) -> Result<BotId, Problem> {
    BotId::new(text).map_err(|e| Problem::bad_request("bot", e.to_string()))
}

/// A POST must say its body is JSON: a browser page can send other types without asking the
/// server first (no CORS preflight), and with no token configured that would let any page open
/// on the machine append to the log.
fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if json {
        Ok(())
    } else {
        Err(Problem::bad_request(
            "Content-Type",
            "a POST body must be sent as Content-Type: application/json",
        ))
    }
}

/// `POST /v1/streams/{stream}/events`.
pub async fn append(
    State(app): State<Arc<App>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    app.tokens.check(&headers, Access::Write)?;
    require_json(&headers)?;
    let store = store_of(&app)?;
    let stream = stream_of(&stream)?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request("body", format!("not JSON: {e}")))?;
    let expected = match body.get("expected_version") {
        None => ExpectedVersion::Any,
        Some(Value::String(s)) if s == "any" => ExpectedVersion::Any,
        Some(Value::String(s)) if s == "no_stream" => ExpectedVersion::NoStream,
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            ExpectedVersion::Exact(StreamVersion(n.as_u64().unwrap_or_default()))
        }
        Some(_) => {
            return Err(Problem::bad_request(
                "/expected_version",
                "expected \"any\", \"no_stream\" or a stream version (a number)",
            ))
        }
    };
    let Some(Value::Array(items)) = body.get("events") else {
        return Err(Problem::bad_request(
            "/events",
            "expected an array of events",
        ));
    };
    let header_key = match headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Problem::bad_request("Idempotency-Key", "not ASCII text"))?
                .to_owned(),
        ),
        None => None,
    };
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        events.push(new_event(index, item, header_key.as_deref())?);
    }
    let started = Instant::now();
    let appended = store.append(&stream, expected, events).await;
    metrics::histogram!("hybridstore_append_seconds").record(started.elapsed().as_secs_f64());
    let appended = appended.map_err(Problem::from)?;
    metrics::counter!("hybridstore_appends_total").increment(1);
    metrics::counter!("hybridstore_events_appended_total")
        .increment(appended.last_position.0 - appended.first_position.0 + 1);
    Ok(Json(json!({
        "first_position": appended.first_position.0,
        "last_position": appended.last_position.0,
        "stream_version": appended.stream_version.0,
    }))
    .into_response())
}

/// One event of an append body.
fn new_event(index: usize, item: &Value, header_key: Option<&str>) -> Result<NewEvent, Problem> {
    let field = |name: &str| format!("/events/{index}/{name}");
    let Value::Object(object) = item else {
        return Err(Problem::bad_request(
            &format!("/events/{index}"),
            "expected an object {\"type\", \"data\", \"id\"?, \"key\"?, \"occurred_at\"?}",
        ));
    };
    let tagged = json!({
        "type": object.get("type").cloned().unwrap_or(Value::Null),
        "data": object.get("data").cloned().unwrap_or_else(|| json!({})),
    });
    let event: Event = serde_json::from_value(tagged).map_err(|e| {
        let known_type = object.get("type").is_some_and(Value::is_string)
            && !e.to_string().starts_with("unknown variant");
        let what = if known_type { "data" } else { "type" };
        Problem::bad_request(&field(what), format!("not a valid event: {e}"))
    })?;
    let mut new = NewEvent::new(event);
    match object.get("id") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) => {
            let id = Uuid::parse_str(id)
                .map_err(|e| Problem::bad_request(&field("id"), format!("not a UUID: {e}")))?;
            new = new.with_id(id);
        }
        Some(_) => return Err(Problem::bad_request(&field("id"), "expected a UUID string")),
    }
    match object.get("key") {
        None | Some(Value::Null) => {
            if let Some(key) = header_key {
                new = new.with_key(format!("{key}:{index}"));
            }
        }
        Some(Value::String(key)) => new = new.with_key(key.clone()),
        Some(_) => return Err(Problem::bad_request(&field("key"), "expected a string")),
    }
    match object.get("occurred_at") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_i64().is_some() => {
            new = new.at(Timestamp(n.as_i64().unwrap_or_default()));
        }
        Some(_) => {
            return Err(Problem::bad_request(
                &field("occurred_at"),
                "expected milliseconds since the epoch (an integer)",
            ))
        }
    }
    Ok(new)
}

/// Query of `GET /v1/streams/{stream}`.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    from: Option<u64>,
    direction: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/streams/{stream}`.
pub async fn read_stream(
    State(app): State<Arc<App>>,
    Path(stream): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Answer {
    app.tokens.check(&headers, Access::Read)?;
    let store = store_of(&app)?;
    let stream = stream_of(&stream)?;
    let limit = query.limit.unwrap_or(100).min(READ_LIMIT_MAX);
    let (direction, from) = match query.direction.as_deref() {
        None | Some("forward") => (ReadDirection::Forward, query.from.unwrap_or(0)),
        Some("backward") => (ReadDirection::Backward, query.from.unwrap_or(u64::MAX)),
        Some(_) => {
            return Err(Problem::bad_request(
                "direction",
                "expected forward or backward",
            ))
        }
    };
    let events = store
        .read_stream(&stream, StreamVersion(from), direction, limit)
        .await?;
    Ok(Json(json!({ "events": events })).into_response())
}

/// Query of `GET /v1/all`.
#[derive(Debug, Deserialize)]
pub struct AllQuery {
    from: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

/// `GET /v1/all`: events from a position, waiting (long poll) for the first when asked.
pub async fn read_all(
    State(app): State<Arc<App>>,
    Query(query): Query<AllQuery>,
    headers: HeaderMap,
) -> Answer {
    app.tokens.check(&headers, Access::Read)?;
    let store = store_of(&app)?;
    let from = Position(query.from.unwrap_or(0));
    let limit = query.limit.unwrap_or(100).clamp(1, READ_LIMIT_MAX);
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(LONG_POLL_MAX);
    let mut events = store.read_all(from, limit).await?;
    if events.is_empty() && !wait.is_zero() {
        let mut subscription = store.subscribe(from)?;
        let mut shutdown = app.shutdown.clone();
        tokio::select! {
            _ = tokio::time::timeout(wait, subscription.next()) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
        events = store.read_all(from, limit).await?;
    }
    let next = events.last().map_or(from, |e| Position(e.position.0 + 1));
    Ok(Json(json!({ "events": events, "next": next.0 })).into_response())
}

/// Query of `GET /v1/subscribe`.
#[derive(Debug, Deserialize)]
pub struct SubscribeQuery {
    from: Option<u64>,
}

/// `GET /v1/subscribe`: Server-Sent Events, `id` = position; `Last-Event-ID` resumes after it.
pub async fn subscribe(
    State(app): State<Arc<App>>,
    Query(query): Query<SubscribeQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    app.tokens.check(&headers, Access::Read)?;
    let store = store_of(&app)?;
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    Problem::bad_request("Last-Event-ID", "expected a position (a number)")
                })?,
        ),
        None => None,
    };
    let from = match resume {
        Some(last) => Position(last.checked_add(1).ok_or_else(|| {
            Problem::bad_request("Last-Event-ID", "past the last possible position")
        })?),
        None => Position(query.from.unwrap_or(0)),
    };
    let subscription = store.subscribe(from)?;
    let shutdown = app.shutdown.clone();
    let events = futures_util::stream::unfold(
        (subscription, shutdown),
        |(mut subscription, mut shutdown)| async move {
            let next = tokio::select! {
                next = subscription.next_shared() => next,
                _ = shutdown.wait_for(|s| *s) => None,
            };
            match next {
                Some(Ok(event)) => {
                    let data = serde_json::to_string(&*event).unwrap_or_default();
                    let sse = SseEvent::default()
                        .id(event.position.0.to_string())
                        .event("event")
                        .data(data);
                    Some((Ok(sse), (subscription, shutdown)))
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "a subscription ended on an error");
                    None
                }
                None => None,
            }
        },
    );
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}

/// Query of the typed reads.
#[derive(Debug, Deserialize)]
pub struct TypedQuery {
    min_position: Option<u64>,
    limit: Option<usize>,
}

async fn typed(app: &App, headers: &HeaderMap, query: ReadQuery, min: Option<u64>) -> Answer {
    app.tokens.check(headers, Access::Read)?;
    let component = query.component();
    let routed = app.hybrid.reads().read(&query, min.map(Position)).await?;
    metrics::counter!("hybridstore_reads_total", "component" => component.as_str(), "source" => routed.source.as_str()).increment(1);
    Ok(Json(json!({
        "value": routed.answer,
        "applied_end": routed.applied_end.0,
        "source": routed.source,
        "state": routed.state,
    }))
    .into_response())
}

/// `GET /v1/bots/{bot}/profiles/{chat}`.
pub async fn profile(
    State(app): State<Arc<App>>,
    Path((bot, chat)): Path<(String, i64)>,
    Query(query): Query<TypedQuery>,
    headers: HeaderMap,
) -> Answer {
    let bot = bot_of(&bot)?;
    let read = ReadQuery::Profile { bot, chat_id: chat };
    typed(&app, &headers, read, query.min_position).await
}

/// `GET /v1/bots/{bot}/conversations/{chat}/head`.
pub async fn head(
    State(app): State<Arc<App>>,
    Path((bot, chat)): Path<(String, i64)>,
    Query(query): Query<TypedQuery>,
    headers: HeaderMap,
) -> Answer {
    let bot = bot_of(&bot)?;
    let read = ReadQuery::Head { bot, chat_id: chat };
    typed(&app, &headers, read, query.min_position).await
}

/// `GET /v1/bots/{bot}/conversations/{chat}/messages`.
pub async fn messages(
    State(app): State<Arc<App>>,
    Path((bot, chat)): Path<(String, i64)>,
    Query(query): Query<TypedQuery>,
    headers: HeaderMap,
) -> Answer {
    let bot = bot_of(&bot)?;
    let limit = query.limit.unwrap_or(20).min(READ_LIMIT_MAX);
    let read = ReadQuery::Messages {
        bot,
        chat_id: chat,
        limit,
    };
    typed(&app, &headers, read, query.min_position).await
}

/// `GET /v1/bots/{bot}/users/{user}`.
pub async fn user(
    State(app): State<Arc<App>>,
    Path((bot, user)): Path<(String, i64)>,
    Query(query): Query<TypedQuery>,
    headers: HeaderMap,
) -> Answer {
    let bot = bot_of(&bot)?;
    let read = ReadQuery::User { bot, user_id: user };
    typed(&app, &headers, read, query.min_position).await
}

/// `GET /v1/bots/{bot}/config/{scope}/{key}`.
pub async fn config(
    State(app): State<Arc<App>>,
    Path((bot, scope, key)): Path<(String, String, String)>,
    Query(query): Query<TypedQuery>,
    headers: HeaderMap,
) -> Answer {
    let bot = bot_of(&bot)?;
    let read = ReadQuery::Config { bot, scope, key };
    typed(&app, &headers, read, query.min_position).await
}

/// `GET /v1/bots/{bot}/analytics/{day}`.
pub async fn analytics(
    State(app): State<Arc<App>>,
    Path((bot, day)): Path<(String, String)>,
    Query(query): Query<TypedQuery>,
    headers: HeaderMap,
) -> Answer {
    let bot = bot_of(&bot)?;
    let day = Timestamp::parse_date(&day)
        .ok_or_else(|| Problem::bad_request("day", "expected YYYY-MM-DD"))?;
    let read = ReadQuery::Daily { bot, day };
    typed(&app, &headers, read, query.min_position).await
}

/// `GET /v1/bots/{bot}/components/{component}`.
pub async fn component_state(
    State(app): State<Arc<App>>,
    Path((bot, component)): Path<(String, String)>,
    Query(query): Query<TypedQuery>,
    headers: HeaderMap,
) -> Answer {
    app.tokens.check(&headers, Access::Read)?;
    let bot = bot_of(&bot)?;
    let component: Component = component
        .parse()
        .map_err(|e: crate::InputError| Problem::bad_request("component", e.to_string()))?;
    let read = app
        .hybrid
        .reads()
        .component_state(&bot, component, query.min_position.map(Position))
        .await?;
    Ok(Json(json!({ "value": read.value, "applied_end": read.applied_end.0 })).into_response())
}

/// Query of `GET /v1/migrations`.
#[derive(Debug, Deserialize)]
pub struct MigrationsQuery {
    bot: Option<String>,
}

/// `GET /v1/migrations`.
pub async fn migrations(
    State(app): State<Arc<App>>,
    Query(query): Query<MigrationsQuery>,
    headers: HeaderMap,
) -> Answer {
    app.tokens.check(&headers, Access::Admin)?;
    let bot = query.bot.as_deref().map(bot_of).transpose()?;
    let reports = app.hybrid.migration_status(bot.as_ref()).await?;
    Ok(Json(json!({ "components": reports })).into_response())
}

/// Body of `POST /v1/migrations/{bot}/{component}`.
#[derive(Debug, Deserialize)]
pub struct TransitionBody {
    to: String,
    #[serde(default)]
    force: bool,
    reason: Option<String>,
    wait_s: Option<u64>,
}

/// `POST /v1/migrations/{bot}/{component}`.
pub async fn set_migration(
    State(app): State<Arc<App>>,
    Path((bot, component)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    app.tokens.check(&headers, Access::Admin)?;
    require_json(&headers)?;
    let bot = bot_of(&bot)?;
    let component: Component = component
        .parse()
        .map_err(|e: crate::InputError| Problem::bad_request("component", e.to_string()))?;
    let body: TransitionBody = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "body",
            format!("expected {{\"to\", \"force\"?, \"reason\"?, \"wait_s\"?}}: {e}"),
        )
    })?;
    let to: MigrationState = body
        .to
        .parse()
        .map_err(|e: String| Problem::bad_request("/to", e))?;
    let options = SetOptions {
        force: body.force,
        reason: body.reason,
        wait: Duration::from_secs(body.wait_s.unwrap_or(60).min(600)),
    };
    let made = app
        .hybrid
        .set_component_state(&bot, component, to, &options)
        .await?;
    Ok(Json(made).into_response())
}

/// Body of `POST /v1/bots/{bot}/erasures`: one of `chat` and `user`.
#[derive(Debug, Deserialize)]
pub struct EraseBody {
    chat: Option<i64>,
    user: Option<i64>,
    wait_s: Option<u64>,
}

/// `POST /v1/bots/{bot}/erasures`: erases a subject, answers the receipt (`complete` false when
/// a sink did not reach the erasure within `wait_s`, default 10, at most 600).
pub async fn erase(
    State(app): State<Arc<App>>,
    Path(bot): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    app.tokens.check(&headers, Access::Admin)?;
    require_json(&headers)?;
    let bot = bot_of(&bot)?;
    let body: EraseBody = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "body",
            format!("expected {{\"chat\" or \"user\", \"wait_s\"?}}: {e}"),
        )
    })?;
    let subject = match (body.chat, body.user) {
        (Some(chat_id), None) => crate::ids::Subject::Chat { bot, chat_id },
        (None, Some(user_id)) => crate::ids::Subject::User { bot, user_id },
        _ => {
            return Err(Problem::bad_request(
                "body",
                "exactly one of \"chat\" and \"user\"",
            ))
        }
    };
    let wait = Duration::from_secs(body.wait_s.unwrap_or(10).min(600));
    let receipt = app.hybrid.erase(&subject, wait).await?;
    Ok(Json(receipt).into_response())
}

/// Query of `GET /v1/bots/{bot}/erasures/{id}`.
#[derive(Debug, Deserialize)]
pub struct ReceiptQuery {
    wait_s: Option<u64>,
}

/// `GET /v1/bots/{bot}/erasures/{id}`: the receipt, checked again if it was not complete.
pub async fn erasure_receipt(
    State(app): State<Arc<App>>,
    Path((bot, id)): Path<(String, String)>,
    Query(query): Query<ReceiptQuery>,
    headers: HeaderMap,
) -> Answer {
    app.tokens.check(&headers, Access::Admin)?;
    let bot = bot_of(&bot)?;
    let id: uuid::Uuid = id
        .parse()
        .map_err(|e| Problem::bad_request("id", format!("not a receipt id: {e}")))?;
    let wait = Duration::from_secs(query.wait_s.unwrap_or(10).min(600));
    match app.hybrid.erasure_receipt(&bot, id, wait).await? {
        Some(receipt) => Ok(Json(receipt).into_response()),
        None => Err(Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "not-found",
            format!("no erasure receipt {id} for bot {bot}"),
        )),
    }
}

/// `GET /livez`.
pub async fn livez() -> &'static str {
    "ok"
}

/// `GET /readyz`: the log open, recovered and writable (not Postgres's or Redis's health).
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    if *app.shutdown.borrow() {
        return Problem::unavailable("the daemon is stopping").into_response();
    }
    match app.hybrid.store().and_then(Store::not_ready) {
        Some(why) => Problem::unavailable(why).into_response(),
        None => "ready".into_response(),
    }
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    super::metrics::refresh(&app);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// Any other path.
pub async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such route (see docs/api-v1.md)",
    )
}
