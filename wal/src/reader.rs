//! Readers: iterate durable records forward from any position, and tail-follow the log.
//!
//! Sealed segments are read through a memory map (shared by all readers of the segment); the
//! active segment is read with `pread` in chunks, never past the published durable offset, so a
//! reader can run beside the writer and never sees a record that is not durable. Every frame's
//! checksums are verified before any of its records is returned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    FrameRef, Position, FRAME_HEADER_LEN, RECORD_LEN_PREFIX_LEN, SEGMENT_HEADER_LEN,
};
use crate::segment::Segment;
use crate::wal::{lock, Published, Shared};

/// Bytes read from the active segment per `pread`.
const ACTIVE_CHUNK_BYTES: u64 = 1024 * 1024;

/// One record, with the position the log gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's position.
    pub position: Position,
    /// The record's bytes (a zero-copy slice of the segment where possible).
    pub data: Bytes,
}

/// The records of the frame being read.
#[derive(Debug)]
struct FrameCursor {
    body: Bytes,
    at: usize,
    remaining: u32,
    position: Position,
}

/// A window of one segment's bytes.
#[derive(Debug)]
struct Window {
    segment: Arc<Segment>,
    bytes: Bytes,
    /// File offset of `bytes[0]`.
    base: u64,
    /// File offset of the next frame.
    next_offset: u64,
    /// Position of the first record of the next frame.
    next_position: Position,
    /// Frames end here (file offset): the end of a sealed segment, or the durable offset of
    /// the active one when the window was read.
    end_offset: u64,
    sealed: bool,
}

