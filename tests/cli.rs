//! What an operator trips over on first use, tried as a new user would: the demo keeps to a
//! directory of its own, legacy commands need their bot, half a database configuration is an
//! error, an I/O error names its cause once, a corrupt log says what to run next, and a closed
//! pipe ends a command quietly.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use hybridstore::{BotId, ExpectedVersion, NewEvent, Store, StoreConfig, StreamId};

/// The binary in `cwd` with `args`, without the suite's database and store variables.
fn hybridstore(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hybridstore"));
    command
        .current_dir(cwd)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DB_HOST")
        .env_remove("DB_NAME")
        .env_remove("DB_USER")
        .env_remove("DB_PASSWORD")
        .env_remove("HYBRIDSTORE_DATA_DIR")
        .env_remove("HYBRIDSTORE_BOT");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Proves the demo writes into a directory of its own by default, says where, and leaves the
/// production directory named by `HYBRIDSTORE_DATA_DIR` untouched.
#[test]
fn demo_keeps_to_its_own_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let production = tempfile::tempdir().unwrap();
    let output = hybridstore(
        cwd.path(),
        &["demo", "--chats", "2", "--exchanges", "1"],
        &[("HYBRIDSTORE_DATA_DIR", production.path().to_str().unwrap())],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("hybridstore-demo/wal"), "{stdout}");
    assert!(cwd.path().join("hybridstore-demo/wal").is_dir());
    assert_eq!(std::fs::read_dir(production.path()).unwrap().count(), 0);
}

/// Proves `import-legacy` and `export-legacy` need a bot (`--bot` or `HYBRIDSTORE_BOT`) instead
/// of silently using one.
#[test]
fn legacy_commands_need_a_bot() {
    let cwd = tempfile::tempdir().unwrap();
    let out = cwd.path().join("out");
    let out = out.to_str().unwrap();
    let refused = hybridstore(cwd.path(), &["export-legacy", "--out", out], &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("--bot"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!cwd.path().join("data").exists(), "nothing may be opened");
    let from_env = hybridstore(
        cwd.path(),
        &["export-legacy", "--out", out],
        &[("HYBRIDSTORE_BOT", "girlbot")],
    );
    assert_eq!(
        from_env.status.code(),
        Some(0),
        "{}",
        text(&from_env.stderr)
    );
    assert!(text(&from_env.stdout).contains("bot girlbot"));
}

/// Proves database credentials without a host or database name are an error naming the
/// variable, not a silent log-only run.
#[test]
fn half_a_database_configuration_is_an_error() {
    let cwd = tempfile::tempdir().unwrap();
    let output = hybridstore(
        cwd.path(),
        &["project", "--until-caught-up"],
        &[("DB_USER", "bot"), ("DB_PASSWORD", "secret")],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: DB_USER"), "{stderr}");
    assert!(stderr.contains("DB_HOST"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Proves an I/O error names its cause once, on one line.
#[test]
fn an_io_error_names_its_cause_once() {
    let cwd = tempfile::tempdir().unwrap();
    let file = cwd.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let dir = file.join("data");
    for args in [
        vec!["--data-dir", dir.to_str().unwrap(), "demo", "--chats", "1"],
        vec![
            "--data-dir",
            dir.to_str().unwrap(),
            "export-legacy",
            "--bot",
            "b",
            "--out",
            "x",
        ],
    ] {
        let output = hybridstore(cwd.path(), &args, &[]);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert_eq!(
            stderr.matches("Not a directory").count(),
            1,
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// Proves a corrupt log's open error says what to run next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_says_what_to_run_next() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(data.path())).await.unwrap();
    let bot = BotId::new("b").unwrap();
    for n in 0..20 {
        let event = hybridstore::testing::build_event(
            hybridstore::StreamKind::Conversation,
            hybridstore::testing::EventSpec {
                selector: 5,
                argument: n,
                day: 0,
            },
        );
        store
            .append(
                &StreamId::conversation(&bot, 1),
                ExpectedVersion::Any,
                vec![NewEvent::new(event)],
            )
            .await
            .unwrap();
    }
    store.close().await.unwrap();
    // Damage a frame in the middle of the log (valid frames follow it: corruption, not a tear).
    let segment = std::fs::read_dir(data.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[200] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let output = hybridstore(
        data.path(),
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "export-legacy",
            "--bot",
            "b",
            "--out",
            "out",
        ],
        &[],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("hybridstore-audit verify"), "{stderr}");
    assert!(stderr.contains("hybridstore-audit repair"), "{stderr}");
}

/// Proves a closed pipe (`| head -1`) ends the demo quietly, without a panic.
#[test]
fn a_closed_pipe_is_quiet() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hybridstore"))
        .current_dir(cwd.path())
        .args(["demo", "--chats", "3", "--exchanges", "2"])
        .env_remove("HYBRIDSTORE_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone: every later write hits a closed pipe.
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert!(first.starts_with("hybridstore demo:"), "{first}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{stderr}");
}
