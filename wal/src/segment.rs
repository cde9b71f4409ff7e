//! Segment files: naming, creation (preallocated, header written, fsynced with their directory),
//! and the per-segment sparse index that maps positions to frame offsets.
//!
//! # Invariants
//! - The index of a segment holds an entry for its first frame and then one for the first frame
//!   at or past every [`INDEX_INTERVAL_BYTES`] boundary, so finding a position costs a binary
//!   search plus a walk over at most one interval of frame headers.
//! - The index is derived data: it is rebuilt from the segment's frames whenever it is missing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{FrameHeader, Position, SegmentHeader, SegmentId, SEGMENT_HEADER_LEN};
use crate::io::{FileSystem, OpenMode, WalFile};

/// Distance in bytes between two sparse index entries.
pub const INDEX_INTERVAL_BYTES: u64 = 16 * 1024;

/// One sparse index entry: the frame at `offset` starts with record `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// First position of the frame.
    pub position: Position,
    /// Byte offset of the frame in the segment file.
    pub offset: u64,
}

/// The sparse index of one segment, filled in frame order.
#[derive(Debug, Clone, Default)]
pub struct SparseIndex {
    entries: Vec<IndexEntry>,
    /// Offset just past the last frame seen.
    indexed_to_offset: u64,
    /// Position just past the last frame seen.
    indexed_to_position: Position,
}

impl SparseIndex {
    /// An empty index for a segment starting at `first`.
    pub fn new(first: Position) -> SparseIndex {
        SparseIndex {
            entries: Vec::new(),
            indexed_to_offset: SEGMENT_HEADER_LEN as u64,
            indexed_to_position: first,
        }
    }

    /// Restores an index from saved parts (the clean-shutdown marker).
    pub fn from_parts(
        entries: Vec<IndexEntry>,
        indexed_to_offset: u64,
        indexed_to_position: Position,
    ) -> SparseIndex {
        SparseIndex {
            entries,
            indexed_to_offset,
            indexed_to_position,
        }
    }

    /// Notes a frame; frames must be noted in order, each exactly once.
    pub fn note_frame(&mut self, offset: u64, header: &FrameHeader) {
        debug_assert_eq!(offset, self.indexed_to_offset, "frames noted out of order");
        debug_assert_eq!(header.first_position, self.indexed_to_position);
        let due = match self.entries.last() {
            None => true,
            Some(last) => offset >= last.offset + INDEX_INTERVAL_BYTES,
        };
        if due {
            self.entries.push(IndexEntry {
                position: header.first_position,
                offset,
            });
        }
        self.indexed_to_offset = offset + header.frame_len() as u64;
        self.indexed_to_position = header.end_position();
    }

    /// The saved entries.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Offset just past the last noted frame.
    pub fn indexed_to_offset(&self) -> u64 {
        self.indexed_to_offset
    }

    /// Position just past the last noted frame.
    pub fn indexed_to_position(&self) -> Position {
        self.indexed_to_position
    }

    /// The last entry at or before `position`, or the segment start if there is none.
    pub fn seek(&self, position: Position, segment_first: Position) -> IndexEntry {
        let after = self.entries.partition_point(|e| e.position <= position);
        match after.checked_sub(1) {
            Some(index) => self.entries[index],
            None => IndexEntry {
                position: segment_first,
                offset: SEGMENT_HEADER_LEN as u64,
            },
        }
    }
}

/// An open segment, shared between the writer and readers.
#[derive(Debug)]
pub struct Segment {
    /// The segment's id (its first position).
    pub id: SegmentId,
    /// The segment's file.
    pub path: PathBuf,
    /// The open file.
    pub file: Arc<dyn WalFile>,
    /// The whole file, mapped once the segment is sealed.
    sealed_view: OnceLock<Bytes>,
    index: Mutex<SparseIndex>,
}

impl Segment {
    /// Wraps an open segment file.
    pub fn new(
        id: SegmentId,
        path: PathBuf,
        file: Arc<dyn WalFile>,
        index: SparseIndex,
    ) -> Segment {
        Segment {
            id,
            path,
            file,
            sealed_view: OnceLock::new(),
            index: Mutex::new(index),
        }
    }

    /// The sparse index (locked).
    pub fn index(&self) -> MutexGuard<'_, SparseIndex> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The mapped bytes of a sealed segment.
    ///
    /// # Errors
    /// An I/O error if the file cannot be mapped.
    pub fn sealed_view(&self) -> Result<Bytes> {
        if let Some(view) = self.sealed_view.get() {
            return Ok(view.clone());
        }
        let view = self
            .file
            .map()
            .map_err(|e| Error::io("mmap", &self.path, e))?;
        Ok(self.sealed_view.get_or_init(|| view).clone())
    }

    /// Indexes a sealed segment's frames up to its end, walking frame headers from where the
    /// index stops (headers are checked; bodies are checked when read).
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a frame header on the way does not validate.
    pub fn ensure_sealed_indexed(&self) -> Result<()> {
        let view = self.sealed_view()?;
        let mut index = self.index();
        while (index.indexed_to_offset() as usize) < view.len() {
            let offset = index.indexed_to_offset();
            let header = FrameHeader::decode_from(&view[offset as usize..])
                .and_then(|h| {
                    if h.first_position == index.indexed_to_position() {
                        Ok(h)
                    } else {
                        Err(CorruptionKind::PositionMismatch {
                            expected: index.indexed_to_position(),
                            found: h.first_position,
                        })
                    }
                })
                .map_err(|kind| self.corrupt(offset, kind))?;
            index.note_frame(offset, &header);
        }
        Ok(())
    }

    /// A corruption error at `offset` of this segment.
    pub fn corrupt(&self, offset: u64, kind: CorruptionKind) -> Error {
        Error::Corrupt {
            segment: self.id,
            path: self.path.clone(),
            offset,
            kind,
        }
    }
}

/// The path of segment `id` in `dir`.
pub fn segment_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(id.file_name())
}

/// Creates a new segment file: header written, space preallocated, file and directory fsynced.
///
/// # Errors
/// An I/O error from any step; a partly created file is left for recovery to recreate.
pub fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    id: SegmentId,
    size_bytes: u64,
) -> Result<Arc<Segment>> {
    let path = segment_path(dir, id);
    let file = fs
        .open(&path, OpenMode::CreateNew)
        .map_err(|e| Error::io("create segment", &path, e))?;
    write_segment_header(&*file, &path, id, size_bytes)?;
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(Arc::new(Segment::new(
        id,
        path,
        file,
        SparseIndex::new(id.first_position()),
    )))
}

/// Writes a fresh header into `file`, preallocates it and fsyncs it.
pub(crate) fn write_segment_header(
    file: &dyn WalFile,
    path: &Path,
    id: SegmentId,
    size_bytes: u64,
) -> Result<()> {
    let header = SegmentHeader {
        first_position: id.first_position(),
    }
    .encode();
    file.allocate(size_bytes)
        .map_err(|e| Error::io("preallocate segment", path, e))?;
    file.write_all_at(&header, 0)
        .map_err(|e| Error::io("write segment header", path, e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync segment", path, e))?;
    Ok(())
}

/// Lists the segment ids in `dir`, sorted; other files are ignored.
///
/// # Errors
/// An I/O error if the directory cannot be listed.
pub fn list_segments(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<SegmentId>> {
    let mut ids: Vec<SegmentId> = fs
        .list_dir(dir)
        .map_err(|e| Error::io("list directory", dir, e))?
        .iter()
        .filter_map(|name| SegmentId::from_file_name(name))
        .collect();
    ids.sort();
    Ok(ids)
}
