//! `repair`: the only command that writes, and only when asked. It takes the writer lock, checks
//! the log, plans the smallest cut that makes it clean, backs up everything it will cut into
//! `repair-backup/` before changing anything, cuts, and verifies again.
//!
//! What it does, by problem (only the first damaged segment matters: everything after it goes):
//! 1. A torn tail of the last segment: copy the bytes from the bad offset to the end of the
//!    non-zero data to `repair-backup/<segment file>.<offset>.tail`, then zero the segment from
//!    the offset (truncate, and extend back to its length), fsync file and directory.
//! 2. Corruption in a segment at offset X > 0 (or a bad frame followed by valid ones in the last
//!    segment): copy that segment whole into the backup, move every later segment into the
//!    backup (last first, so a crash midway leaves a prefix of the log that a rerun repairs),
//!    truncate the segment at X so it ends at its last valid frame and becomes the last segment.
//! 3. A bad header (offset 0), a torn header, or a gap after a segment: move that segment (for a
//!    gap, the one after it) and every later one into the backup.
//! 4. The clean-shutdown marker is removed, first, whenever the last segment changes, and when it
//!    disagrees with the segments.
//! 5. The `log-id` file is never touched. A damaged one stays a problem (exit 1) until the
//!    operator restores it from a backup: a new id would not match what the log's sinks recorded.
//!
//! After a repair, `hybridstore_wal::Wal::open` on the directory succeeds (unless `log-id` is
//! damaged): every remaining segment is whole, and the last one ends at a valid frame followed by
//! zeros or the end of the file.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use hybridstore_wal::format::{Position, SegmentId};
use hybridstore_wal::io::{FileSystem, LockGuard, OpenMode};
use hybridstore_wal::LOCK_FILE_NAME;
use serde::Serialize;

use crate::check::{read_segment, Cut, LogCheck, LogDir};
use crate::output::{human_summary, write_json_line, ProblemJson, SummaryJson};
use crate::{Format, Verdict};

/// Name of the directory, inside the log directory, that receives everything a repair cuts.
pub const BACKUP_DIR_NAME: &str = "repair-backup";

/// One step of a repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the backup directory.
    CreateBackupDir {
        /// The directory.
        path: PathBuf,
    },
    /// Copy the cut bytes `offset..end` of the last segment into the backup.
    BackupTail {
        /// The segment.
        segment: SegmentId,
        /// Its file.
        path: PathBuf,
        /// First byte cut.
        offset: u64,
        /// Offset just past the last non-zero byte.
        end: u64,
        /// The backup file.
        to: PathBuf,
    },
    /// Copy a whole segment file into the backup.
    CopySegment {
        /// The segment.
        segment: SegmentId,
        /// Its file.
        path: PathBuf,
        /// The backup file.
        to: PathBuf,
    },
    /// Remove the clean-shutdown marker.
    RemoveMarker {
        /// The marker file.
        path: PathBuf,
    },
    /// Move a whole segment file into the backup (it leaves the log).
    MoveAside {
        /// The segment.
        segment: SegmentId,
        /// Its file.
        path: PathBuf,
        /// Where it goes.
        to: PathBuf,
    },
    /// Zero the last segment from `offset`, keeping its length.
    ZeroTail {
        /// The segment.
        segment: SegmentId,
        /// Its file.
        path: PathBuf,
        /// First byte zeroed.
        offset: u64,
        /// Length of the file, kept.
        file_len: u64,
    },
    /// Truncate a segment at `offset`; it becomes the last segment.
    Truncate {
        /// The segment.
        segment: SegmentId,
        /// Its file.
        path: PathBuf,
        /// The new length.
        offset: u64,
        /// The length before.
        file_len: u64,
    },
}

/// A step as JSON (`{"type":"action","data":{..}}`).
#[derive(Debug, Clone, Serialize)]
pub struct ActionJson {
    /// `create_backup_dir`, `backup_tail`, `copy_segment`, `remove_marker`, `move_aside`,
    /// `zero_tail` or `truncate`.
    pub action: &'static str,
    /// True when the step was only planned (`--dry-run`).
    pub dry_run: bool,
    /// The segment id, for steps on a segment.
    pub segment: Option<u64>,
    /// The file or directory acted on.
    pub path: String,
    /// Where bytes were copied or moved to.
    pub to: Option<String>,
    /// The offset the step starts at.
    pub offset: Option<u64>,
    /// Bytes copied, moved or cut.
    pub bytes: Option<u64>,
    /// The step, for people.
    pub description: String,
}

