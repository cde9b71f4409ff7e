//! The README's first command: `hybridstore demo` runs with no servers and leaves a log that the
//! audit tool verifies clean.

use std::process::Command;

use hybridstore_wal::{Options, Position, Wal};

/// Proves the demo runs on the embedded default and leaves every exchange in a readable log.
#[test]
fn demo_runs_log_only_and_leaves_a_readable_log() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hybridstore"))
        .args(["--data-dir"])
        .arg(data.path())
        .args([
            "demo",
            "--chats",
            "20",
            "--exchanges",
            "5",
            "--handlers",
            "4",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("appended 100 exchanges (200 records)"),
        "{stdout}"
    );
    let wal = Wal::open(data.path().join("wal"), Options::default()).unwrap();
    assert_eq!(wal.durable_end(), Position(200));
    let in_messages = wal
        .reader(Position(0))
        .unwrap()
        .map(|r| r.unwrap())
        .filter(|r| {
            r.data
                .windows(15)
                .any(|w| w == br#""direction":"in"#.as_slice())
        })
        .count();
    assert_eq!(in_messages, 100);
}

/// Proves bad arguments are refused with exit code 2 and a message, not a panic.
#[test]
fn demo_refuses_zero_handlers() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hybridstore"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["demo", "--handlers", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must be at least 1"));
}
