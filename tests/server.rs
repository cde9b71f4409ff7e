//! `hybridstore serve` as a spawned daemon: every route's answers and error statuses, the
//! tokens, the body limit, SSE delivered once and in order and resumed across a restart, SIGTERM
//! under load losing no acknowledged append, `--replica`, and `project` beside a daemon.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hybridstore::testing::{http, HttpResponse, HttpTarget, TestDb};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_hybridstore");
const READ: &str = "read-token-0123456789";
const WRITE: &str = "write-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

/// A daemon process and where it listens.
struct Daemon {
    child: Child,
    tcp: HttpTarget,
    unix: Option<HttpTarget>,
}

impl Daemon {
    /// Starts `hybridstore [--data-dir dir] serve ARGS` with the three tokens, `db` as its
    /// database (or none), waiting for its `listening on` lines.
    fn start(
        dir: Option<&std::path::Path>,
        args: &[&str],
        db: Option<&TestDb>,
        unix: bool,
    ) -> Daemon {
        let mut command = Command::new(BIN);
        if let Some(dir) = dir {
            command.arg("--data-dir").arg(dir);
        }
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("HYBRIDSTORE_READ_TOKEN", READ)
            .env("HYBRIDSTORE_WRITE_TOKEN", WRITE)
            .env("HYBRIDSTORE_ADMIN_TOKEN", ADMIN)
            .env_remove("DB_HOST")
            .env_remove("REDIS_URL")
            .env_remove("REDIS_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match db {
            Some(db) => command.env("DATABASE_URL", db.url()),
            None => command.env_remove("DATABASE_URL"),
        };
        let socket = dir.map(|d| d.join("api.sock"));
        if let (true, Some(socket)) = (unix, &socket) {
            command
                .arg("--listen")
                .arg(format!("unix:{}", socket.display()));
        }
        let mut child = command.spawn().expect("start the daemon");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut tcp = None;
        let mut unix_target = None;
        let wanted = if unix { 2 } else { 1 };
        let mut seen = 0;
        while seen < wanted {
            let line = lines
                .next()
                .expect("the daemon printed its addresses before exiting")
                .expect("read stdout");
            if let Some(addr) = line.strip_prefix("listening on http://") {
                tcp = Some(HttpTarget::Tcp(addr.parse().expect("an address")));
                seen += 1;
            } else if let Some(path) = line.strip_prefix("listening on unix:") {
                unix_target = Some(HttpTarget::Unix(path.into()));
                seen += 1;
            }
        }
        Daemon {
            child,
            tcp: tcp.expect("a TCP address"),
            unix: unix_target,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> HttpResponse {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        let body = body.map(|b| b.to_string().into_bytes());
        http(&self.tcp, method, path, &headers, body.as_deref())
            .await
            .expect("the daemon answers")
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        self.child.wait().expect("wait for the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

fn message(text: &str) -> Value {
    json!({"type": "MessageReceived", "data": {"telegram_message_id": null, "text": text, "content_type": "text"}})
}

fn append_body(expected: Value, events: Vec<Value>) -> Value {
    json!({"expected_version": expected, "events": events})
}

fn problem_type(response: &HttpResponse) -> String {
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{response:?}"
    );
    response.json()["type"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Proves every route's answer and every error status: appends (positions and version, 409 with
/// the actual version, 422 for a key reused on other events, 400 naming the field or a body that
/// is not JSON, 413 over the body limit, nothing appended on any error), a `Last-Event-ID` past
/// the last position, stream and log reads (long poll included), the
/// typed reads, the migration routes, the tokens (none, wrong, a read token writing, a write token
/// on an admin route), the Unix socket, /livez, /readyz, /metrics and an unknown route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("serve_routes").await;
    let daemon = Daemon::start(
        Some(dir.path()),
        &["--body-limit-bytes", "4096"],
        Some(&db),
        true,
    );
    let stream = "/v1/streams/conv-bot-7/events";
    let created = daemon
        .call(
            "POST",
            stream,
            Some(WRITE),
            Some(append_body(
                json!("no_stream"),
                vec![
                    json!({"type": "ProfileCreated", "data": {"name": "Ann"}, "key": "p7"}),
                    message("hi"),
                ],
            )),
        )
        .await;
    assert_eq!(created.status, 200, "{created:?}");
    assert_eq!(
        created.json(),
        json!({"first_position": 0, "last_position": 1, "stream_version": 1})
    );
    // The same key again: the original answer, nothing appended.
    let retried = daemon
        .call(
            "POST",
            stream,
            Some(WRITE),
            Some(append_body(
                json!("any"),
                vec![json!({"type": "ProfileCreated", "data": {"name": "Ann"}, "key": "p7"})],
            )),
        )
        .await;
    assert_eq!(retried.status, 200, "{retried:?}");
    let conflict = daemon
        .call(
            "POST",
            stream,
            Some(WRITE),
            Some(append_body(json!(0), vec![message("x")])),
        )
        .await;
    assert_eq!(conflict.status, 409);
    assert_eq!(problem_type(&conflict), "/problems/wrong-expected-version");
    assert_eq!(conflict.json()["actual_version"], 1);
    let reused = daemon
        .call(
            "POST",
            "/v1/streams/conv-bot-8/events",
            Some(WRITE),
            Some(append_body(
                json!("any"),
                vec![json!({"type": "ProfileCreated", "data": {"name": "Bea"}, "key": "p7"})],
            )),
        )
        .await;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert_eq!(problem_type(&reused), "/problems/idempotency-conflict");
    for (body, field) in [
        (
            append_body(json!("sometimes"), vec![message("x")]),
            "/expected_version",
        ),
        (json!({"events": "no"}), "/events"),
        (json!({"events": [{"type": "Nope"}]}), "/events/0/type"),
        (
            json!({"events": [{"type": "ProfileCreated", "data": {}}]}),
            "/events/0/data",
        ),
        (
            json!({"events": [{"type": "ProfileCreated", "data": {"name": "x"}, "id": "nope"}]}),
            "/events/0/id",
        ),
    ] {
        let refused = daemon.call("POST", stream, Some(WRITE), Some(body)).await;
        assert_eq!(refused.status, 400, "{refused:?}");
        assert_eq!(problem_type(&refused), "/problems/bad-request");
        assert_eq!(refused.json()["field"], field, "{refused:?}");
    }
    // A POST that is not JSON is refused (a browser page could send it without a preflight).
    let auth = format!("Bearer {WRITE}");
    let body = append_body(json!("any"), vec![message("x")]).to_string();
    let plain = http(
        &daemon.tcp,
        "POST",
        stream,
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(plain.status, 400, "{plain:?}");
    assert_eq!(plain.json()["field"], "Content-Type");
    let read_auth = format!("Bearer {READ}");
    let overflow = http(
        &daemon.tcp,
        "GET",
        "/v1/subscribe",
        &[
            ("Authorization", &read_auth),
            ("Last-Event-ID", "18446744073709551615"),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(overflow.status, 400, "{overflow:?}");
    let bad_stream = daemon
        .call(
            "POST",
            "/v1/streams/nope/events",
            Some(WRITE),
            Some(append_body(json!("any"), vec![message("x")])),
        )
        .await;
    assert_eq!(bad_stream.json()["field"], "stream");
    let big = daemon
        .call(
            "POST",
            stream,
            Some(WRITE),
            Some(append_body(json!("any"), vec![message(&"x".repeat(5000))])),
        )
        .await;
    assert_eq!(big.status, 413, "{big:?}");

    // Nothing of the refused appends landed.
    let read = daemon
        .call(
            "GET",
            "/v1/streams/conv-bot-7?from=0&limit=10",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(read.status, 200);
    let events = read.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event"]["type"], "ProfileCreated");
    assert_eq!(events[1]["event"]["data"]["text"], "hi");
    let backward = daemon
        .call(
            "GET",
            "/v1/streams/conv-bot-7?direction=backward&limit=1",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(backward.json()["events"][0]["stream_version"], 1);
    let all = daemon
        .call("GET", "/v1/all?from=0&limit=10", Some(READ), None)
        .await;
    assert_eq!(all.json()["next"], 2);
    // A long poll answers as soon as an event lands.
    let poll = {
        let target = daemon.tcp.clone();
        tokio::spawn(async move {
            let auth = format!("Bearer {READ}");
            http(
                &target,
                "GET",
                "/v1/all?from=2&wait_ms=20000",
                &[("Authorization", &auth)],
                None,
            )
            .await
            .unwrap()
        })
    };
    let appended = daemon
        .call(
            "POST",
            stream,
            Some(WRITE),
            Some(append_body(json!(1), vec![message("later")])),
        )
        .await;
    assert_eq!(appended.json()["last_position"], 2);
    let polled = poll.await.unwrap();
    assert_eq!(polled.json()["events"][0]["position"], 2);

    let profile = daemon
        .call(
            "GET",
            "/v1/bots/bot/profiles/7?min_position=2",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(profile.status, 200, "{profile:?}");
    let profile = profile.json();
    assert_eq!(profile["value"]["name"], "Ann");
    assert_eq!(profile["source"], "log");
    assert_eq!(profile["state"], "disabled");
    let messages = daemon
        .call(
            "GET",
            "/v1/bots/bot/conversations/7/messages?limit=1&min_position=2",
            Some(READ),
            None,
        )
        .await
        .json();
    assert_eq!(messages["value"][0]["text"], "later");
    let head = daemon
        .call(
            "GET",
            "/v1/bots/bot/conversations/7/head?min_position=2",
            Some(READ),
            None,
        )
        .await
        .json();
    assert_eq!(head["value"]["messages_in"], 2);
    for path in [
        "/v1/bots/bot/users/7",
        "/v1/bots/bot/config/global/greeting",
        "/v1/bots/bot/analytics/2026-01-01",
    ] {
        let absent = daemon.call("GET", path, Some(READ), None).await;
        assert_eq!(absent.status, 200, "{path}: {absent:?}");
        assert_eq!(absent.json()["value"], Value::Null, "{path}");
    }
    let unix = daemon.unix.clone().unwrap();
    let auth = format!("Bearer {READ}");
    let over_unix = http(
        &unix,
        "GET",
        "/v1/bots/bot/profiles/7",
        &[("Authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(over_unix.json()["value"]["name"], "Ann");
    let bad_day = daemon
        .call("GET", "/v1/bots/bot/analytics/yesterday", Some(READ), None)
        .await;
    assert_eq!(bad_day.json()["field"], "day");
    let not_caught_up = daemon
        .call(
            "GET",
            "/v1/bots/bot/profiles/7?min_position=999",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(not_caught_up.status, 504, "{not_caught_up:?}");

    // Migration states: admin only; a refused step is 409 with the reason.
    let skip = daemon
        .call(
            "POST",
            "/v1/migrations/bot/profiles",
            Some(ADMIN),
            Some(json!({"to": "dual-write"})),
        )
        .await;
    assert_eq!(skip.status, 409, "{skip:?}");
    assert_eq!(problem_type(&skip), "/problems/transition-refused");
    let enabled = daemon
        .call(
            "POST",
            "/v1/migrations/bot/profiles",
            Some(ADMIN),
            Some(json!({"to": "enabled", "reason": "test"})),
        )
        .await;
    assert_eq!(enabled.status, 200, "{enabled:?}");
    assert_eq!(enabled.json()["to"], "enabled");
    let status = daemon
        .call("GET", "/v1/migrations?bot=bot", Some(ADMIN), None)
        .await;
    let components = status.json()["components"].as_array().unwrap().clone();
    assert!(components
        .iter()
        .any(|c| c["component"] == "profiles" && c["state"] == "enabled"));
    let state = daemon
        .call("GET", "/v1/bots/bot/components/profiles", Some(READ), None)
        .await;
    assert_eq!(state.json()["value"], "enabled");

    // Tokens.
    for (token, path, method, status) in [
        (None, "/v1/bots/bot/profiles/7", "GET", 401),
        (
            Some("wrong-token-0123456789"),
            "/v1/bots/bot/profiles/7",
            "GET",
            401,
        ),
        (Some(READ), stream, "POST", 403),
        (Some(WRITE), "/v1/migrations", "GET", 403),
        (Some(READ), "/v1/migrations/bot/users", "POST", 403),
    ] {
        let body = (method == "POST").then(|| append_body(json!("any"), vec![message("x")]));
        let refused = daemon.call(method, path, token, body).await;
        assert_eq!(
            refused.status, status,
            "{token:?} {method} {path}: {refused:?}"
        );
    }
    let live = daemon.call("GET", "/livez", None, None).await;
    assert_eq!((live.status, live.body.as_slice()), (200, b"ok".as_slice()));
    let ready = daemon.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200);
    let metrics = daemon.call("GET", "/metrics", None, None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for name in [
        "hybridstore_appends_total",
        "hybridstore_append_seconds_bucket",
        "hybridstore_http_requests_total",
        "hybridstore_sink_lag_events",
        "hybridstore_log_durable_end",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(text.contains("status=\"409\""), "{text}");
    let unknown = daemon.call("GET", "/v2/nothing", Some(READ), None).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(problem_type(&unknown), "/problems/not-found");
    assert!(daemon.stop().success());
}

/// Reads SSE events from `target` (resuming after `last` when given) until `count` arrived.
async fn sse_events(target: &HttpTarget, last: Option<u64>, count: usize) -> Vec<(u64, Value)> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let HttpTarget::Tcp(addr) = target else {
        panic!("tcp")
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let resume = last.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
    let request = format!(
        "GET /v1/subscribe?from=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ}\r\n{resume}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut out = Vec::new();
    let mut id = None;
    while out.len() < count {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("an SSE line within 30 s")
            .unwrap()
            .expect("the stream goes on");
        // Chunked framing: chunk-size lines and blank lines carry no field.
        if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value.trim().parse::<u64>().unwrap());
        } else if let Some(data) = line.strip_prefix("data: ") {
            out.push((
                id.take().expect("id before data"),
                serde_json::from_str(data).unwrap(),
            ));
        }
    }
    out
}

/// Proves SSE delivers every event once and in order, and resumes from `Last-Event-ID` across a
/// daemon restart with the next event (none twice, none skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_resume_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Some(dir.path()), &[], None, false);
    for i in 0..5 {
        let r = daemon
            .call(
                "POST",
                "/v1/streams/conv-bot-1/events",
                Some(WRITE),
                Some(append_body(json!("any"), vec![message(&format!("m{i}"))])),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let first = sse_events(&daemon.tcp, None, 5).await;
    let positions: Vec<u64> = first.iter().map(|(id, _)| *id).collect();
    assert_eq!(positions, vec![0, 1, 2, 3, 4]);
    assert!(first.iter().all(|(id, e)| e["position"] == *id));
    assert!(daemon.stop().success());

    let daemon = Daemon::start(Some(dir.path()), &[], None, false);
    for i in 5..8 {
        daemon
            .call(
                "POST",
                "/v1/streams/conv-bot-1/events",
                Some(WRITE),
                Some(append_body(json!("any"), vec![message(&format!("m{i}"))])),
            )
            .await;
    }
    let resumed = sse_events(&daemon.tcp, Some(4), 3).await;
    let positions: Vec<u64> = resumed.iter().map(|(id, _)| *id).collect();
    assert_eq!(positions, vec![5, 6, 7]);
    assert_eq!(resumed[0].1["event"]["data"]["text"], "m5");
    assert!(daemon.stop().success());
}

/// Proves SIGTERM under load loses no acknowledged append: every append answered 200 is in the
/// log exactly once after the stop, the daemon exits 0, and the log was closed cleanly (its
/// clean-shutdown marker is there for the next open's fast path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Some(dir.path()), &[], None, false);
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (target, acknowledged, stop) = (daemon.tcp.clone(), acknowledged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let auth = format!("Bearer {WRITE}");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("w{w}-{i}");
                let body = append_body(json!("any"), vec![message(&text)]).to_string();
                match http(
                    &target,
                    "POST",
                    &format!("/v1/streams/conv-bot-{w}/events"),
                    &[("Authorization", &auth)],
                    Some(body.as_bytes()),
                )
                .await
                {
                    Ok(r) if r.status == 200 => acknowledged.lock().unwrap().push(text),
                    // Refused while stopping, or the connection closed: not acknowledged.
                    Ok(_) | Err(_) => {}
                }
                i += 1;
            }
        }));
    }
    let started = loop {
        let n = acknowledged.lock().unwrap().len();
        if n >= 200 {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(started >= 200);
    let status = daemon.stop();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(status.success(), "{status:?}");
    assert!(
        dir.path().join("wal/clean-shutdown").exists(),
        "the log was not closed cleanly"
    );
    let store = hybridstore::Store::open(hybridstore::StoreConfig::new(dir.path()))
        .await
        .unwrap();
    let all = store
        .read_all(hybridstore_wal::Position(0), 1_000_000)
        .await
        .unwrap();
    let mut texts: Vec<String> = all
        .iter()
        .filter_map(|e| match &e.event {
            hybridstore::events::Event::MessageReceived(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect();
    texts.sort();
    let mut unique = texts.clone();
    unique.dedup();
    assert_eq!(unique.len(), texts.len(), "an append landed twice");
    let acknowledged = acknowledged.lock().unwrap().clone();
    for text in &acknowledged {
        assert!(
            texts.binary_search(text).is_ok(),
            "acknowledged {text} is missing"
        );
    }
    store.close().await.unwrap();
}

/// Proves `--replica` serves database-only reads without a data directory, refuses writes and
/// the other components with `not-served-here`; and `project` on a directory the daemon holds
/// names the daemon instead of a lock error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_and_project_beside_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("serve_replica").await;
    let daemon = Daemon::start(Some(dir.path()), &[], Some(&db), false);
    let appended = daemon
        .call(
            "POST",
            "/v1/streams/conv-bot-3/events",
            Some(WRITE),
            Some(append_body(
                json!("any"),
                vec![json!({"type": "ProfileCreated", "data": {"name": "Ann"}})],
            )),
        )
        .await;
    let position = appended.json()["last_position"].as_u64().unwrap();
    for to in ["enabled", "dual-write", "database-only"] {
        let moved = daemon
            .call(
                "POST",
                "/v1/migrations/bot/profiles",
                Some(ADMIN),
                Some(json!({"to": to, "force": true})),
            )
            .await;
        assert_eq!(moved.status, 200, "{moved:?}");
    }
    // Answered by Postgres once the projector's backfill has passed the append (the log
    // projection answers until then).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let from_daemon = daemon
            .call(
                "GET",
                &format!("/v1/bots/bot/profiles/3?min_position={position}"),
                Some(READ),
                None,
            )
            .await
            .json();
        assert_eq!(from_daemon["value"]["name"], "Ann", "{from_daemon}");
        if from_daemon["source"] == "postgres" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never answered by Postgres: {from_daemon}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let project = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["project", "--until-caught-up", "--database-url", &db.url()])
        .output()
        .unwrap();
    assert_eq!(project.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&project.stderr);
    assert!(stderr.contains("a hybridstore daemon (pid"), "{stderr}");
    assert!(stderr.contains("runs the projector"), "{stderr}");

    let replica = Daemon::start(None, &["--replica"], Some(&db), false);
    let read = replica
        .call(
            "GET",
            &format!("/v1/bots/bot/profiles/3?min_position={position}"),
            Some(READ),
            None,
        )
        .await;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.json()["value"]["name"], "Ann");
    assert_eq!(read.json()["source"], "postgres");
    let write = replica
        .call(
            "POST",
            "/v1/streams/conv-bot-3/events",
            Some(WRITE),
            Some(append_body(json!("any"), vec![message("x")])),
        )
        .await;
    assert_eq!(write.status, 503);
    assert_eq!(problem_type(&write), "/problems/not-served-here");
    let other = replica
        .call("GET", "/v1/bots/bot/conversations/3/head", Some(READ), None)
        .await;
    assert_eq!(other.status, 503, "{other:?}");
    assert_eq!(problem_type(&other), "/problems/not-served-here");
    assert!(replica.stop().success());
    assert!(daemon.stop().success());
}

/// Runs the CLI against the daemon at `daemon` (`--url`, the admin token).
fn cli(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    let HttpTarget::Tcp(addr) = &daemon.tcp else {
        panic!("tcp")
    };
    Command::new(BIN)
        .args(args)
        .env("HYBRIDSTORE_URL", format!("http://{addr}"))
        .env("HYBRIDSTORE_TOKEN", ADMIN)
        .output()
        .expect("run the CLI")
}

/// Proves a component walked through every state and back on a live daemon from the CLI
/// (`migrate set --url`), with appends and reads running throughout: no read fails, each sees
/// its write, `read --url` says which source answered, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_walks_a_live_daemon_through_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("serve_walk").await;
    let daemon = Daemon::start(
        Some(dir.path()),
        &[
            "--shadow-rate",
            "1",
            "--shadow-window-reads",
            "20",
            "--shadow-window-s",
            "0",
        ],
        Some(&db),
        false,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let worker = {
        let (target, stop, sent) = (daemon.tcp.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let (write, read) = (format!("Bearer {WRITE}"), format!("Bearer {READ}"));
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let chat = i % 5 + 1;
                let text = format!("t{i}");
                let body = append_body(json!("any"), vec![message(&text)]).to_string();
                let appended = http(
                    &target,
                    "POST",
                    &format!("/v1/streams/conv-bot-{chat}/events"),
                    &[("Authorization", &write)],
                    Some(body.as_bytes()),
                )
                .await
                .unwrap();
                assert_eq!(appended.status, 200, "{appended:?}");
                sent.lock().unwrap().push(text.clone());
                let at = appended.json()["last_position"].as_u64().unwrap();
                let path =
                    format!("/v1/bots/bot/conversations/{chat}/messages?limit=3&min_position={at}");
                let got = http(&target, "GET", &path, &[("Authorization", &read)], None)
                    .await
                    .unwrap();
                if got.status != 200
                    || got.json()["value"]
                        .as_array()
                        .and_then(|m| m.last())
                        .map(|m| m["text"].clone())
                        != Some(json!(text))
                {
                    failures.push(format!("{i}: {got:?}"));
                }
                i += 1;
            }
            failures
        })
    };
    let set = |to: &str| {
        cli(
            &daemon,
            &[
                "migrate",
                "set",
                "--bot",
                "bot",
                "conversations",
                "--to",
                to,
                "--wait",
                "30",
            ],
        )
    };
    for to in ["enabled", "dual-write"] {
        let out = set(to);
        assert!(
            out.status.success(),
            "{to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Refused (exit 1) until the shadow window holds 20 matches; then it moves.
    let mut attempts = 0;
    loop {
        let out = set("database-only");
        if out.status.success() {
            break;
        }
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("shadow window"));
        attempts += 1;
        assert!(attempts < 300, "the shadow window never filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = cli(&daemon, &["read", "--bot", "bot", "head", "1"]);
    let line: Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(line["data"]["state"], "database-only", "{line}");
    let status = cli(&daemon, &["migrate", "status", "--bot", "bot"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("\"database-only\""));
    for to in ["dual-write", "disabled"] {
        let out = set(to);
        assert!(
            out.status.success(),
            "{to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let failures = worker.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} reads failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let sent = sent.lock().unwrap().clone();
    let mut found = Vec::new();
    for chat in 1..=5 {
        let all = daemon
            .call(
                "GET",
                &format!("/v1/streams/conv-bot-{chat}?limit=10000"),
                Some(READ),
                None,
            )
            .await
            .json();
        for e in all["events"].as_array().unwrap() {
            found.push(e["event"]["data"]["text"].as_str().unwrap().to_owned());
        }
    }
    found.sort();
    let mut expected = sent;
    expected.sort();
    assert_eq!(found, expected, "every acknowledged append once");
    assert!(daemon.stop().success());
}

/// Proves the 503s of a daemon whose log refuses appends (here: closed under it, as after a
/// failed fsync poisons it): `/readyz` says why, an append is `unavailable` and appends
/// nothing, while `/livez` still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_refuses_appends_is_503() {
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    let dir = tempfile::tempdir().unwrap();
    let hybrid = hybridstore::hybrid::Hybrid::open(hybridstore::hybrid::HybridConfig::new(
        hybridstore::StoreConfig::new(dir.path()),
    ))
    .await
    .unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let app = Arc::new(hybridstore::server::App {
        hybrid: hybrid.clone(),
        tokens: hybridstore::server::auth::Tokens::default(),
        metrics: hybridstore::server::metrics::handle(),
        shutdown,
    });
    let config = hybridstore::server::ServeConfig::new(Vec::new());
    let routes = hybridstore::server::router(app, &config);
    let call = |method: &str, path: &str, body: Option<Value>| {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let routes = routes.clone();
        async move {
            let response = routes.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    assert_eq!(call("GET", "/readyz", None).await.0, 200);
    hybrid.store().unwrap().clone().close().await.unwrap();
    let (status, body) = call("GET", "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("refuses appends"), "{body}");
    let (status, body) = call(
        "POST",
        "/v1/streams/conv-bot-1/events",
        Some(append_body(json!("any"), vec![message("x")])),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("/problems/unavailable"), "{body}");
    assert_eq!(call("GET", "/livez", None).await.0, 200);
}

/// Proves erasure through the daemon: the admin route answers a complete receipt (the write
/// token is refused), reads of the erased chat answer 410 `erased`, the receipt can be asked for
/// again, unknown subjects and receipts are 404 and bad bodies 400; the CLI erases a user through
/// the daemon (exit 0, the receipt on stdout); afterwards no file of the data directory holds
/// the erased texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_through_the_daemon_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Some(dir.path()), &[], None, false);
    let secret = format!("secret-{}", uuid::Uuid::now_v7().simple());
    for stream in ["conv-bot-7", "conv-bot-8"] {
        let appended = daemon
            .call(
                "POST",
                &format!("/v1/streams/{stream}/events"),
                Some(WRITE),
                Some(append_body(json!("any"), vec![message(&secret)])),
            )
            .await;
        assert_eq!(appended.status, 200, "{appended:?}");
    }
    let refused = daemon
        .call(
            "POST",
            "/v1/bots/bot/erasures",
            Some(WRITE),
            Some(json!({"chat": 7})),
        )
        .await;
    assert_eq!(refused.status, 403, "{refused:?}");
    let erased = daemon
        .call(
            "POST",
            "/v1/bots/bot/erasures",
            Some(ADMIN),
            Some(json!({"chat": 7, "wait_s": 5})),
        )
        .await;
    assert_eq!(erased.status, 200, "{erased:?}");
    let receipt = erased.json();
    assert_eq!(receipt["complete"], true, "{receipt}");
    assert_eq!(
        receipt["subject"],
        json!({"kind": "chat", "bot": "bot", "chat_id": 7})
    );
    assert_eq!(receipt["sinks"][0]["sink"], "log-projection");
    assert_eq!(receipt["sealed_events_shredded"], 1);
    let at = receipt["erasure_position"].as_u64().unwrap();
    for path in [
        "/v1/bots/bot/profiles/7",
        "/v1/bots/bot/conversations/7/messages",
        "/v1/bots/bot/conversations/7/head",
    ] {
        let read = daemon.call("GET", path, Some(READ), None).await;
        assert_eq!(read.status, 410, "{path}: {read:?}");
        assert_eq!(problem_type(&read), "/problems/erased");
        assert_eq!(read.json()["title"], "Erased");
        assert_eq!(read.json()["erased_at"], at);
    }
    let kept = daemon
        .call(
            "GET",
            "/v1/bots/bot/conversations/8/messages",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(kept.status, 200);
    assert_eq!(kept.json()["value"][0]["text"], secret.as_str());
    let id = receipt["receipt_id"].as_str().unwrap();
    let again = daemon
        .call(
            "GET",
            &format!("/v1/bots/bot/erasures/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["receipt_id"], id);
    let missing = daemon
        .call(
            "GET",
            &format!("/v1/bots/bot/erasures/{}", uuid::Uuid::now_v7()),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(missing.status, 404);
    let bad_id = daemon
        .call("GET", "/v1/bots/bot/erasures/not-a-uuid", Some(ADMIN), None)
        .await;
    assert_eq!(bad_id.status, 400);
    let unknown = daemon
        .call(
            "POST",
            "/v1/bots/bot/erasures",
            Some(ADMIN),
            Some(json!({"chat": 999})),
        )
        .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(problem_type(&unknown), "/problems/unknown-subject");
    let both = daemon
        .call(
            "POST",
            "/v1/bots/bot/erasures",
            Some(ADMIN),
            Some(json!({"chat": 8, "user": 8})),
        )
        .await;
    assert_eq!(both.status, 400);

    let user = daemon
        .call(
            "POST",
            "/v1/streams/user-bot-8/events",
            Some(WRITE),
            Some(append_body(
                json!("any"),
                vec![
                    json!({"type": "UserRegistered", "data": {"identity": {"first_name": secret}}}),
                ],
            )),
        )
        .await;
    assert_eq!(user.status, 200, "{user:?}");
    let output = cli(&daemon, &["erase", "--bot", "bot", "--user", "8"]);
    assert!(output.status.success(), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).expect("the receipt as JSON");
    assert_eq!(printed["subject"]["kind"], "user");
    assert_eq!(printed["keys_destroyed"].as_array().unwrap().len(), 2);
    let id = printed["receipt_id"].as_str().unwrap();
    let asked = cli(&daemon, &["erase", "--bot", "bot", "--receipt", id]);
    assert!(asked.status.success(), "{asked:?}");
    let user_read = daemon
        .call("GET", "/v1/bots/bot/users/8", Some(READ), None)
        .await;
    assert_eq!(user_read.status, 410);

    assert!(daemon.stop().success());
    let mut holding = Vec::new();
    let mut pending = vec![dir.path().to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(secret.len())
            .any(|w| w == secret.as_bytes())
        {
            holding.push(path);
        }
    }
    assert_eq!(holding, Vec::<std::path::PathBuf>::new());
}