impl Step {
    /// Stable machine name.
    pub fn name(&self) -> &'static str {
        match self {
            Step::CreateBackupDir { .. } => "create_backup_dir",
            Step::BackupTail { .. } => "backup_tail",
            Step::CopySegment { .. } => "copy_segment",
            Step::RemoveMarker { .. } => "remove_marker",
            Step::MoveAside { .. } => "move_aside",
            Step::ZeroTail { .. } => "zero_tail",
            Step::Truncate { .. } => "truncate",
        }
    }

    /// The step, for people (imperative).
    pub fn describe(&self) -> String {
        match self {
            Step::CreateBackupDir { path } => {
                format!("create backup directory {}", path.display())
            }
            Step::BackupTail {
                segment,
                path,
                offset,
                end,
                to,
            } => format!(
                "copy the {} bytes at offset {offset} of segment {segment} ({}) to {}",
                end.saturating_sub(*offset),
                path.display(),
                to.display()
            ),
            Step::CopySegment { segment, path, to } => format!(
                "copy segment {segment} ({}) to {}",
                path.display(),
                to.display()
            ),
            Step::RemoveMarker { path } => {
                format!("remove the clean-shutdown marker {}", path.display())
            }
            Step::MoveAside { segment, path, to } => format!(
                "move segment {segment} ({}) out of the log to {}",
                path.display(),
                to.display()
            ),
            Step::ZeroTail {
                segment,
                path,
                offset,
                file_len,
            } => format!(
                "zero segment {segment} ({}) from offset {offset} to its end at {file_len}",
                path.display()
            ),
            Step::Truncate {
                segment,
                path,
                offset,
                file_len,
            } => format!(
                "truncate segment {segment} ({}) from {file_len} to {offset} bytes; it becomes the last segment",
                path.display()
            ),
        }
    }

    fn to_json(&self, dry_run: bool) -> ActionJson {
        let (segment, path, to, offset, bytes) = match self {
            Step::CreateBackupDir { path } => (None, path, None, None, None),
            Step::BackupTail {
                segment,
                path,
                offset,
                end,
                to,
            } => (
                Some(*segment),
                path,
                Some(to),
                Some(*offset),
                Some(end.saturating_sub(*offset)),
            ),
            Step::CopySegment { segment, path, to } | Step::MoveAside { segment, path, to } => {
                (Some(*segment), path, Some(to), None, None)
            }
            Step::RemoveMarker { path } => (None, path, None, None, None),
            Step::ZeroTail {
                segment,
                path,
                offset,
                file_len,
            }
            | Step::Truncate {
                segment,
                path,
                offset,
                file_len,
            } => (
                Some(*segment),
                path,
                None,
                Some(*offset),
                Some(file_len.saturating_sub(*offset)),
            ),
        };
        ActionJson {
            action: self.name(),
            dry_run,
            segment: segment.map(|s| s.first_position().0),
            path: path.display().to_string(),
            to: to.map(|t| t.display().to_string()),
            offset,
            bytes,
            description: self.describe(),
        }
    }
}

/// Why a repair plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The cut would remove every segment of a log that does not start at position 0: the
    /// writer would then start over at position 0 and hand out positions a second time.
    WouldEmptyLog {
        /// The log's first position.
        first: Position,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::WouldEmptyLog { first } => write!(
                f,
                "refusing to repair: the first segment is damaged at its header, and removing it \
                 would leave an empty log that the writer restarts at position 0 although the log \
                 starts at position {first}; restore the segment from a backup"
            ),
        }
    }
}

/// What the backup directory holds before a repair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingBackups {
    /// The directory exists.
    pub dir_exists: bool,
    /// Names of its entries (earlier repairs' backups, never overwritten).
    pub names: HashSet<String>,
}

