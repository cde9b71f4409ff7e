//! The `hybridstore-audit` binary end to end: `verify`, `stat`, `dump`, `find`, `subjects` and
//! `repair` run as a child process on copies of the committed fixtures (never on the fixtures
//! themselves) and on data directories written with the store, checking exit codes, outputs,
//! backups, and that the writer opens the log after a repair.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use hybridstore_wal::format::{FrameHeader, SEGMENT_HEADER_LEN};
use hybridstore_wal::identity::{LogIdFile, LOG_ID_FILE_NAME};
use hybridstore_wal::marker::MARKER_FILE_NAME;
use hybridstore_wal::{Durability, LogId, Options, Position, Wal};
use serde_json::Value;

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

/// A tempdir holding a copy of fixture `name`; returns the tempdir and the copy's path.
fn copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_fixture(name, &dir);
    (tmp, dir)
}

fn fixture_options() -> Options {
    Options {
        segment_size_bytes: SEGMENT_SIZE_BYTES,
        ..Options::default()
    }
}

/// Every record the writer reads back from `dir`, opening it as the engine would.
fn read_with_writer(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let wal = Wal::open(dir, fixture_options()).unwrap();
    let records = wal
        .reader(Position(0))
        .unwrap()
        .map(|record| {
            let record = record.unwrap();
            (record.position.0, record.data.to_vec())
        })
        .collect();
    wal.close().unwrap();
    records
}

fn expected_records(end: u64) -> Vec<(u64, Vec<u8>)> {
    (0..end).map(|p| (p, payload(p))).collect()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                files.insert(entry.path(), fs::read(entry.path()).unwrap());
            }
        }
    }
    files
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------------------------------ verify

/// Proves `verify` passes the clean fixture with exit 0 and the documented summary line.
#[test]
fn verify_clean_fixture_is_clean() {
    let (_tmp, dir) = copy(CLEAN);
    let output = audit([Path::new("verify"), &dir]);
    assert_eq!(code(&output), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!("ok: 3 segments, {RECORD_COUNT} records, positions 0..{RECORD_COUNT}\n")
    );
    assert_eq!(stderr(&output), "");
}

/// Proves `verify` reports the torn tail of v1-torn with exit 1, naming the last segment, the
/// offset of the tear, and that repair or the writer truncates it.
#[test]
fn verify_torn_fixture_names_segment_and_offset() {
    let (_tmp, dir) = copy(TORN);
    let output = audit([Path::new("verify"), &dir]);
    assert_eq!(code(&output), Some(1));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one problem and the summary: {text}");
    let problem = lines[0];
    assert!(problem.starts_with("torn tail: "), "{problem}");
    assert!(
        problem.contains(&segment_file_name(TORN_SEGMENT_ID)),
        "{problem}"
    );
    assert!(
        problem.contains(&format!("at offset {TORN_OFFSET}:")),
        "{problem}"
    );
    assert!(problem.contains("repair"), "{problem}");
    assert!(
        problem.contains("opening the log with the writer truncates it"),
        "{problem}"
    );
    assert_eq!(
        lines[1],
        format!("1 problem (3 segments checked, {RECORD_COUNT} valid records)")
    );
}

/// Proves `verify` reports the flipped byte of v1-corrupt with exit 1: the middle segment, the
/// frame's offset, and a body checksum mismatch (human text and machine name).
#[test]
fn verify_corrupt_fixture_names_segment_offset_and_kind() {
    let (_tmp, dir) = copy(CORRUPT);
    let output = audit([Path::new("verify"), &dir]);
    assert_eq!(code(&output), Some(1));
    let text = stdout(&output);
    let problem = text.lines().next().unwrap();
    assert!(problem.starts_with("corrupt: "), "{problem}");
    assert!(
        problem.contains(&segment_file_name(CORRUPT_SEGMENT_ID)),
        "{problem}"
    );
    assert!(
        problem.contains(&format!("at offset {CORRUPT_OFFSET}:")),
        "{problem}"
    );
    assert!(
        problem.contains("frame body checksum mismatch"),
        "{problem}"
    );
    assert!(problem.contains("[frame_body_checksum]"), "{problem}");
    assert!(
        text.lines().last().unwrap().starts_with("1 problem ("),
        "{text}"
    );
}

/// Proves a directory that does not exist is "could not run" (exit 2) with an error on stderr.
#[test]
fn verify_missing_directory_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let output = audit([Path::new("verify"), &tmp.path().join("nope")]);
    assert_eq!(code(&output), Some(2));
    assert_eq!(stdout(&output), "");
    assert!(
        stderr(&output).contains("cannot read log directory"),
        "{}",
        stderr(&output)
    );
}

/// Proves an existing directory without segments is an empty, clean log (exit 0).
#[test]
fn verify_empty_directory_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let output = audit([Path::new("verify"), tmp.path()]);
    assert_eq!(code(&output), Some(0));
    assert_eq!(stdout(&output), "ok: 0 segments, 0 records\n");
}

/// Proves `verify --format json` prints JSON Lines with a `{type, data}` envelope: a `segment`
/// per segment, a `problem` with segment, offset and kind, and a final `summary`.
#[test]
fn verify_json_lines_have_type_and_data() {
    let (_tmp, dir) = copy(CORRUPT);
    let output = audit([
        Path::new("verify"),
        &dir,
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&output), Some(1));
    let lines = json_lines(&stdout(&output));
    for line in &lines {
        assert!(line["type"].is_string(), "{line}");
        assert!(line["data"].is_object(), "{line}");
    }
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["segment", "segment", "problem", "segment", "summary"]
    );
    let problem = &lines[2]["data"];
    assert_eq!(problem["class"], "corrupt");
    assert_eq!(problem["segment"], CORRUPT_SEGMENT_ID);
    assert_eq!(
        problem["segment_file"],
        segment_file_name(CORRUPT_SEGMENT_ID)
    );
    assert_eq!(problem["offset"], CORRUPT_OFFSET);
    assert_eq!(problem["kind"], "frame_body_checksum");
    assert!(problem["message"]
        .as_str()
        .unwrap()
        .starts_with("frame body checksum mismatch"));
    let summary = &lines[4]["data"];
    assert_eq!(summary["clean"], false);
    assert_eq!(summary["problem_count"], 1);
    assert_eq!(summary["segment_count"], 3);
}

/// Proves the directory may be a data directory with a `wal/` subdirectory, and may come from
/// `--data-dir` or `HYBRIDSTORE_DATA_DIR` instead of the positional argument.
#[test]
fn directory_argument_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_fixture(CLEAN, &data.join("wal"));
    let expected = format!("ok: 3 segments, {RECORD_COUNT} records, positions 0..{RECORD_COUNT}\n");

    let positional = audit([Path::new("verify"), &data]);
    assert_eq!(code(&positional), Some(0), "{}", stderr(&positional));
    assert_eq!(stdout(&positional), expected);

    let flag = audit([Path::new("verify"), Path::new("--data-dir"), &data]);
    assert_eq!(code(&flag), Some(0), "{}", stderr(&flag));
    assert_eq!(stdout(&flag), expected);

    let env = Command::new(env!("CARGO_BIN_EXE_hybridstore-audit"))
        .arg("verify")
        .env("HYBRIDSTORE_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_eq!(code(&env), Some(0), "{}", stderr(&env));
    assert_eq!(stdout(&env), expected);
}

