//! The three logs behind one interface, each configured for the same job: 256-byte records,
//! acknowledged only once `fdatasync`ed, ~64 MiB files, no compression. The README's
//! "Configuration" section says the same in prose; keep them in step.

use std::io;
use std::path::Path;

use protobuf::well_known_types::BytesValue;

/// A log under test, opened on an empty directory.
pub trait Engine: Sync {
    /// What one writer thread keeps between appends.
    type Writer: Send;

    /// The state for writer `id` (0-based; ids are unique within a measurement).
    fn writer(&self, id: usize) -> Self::Writer;

    /// Appends `records` as one batch and returns once all of them are durable.
    fn append(&self, writer: &mut Self::Writer, records: &[Vec<u8>]);

    /// Closes the log (not timed).
    fn close(self);
}

/// Which log; `ALL` is also the order of rows in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Hybridstore,
    RaftEngine,
    Okaywal,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Hybridstore, Kind::RaftEngine, Kind::Okaywal];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hybridstore => "hybridstore-wal",
            Kind::RaftEngine => "raft-engine 0.4.2",
            Kind::Okaywal => "okaywal 0.3.1",
        }
    }
}

/// Each file an engine rotates at: hybridstore-wal's default segment size.
pub const FILE_SIZE: u64 = hybridstore_wal::config::SEGMENT_SIZE_BYTES_DEFAULT;

/// The first 8 bytes of every record: the writer's record counter (from 1), little-endian.
/// raft-engine needs each entry to carry its own index; the other logs just store it.
pub fn record_index(record: &[u8]) -> u64 {
    u64::from_le_bytes(
        record[..8]
            .try_into()
            .expect("a record is at least 8 bytes"),
    )
}

// --- hybridstore-wal ------------------------------------------------------------------------

pub struct Hybridstore(hybridstore_wal::Wal);

impl Hybridstore {
    /// `Durability::Always` (fdatasync before acknowledgement) and otherwise the defaults: 64 MiB
    /// segments preallocated with fallocate.
    pub fn open(dir: &Path) -> Hybridstore {
        let options = hybridstore_wal::Options {
            durability: hybridstore_wal::Durability::Always,
            ..hybridstore_wal::Options::default()
        };
        debug_assert_eq!(options.segment_size_bytes, FILE_SIZE);
        Hybridstore(hybridstore_wal::Wal::open(dir, options).expect("open hybridstore-wal"))
    }
}

impl Engine for Hybridstore {
    type Writer = ();

    fn writer(&self, _id: usize) {}

    fn append(&self, _writer: &mut (), records: &[Vec<u8>]) {
        self.0.append(records).expect("hybridstore-wal append");
    }

    fn close(self) {
        self.0.close().expect("close hybridstore-wal");
    }
}

// --- raft-engine ----------------------------------------------------------------------------

/// raft-engine's entries are protobuf messages that know their own index. `BytesValue` (one
/// `bytes` field) adds 3 bytes of framing to a 256-byte record; the index is read from the
/// record's first 8 bytes, so nothing else is added.
pub struct RecordEntry;

impl raft_engine::MessageExt for RecordEntry {
    type Entry = BytesValue;

    fn index(e: &BytesValue) -> u64 {
        record_index(&e.value)
    }
}

pub struct RaftEngine(raft_engine::Engine);

/// One raft group (region) per writer, as TiKV appends each region's entries; group ids start
/// at 1.
pub struct RaftWriter {
    region: u64,
    batch: raft_engine::LogBatch,
    entries: Vec<BytesValue>,
}

impl RaftEngine {
    /// Defaults except: 64 MiB target file size (default 128 MiB) and compression off
    /// (`batch_compression_threshold` 0; the default compresses batches over 8 KiB with LZ4,
    /// which a batch of 100 records exceeds). Every write passes `sync = true`.
    pub fn open(dir: &Path) -> RaftEngine {
        let config = raft_engine::Config {
            dir: dir.to_str().expect("data directory is UTF-8").to_owned(),
            target_file_size: raft_engine::ReadableSize(FILE_SIZE),
            batch_compression_threshold: raft_engine::ReadableSize(0),
            ..raft_engine::Config::default()
        };
        RaftEngine(raft_engine::Engine::open(config).expect("open raft-engine"))
    }
}

impl Engine for RaftEngine {
    type Writer = RaftWriter;

    fn writer(&self, id: usize) -> RaftWriter {
        RaftWriter {
            region: id as u64 + 1,
            batch: raft_engine::LogBatch::default(),
            entries: Vec::new(),
        }
    }

    fn append(&self, w: &mut RaftWriter, records: &[Vec<u8>]) {
        // Reuse the entry buffers: building messages is raft-engine's API, allocating them anew
        // for every append would not be.
        w.entries.resize_with(records.len(), BytesValue::new);
        for (entry, record) in w.entries.iter_mut().zip(records) {
            entry.value.clear();
            entry.value.extend_from_slice(record);
        }
        w.batch
            .add_entries::<RecordEntry>(w.region, &w.entries[..records.len()])
            .expect("raft-engine add_entries");
        self.0.write(&mut w.batch, true).expect("raft-engine write");
    }

    fn close(self) {
        // raft-engine has no close: dropping the engine stops its threads. Every write was
        // already synced.
        drop(self.0);
    }
}

// --- okaywal --------------------------------------------------------------------------------

/// A checkpointer with nothing to persist: the benchmark keeps no state outside the log, so
/// checkpointing a segment only lets okaywal recycle the file.
#[derive(Debug)]
struct NothingToCheckpoint;

impl okaywal::LogManager for NothingToCheckpoint {
    fn recover(&mut self, _entry: &mut okaywal::Entry<'_>) -> io::Result<()> {
        Ok(())
    }

    fn checkpoint_to(
        &mut self,
        _last_checkpointed_id: okaywal::EntryId,
        _checkpointed_entries: &mut okaywal::SegmentReader,
        _wal: &okaywal::WriteAheadLog,
    ) -> io::Result<()> {
        Ok(())
    }
}

pub struct Okaywal(okaywal::WriteAheadLog);

/// Room left in each okaywal file when it is checkpointed, so that the entry crossing the
/// threshold (at most a batch of 100 records, ~27 KB) never has to extend the file.
const OKAYWAL_CHECKPOINT_MARGIN: u64 = 1024 * 1024;

impl Okaywal {
    /// Files preallocated (zero-filled, okaywal's own way) to 64 MiB instead of 1 MiB and
    /// checkpointed after 63 MiB (default: 768 KiB of 1 MiB); default 16 KiB write buffer.
    /// `EntryWriter::commit` returns only after `fdatasync` (okaywal batches the syncs of
    /// concurrent commits itself).
    pub fn open(dir: &Path) -> Okaywal {
        let config = okaywal::Configuration::default_for(dir)
            .preallocate_bytes(u32::try_from(FILE_SIZE).expect("file size fits okaywal's u32"))
            .checkpoint_after_bytes(FILE_SIZE - OKAYWAL_CHECKPOINT_MARGIN);
        Okaywal(config.open(NothingToCheckpoint).expect("open okaywal"))
    }
}

impl Engine for Okaywal {
    type Writer = ();

    fn writer(&self, _id: usize) {}

    fn append(&self, _writer: &mut (), records: &[Vec<u8>]) {
        // One entry per append; each record is one chunk of it.
        let mut entry = self.0.begin_entry().expect("okaywal begin_entry");
        for record in records {
            entry.write_chunk(record).expect("okaywal write_chunk");
        }
        entry.commit().expect("okaywal commit");
    }

    fn close(self) {
        self.0.shutdown().expect("shut okaywal down");
    }
}