/// Plans the repair of a checked log (no I/O).
///
/// # Errors
/// [`Refusal`] when no safe repair exists.
pub fn plan(check: &LogCheck, existing: &ExistingBackups) -> Result<Vec<Step>, Refusal> {
    let log = &check.log;
    let backup_dir = log.path.join(BACKUP_DIR_NAME);
    let mut names = BackupNames {
        dir: backup_dir.clone(),
        taken: existing.names.clone(),
    };
    let cut = check
        .segments
        .iter()
        .enumerate()
        .find_map(|(index, segment)| segment.cut(index));
    let marker_present = check.marker.state.is_present();
    let mut steps = Vec::new();
    let mut backups = Vec::new();
    let mut changes = Vec::new();
    match cut {
        None => {}
        Some(Cut::Tail { index, offset }) => {
            let segment = &check.segments[index];
            backups.push(Step::BackupTail {
                segment: segment.id,
                path: segment.path.clone(),
                offset,
                end: segment.data_end_offset,
                to: names.take(format!("{}.{offset}.tail", segment.id.file_name())),
            });
            changes.push(Step::ZeroTail {
                segment: segment.id,
                path: segment.path.clone(),
                offset,
                file_len: segment.file_len,
            });
        }
        Some(Cut::Segments { index, offset }) => {
            if offset == 0 && index == 0 {
                if let Some(first) = log.segments.first().map(|id| id.first_position()) {
                    if first != Position(0) {
                        return Err(Refusal::WouldEmptyLog { first });
                    }
                }
            }
            // Later segments leave the log last first, so that a crash midway leaves a
            // contiguous prefix that a second repair handles like the first.
            for segment in check.segments.iter().skip(index + 1).rev() {
                changes.push(Step::MoveAside {
                    segment: segment.id,
                    path: segment.path.clone(),
                    to: names.take(segment.id.file_name()),
                });
            }
            if let Some(segment) = check.segments.get(index) {
                if offset == 0 {
                    changes.push(Step::MoveAside {
                        segment: segment.id,
                        path: segment.path.clone(),
                        to: names.take(segment.id.file_name()),
                    });
                } else {
                    backups.push(Step::CopySegment {
                        segment: segment.id,
                        path: segment.path.clone(),
                        to: names.take(segment.id.file_name()),
                    });
                    changes.push(Step::Truncate {
                        segment: segment.id,
                        path: segment.path.clone(),
                        offset,
                        file_len: segment.file_len,
                    });
                }
            }
        }
    }
    if (!backups.is_empty() || changes.iter().any(|s| matches!(s, Step::MoveAside { .. })))
        && !existing.dir_exists
    {
        steps.push(Step::CreateBackupDir { path: backup_dir });
    }
    steps.extend(backups);
    // The marker goes before any segment changes: a marker is only a shortcut, and one that
    // survived a crash midway would describe a last segment that is no longer there.
    if marker_present && (cut.is_some() || check.marker.problem.is_some()) {
        steps.push(Step::RemoveMarker {
            path: check.marker.path.clone(),
        });
    }
    steps.extend(changes);
    Ok(steps)
}

/// Picks backup file names that are not taken yet: `name`, then `name.1`, `name.2`, …
struct BackupNames {
    dir: PathBuf,
    taken: HashSet<String>,
}

impl BackupNames {
    fn take(&mut self, name: String) -> PathBuf {
        let mut candidate = name.clone();
        let mut suffix = 0u32;
        while self.taken.contains(&candidate) {
            suffix += 1;
            candidate = format!("{name}.{suffix}");
        }
        self.taken.insert(candidate.clone());
        self.dir.join(candidate)
    }
}

