//! Helpers shared by the crash, fault-injection and property tests and the crash child process
//! (feature `testing`): self-describing batch payloads and a checker that proves a log holds only
//! whole batches with intact bytes.
//!
//! A record of a test batch is `batch id (u64) · batch length (u32) · index in batch (u32) ·
//! filler`, where the filler's length and bytes are derived from the id and index, so a checker
//! can tell a record that was torn, duplicated, reordered or cut off from a batch.

use std::collections::HashMap;

use crate::format::Position;
use crate::reader::Record;

const PAYLOAD_HEADER_LEN: usize = 16;

/// The records of test batch `batch_id` with `len` records; `filler_max` bounds the filler.
pub fn batch_records(batch_id: u64, len: u32, filler_max: usize) -> Vec<Vec<u8>> {
    (0..len)
        .map(|index| record_bytes(batch_id, len, index, filler_max))
        .collect()
}

fn filler_len(batch_id: u64, index: u32, filler_max: usize) -> usize {
    if filler_max == 0 {
        return 0;
    }
    (batch_id
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(index)
        % (filler_max as u64 + 1)) as usize
}

fn record_bytes(batch_id: u64, len: u32, index: u32, filler_max: usize) -> Vec<u8> {
    let filler = filler_len(batch_id, index, filler_max);
    let mut out = Vec::with_capacity(PAYLOAD_HEADER_LEN + filler);
    out.extend_from_slice(&batch_id.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend((0..filler).map(|i| (batch_id as usize ^ (index as usize * 131) ^ i) as u8));
    out
}

/// A batch found whole in a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundBatch {
    /// The batch's id.
    pub batch_id: u64,
    /// Position of its first record.
    pub first: Position,
    /// Its record count.
    pub len: u32,
}

/// Checks that `records` (read in order from a log) are whole test batches, each record intact
/// (as [`batch_records`] with `filler_max` made it), each batch id appearing once. Returns the
/// batches in order.
///
/// # Errors
/// A description of the first violation.
pub fn check_batches(records: &[Record], filler_max: usize) -> Result<Vec<FoundBatch>, String> {
    let mut batches: Vec<FoundBatch> = Vec::new();
    let mut seen: HashMap<u64, Position> = HashMap::new();
    let mut open: Option<(FoundBatch, u32)> = None;
    for record in records {
        let data = record.data.as_ref();
        if data.len() < PAYLOAD_HEADER_LEN {
            return Err(format!(
                "record {} is {} bytes, too short",
                record.position,
                data.len()
            ));
        }
        let word = |range: std::ops::Range<usize>| {
            data[range]
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        };
        let batch_id = word(0..8);
        let len = word(8..12) as u32;
        let index = word(12..16) as u32;
        if data != record_bytes(batch_id, len, index, filler_max).as_slice() {
            return Err(format!(
                "record {} (batch {batch_id} index {index}) has damaged bytes",
                record.position
            ));
        }
        match &mut open {
            Some((batch, next_index)) => {
                if batch.batch_id != batch_id || *next_index != index {
                    return Err(format!(
                        "record {}: batch {} is cut off at index {next_index} by batch {batch_id} index {index}",
                        record.position, batch.batch_id
                    ));
                }
                *next_index += 1;
            }
            None => {
                if index != 0 {
                    return Err(format!(
                        "record {}: batch {batch_id} starts at index {index}",
                        record.position
                    ));
                }
                if let Some(previous) = seen.insert(batch_id, record.position) {
                    return Err(format!(
                        "batch {batch_id} appears twice, at {previous} and {}",
                        record.position
                    ));
                }
                open = Some((
                    FoundBatch {
                        batch_id,
                        first: record.position,
                        len,
                    },
                    1,
                ));
            }
        }
        if let Some((batch, next_index)) = open {
            if next_index == batch.len {
                batches.push(batch);
                open = None;
            }
        }
    }
    if let Some((batch, next_index)) = open {
        return Err(format!(
            "batch {} at {} is partial: {next_index} of {} records",
            batch.batch_id, batch.first, batch.len
        ));
    }
    Ok(batches)
}

/// Every batch in `wal`, read from the start and checked with [`check_batches`].
///
/// # Panics
/// When a read returns corruption or the log breaks the batch model: what a crash test asserts.
pub fn batches_of(wal: &crate::Wal, filler_max: usize) -> Vec<FoundBatch> {
    let records: Vec<Record> = wal
        .reader(Position(0))
        .expect("a reader from the start")
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("corruption returned by a read: {e}"));
    check_batches(&records, filler_max).unwrap_or_else(|e| panic!("log breaks the model: {e}"))
}