/// Proves `verify` finds a missing middle segment as a gap between segments (`segment_gap`).
#[test]
fn verify_reports_segment_gap() {
    let (_tmp, dir) = copy(CLEAN);
    fs::remove_file(dir.join(segment_file_name(SEGMENT_IDS[1]))).unwrap();
    let output = audit([
        Path::new("verify"),
        &dir,
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&output), Some(1));
    let lines = json_lines(&stdout(&output));
    let problem = lines
        .iter()
        .find(|l| l["type"] == "problem")
        .expect("a problem line");
    assert_eq!(problem["data"]["kind"], "segment_gap");
    assert_eq!(problem["data"]["segment"], SEGMENT_IDS[0]);
    assert!(
        problem["data"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("next segment starts at {}", SEGMENT_IDS[2])),
        "{problem}"
    );
}

// -------------------------------------------------------------------------------------- stat

/// Proves `stat` counts what the generator wrote: records, positions, segments and the marker.
#[test]
fn stat_clean_fixture_counts() {
    let (_tmp, dir) = copy(CLEAN);
    let output = audit([Path::new("stat"), &dir]);
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("segments:      3\n"), "{text}");
    assert!(
        text.contains(&format!("records:       {RECORD_COUNT}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "positions:     first 0, last {}, end {RECORD_COUNT}\n",
            RECORD_COUNT - 1
        )),
        "{text}"
    );
    assert!(
        text.contains("clean-shutdown marker: present (matches)"),
        "{text}"
    );
    for id in SEGMENT_IDS {
        assert!(text.contains(&segment_file_name(id)), "{text}");
    }
}

/// Proves `stat --format json` prints exactly one JSON document with the counts and a row per
/// segment.
#[test]
fn stat_json_is_one_document() {
    let (_tmp, dir) = copy(CLEAN);
    let output = audit([
        Path::new("stat"),
        &dir,
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&output), Some(0));
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["record_count"], RECORD_COUNT);
    assert_eq!(document["first_position"], 0);
    assert_eq!(document["last_position"], RECORD_COUNT - 1);
    assert_eq!(document["end_position"], RECORD_COUNT);
    assert_eq!(document["segment_count"], 3);
    assert_eq!(document["clean_shutdown_marker_present"], true);
    assert_eq!(document["problems"], Value::Array(vec![]));
    let ids: Vec<u64> = document["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, SEGMENT_IDS);
    let frames: u64 = document["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["frames"].as_u64().unwrap())
        .sum();
    assert_eq!(document["frame_count"], frames);
}

/// Proves `stat` on the torn fixture shows the problem, exits 1, and sees no marker.
#[test]
fn stat_torn_fixture_shows_problem() {
    let (_tmp, dir) = copy(TORN);
    let output = audit([
        Path::new("stat"),
        &dir,
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&output), Some(1));
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["clean_shutdown_marker_present"], false);
    let problems = document["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0]["class"], "torn_tail");
    assert_eq!(problems[0]["offset"], TORN_OFFSET);
}

/// Proves `stat` shows the log id: none for the fixture (written before log ids) in text and JSON,
/// then, after a writer opened the log, the id the writer returned; `verify`'s JSON summary
/// carries it too, and neither treats a missing id as a problem.
#[test]
fn stat_shows_the_log_id() {
    let (_tmp, dir) = copy(CLEAN);
    let output = audit([Path::new("stat"), &dir]);
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("log id:        none (a log written before log ids; the writer creates one at its next open)\n"),
        "{text}"
    );
    let json = audit([
        Path::new("stat"),
        &dir,
        Path::new("--format"),
        Path::new("json"),
    ]);
    let document: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(document["log_id"], Value::Null);
    assert_eq!(document["log_id_file"], "absent");

    let wal = Wal::open(&dir, fixture_options()).unwrap();
    let id = wal.log_id().unwrap();
    wal.close().unwrap();
    let output = audit([Path::new("stat"), &dir]);
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains(&format!("log id:        {id}\n")), "{text}");
    let json = audit([
        Path::new("stat"),
        &dir,
        Path::new("--format"),
        Path::new("json"),
    ]);
    let document: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(document["log_id"], id.to_string());
    assert_eq!(document["log_id_file"], "valid");

    let verify = audit([
        Path::new("verify"),
        &dir,
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&verify), Some(0));
    let lines = json_lines(&stdout(&verify));
    let summary = &lines.last().unwrap()["data"];
    assert_eq!(summary["log_id"], id.to_string());
    assert_eq!(summary["log_id_file"], "valid");
}

/// A copy of the clean fixture with a `log-id` (as a writer leaves it), whose bytes are then
/// replaced by `damage` of them.
fn clean_copy_with_log_id(damage: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = copy(CLEAN);
    let mut bytes = LogIdFile {
        id: LogId::from_bytes([0x5A; 16]),
    }
    .encode()
    .to_vec();
    damage(&mut bytes);
    fs::write(dir.join(LOG_ID_FILE_NAME), bytes).unwrap();
    (tmp, dir)
}

