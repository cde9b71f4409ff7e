//! `hybridstore erase`: erase a person (design §10) and print the receipt, or ask for a receipt
//! again; on the data directory, or through a running daemon (`--url`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use hybridstore::ids::Subject;
use hybridstore::BotId;

use super::migrate::with_hybrid;
use super::remote::Remote;
use super::{print_line, DbArgs};

/// What to erase, or which receipt to ask for.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// A chat partner.
    Chat(i64),
    /// A user and their private chat.
    User(i64),
    /// A receipt.
    Receipt(uuid::Uuid),
}

/// Prints `receipt` (pretty JSON); exit 0 when complete, 1 when a sink had not reached the
/// erasure.
fn print_receipt(receipt: &serde_json::Value) -> ExitCode {
    print_line(format_args!(
        "{}",
        serde_json::to_string_pretty(receipt).unwrap_or_default()
    ));
    if receipt["complete"].as_bool().unwrap_or(false) {
        ExitCode::SUCCESS
    } else {
        let behind: Vec<&str> = receipt["sinks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| !s["reached"].as_bool().unwrap_or(false))
            .filter_map(|s| s["sink"].as_str())
            .collect();
        eprintln!(
            "incomplete: {} had not reached the erasure; ask again later with `hybridstore erase --bot {} --receipt {}`",
            behind.join(", "),
            receipt["subject"]["bot"].as_str().unwrap_or("?"),
            receipt["receipt_id"].as_str().unwrap_or("?"),
        );
        ExitCode::from(1)
    }
}

/// `erase` on the data directory: exit 0 complete, 1 incomplete (or no such receipt), 2 could
/// not run.
pub fn erase_command(
    data_dir: &Path,
    db: &DbArgs,
    bot: &BotId,
    target: Target,
    wait: Duration,
) -> ExitCode {
    // Nothing to erase in a directory without a log: say so instead of creating a store there
    // (a mistyped --data-dir).
    let wal = data_dir.join(hybridstore::WAL_SUBDIR);
    if !wal.is_dir() {
        eprintln!(
            "error: no store in {} (no {}): check --data-dir or HYBRIDSTORE_DATA_DIR; nothing was created",
            data_dir.display(),
            wal.display()
        );
        return ExitCode::from(2);
    }
    with_hybrid(data_dir, db, async |hybrid| {
        let result = match target {
            Target::Chat(chat_id) => hybrid
                .erase(
                    &Subject::Chat {
                        bot: bot.clone(),
                        chat_id,
                    },
                    wait,
                )
                .await
                .map(Some),
            Target::User(user_id) => hybrid
                .erase(
                    &Subject::User {
                        bot: bot.clone(),
                        user_id,
                    },
                    wait,
                )
                .await
                .map(Some),
            Target::Receipt(id) => hybrid.erasure_receipt(bot, id, wait).await,
        };
        match result {
            Ok(Some(receipt)) => print_receipt(&serde_json::to_value(&receipt).unwrap_or_default()),
            Ok(None) => {
                eprintln!("error: no erasure receipt of bot {bot} has that id");
                ExitCode::from(1)
            }
            Err(error) => {
                eprintln!("error: {}", hybridstore::error::one_line(&error));
                ExitCode::from(2)
            }
        }
    })
}

/// `erase --url`: the same through the daemon's admin routes.
pub async fn erase_remote(
    remote: &Remote,
    bot: &BotId,
    target: Target,
    wait: Duration,
) -> ExitCode {
    let wait_s = wait.as_secs();
    let answer = match target {
        Target::Chat(chat) => {
            remote
                .call(
                    "POST",
                    &format!("/v1/bots/{bot}/erasures"),
                    Some(serde_json::json!({"chat": chat, "wait_s": wait_s})),
                )
                .await
        }
        Target::User(user) => {
            remote
                .call(
                    "POST",
                    &format!("/v1/bots/{bot}/erasures"),
                    Some(serde_json::json!({"user": user, "wait_s": wait_s})),
                )
                .await
        }
        Target::Receipt(id) => {
            remote
                .call(
                    "GET",
                    &format!("/v1/bots/{bot}/erasures/{id}?wait_s={wait_s}"),
                    None,
                )
                .await
        }
    };
    match answer {
        Ok(receipt) => print_receipt(&receipt),
        Err(code) => code,
    }
}