/// Iterates durable records forward from a position; see [`crate::Wal::reader`].
///
/// As an [`Iterator`] it stops when it has caught up with the durable end; call it again later
/// (or use [`Reader::next_blocking`]) to continue with records that became durable since.
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
    next: Position,
    frame: Option<FrameCursor>,
    window: Option<Window>,
    failed: Option<(Arc<Segment>, u64, CorruptionKind)>,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>, from: Position) -> Reader {
        Reader {
            shared,
            next: from,
            frame: None,
            window: None,
            failed: None,
        }
    }

    /// The position of the next record this reader will return.
    pub fn position(&self) -> Position {
        self.next
    }

    /// The next durable record, or `None` once caught up with the durable end.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when a frame fails its checks (the reader stays failed);
    /// [`Error::Io`] when a read fails.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if let Some((segment, offset, kind)) = &self.failed {
            return Err(segment.corrupt(*offset, kind.clone()));
        }
        loop {
            if let Some(record) = self.next_in_frame() {
                return Ok(Some(record));
            }
            match self.load_next_frame() {
                Ok(true) => continue,
                Ok(false) => return Ok(None),
                Err(error) => {
                    if let Error::Corrupt { offset, kind, .. } = &error {
                        if let Some(window) = &self.window {
                            self.failed = Some((window.segment.clone(), *offset, kind.clone()));
                        }
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Like [`Reader::next_record`], but when caught up waits up to `timeout` for more records to
    /// become durable. Returns `None` on timeout or when the log closes.
    ///
    /// # Errors
    /// As [`Reader::next_record`].
    pub fn next_blocking(&mut self, timeout: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(record) = self.next_record()? {
                return Ok(Some(record));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let durable = self.shared.wait_durable_beyond(self.next, deadline - now);
            if durable <= self.next {
                return Ok(None);
            }
        }
    }

    fn next_in_frame(&mut self) -> Option<Record> {
        let frame = self.frame.as_mut()?;
        while frame.remaining > 0 {
            let prefix = frame.body.get(frame.at..frame.at + RECORD_LEN_PREFIX_LEN)?;
            let len = u32::from_le_bytes(prefix.try_into().ok()?) as usize;
            let start = frame.at + RECORD_LEN_PREFIX_LEN;
            // The frame's structure was verified when it was loaded; these bounds hold.
            let data = frame.body.slice(start..start + len);
            frame.at = start + len;
            frame.remaining -= 1;
            let position = frame.position;
            frame.position = position.advance(1);
            if position >= self.next {
                self.next = position.advance(1);
                return Some(Record { position, data });
            }
        }
        self.frame = None;
        None
    }

    fn published(&self) -> Published {
        lock(&self.shared.published).clone()
    }

    /// Loads the frame holding `self.next`; `false` when caught up with the durable end.
    fn load_next_frame(&mut self) -> Result<bool> {
        loop {
            if let Some(window) = &mut self.window {
                if window.next_offset < window.end_offset {
                    let frame = decode_in_window(window)?;
                    self.frame = Some(frame);
                    return Ok(true);
                }
            }
            let published = self.published();
            if self.next >= published.durable_end {
                return Ok(false);
            }
            self.window = Some(self.position_window(&published)?);
        }
    }

    /// Builds a window that starts at the frame holding (or following) `self.next`.
    fn position_window(&mut self, published: &Published) -> Result<Window> {
        let segments = &published.segments;
        let active = segments
            .last()
            .expect("a log has an active segment")
            .clone();
        if let Some(old) = self.window.take() {
            // Continue where the previous window stopped, if it is still the right place.
            if old.next_position == self.next || old.next_position <= self.next {
                if old.sealed {
                    let at = segments.partition_point(|s| s.id <= old.segment.id);
                    if let Some(next_segment) = segments.get(at) {
                        if next_segment.id.first_position() != old.next_position {
                            return Err(old.segment.corrupt(
                                old.next_offset,
                                CorruptionKind::SegmentGap {
                                    end: old.next_position,
                                    next_first: next_segment.id.first_position(),
                                },
                            ));
                        }
                        return open_window(
                            next_segment.clone(),
                            SEGMENT_HEADER_LEN as u64,
                            old.next_position,
                            published,
                        );
                    }
                } else {
                    return open_window(old.segment, old.next_offset, old.next_position, published);
                }
            }
        }
        let at = segments.partition_point(|s| s.id.first_position() <= self.next);
        let segment = at
            .checked_sub(1)
            .and_then(|i| segments.get(i))
            .ok_or(Error::PositionTruncated {
                requested: self.next,
                first: segments[0].id.first_position(),
            })?
            .clone();
        let is_active = Arc::ptr_eq(&segment, &active);
        if !is_active {
            segment.ensure_sealed_indexed()?;
        }
        let entry = segment.index().seek(self.next, segment.id.first_position());
        open_window(segment, entry.offset, entry.position, published)
    }
}

/// Opens a window on `segment` starting at frame offset `offset` (whose first record is `position`).
fn open_window(
    segment: Arc<Segment>,
    offset: u64,
    position: Position,
    published: &Published,
) -> Result<Window> {
    let active = published
        .segments
        .last()
        .expect("a log has an active segment");
    if Arc::ptr_eq(&segment, active) {
        let end_offset = published.durable_offset;
        let bytes = read_active(&segment, offset, end_offset, 0)?;
        Ok(Window {
            segment,
            bytes,
            base: offset,
            next_offset: offset,
            next_position: position,
            end_offset,
            sealed: false,
        })
    } else {
        let bytes = segment.sealed_view()?;
        let end_offset = bytes.len() as u64;
        Ok(Window {
            segment,
            bytes,
            base: 0,
            next_offset: offset,
            next_position: position,
            end_offset,
            sealed: true,
        })
    }
}

/// Reads `[offset, min(end, offset + max(chunk, at_least)))` of the active segment.
fn read_active(segment: &Segment, offset: u64, end: u64, at_least: u64) -> Result<Bytes> {
    let len = (end - offset).min(ACTIVE_CHUNK_BYTES.max(at_least));
    let mut buf = vec![0u8; len as usize];
    segment
        .file
        .read_exact_at(&mut buf, offset)
        .map_err(|e| Error::io("read", &segment.path, e))?;
    Ok(Bytes::from(buf))
}

/// Decodes and verifies the frame at the window's next offset, advancing the window.
fn decode_in_window(window: &mut Window) -> Result<FrameCursor> {
    let mut rel = (window.next_offset - window.base) as usize;
    let available = window.bytes.len() - rel;
    if !window.sealed && available >= FRAME_HEADER_LEN {
        // A frame may run past the chunk read so far: re-read enough of the active segment.
        if let Ok(header) = crate::format::FrameHeader::decode_from(&window.bytes[rel..]) {
            let frame_len = header.frame_len() as u64;
            if frame_len as usize > available && window.next_offset + frame_len <= window.end_offset
            {
                window.bytes = read_active(
                    &window.segment,
                    window.next_offset,
                    window.end_offset,
                    frame_len,
                )?;
                window.base = window.next_offset;
                rel = 0;
            }
        }
    } else if !window.sealed {
        window.bytes = read_active(
            &window.segment,
            window.next_offset,
            window.end_offset,
            FRAME_HEADER_LEN as u64,
        )?;
        window.base = window.next_offset;
        rel = 0;
    }
    let limit = (window.end_offset - window.base) as usize;
    let bytes = &window.bytes[rel..limit.min(window.bytes.len())];
    let frame = FrameRef::decode_from(bytes)
        .and_then(|frame| {
            if frame.header.first_position == window.next_position {
                Ok(frame)
            } else {
                Err(CorruptionKind::PositionMismatch {
                    expected: window.next_position,
                    found: frame.header.first_position,
                })
            }
        })
        .map_err(|kind| window.segment.corrupt(window.next_offset, kind))?;
    let header = frame.header;
    let body_start = rel + FRAME_HEADER_LEN;
    let cursor = FrameCursor {
        body: window
            .bytes
            .slice(body_start..body_start + header.body_len as usize),
        at: 0,
        remaining: header.record_count,
        position: header.first_position,
    };
    window.next_offset += header.frame_len() as u64;
    window.next_position = header.end_position();
    Ok(cursor)
}

impl Iterator for Reader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}
