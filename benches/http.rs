//! The daemon's HTTP API against the store in-process, in one run (a report, no criterion
//! groups): what serving over HTTP costs.
//!
//! # What is measured
//! - Durable appends (`Always`) of one `MessageReceived` each, from 1, 16 and 64 concurrent
//!   keep-alive connections of a Rust load client (hyper, one connection per task) against the
//!   daemon (`hybridstore::server::serve`, in this process, on loopback TCP), beside the same
//!   appends through `Store::append` from as many tokio tasks on a store of its own. Target: HTTP
//!   ≥ 0.5× in-process at 64, and ≥ 50k appends/s at 64 (the client shares the two cores).
//! - Read latency over HTTP (one connection, sequential) of the profile and of the last 20
//!   messages, over loopback TCP and over the Unix socket. Targets: p99 ≤ 300 µs over TCP,
//!   ≤ 200 µs over the socket.
//!
//! # Running
//! ```text
//! cargo bench --bench http                     # the report (~1 minute)
//! HYBRIDSTORE_BENCH_QUICK=1 cargo bench --bench http   # tiny sizes: a smoke run
//! ```
//! Under `cargo test --benches` it runs in quick mode.

mod common;

use std::time::{Duration, Instant};

use common::{nanos, LatencyRun, RunMode};
use http_body_util::{BodyExt as _, Full};
use hybridstore::events::{Event, MessageReceived, ProfileCreated};
use hybridstore::hybrid::{Hybrid, HybridConfig};
use hybridstore::server::{Listen, ServeConfig};
use hybridstore::{BotId, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Chats with a profile and messages for the reads.
const READ_CHATS: i64 = 200;

fn message(text: String) -> Event {
    Event::MessageReceived(MessageReceived {
        telegram_message_id: None,
        text,
        content_type: "text".into(),
        legacy_ts: None,
    })
}

/// A keep-alive HTTP/1.1 connection.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect_tcp(addr: std::net::SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    handshake(TokioIo::new(stream)).await
}

async fn connect_unix(path: &std::path::Path) -> Sender {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect");
    handshake(TokioIo::new(stream)).await
}

async fn handshake<T>(io: T) -> Sender
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

/// One request on `sender`; panics unless it answers 200 (a bench that measures errors is
/// worthless).
async fn call(sender: &mut Sender, method: &str, path: &str, body: Option<String>) -> Bytes {
    sender.ready().await.expect("connection ready");
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    bytes
}

/// `tasks` tasks appending `per_task` messages each over HTTP, one connection per task.
async fn http_appends(addr: std::net::SocketAddr, tasks: usize, per_task: usize) -> LatencyRun {
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        handles.push(tokio::spawn(async move {
            let mut sender = connect_tcp(addr).await;
            let mut latencies = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let body = serde_json::json!({"events": [{"type": "MessageReceived",
                    "data": {"text": format!("m{i}"), "content_type": "text"},
                    "key": format!("http:{task}:{i}")}]})
                .to_string();
                let at = Instant::now();
                call(
                    &mut sender,
                    "POST",
                    &format!("/v1/streams/conv-bench-{}/events", 10_000 + task),
                    Some(body),
                )
                .await;
                latencies.push(nanos(at.elapsed()));
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("task"));
    }
    LatencyRun::new(format!("http appends x{tasks}"), all, started.elapsed())
}

/// The same appends through `Store::append` from `tasks` tasks.
async fn store_appends(store: &Store, tasks: usize, per_task: usize) -> LatencyRun {
    let bot = BotId::new("bench").expect("valid");
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = store.clone();
        let bot = bot.clone();
        handles.push(tokio::spawn(async move {
            let stream = StreamId::conversation(&bot, 20_000 + task as i64);
            let mut latencies = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let at = Instant::now();
                store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![NewEvent::new(message(format!("m{i}")))
                            .with_key(format!("s:{task}:{i}"))],
                    )
                    .await
                    .expect("append");
                latencies.push(nanos(at.elapsed()));
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("task"));
    }
    LatencyRun::new(format!("store appends x{tasks}"), all, started.elapsed())
}

/// Sequential reads of `path_of(i)` on one connection.
async fn reads(
    mut sender: Sender,
    label: &str,
    count: usize,
    path_of: impl Fn(usize) -> String,
) -> LatencyRun {
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let path = path_of(i);
        let at = Instant::now();
        call(&mut sender, "GET", &path, None).await;
        latencies.push(nanos(at.elapsed()));
    }
    LatencyRun::new(label, latencies, started.elapsed())
}

fn main() {
    let mode = RunMode::from_args_and_env("report");
    mode.announce("http");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (per_task_total, read_count) = if mode.quick {
        (64, 200)
    } else {
        (16_000, 20_000)
    };
    runtime.block_on(async {
        let served_dir = mode.temp_dir("http-served");
        let local_dir = mode.temp_dir("http-local");
        let hybrid = Hybrid::open(HybridConfig::new(StoreConfig::new(served_dir.path())))
            .await
            .expect("open the served store");
        let store = hybrid.store().expect("a store").clone();
        let bot = BotId::new("bench").expect("valid");
        for chat in 1..=READ_CHATS {
            let stream = StreamId::conversation(&bot, chat);
            let mut events = vec![NewEvent::new(Event::ProfileCreated(ProfileCreated {
                name: format!("chat {chat}"),
            }))];
            events.extend((0..40).map(|i| NewEvent::new(message(format!("message {i} of a conversation of the bench")))));
            store.append(&stream, ExpectedVersion::Any, events).await.expect("fill");
        }
        let socket = served_dir.path().join("api.sock");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let config = ServeConfig::new(vec![Listen::Tcp(addr), Listen::Unix(socket.clone())]);
        let server = tokio::spawn(hybridstore::server::serve(hybrid.clone(), config, async {
            let _ = stopped.await;
        }));
        // Wait until it accepts.
        let mut ready = false;
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() && socket.exists() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ready, "the daemon did not start");
        let local = Store::open(StoreConfig::new(local_dir.path())).await.expect("open");

        let mut out = String::from("\n== hybridstore http report ==\n");
        for tasks in [1usize, 16, 64] {
            let per_task = (per_task_total / tasks.max(1)).max(4).min(if tasks == 1 { 2000 } else { usize::MAX });
            let local_run = store_appends(&local, tasks, per_task).await;
            let http_run = http_appends(addr, tasks, per_task).await;
            out.push_str(&format!(
                "{}\n{}\n  x{tasks}: http / in-process throughput {:.2}x ({:.0} vs {:.0} appends/s)\n",
                local_run.line(),
                http_run.line(),
                http_run.ops_per_sec() / local_run.ops_per_sec(),
                http_run.ops_per_sec(),
                local_run.ops_per_sec()
            ));
        }
        let chat = |i: usize| (i as i64 % READ_CHATS) + 1;
        for (label, unix) in [("tcp", false), ("unix", true)] {
            let connect = || async {
                if unix {
                    connect_unix(&socket).await
                } else {
                    connect_tcp(addr).await
                }
            };
            let profile = reads(connect().await, &format!("{label} profile"), read_count, |i| {
                format!("/v1/bots/bench/profiles/{}", chat(i))
            })
            .await;
            let messages = reads(connect().await, &format!("{label} last 20 messages"), read_count, |i| {
                format!("/v1/bots/bench/conversations/{}/messages?limit=20", chat(i))
            })
            .await;
            out.push_str(&format!("{}\n{}\n", profile.line(), messages.line()));
        }
        let _ = stop.send(());
        server.await.expect("server task").expect("the daemon stops cleanly");
        local.close().await.expect("close");
        print!("{out}");
    });
}