/// Proves `verify` reports a damaged `log-id` as a problem (exit 1) naming the file, the damage
/// (human text and machine name) and what to do, in text and JSON, and that `stat` shows it;
/// the rest of the log still verifies.
#[test]
fn verify_reports_a_damaged_log_id() {
    let (_tmp, dir) = clean_copy_with_log_id(|bytes| bytes[20] ^= 0x01);
    let path = dir.join(LOG_ID_FILE_NAME);
    let output = audit([Path::new("verify"), &dir]);
    assert_eq!(code(&output), Some(1), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one problem and the summary: {text}");
    let problem = lines[0];
    assert!(
        problem.starts_with(&format!(
            "damaged log id: {}: log id checksum mismatch",
            path.display()
        )),
        "{problem}"
    );
    assert!(problem.contains("[log_id_checksum]"), "{problem}");
    assert!(
        problem.contains("restore `log-id` from a backup"),
        "{problem}"
    );
    assert_eq!(
        lines[1],
        format!("1 problem (3 segments checked, {RECORD_COUNT} valid records)")
    );

    let json = audit([
        Path::new("verify"),
        &dir,
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&json), Some(1));
    let lines = json_lines(&stdout(&json));
    let problems: Vec<&Value> = lines.iter().filter(|l| l["type"] == "problem").collect();
    assert_eq!(problems.len(), 1);
    let problem = &problems[0]["data"];
    assert_eq!(problem["class"], "damaged_log_id");
    assert_eq!(problem["kind"], "log_id_checksum");
    assert_eq!(problem["path"], path.display().to_string());
    assert_eq!(problem["segment"], Value::Null);
    assert_eq!(problem["offset"], Value::Null);
    let summary = &lines.last().unwrap()["data"];
    assert_eq!(summary["log_id"], Value::Null);
    assert_eq!(summary["log_id_file"], "damaged");

    let stat = audit([Path::new("stat"), &dir]);
    assert_eq!(code(&stat), Some(1));
    assert!(
        stdout(&stat).contains("log id:        damaged (see the problem below)\n"),
        "{}",
        stdout(&stat)
    );

    let (_tmp, truncated) = clean_copy_with_log_id(|bytes| bytes.truncate(10));
    let json = audit([
        Path::new("verify"),
        &truncated,
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&json), Some(1));
    let lines = json_lines(&stdout(&json));
    let problem = lines.iter().find(|l| l["type"] == "problem").unwrap();
    assert_eq!(problem["data"]["kind"], "log_id_wrong_length");
    assert!(
        problem["data"]["message"]
            .as_str()
            .unwrap()
            .contains("10 bytes long, expected 36"),
        "{problem}"
    );
}

// -------------------------------------------------------------------------------------- dump

/// Proves `dump --from 5 --limit 3 --format json` prints records 5, 6, 7 with their payloads.
#[test]
fn dump_from_limit_json() {
    let (_tmp, dir) = copy(CLEAN);
    let output = audit([
        Path::new("dump"),
        &dir,
        Path::new("--from"),
        Path::new("5"),
        Path::new("--limit"),
        Path::new("3"),
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    let lines = json_lines(&stdout(&output));
    let positions: Vec<u64> = lines
        .iter()
        .map(|l| l["data"]["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [5, 6, 7]);
    for line in &lines {
        assert_eq!(line["type"], "record");
        let data = &line["data"];
        let position = data["position"].as_u64().unwrap();
        // The fixtures' payloads are not events: each shows why, with its bytes.
        assert_eq!(data["payload_hex"], hex(&payload(position)));
        assert!(
            data["decode_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("bad envelope")),
            "{data}"
        );
        assert!(data.get("event").is_none(), "{data}");
        assert_eq!(data["length"], payload(position).len());
        assert_eq!(data["segment"], 0);
        let first = data["batch_first"].as_u64().unwrap();
        let count = data["batch_records"].as_u64().unwrap();
        assert!(first <= position && position < first + count, "{data}");
        assert!(data["frame_offset"].as_u64().unwrap() >= SEGMENT_HEADER_LEN as u64);
        assert!(data["body_crc"].is_u64());
    }
}

/// Proves `dump` on v1-corrupt prints every record before the corrupt frame, then reports the
/// problem on stderr and exits 1.
#[test]
fn dump_stops_at_corruption() {
    let (_tmp, dir) = copy(CORRUPT);
    let output = audit([Path::new("dump"), &dir]);
    assert_eq!(code(&output), Some(1));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, CORRUPT_FIRST_POSITION);
    for (position, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("position={position} ")), "{line}");
        assert!(line.contains(" decode_error=\"bad envelope"), "{line}");
        let payload = String::from_utf8(payload(position as u64)).unwrap();
        assert!(line.ends_with(&format!("payload=\"{payload}\"")), "{line}");
    }
    let errors = stderr(&output);
    assert!(
        errors.contains(&segment_file_name(CORRUPT_SEGMENT_ID)),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("at offset {CORRUPT_OFFSET}")),
        "{errors}"
    );
}

/// Proves `dump` into a reader that closes early exits 0 without an error message.
#[test]
fn dump_broken_pipe_exits_quietly() {
    // Far more output than a pipe buffers, so the writes after the reader leaves must fail.
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::open(
        tmp.path(),
        Options {
            segment_size_bytes: 64 * 1024,
            durability: Durability::Never,
            ..Options::default()
        },
    )
    .unwrap();
    for batch in 0..100u64 {
        let records: Vec<Vec<u8>> = (batch * 30..(batch + 1) * 30)
            .map(|p| format!("broken-pipe-record-{p}-{}", "x".repeat(40)).into_bytes())
            .collect();
        wal.append(&records).unwrap();
    }
    wal.close().unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_hybridstore-audit"))
        .arg("dump")
        .arg(tmp.path())
        .env_remove("HYBRIDSTORE_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("position=0 "), "{first}");
    drop(reader);
    let output = child.wait_with_output().unwrap();
    assert_eq!(code(&output), Some(0));
    assert_eq!(stderr(&output), "");
}

/// Writes a small conversation through `hybridstore::Store` into `data` (log in `data/wal`):
/// a profile, a message in, a reply, an analysis with facts (one two-event append) and a config
/// value. Returns the event types in log order.
fn write_store_log(data: &Path) -> Vec<&'static str> {
    use hybridstore::events::{
        ConfigValueSet, ConversationAnalyzed, Event, Generation, JsonText, MessageReceived,
        MessageSent, ProfileCreated, ProfileFactsRecorded,
    };
    use hybridstore::{BotId, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(StoreConfig::new(data)).await.unwrap();
        let bot = BotId::new("auditbot").unwrap();
        let chat = StreamId::conversation(&bot, 42);
        let appends: Vec<(StreamId, Vec<Event>)> = vec![
            (
                chat.clone(),
                vec![Event::ProfileCreated(ProfileCreated {
                    name: "Anna".into(),
                })],
            ),
            (
                chat.clone(),
                vec![Event::MessageReceived(MessageReceived {
                    telegram_message_id: Some(7),
                    text: "hi there".into(),
                    content_type: "text".into(),
                    legacy_ts: None,
                })],
            ),
            (
                chat.clone(),
                vec![Event::MessageSent(MessageSent {
                    text: "hello Anna".into(),
                    kind: "reply".into(),
                    generation: Some(Generation {
                        model: "m1".into(),
                        response_id: Some("resp_1".into()),
                        prompt_tokens: 10,
                        completion_tokens: 5,
                        latency_ms: 800,
                    }),
                    legacy_ts: None,
                })],
            ),
            (
                chat.clone(),
                vec![
                    Event::ConversationAnalyzed(ConversationAnalyzed {
                        analysis_id: "a1".into(),
                        summary: "friendly".into(),
                    }),
                    Event::ProfileFactsRecorded(ProfileFactsRecorded {
                        snapshot_id: "a1".into(),
                        facts: JsonText::parse(r#"{"likes":["tea"]}"#).unwrap(),
                    }),
                ],
            ),
            (
                StreamId::bot(&bot),
                vec![Event::ConfigValueSet(ConfigValueSet {
                    scope: "global".into(),
                    key: "model".into(),
                    value: JsonText::parse(r#""m1""#).unwrap(),
                })],
            ),
        ];
        let mut types = Vec::new();
        for (stream, events) in appends {
            types.extend(events.iter().map(Event::type_name));
            let events = events.into_iter().map(NewEvent::new).collect();
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
        store.close().await.unwrap();
        types
    })
}

/// Proves `dump --format json` decodes records written by the store into events: each line
/// keeps the frame fields and gains the whole recorded event under `event`, with no bytes and
/// no decode error; the multi-event append shows as one batch.
#[test]
fn dump_json_decodes_store_events() {
    let tmp = tempfile::tempdir().unwrap();
    let types = write_store_log(tmp.path());
    let output = audit([
        Path::new("dump"),
        tmp.path(),
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    let lines = json_lines(&stdout(&output));
    assert_eq!(lines.len(), types.len());
    for (position, (line, expected_type)) in lines.iter().zip(&types).enumerate() {
        assert_eq!(line["type"], "record");
        let data = &line["data"];
        assert_eq!(data["position"], position as u64);
        assert!(
            data["frame_offset"].is_u64() && data["body_crc"].is_u64(),
            "{data}"
        );
        assert!(data.get("payload_hex").is_none(), "{data}");
        assert!(data.get("decode_error").is_none(), "{data}");
        let event = &data["event"];
        assert_eq!(event["position"], position as u64);
        assert_eq!(event["event"]["type"], *expected_type, "{data}");
        assert_eq!(event["bot_id"], "auditbot");
    }
    let received = &lines[1]["data"]["event"];
    assert_eq!(received["stream"], "conv-auditbot-42");
    assert_eq!(received["stream_version"], 1);
    assert_eq!(received["event"]["data"]["text"], "hi there");
    // The analysis and its facts: one append, two events, shown as batch 0 and 1 of 2.
    let facts = &lines[4]["data"]["event"];
    assert_eq!(facts["batch_index"], 1);
    assert_eq!(facts["batch_len"], 2);
    assert_eq!(facts["event"]["data"]["facts"]["likes"][0], "tea");
    assert_eq!(lines[5]["data"]["event"]["stream"], "bot-auditbot");
}

/// Proves the human `dump` prints one line per event: position, stream, stream version, type and
/// the event's data as short JSON.
#[test]
fn dump_human_decodes_store_events() {
    let tmp = tempfile::tempdir().unwrap();
    write_store_log(tmp.path());
    let output = audit([
        Path::new("dump"),
        tmp.path(),
        Path::new("--limit"),
        Path::new("2"),
    ]);
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "position=0 stream=conv-auditbot-42 stream_version=0 type=ProfileCreated data={\"name\":\"Anna\"}\n\
         position=1 stream=conv-auditbot-42 stream_version=1 type=MessageReceived \
         data={\"content_type\":\"text\",\"legacy_ts\":null,\"telegram_message_id\":7,\"text\":\"hi there\"}\n"
    );
}

/// Proves `--raw` adds the bytes to decoded events: `payload_hex` (JSON) is exactly the record
/// the writer reads back, and human lines gain the frame and the payload.
#[test]
fn dump_raw_adds_bytes_to_decoded_events() {
    let tmp = tempfile::tempdir().unwrap();
    write_store_log(tmp.path());
    let wal = Wal::open(tmp.path().join("wal"), Options::default()).unwrap();
    let first = wal.reader(Position(0)).unwrap().next().unwrap().unwrap();
    wal.close().unwrap();

    let output = audit([
        Path::new("dump"),
        tmp.path(),
        Path::new("--raw"),
        Path::new("--limit"),
        Path::new("1"),
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    let lines = json_lines(&stdout(&output));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["data"]["payload_hex"], hex(&first.data));
    assert_eq!(lines[0]["data"]["event"]["event"]["type"], "ProfileCreated");

    let human = audit([
        Path::new("dump"),
        tmp.path(),
        Path::new("--raw"),
        Path::new("--limit"),
        Path::new("1"),
    ]);
    let line = stdout(&human);
    assert!(
        line.starts_with("position=0 stream=conv-auditbot-42 "),
        "{line}"
    );
    assert!(line.contains(" segment=0 frame_offset="), "{line}");
    assert!(
        line.trim_end().ends_with('"') && line.contains(" payload=\""),
        "{line}"
    );
}

/// Proves an event type this build does not know is reported as a decode error naming the type,
/// with its bytes, between the events around it (not skipped), and `dump` still exits 0.
#[test]
fn dump_reports_unknown_event_type() {
    use hybridstore::events::{Event, ProfileCreated, StoredEvent};
    use hybridstore::{BotId, StreamId, StreamVersion, Timestamp};

    let tmp = tempfile::tempdir().unwrap();
    let bot = BotId::new("auditbot").unwrap();
    let stream = StreamId::conversation(&bot, 1);
    let record = |version: u64, type_name: Option<&str>| {
        let mut stored = StoredEvent::new(
            &stream,
            StreamVersion(version),
            (0, 1),
            // Fixed ids, so the same record encodes to the same bytes each time.
            uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + u128::from(version)),
            None,
            Timestamp(1_700_000_000_000),
            Timestamp(1_700_000_000_000),
            &Event::ProfileCreated(ProfileCreated { name: "Eve".into() }),
        )
        .unwrap();
        if let Some(type_name) = type_name {
            stored.event_type = type_name.into();
        }
        stored.encode().unwrap()
    };
    let wal = Wal::open(tmp.path(), Options::default()).unwrap();
    for (version, type_name) in [(0, None), (1, Some("MoodDetected")), (2, None)] {
        wal.append(&[record(version, type_name)]).unwrap();
    }
    wal.close().unwrap();

    let output = audit([
        Path::new("dump"),
        tmp.path(),
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    let lines = json_lines(&stdout(&output));
    assert_eq!(lines.len(), 3);
    let unknown = &lines[1]["data"];
    assert_eq!(unknown["position"], 1);
    assert!(unknown.get("event").is_none(), "{unknown}");
    let error = unknown["decode_error"].as_str().unwrap();
    assert!(
        error.contains("unknown event type \"MoodDetected\""),
        "{error}"
    );
    assert_eq!(
        unknown["payload_hex"],
        hex(&record(1, Some("MoodDetected")))
    );
    for known in [&lines[0]["data"], &lines[2]["data"]] {
        assert_eq!(known["event"]["event"]["type"], "ProfileCreated", "{known}");
        assert!(known.get("payload_hex").is_none(), "{known}");
    }

    let human = stdout(&audit([Path::new("dump"), tmp.path()]));
    let line = human.lines().nth(1).unwrap();
    assert!(line.starts_with("position=1 segment=0 "), "{line}");
    assert!(
        line.contains(r#"decode_error="unknown event type \"MoodDetected\""#),
        "{line}"
    );
}

// ------------------------------------------------------------------------------------ repair

/// Proves `repair` on v1-torn zeroes the tear after backing up exactly the cut bytes, leaving a
/// log that verifies clean and that the writer opens with every record before the tear.
#[test]
fn repair_torn_tail() {
    let (_tmp, dir) = copy(TORN);
    let segment = dir.join(segment_file_name(TORN_SEGMENT_ID));
    let before = fs::read(&segment).unwrap();

    let output = audit([Path::new("repair"), &dir]);
    assert_eq!(
        code(&output),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(text.contains("done: copy the "), "{text}");
    assert!(text.contains("done: zero segment "), "{text}");
    assert!(text.lines().last().unwrap().starts_with("ok: "), "{text}");

    let backup = dir.join("repair-backup").join(format!(
        "{}.{TORN_OFFSET}.tail",
        segment_file_name(TORN_SEGMENT_ID)
    ));
    let cut = fs::read(&backup).unwrap();
    let offset = TORN_OFFSET as usize;
    assert!(!cut.is_empty());
    assert_eq!(cut, before[offset..offset + cut.len()]);
    assert!(before[offset + cut.len()..].iter().all(|&b| b == 0));
    let torn_header = FrameHeader::decode_from(&cut).unwrap();
    assert_eq!(torn_header.first_position, Position(RECORD_COUNT));

    let after = fs::read(&segment).unwrap();
    assert_eq!(after.len(), before.len(), "the segment keeps its length");
    assert_eq!(after[..offset], before[..offset]);
    assert!(after[offset..].iter().all(|&b| b == 0));

    assert_eq!(code(&audit([Path::new("verify"), &dir])), Some(0));
    assert_eq!(read_with_writer(&dir), expected_records(RECORD_COUNT));
}

/// Proves `repair` on v1-corrupt backs up the damaged segment and everything after it, cuts the
/// log at the corrupt frame, and leaves a log the writer opens with exactly the records before.
#[test]
fn repair_corrupt_sealed_segment() {
    let (_tmp, dir) = copy(CORRUPT);
    let corrupt_name = segment_file_name(CORRUPT_SEGMENT_ID);
    let last_name = segment_file_name(SEGMENT_IDS[2]);
    let corrupt_before = fs::read(dir.join(&corrupt_name)).unwrap();
    let last_before = fs::read(dir.join(&last_name)).unwrap();

    let output = audit([Path::new("repair"), &dir]);
    assert_eq!(
        code(&output),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(
        text.contains("done: remove the clean-shutdown marker"),
        "{text}"
    );
    assert!(
        text.contains(&format!("done: truncate segment {CORRUPT_SEGMENT_ID} ")),
        "{text}"
    );

    let backups = dir.join("repair-backup");
    assert_eq!(
        fs::read(backups.join(&corrupt_name)).unwrap(),
        corrupt_before
    );
    assert_eq!(fs::read(backups.join(&last_name)).unwrap(), last_before);
    assert!(
        !dir.join(&last_name).exists(),
        "later segments leave the log"
    );
    assert!(
        !dir.join(MARKER_FILE_NAME).exists(),
        "the stale marker is removed"
    );
    let corrupt_after = fs::read(dir.join(&corrupt_name)).unwrap();
    assert_eq!(corrupt_after, corrupt_before[..CORRUPT_OFFSET as usize]);

    let verify = audit([Path::new("verify"), &dir]);
    assert_eq!(code(&verify), Some(0), "{}", stdout(&verify));
    assert_eq!(
        stdout(&verify),
        format!("ok: 2 segments, {CORRUPT_FIRST_POSITION} records, positions 0..{CORRUPT_FIRST_POSITION}\n")
    );
    assert_eq!(
        read_with_writer(&dir),
        expected_records(CORRUPT_FIRST_POSITION)
    );
}

/// Proves a bad header (offset 0) of a middle segment moves it and the later ones aside whole.
#[test]
fn repair_bad_segment_header_moves_segments_aside() {
    let (_tmp, dir) = copy(CLEAN);
    let middle = dir.join(segment_file_name(SEGMENT_IDS[1]));
    let mut bytes = fs::read(&middle).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&middle, &bytes).unwrap();

    let output = audit([Path::new("repair"), &dir]);
    assert_eq!(
        code(&output),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let backups = dir.join("repair-backup");
    assert_eq!(
        fs::read(backups.join(segment_file_name(SEGMENT_IDS[1]))).unwrap(),
        bytes
    );
    assert!(backups.join(segment_file_name(SEGMENT_IDS[2])).exists());
    assert!(!middle.exists());
    assert_eq!(read_with_writer(&dir), expected_records(SEGMENT_IDS[1]));
}

/// Proves `repair` will not empty a log that starts past position 0 (the writer would hand out
/// positions again): it changes nothing and exits 1.
#[test]
fn repair_refuses_to_restart_positions() {
    let (_tmp, dir) = copy(CLEAN);
    fs::remove_file(dir.join(segment_file_name(SEGMENT_IDS[0]))).unwrap();
    let first = dir.join(segment_file_name(SEGMENT_IDS[1]));
    let mut bytes = fs::read(&first).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&first, &bytes).unwrap();
    let before = snapshot(&dir);

    let output = audit([Path::new("repair"), &dir]);
    assert_eq!(code(&output), Some(1));
    assert!(
        stdout(&output).contains("refusing to repair"),
        "{}",
        stdout(&output)
    );
    assert_eq!(snapshot(&dir), before);
}

/// Proves `repair --dry-run` prints its plan and changes no byte of the torn or corrupt log.
#[test]
fn repair_dry_run_changes_nothing() {
    for name in [TORN, CORRUPT] {
        let (_tmp, dir) = copy(name);
        let before = snapshot(&dir);
        let output = audit([Path::new("repair"), &dir, Path::new("--dry-run")]);
        assert_eq!(code(&output), Some(1), "{name}: problems remain");
        let text = stdout(&output);
        assert!(text.contains("dry run, would: copy "), "{name}: {text}");
        assert!(
            text.contains("dry run: nothing was changed"),
            "{name}: {text}"
        );
        assert_eq!(snapshot(&dir), before, "{name}");
        assert!(!dir.join("repair-backup").exists());
    }
}

/// Proves `repair` refuses with exit 2 while a writer has the log open, and touches nothing.
#[test]
fn repair_refuses_while_writer_holds_lock() {
    let (_tmp, dir) = copy(CLEAN);
    let wal = Wal::open(&dir, fixture_options()).unwrap();
    let before = snapshot(&dir);
    let output = audit([Path::new("repair"), &dir]);
    assert_eq!(code(&output), Some(2));
    assert!(
        stderr(&output).contains("a writer holds the lock"),
        "{}",
        stderr(&output)
    );
    assert_eq!(snapshot(&dir), before);
    wal.close().unwrap();
}

/// Proves `repair` never touches `log-id`: cutting a torn or corrupt log keeps its bytes (and the
/// writer then opens the log with that id), and a damaged one is left as it was, with a note
/// saying so, nothing else changed, and exit 1 since the problem remains.
#[test]
fn repair_leaves_the_log_id_alone() {
    let id = LogId::from_bytes([0x33; 16]);
    let encoded = LogIdFile { id }.encode();
    for name in [TORN, CORRUPT] {
        let (_tmp, dir) = copy(name);
        let path = dir.join(LOG_ID_FILE_NAME);
        fs::write(&path, encoded).unwrap();
        let output = audit([Path::new("repair"), &dir]);
        assert_eq!(code(&output), Some(0), "{name}: {}", stdout(&output));
        assert_eq!(fs::read(&path).unwrap(), encoded, "{name}");
        let wal = Wal::open(&dir, fixture_options()).unwrap();
        assert_eq!(wal.log_id(), Some(id), "{name}");
        wal.close().unwrap();
    }

    let (_tmp, dir) = clean_copy_with_log_id(|bytes| bytes[0] = b'X');
    let before = snapshot(&dir);
    let output = audit([Path::new("repair"), &dir]);
    assert_eq!(code(&output), Some(1), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(
        text.contains("the log id file is damaged; repair leaves it alone"),
        "{text}"
    );
    assert!(text.contains("[log_id_bad_magic]"), "{text}");
    assert_eq!(snapshot(&dir), before);
}

/// Proves `repair` on a clean log does nothing and exits 0.
#[test]
fn repair_clean_log_is_a_no_op() {
    let (_tmp, dir) = copy(CLEAN);
    let before = snapshot(&dir);
    let output = audit([Path::new("repair"), &dir]);
    assert_eq!(code(&output), Some(0));
    assert!(
        stdout(&output).starts_with("nothing to repair"),
        "{}",
        stdout(&output)
    );
    assert_eq!(snapshot(&dir), before);
}

// -------------------------------------------------------------------------------------- find

/// Proves `find` prints the events of a stream, the event with an id, and the events with an
/// idempotency key (of every bot, or of one with `--bot`) as JSON Lines; nothing found is exit 1;
/// records that do not decode are counted, not matched.
#[test]
fn find_by_stream_event_id_and_key() {
    use hybridstore::events::{Event, MessageReceived};
    use hybridstore::{BotId, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let id = uuid::Uuid::now_v7();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(StoreConfig::new(&data)).await.unwrap();
        let message = |text: &str| {
            Event::MessageReceived(MessageReceived {
                telegram_message_id: Some(1),
                text: text.into(),
                content_type: "text".into(),
                legacy_ts: None,
            })
        };
        for (bot, chat, text) in [("a", 1, "one"), ("a", 2, "two"), ("b", 1, "three")] {
            let bot = BotId::new(bot).unwrap();
            // The same key under two bots (same chat and message ids), another for chat 2.
            let mut event = NewEvent::new(message(text)).with_key(format!("tg:{chat}:1:in"));
            if text == "two" {
                event = event.with_id(id);
            }
            store
                .append(
                    &StreamId::conversation(&bot, chat),
                    ExpectedVersion::Any,
                    vec![event],
                )
                .await
                .unwrap();
        }
        store.close().await.unwrap();
    });
    let find = |args: &[&str]| {
        let mut all = vec!["find", data.to_str().unwrap(), "--format", "json"];
        all.extend_from_slice(args);
        audit(all)
    };
    let texts = |output: &Output| -> Vec<String> {
        json_lines(&stdout(output))
            .iter()
            .map(|l| {
                l["data"]["event"]["event"]["data"]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let by_stream = find(&["--stream", "conv-a-1"]);
    assert_eq!(code(&by_stream), Some(0));
    assert_eq!(texts(&by_stream), ["one"]);
    let by_id = find(&["--event-id", &id.to_string()]);
    assert_eq!(code(&by_id), Some(0));
    assert_eq!(texts(&by_id), ["two"]);
    let by_key = find(&["--key", "tg:1:1:in"]);
    assert_eq!(texts(&by_key), ["one", "three"]);
    let by_key_of_bot = find(&["--key", "tg:1:1:in", "--bot", "b"]);
    assert_eq!(texts(&by_key_of_bot), ["three"]);
    let none = find(&["--stream", "conv-a-9"]);
    assert_eq!(code(&none), Some(1));
    assert!(stdout(&none).is_empty());
    let refused = audit(["find", data.to_str().unwrap()]);
    assert_eq!(code(&refused), Some(2));

    // The committed fixtures hold test payloads, not events: nothing can match, and find says so.
    let (_fixture, dir) = copy(CLEAN);
    let output = audit([
        Path::new("find"),
        &dir,
        Path::new("--stream"),
        Path::new("conv-a-1"),
    ]);
    assert_eq!(code(&output), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("do not decode as events"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Proves migration-state transitions are visible in `dump`: each `ComponentStateChanged` with
/// its from, to, reason and automatic flag, on the bot's stream.
#[test]
fn dump_shows_component_state_transitions() {
    use hybridstore::{BotId, Component, MigrationState, Store, StoreConfig};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(StoreConfig::new(&data)).await.unwrap();
        let bot = BotId::new("girlbot").unwrap();
        store
            .set_component_state(
                &bot,
                Component::Users,
                MigrationState::Enabled,
                "ticket 1",
                false,
            )
            .await
            .unwrap();
        store
            .set_component_state(
                &bot,
                Component::Users,
                MigrationState::Disabled,
                "automatic rollback: test",
                true,
            )
            .await
            .unwrap();
        store.close().await.unwrap();
    });
    let dumped = audit(["dump", data.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code(&dumped), Some(0), "{}", stderr(&dumped));
    let changes: Vec<Value> = json_lines(&stdout(&dumped))
        .into_iter()
        .filter(|line| line["data"]["event"]["event"]["type"] == "ComponentStateChanged")
        .collect();
    assert_eq!(changes.len(), 2, "{}", stdout(&dumped));
    let first = &changes[0]["data"]["event"];
    assert_eq!(first["stream"], "bot-girlbot");
    let data0 = &first["event"]["data"];
    assert_eq!(
        (
            data0["component"].as_str(),
            data0["from"].as_str(),
            data0["to"].as_str(),
            data0["reason"].as_str(),
            data0["automatic"].as_bool()
        ),
        (
            Some("users"),
            Some("disabled"),
            Some("enabled"),
            Some("ticket 1"),
            Some(false)
        )
    );
    let data1 = &changes[1]["data"]["event"]["event"]["data"];
    assert_eq!(data1["to"], "disabled");
    assert_eq!(data1["automatic"], true);
}

// ---------------------------------------------------------------------------------- subjects

/// What `write_subjects_log` wrote, to compare the audit's answers with.
struct SubjectsLog {
    /// Position of the `ChatErased` of conv-subj-2.
    chat_erased_at: u64,
    /// Position of the `UserErased` of user-other-5 (and its private chat conv-other-5).
    user_erased_at: u64,
    /// Every record in the log.
    records: u64,
}

/// The personal texts of conv-subj-2, erased: they must show nowhere.
const ERASED_TEXTS: [&str; 3] = ["Erika-erased", "said-erased-chat", "answered-erased-chat"];
/// The personal texts of conv-subj-1, kept (sealed, readable with the key store).
const KEPT_TEXTS: [&str; 3] = ["Karl-kept", "said-kept-chat", "answered-kept-chat"];
/// The texts of conv-subj-3 written in the clear before the store first opened.
const PLAINTEXT_TEXTS: [&str; 2] = ["said-in-the-clear-1", "said-in-the-clear-2"];

/// Writes a data directory through the real store: for bot `subj`, chat 1 kept, chat 2 erased
/// with `Store::erase` (three personal events and one without personal fields before it), chat 3
/// with two events written in the clear by the log alone before the store first opened and one
/// sealed after, user 7 with an identity, a configuration value on the bot's stream; for bot
/// `other`, user 5 and their private chat, the user erased.
fn write_subjects_log(data: &Path) -> SubjectsLog {
    use hybridstore::events::{
        ConfigValueSet, Event, FollowupCancelled, Identity, JsonText, MessageReceived, MessageSent,
        ProfileCreated, StoredEvent, UserRegistered,
    };
    use hybridstore::ids::Subject;
    use hybridstore::{
        BotId, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId, StreamVersion, Timestamp,
    };

    let subj = BotId::new("subj").unwrap();
    let other = BotId::new("other").unwrap();
    let received = |text: &str| {
        Event::MessageReceived(MessageReceived {
            telegram_message_id: Some(1),
            text: text.into(),
            content_type: "text".into(),
            legacy_ts: None,
        })
    };
    let chat = |[name, said, answered]: [&str; 3]| {
        vec![
            Event::ProfileCreated(ProfileCreated { name: name.into() }),
            received(said),
            Event::MessageSent(MessageSent {
                text: answered.into(),
                kind: "reply".into(),
                generation: None,
                legacy_ts: None,
            }),
        ]
    };
    let registered = |first_name: &str| {
        Event::UserRegistered(UserRegistered {
            identity: Identity {
                username: Some(format!("{first_name}_tg")),
                first_name: Some(first_name.into()),
                ..Identity::default()
            },
        })
    };

    // Events in the clear, as the log held them before sealing existed.
    let wal = Wal::open(data.join(hybridstore::WAL_SUBDIR), Options::default()).unwrap();
    let plaintext_stream = StreamId::conversation(&subj, 3);
    for (version, text) in PLAINTEXT_TEXTS.iter().enumerate() {
        let record = StoredEvent::new(
            &plaintext_stream,
            StreamVersion(version as u64),
            (0, 1),
            uuid::Uuid::now_v7(),
            None,
            Timestamp(1),
            Timestamp(1),
            &received(text),
        )
        .unwrap()
        .encode()
        .unwrap();
        wal.append(&[record.as_slice()]).unwrap();
    }
    wal.close().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(StoreConfig::new(data)).await.unwrap();
        let mut erased = chat(ERASED_TEXTS);
        erased.push(Event::FollowupCancelled(FollowupCancelled {
            followup_id: "f1".into(),
        }));
        let appends: Vec<(StreamId, Vec<Event>)> = vec![
            (StreamId::conversation(&subj, 1), chat(KEPT_TEXTS)),
            (StreamId::conversation(&subj, 2), erased),
            (
                plaintext_stream.clone(),
                vec![received("said-sealed-later")],
            ),
            (StreamId::user(&subj, 7), vec![registered("Ulla")]),
            (
                StreamId::bot(&subj),
                vec![Event::ConfigValueSet(ConfigValueSet {
                    scope: "global".into(),
                    key: "model".into(),
                    value: JsonText::parse(r#""m1""#).unwrap(),
                })],
            ),
            (StreamId::user(&other, 5), vec![registered("Otto")]),
            (
                StreamId::conversation(&other, 5),
                vec![received("said-by-otto")],
            ),
        ];
        for (stream, events) in appends {
            let events = events.into_iter().map(NewEvent::new).collect();
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
        let chat_erased = store
            .erase(&Subject::Chat {
                bot: subj.clone(),
                chat_id: 2,
            })
            .await
            .unwrap();
        let user_erased = store
            .erase(&Subject::User {
                bot: other.clone(),
                user_id: 5,
            })
            .await
            .unwrap();
        let records = store.durable_end().0;
        store.close().await.unwrap();
        SubjectsLog {
            chat_erased_at: chat_erased.position.0,
            user_erased_at: user_erased.position.0,
            records,
        }
    })
}

/// A data directory written by `write_subjects_log`: the tempdir, the data directory, and what
/// was written.
fn subjects_data() -> (tempfile::TempDir, PathBuf, SubjectsLog) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = write_subjects_log(&data);
    (tmp, data, log)
}

/// Proves `subjects --format json` gives each subject stream exactly its counts (the erased chat
/// all erased, the kept chat all sealed, the chat written partly in the clear its plaintext
/// events, a user's erasure counted on their private chat too), its key store state, and a
/// summary adding them up; `--bot` lists one bot's subjects and totals; exit 0.
#[test]
fn subjects_json_counts_each_subject_exactly() {
    let (_tmp, data, log) = subjects_data();
    let (chat_at, user_at) = (log.chat_erased_at, log.user_erased_at);
    let run = |extra: &[&str]| {
        let mut args = vec!["subjects", data.to_str().unwrap(), "--format", "json"];
        args.extend_from_slice(extra);
        let output = audit(args);
        assert_eq!(code(&output), Some(0), "stderr: {}", stderr(&output));
        assert_eq!(stderr(&output), "");
        json_lines(&stdout(&output))
    };
    let subject = |stream: &str,
                   events: u64,
                   personal_events: u64,
                   [sealed, erased, plaintext]: [u64; 3],
                   erased_at: Option<u64>,
                   keys: Value| {
        let (kind, rest) = stream.split_once('-').unwrap();
        let (bot, id) = rest.split_once('-').unwrap();
        serde_json::json!({
            "type": "subject",
            "data": {
                "stream": stream,
                "bot": bot,
                "kind": if kind == "conv" { "chat" } else { "user" },
                "id": id.parse::<i64>().unwrap(),
                "events": events,
                "personal_events": personal_events,
                "sealed": sealed,
                "erased": erased,
                "locked": 0,
                "plaintext": plaintext,
                "undecodable": 0,
                "erasures": u64::from(erased_at.is_some()),
                "erased_at": erased_at,
                "keys": keys,
            }
        })
    };
    let live = serde_json::json!({ "live": [1], "destroyed": [], "current": 1 });
    let destroyed_at = |at: u64| serde_json::json!({ "live": [], "destroyed": [{"epoch": 1, "erased_at": at}], "current": null });
    let other = [
        // Otto's private chat: erased with him.
        subject(
            "conv-other-5",
            1,
            1,
            [0, 1, 0],
            Some(user_at),
            destroyed_at(user_at),
        ),
        subject(
            "user-other-5",
            2,
            1,
            [0, 1, 0],
            Some(user_at),
            destroyed_at(user_at),
        ),
    ];
    let subj = [
        subject("conv-subj-1", 3, 3, [3, 0, 0], None, live.clone()),
        // Three personal events, a follow-up cancelled, the erasure.
        subject(
            "conv-subj-2",
            5,
            3,
            [0, 3, 0],
            Some(chat_at),
            destroyed_at(chat_at),
        ),
        subject("conv-subj-3", 3, 3, [1, 0, 2], None, live.clone()),
        subject("user-subj-7", 1, 1, [1, 0, 0], None, live),
    ];

    let all = run(&[]);
    let (summary, subjects) = all.split_last().unwrap();
    let expected: Vec<Value> = [&other[..1], &subj[..3], &other[1..], &subj[3..]].concat();
    assert_eq!(subjects, expected.as_slice());
    assert_eq!(
        summary,
        &serde_json::json!({
            "type": "summary",
            "data": {
                "dir": data.join("wal").display().to_string(),
                "bot": null,
                "subjects": 6,
                "events": 15,
                "personal_events": 12,
                "sealed": 5,
                "erased": 5,
                "locked": 0,
                "plaintext": 2,
                "erasures": 2,
                "records": log.records,
                "undecodable_records": 0,
                "end_position": log.records,
                "complete": true,
                "problem_count": 0,
                "clean": true,
            }
        })
    );

    let of_subj = run(&["--bot", "subj"]);
    let (summary, subjects) = of_subj.split_last().unwrap();
    assert_eq!(subjects, subj.as_slice());
    let totals = &summary["data"];
    assert_eq!(
        (
            &totals["bot"],
            &totals["subjects"],
            &totals["events"],
            &totals["erasures"],
            &totals["records"]
        ),
        (
            &Value::from("subj"),
            &Value::from(4),
            &Value::from(12),
            &Value::from(1),
            &Value::from(log.records)
        ),
        "--bot narrows the listing and its totals, not the scan"
    );
    let of_other = run(&["--bot", "other"]);
    assert_eq!(&of_other[..2], other.as_slice());
    assert_eq!(of_other[2]["data"]["erasures"], 1);
}

/// Proves the human `subjects` prints a header, one aligned row per subject saying which are
/// erased and which hold plaintext, and the totals line; exit 0.
#[test]
fn subjects_human_has_rows_and_totals() {
    let (_tmp, data, log) = subjects_data();
    let output = audit([Path::new("subjects"), &data]);
    assert_eq!(code(&output), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "header, 6 subjects, totals: {text}");
    let columns = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        columns(lines[0]),
        [
            "stream",
            "kind",
            "events",
            "personal",
            "sealed",
            "erased",
            "locked",
            "plaintext",
            "erasures",
            "erased_at",
            "undecodable",
            "status",
            "keys"
        ]
    );
    let at = log.chat_erased_at.to_string();
    let erased_row = format!("conv-subj-2 chat 5 3 0 3 0 0 1 {at} 0 erased destroyed 1@{at}");
    assert_eq!(columns(lines[3]).join(" "), erased_row);
    assert_eq!(
        columns(lines[4]).join(" "),
        "conv-subj-3 chat 3 3 1 0 0 2 0 - 0 plaintext live 1"
    );
    assert_eq!(
        columns(lines[2]).join(" "),
        "conv-subj-1 chat 3 3 3 0 0 0 0 - 0 - live 1"
    );
    // Aligned: every row's `events` column ends where the header's does.
    let end = lines[0].find("events").unwrap() + "events".len();
    for line in &lines[1..7] {
        assert!(
            line.as_bytes()[end - 1].is_ascii_digit() && line.as_bytes()[end] == b' ',
            "{line}"
        );
    }
    assert_eq!(
        lines[7],
        "total: 6 subjects, 15 events (12 with personal fields: 5 sealed, 5 erased, 0 locked, 2 plaintext), 2 erasures"
    );
    let of_other = stdout(&audit([
        Path::new("subjects"),
        &data,
        Path::new("--bot"),
        Path::new("other"),
    ]));
    assert!(
        of_other.ends_with(
            "total of bot other: 2 subjects, 3 events (2 with personal fields: 0 sealed, 2 erased, 0 locked, 0 plaintext), 1 erasure\n"
        ),
        "{of_other}"
    );
}

/// Proves `subjects` on a directory that does not exist is "could not run" (exit 2).
#[test]
fn subjects_missing_directory_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let output = audit([Path::new("subjects"), &missing]);
    assert_eq!(code(&output), Some(2));
    assert!(stdout(&output).is_empty());
    let text = stderr(&output);
    assert!(
        text.starts_with("hybridstore-audit: error: ")
            && text.contains(&missing.display().to_string()),
        "{text}"
    );
}

/// Proves a damaged key store (one byte flipped in its slot) is "could not run" (exit 2) for
/// `subjects` and `dump`, with a message naming the file, and nothing listed.
#[test]
fn subjects_with_a_damaged_key_store_exits_2_naming_the_file() {
    let (_tmp, data, _) = subjects_data();
    let slots: Vec<PathBuf> = fs::read_dir(data.join(hybridstore::crypto::KEYS_SUBDIR))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(slots.len(), 1, "one slot at rest: {slots:?}");
    let slot = &slots[0];
    assert!(
        slot.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("slot-"),
        "{slot:?}"
    );
    let mut bytes = fs::read(slot).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x10;
    fs::write(slot, &bytes).unwrap();
    for command in ["subjects", "dump"] {
        let output = audit([Path::new(command), &data]);
        assert_eq!(code(&output), Some(2), "{command}: {}", stderr(&output));
        assert!(stdout(&output).is_empty(), "{command}: {}", stdout(&output));
        let text = stderr(&output);
        assert!(
            text.contains(&slot.display().to_string()) && text.contains("damaged"),
            "{command}: {text}"
        );
    }
}

/// Proves `subjects` exits 1 on the committed fixtures, whose records are test payloads, not
/// events: each is counted (the first ten named on stderr with the reason) and none is a subject;
/// on v1-corrupt the scan stops at the damaged frame, the problem goes to stderr, and the summary
/// says the listing is incomplete.
#[test]
fn subjects_on_fixtures_counts_undecodable_records_and_stops_at_damage() {
    let (_clean, dir) = copy(CLEAN);
    let output = audit([
        Path::new("subjects"),
        &dir,
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(code(&output), Some(1), "stderr: {}", stderr(&output));
    let lines = json_lines(&stdout(&output));
    assert_eq!(lines.len(), 1, "only the summary: {lines:?}");
    let summary = &lines[0]["data"];
    assert_eq!(
        (
            &summary["subjects"],
            &summary["records"],
            &summary["undecodable_records"],
            &summary["complete"],
            &summary["clean"]
        ),
        (
            &Value::from(0),
            &Value::from(RECORD_COUNT),
            &Value::from(RECORD_COUNT),
            &Value::from(true),
            &Value::from(false)
        )
    );
    let text = stderr(&output);
    let named: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(": does not decode as an event: bad envelope"))
        .collect();
    assert_eq!(named.len(), 10, "{text}");
    assert!(named[0].starts_with("position=0: "), "{text}");
    assert!(
        text.ends_with(&format!(
            "note: {RECORD_COUNT} records do not decode as events (`dump` shows them)\n"
        )),
        "{text}"
    );

    let (_corrupt, dir) = copy(CORRUPT);
    let output = audit([Path::new("subjects"), &dir]);
    assert_eq!(code(&output), Some(1), "stderr: {}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("corrupt: segment ")
            && text.contains(&format!("at offset {CORRUPT_OFFSET}:")),
        "{text}"
    );
    assert_eq!(
        stdout(&output),
        format!(
            "total: 0 subjects, 0 events (0 with personal fields: 0 sealed, 0 erased, 0 locked, 0 plaintext), 0 erasures; \
             {CORRUPT_FIRST_POSITION} records do not decode; \
             incomplete: a problem with the frames stopped the scan at position {CORRUPT_FIRST_POSITION}\n"
        )
    );
}

/// Proves the human `dump` shows the erased chat's personal fields as `<erased>` (with the
/// erasure's position), never their texts, while the kept chat's and the plaintext chat's read.
#[test]
fn dump_human_shows_erased_fields_as_erased() {
    let (_tmp, data, log) = subjects_data();
    let output = audit([Path::new("dump"), &data]);
    assert_eq!(code(&output), Some(0), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    for erased in ERASED_TEXTS {
        assert!(!text.contains(erased), "{erased} shows: {text}");
    }
    for readable in KEPT_TEXTS.iter().chain(&PLAINTEXT_TEXTS) {
        assert!(text.contains(readable), "{readable} is missing: {text}");
    }
    let erased: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(" stream=conv-subj-2 "))
        .collect();
    assert_eq!(erased.len(), 5, "{text}");
    let suffix = format!(" personal=erased erased_at={}", log.chat_erased_at);
    for (line, field) in erased.iter().zip([
        r#"{"name":"<erased>"}"#,
        r#""text":"<erased>""#,
        r#""text":"<erased>""#,
    ]) {
        assert!(
            line.contains(field) && line.ends_with(&suffix),
            "{line} lacks {field} or {suffix}"
        );
    }
    assert!(
        erased[3].ends_with(r#"type=FollowupCancelled data={"followup_id":"f1"}"#),
        "{}",
        erased[3]
    );
    assert!(
        erased[4].contains("type=ChatErased") && !erased[4].contains("personal="),
        "{}",
        erased[4]
    );
}

/// Proves `find --stream` of the erased chat prints its events as JSON Lines with
/// `personal.state` "erased" (the epoch, the erasure's position, the fields) and the blanks in
/// `event.event`, exit 0 (events in the clear carry no `personal`, opened ones "sealed"); and
/// `find --event-id` of an unknown id prints nothing, exit 1.
#[test]
fn find_shows_erased_events_and_an_unknown_id_exits_1() {
    let (_tmp, data, log) = subjects_data();
    let dir = data.to_str().unwrap();
    let output = audit(["find", dir, "--stream", "conv-subj-2", "--format", "json"]);
    assert_eq!(code(&output), Some(0), "stderr: {}", stderr(&output));
    let lines = json_lines(&stdout(&output));
    let events: Vec<&Value> = lines.iter().map(|l| &l["data"]["event"]).collect();
    assert_eq!(
        events
            .iter()
            .map(|e| e["event"]["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "ProfileCreated",
            "MessageReceived",
            "MessageSent",
            "FollowupCancelled",
            "ChatErased"
        ]
    );
    for (event, field) in events.iter().zip(["name", "text", "text"]) {
        assert_eq!(
            event["personal"],
            serde_json::json!({
                "state": "erased",
                "epoch": 1,
                "erased_at": log.chat_erased_at,
                "fields": [field],
            }),
            "{event}"
        );
        assert_eq!(
            event["event"]["data"][field], "",
            "the blank, not a placeholder"
        );
    }
    for event in &events[3..] {
        assert!(event.get("personal").is_none(), "{event}");
    }
    assert_eq!(events[4]["position"], log.chat_erased_at);
    assert_eq!(
        events[4]["event"]["data"]["keys"],
        serde_json::json!([{ "stream": "conv-subj-2", "epoch": 1 }])
    );

    // The chat written partly in the clear: no `personal` for those, `sealed` for the later one.
    let mixed = json_lines(&stdout(&audit([
        "find",
        dir,
        "--stream",
        "conv-subj-3",
        "--format",
        "json",
    ])));
    let states: Vec<Option<&Value>> = mixed
        .iter()
        .map(|l| l["data"]["event"].get("personal"))
        .collect();
    let sealed = serde_json::json!({ "state": "sealed", "epoch": 1 });
    assert_eq!(states, [None, None, Some(&sealed)]);
    assert_eq!(
        mixed[2]["data"]["event"]["event"]["data"]["text"],
        "said-sealed-later"
    );

    let unknown = uuid::Uuid::now_v7().to_string();
    let none = audit(["find", dir, "--event-id", &unknown, "--format", "json"]);
    assert_eq!(code(&none), Some(1), "stderr: {}", stderr(&none));
    assert!(stdout(&none).is_empty(), "{}", stdout(&none));
}

/// Proves a key store copied from another data directory is "could not run" (exit 2) for
/// `subjects` and `dump`, saying whose it is, rather than read as this log's (its keys would
/// not open a single sealed field here).
#[test]
fn another_logs_key_store_exits_2() {
    let (_tmp, data, _) = subjects_data();
    let (_other_tmp, other, _) = subjects_data();
    let keys = data.join(hybridstore::crypto::KEYS_SUBDIR);
    for entry in fs::read_dir(&keys).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for entry in fs::read_dir(other.join(hybridstore::crypto::KEYS_SUBDIR)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), keys.join(entry.file_name())).unwrap();
    }
    for command in ["subjects", "dump"] {
        let output = audit([Path::new(command), &data]);
        assert_eq!(code(&output), Some(2), "{command}: {}", stdout(&output));
        let text = stderr(&output);
        assert!(
            text.contains("belongs to log") && text.contains("copied from another data directory"),
            "{command}: {text}"
        );
    }
}
