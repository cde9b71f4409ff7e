//! Export: the projection back to the old bot's layout (the rollback path).

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use hybridstore_wal::Position;
use serde::Serialize;
use serde_json::Value;

use super::*;
use crate::ids::{BotId, StreamId};
use crate::projection::{MessageView, ProfileDocument};
use crate::store::Store;

/// Writes `bot`'s profiles and conversations in the old bot's layout:
/// `out_dir/girls_data/{chat}.json` (the projected [`ProfileDocument`]) and
/// `out_dir/conversations/{chat}.json` (`[{ts, direction, text}]`, `ts` as imported, or seconds
/// since the epoch for messages the store recorded itself). Each file is replaced atomically
/// (written to a hidden temporary file, synced, renamed); files of other chats in `out_dir` are
/// left alone, so the old bot's own directory can be the target.
///
/// The export covers everything durable when it starts. A conversation file is written for every
/// chat that ever had a message (`[]` after its history was cleared), not for a profile alone.
///
/// # Errors
/// [`LegacyError::Write`] for a file or directory that cannot be written,
/// [`LegacyError::Store`] when the log cannot be read.
pub async fn export_legacy(
    store: &Store,
    bot: &BotId,
    out_dir: &Path,
) -> Result<ExportReport, LegacyError> {
    let store_error = |chat_id| {
        move |source| LegacyError::Store {
            chat_id: Some(chat_id),
            source,
        }
    };
    let end = store.durable_end();
    let min_position = end.0.checked_sub(1).map(Position);
    let (profiles, conversations, erased) = store
        .read_projection(min_position, |p| {
            // Erased chats are left out, and a file an earlier export wrote of them removed.
            let erased: Vec<i64> = p
                .erasures_iter()
                .filter(|(b, kind, _, _)| *b == bot && *kind == crate::ids::SubjectKind::Chat)
                .filter(|(_, _, chat, _)| p.chat_erased(bot, *chat).is_some())
                .map(|(_, _, chat, _)| chat)
                .collect();
            let profiles: Vec<ProfileDocument> = p.profiles(bot).into_values().cloned().collect();
            let conversations: Vec<(i64, u64)> = p
                .conversation_chats(bot)
                .into_iter()
                .filter_map(|chat_id| {
                    let head = p.conversation(bot, chat_id)?.head;
                    let count = head.messages_in + head.messages_out;
                    (count > 0).then_some((chat_id, count))
                })
                .collect();
            (profiles, conversations, erased)
        })
        .await
        .map_err(|source| LegacyError::Store {
            chat_id: None,
            source,
        })?;

    let girls_dir = out_dir.join(GIRLS_DIR_NAME);
    let conversations_dir = out_dir.join(CONVERSATIONS_DIR_NAME);
    for dir in [&girls_dir, &conversations_dir] {
        let dir = dir.clone();
        blocking(move || {
            fs::create_dir_all(&dir).map_err(|source| LegacyError::Write { path: dir, source })
        })
        .await??;
    }
    for chat_id in erased {
        for dir in [&girls_dir, &conversations_dir] {
            let path = dir.join(format!("{chat_id}.json"));
            blocking(move || match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(LegacyError::Write { path, source }),
            })
            .await??;
        }
    }
    let mut report = ExportReport::default();
    for document in profiles {
        let path = girls_dir.join(format!("{}.json", document.chat_id));
        write_json_atomic(path, &document).await?;
        report.profiles_written += 1;
    }
    for (chat_id, count) in conversations {
        let stream = StreamId::conversation(bot, chat_id);
        let limit = usize::try_from(count).unwrap_or(usize::MAX);
        let messages = store
            .last_messages(&stream, limit, min_position)
            .await
            .map_err(store_error(chat_id))?;
        let entries: Vec<LegacyMessage> = messages.into_iter().map(legacy_message).collect();
        report.messages_written += entries.len() as u64;
        let path = conversations_dir.join(format!("{chat_id}.json"));
        write_json_atomic(path, &entries).await?;
        report.conversations_written += 1;
    }
    for dir in [girls_dir, conversations_dir] {
        blocking(move || sync_dir(&dir).map_err(|source| LegacyError::Write { path: dir, source }))
            .await??;
    }
    Ok(report)
}

/// A message in the old layout: `ts` as imported, else seconds since the epoch.
pub(super) fn legacy_message(message: MessageView) -> LegacyMessage {
    let ts = message
        .legacy_ts
        .unwrap_or_else(|| Value::from(message.at.0 as f64 / 1000.0));
    LegacyMessage {
        ts,
        direction: message.direction,
        text: message.text.to_string(),
    }
}

pub(super) async fn write_json_atomic(
    path: PathBuf,
    value: &impl Serialize,
) -> Result<(), LegacyError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| LegacyError::Task(format!("encoding {}: {e}", path.display())))?;
    bytes.push(b'\n');
    blocking(move || {
        replace_file(&path, &bytes).map_err(|source| LegacyError::Write { path, source })
    })
    .await?
}

/// Replaces `path` with `bytes`: written to a hidden temporary file beside it, synced, renamed
/// over it. A crash leaves the old file or the new one, never a mix (the directory is synced once
/// at the end of the export).
pub(super) fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Runs blocking file work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LegacyError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LegacyError::Task(e.to_string()))
}