/// Repairs the log in `log` (or, with `dry_run`, prints what it would do and changes nothing).
///
/// # Errors
/// When a writer holds the lock, or a read, write or fsync fails. A step that fails leaves the
/// steps before it done: every backup is complete before the first change.
pub fn repair(
    fs: &dyn FileSystem,
    log: &LogDir,
    dry_run: bool,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<Verdict> {
    let _lock = take_lock(fs, log, dry_run)?;
    // Listed again under the lock: a writer that ran until just now may have rotated.
    let log = log.relist(fs)?;
    let check = LogCheck::run(fs, &log)?;
    if check.problems().is_empty() {
        print_note(out, format, "nothing to repair: the log is clean")?;
        return print_result(&check, format, out);
    }
    if check.log_id.problem.is_some() {
        print_note(
            out,
            format,
            "the log id file is damaged; repair leaves it alone: restore it from a backup of the log directory",
        )?;
    }
    let existing = existing_backups(fs, &log.path.join(BACKUP_DIR_NAME))?;
    let steps = match plan(&check, &existing) {
        Ok(steps) => steps,
        Err(refusal) => {
            print_note(out, format, &refusal.to_string())?;
            return print_result(&check, format, out);
        }
    };
    for step in &steps {
        if !dry_run {
            execute(fs, &log, step)
                .with_context(|| format!("repair step failed: {}", step.describe()))?;
        }
        match format {
            Format::Human => {
                let prefix = if dry_run { "dry run, would" } else { "done" };
                writeln!(out, "{prefix}: {}", step.describe())?;
            }
            Format::Json => write_json_line(out, "action", &step.to_json(dry_run))?,
        }
    }
    if dry_run {
        print_note(out, format, "dry run: nothing was changed")?;
        return print_result(&check, format, out);
    }
    let after = LogCheck::run(fs, &log.relist(fs)?)?;
    print_result(&after, format, out)
}

fn take_lock(
    fs: &dyn FileSystem,
    log: &LogDir,
    dry_run: bool,
) -> anyhow::Result<Option<Box<dyn LockGuard>>> {
    let lock_path = log.path.join(LOCK_FILE_NAME);
    // A dry run must not create the lock file; without one, no writer has the log open.
    if dry_run
        && !fs
            .list_dir(&log.path)
            .with_context(|| format!("cannot read {}", log.path.display()))?
            .iter()
            .any(|name| name == LOCK_FILE_NAME)
    {
        return Ok(None);
    }
    match fs.lock(&lock_path) {
        Ok(guard) => Ok(Some(guard)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(anyhow!(
            "refusing to repair {}: a writer holds the lock {}; stop the process that has the \
             log open, then run repair again",
            log.path.display(),
            lock_path.display()
        )),
        Err(e) => {
            Err(e).with_context(|| format!("cannot take the writer lock {}", lock_path.display()))
        }
    }
}

fn existing_backups(fs: &dyn FileSystem, backup_dir: &Path) -> anyhow::Result<ExistingBackups> {
    match fs.list_dir(backup_dir) {
        Ok(names) => Ok(ExistingBackups {
            dir_exists: true,
            names: names.into_iter().collect(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ExistingBackups::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", backup_dir.display())),
    }
}

fn execute(fs: &dyn FileSystem, log: &LogDir, step: &Step) -> anyhow::Result<()> {
    let dir = &log.path;
    let sync_dir = |path: &Path| {
        fs.sync_dir(path)
            .with_context(|| format!("cannot fsync directory {}", path.display()))
    };
    match step {
        Step::CreateBackupDir { path } => {
            fs.create_dir_all(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            sync_dir(dir)?;
        }
        Step::BackupTail {
            path,
            offset,
            end,
            to,
            ..
        } => {
            let bytes = read_segment(fs, path)?;
            let cut = usize::try_from(*offset)
                .ok()
                .zip(usize::try_from(*end).ok())
                .and_then(|(offset, end)| bytes.get(offset..end))
                .with_context(|| format!("{} changed since it was checked", path.display()))?;
            write_new_file(fs, to, cut)?;
            sync_dir(to.parent().unwrap_or(dir))?;
        }
        Step::CopySegment { path, to, .. } => {
            let bytes = read_segment(fs, path)?;
            write_new_file(fs, to, &bytes)?;
            sync_dir(to.parent().unwrap_or(dir))?;
        }
        Step::RemoveMarker { path } => {
            fs.remove_file(path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            sync_dir(dir)?;
        }
        Step::MoveAside { path, to, .. } => {
            fs.rename(path, to)
                .with_context(|| format!("cannot move {} to {}", path.display(), to.display()))?;
            sync_dir(to.parent().unwrap_or(dir))?;
            sync_dir(dir)?;
        }
        Step::ZeroTail {
            path,
            offset,
            file_len,
            ..
        } => {
            let file = fs
                .open(path, OpenMode::ReadWrite)
                .with_context(|| format!("cannot open {}", path.display()))?;
            file.set_len(*offset)
                .and_then(|()| file.set_len(*file_len))
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot zero the tail of {}", path.display()))?;
            sync_dir(dir)?;
        }
        Step::Truncate { path, offset, .. } => {
            let file = fs
                .open(path, OpenMode::ReadWrite)
                .with_context(|| format!("cannot open {}", path.display()))?;
            file.set_len(*offset)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot truncate {}", path.display()))?;
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to a new file (never replacing one) and fsyncs it.
fn write_new_file(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let file = fs
        .open(path, OpenMode::CreateNew)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all_at(bytes, 0)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn print_note(out: &mut dyn Write, format: Format, note: &str) -> anyhow::Result<()> {
    match format {
        Format::Human => writeln!(out, "{note}")?,
        Format::Json => write_json_line(out, "note", &note)?,
    }
    Ok(())
}

/// Prints the problems of `check` and its summary; the verdict says whether it is clean.
fn print_result(check: &LogCheck, format: Format, out: &mut dyn Write) -> anyhow::Result<Verdict> {
    let problems = check.problems();
    for problem in &problems {
        match format {
            Format::Human => writeln!(out, "{problem}")?,
            Format::Json => write_json_line(out, "problem", &ProblemJson::from(*problem))?,
        }
    }
    match format {
        Format::Human => writeln!(out, "{}", human_summary(&check.totals(), problems.len()))?,
        Format::Json => write_json_line(out, "summary", &SummaryJson::of(check))?,
    }
    out.flush().context("cannot write output")?;
    Ok(Verdict::from_problem_count(problems.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves backup names never reuse a name an earlier repair (or this one) already took.
    #[test]
    fn backup_names_never_collide() {
        let mut names = BackupNames {
            dir: PathBuf::from("/log/repair-backup"),
            taken: ["a.wal".to_owned(), "a.wal.1".to_owned()].into(),
        };
        assert_eq!(
            names.take("a.wal".to_owned()),
            Path::new("/log/repair-backup/a.wal.2")
        );
        assert_eq!(
            names.take("a.wal".to_owned()),
            Path::new("/log/repair-backup/a.wal.3")
        );
        assert_eq!(
            names.take("b.wal".to_owned()),
            Path::new("/log/repair-backup/b.wal")
        );
    }
}
