//! The identity of a log: the [`LogId`] a log is given when it is created, kept in the `log-id`
//! file beside its segments. Sinks that follow the log (the Postgres projector, later a cache and
//! a shipper) are to record it beside their cursors, so that a database projected from one log is
//! never fed from another: a data directory restored from a backup, or a fresh log pointed at an
//! old database, shows up as a different id instead of as positions that happen to line up.
//!
//! Layout of `log-id` (little-endian, exactly [`LOG_ID_LEN`] bytes): magic `HSWALLID` (8) ·
//! version u32 · reserved u32 (zero) · the id's 16 bytes · CRC-32 of the 32 bytes before.
//!
//! Creating it ([`create_log_id`]), under the writer lock, in order:
//! 1. Remove a stale `log-id.tmp` that a crash during an earlier creation left behind. It was
//!    never renamed into place, so no open ever returned its id.
//! 2. Write the encoded file to a new `log-id.tmp` (0600) and **fsync** it, so that the name
//!    the rename publishes can only ever point at complete bytes.
//! 3. Rename it to `log-id` and **fsync the directory**. Only then does the open return the id.
//!
//! # Invariants
//! - The engine never writes `log-id` in place, never replaces it and never removes it. Once an
//!   open has returned an id, every later open returns the same one, across any power loss:
//!   a new file is created only when none exists, and it is durable before any open returns it.
//! - A `log-id` that does not decode fails the open ([`Error::LogIdCorrupt`]) and is left as it
//!   is. Recreating it would give the log a new identity, and every sink that recorded the old
//!   one would refuse the log (or worse, a sink that lost its record would follow it as new).

use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, LogIdCorruption, Result};
use crate::format::crc;
use crate::io::{FileSystem, OpenMode};

/// File name of the log id inside the log directory.
pub const LOG_ID_FILE_NAME: &str = "log-id";
/// Temporary name the log id is written under before being renamed into place.
pub const LOG_ID_TMP_FILE_NAME: &str = "log-id.tmp";
/// Magic bytes at the start of the `log-id` file.
pub const LOG_ID_MAGIC: [u8; 8] = *b"HSWALLID";
/// Version of the `log-id` file layout.
pub const LOG_ID_VERSION: u32 = 1;
/// Offset of the version in the `log-id` file.
pub const LOG_ID_VERSION_OFFSET: usize = 8;
/// Offset of the reserved word (always zero in version 1) in the `log-id` file.
pub const LOG_ID_RESERVED_OFFSET: usize = 12;
/// Offset of the id's 16 bytes in the `log-id` file.
pub const LOG_ID_BYTES_OFFSET: usize = 16;
/// Offset of the checksum (CRC-32 of bytes `0..32`) in the `log-id` file.
pub const LOG_ID_CRC_OFFSET: usize = 32;
/// Length of the `log-id` file: every version-1 file is exactly this long.
pub const LOG_ID_LEN: usize = 36;

/// Bytes of the id itself (a UUID).
const ID_LEN: usize = 16;

const _: () = assert!(LOG_ID_VERSION_OFFSET == LOG_ID_MAGIC.len());
const _: () = assert!(LOG_ID_RESERVED_OFFSET == LOG_ID_VERSION_OFFSET + 4);
const _: () = assert!(LOG_ID_BYTES_OFFSET == LOG_ID_RESERVED_OFFSET + 4);
const _: () = assert!(LOG_ID_CRC_OFFSET == LOG_ID_BYTES_OFFSET + ID_LEN);
const _: () = assert!(LOG_ID_CRC_OFFSET + 4 == LOG_ID_LEN);

/// The identity of a log: 16 bytes, a UUID (version 7 for ids this engine creates, so ids sort
/// by creation time). Shown and parsed as the lowercase hyphenated UUID.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId([u8; ID_LEN]);

impl LogId {
    /// A new id: a version-7 UUID (a millisecond timestamp and random bits), so two logs never
    /// get the same id in practice.
    pub(crate) fn generate() -> LogId {
        LogId(uuid::Uuid::now_v7().into_bytes())
    }

    /// The id from its 16 bytes (as [`LogId::as_bytes`] returns them).
    pub const fn from_bytes(bytes: [u8; ID_LEN]) -> LogId {
        LogId(bytes)
    }

    /// The id's 16 bytes, in UUID byte order (as stored in the `log-id` file).
    pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogId({self})")
    }
}

/// A string that is not a log id as [`LogId`]'s `Display` writes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid log id {input:?}: expected a lowercase hyphenated UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
)]
pub struct ParseLogIdError {
    /// The string that was given.
    pub input: String,
}

impl FromStr for LogId {
    type Err = ParseLogIdError;

    /// Parses exactly the form `Display` writes. Other spellings a UUID parser would accept
    /// (upper case, braces, `urn:uuid:`, no hyphens) are refused, so that an id stored as text
    /// by a sink has one spelling and text comparison agrees with id comparison.
    fn from_str(text: &str) -> Result<LogId, ParseLogIdError> {
        let error = || ParseLogIdError {
            input: text.to_owned(),
        };
        let uuid = uuid::Uuid::try_parse(text).map_err(|_| error())?;
        let id = LogId(uuid.into_bytes());
        if id.to_string() != text {
            return Err(error());
        }
        Ok(id)
    }
}

/// As the string `Display` writes: sinks store and compare it as text.
#[cfg(feature = "serde")]
impl serde::Serialize for LogId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// From the string `Display` writes, and no other spelling (see [`LogId::from_str`]).
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for LogId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<LogId, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The contents of the `log-id` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogIdFile {
    /// The log's id.
    pub id: LogId,
}

impl LogIdFile {
    /// Encodes the file into `out` (which must be [`LOG_ID_LEN`] bytes).
    ///
    /// # Panics
    /// If `out` is not exactly [`LOG_ID_LEN`] bytes (a caller bug).
    pub fn encode_into(&self, out: &mut [u8]) {
        assert_eq!(out.len(), LOG_ID_LEN);
        out.fill(0);
        out[..LOG_ID_VERSION_OFFSET].copy_from_slice(&LOG_ID_MAGIC);
        out[LOG_ID_VERSION_OFFSET..LOG_ID_RESERVED_OFFSET]
            .copy_from_slice(&LOG_ID_VERSION.to_le_bytes());
        out[LOG_ID_BYTES_OFFSET..LOG_ID_CRC_OFFSET].copy_from_slice(self.id.as_bytes());
        let checksum = crc(&out[..LOG_ID_CRC_OFFSET]);
        out[LOG_ID_CRC_OFFSET..].copy_from_slice(&checksum.to_le_bytes());
    }

    /// The encoded file as an array.
    pub fn encode(&self) -> [u8; LOG_ID_LEN] {
        let mut out = [0u8; LOG_ID_LEN];
        self.encode_into(&mut out);
        out
    }

    /// Decodes and checks the whole `log-id` file: its length, magic, checksum, version and
    /// reserved word, in that order.
    ///
    /// # Errors
    /// A [`LogIdCorruption`] naming the first check the bytes fail.
    pub fn decode_from(bytes: &[u8]) -> Result<LogIdFile, LogIdCorruption> {
        let Ok(bytes) = <&[u8; LOG_ID_LEN]>::try_from(bytes) else {
            return Err(LogIdCorruption::WrongLength {
                len: bytes.len() as u64,
            });
        };
        if bytes[..LOG_ID_VERSION_OFFSET] != LOG_ID_MAGIC {
            return Err(LogIdCorruption::BadMagic);
        }
        let stored = u32_at(bytes, LOG_ID_CRC_OFFSET);
        let computed = crc(&bytes[..LOG_ID_CRC_OFFSET]);
        if stored != computed {
            return Err(LogIdCorruption::Checksum {
                expected: stored,
                actual: computed,
            });
        }
        let version = u32_at(bytes, LOG_ID_VERSION_OFFSET);
        if version != LOG_ID_VERSION {
            return Err(LogIdCorruption::UnsupportedVersion { version });
        }
        let reserved = u32_at(bytes, LOG_ID_RESERVED_OFFSET);
        if reserved != 0 {
            return Err(LogIdCorruption::NonZeroReserved { reserved });
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&bytes[LOG_ID_BYTES_OFFSET..LOG_ID_CRC_OFFSET]);
        Ok(LogIdFile {
            id: LogId::from_bytes(id),
        })
    }
}

/// The little-endian u32 at `offset`; only called with offsets the constants above keep inside
/// the fixed-length file.
fn u32_at(bytes: &[u8; LOG_ID_LEN], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

/// Reads and checks the `log-id` file of the log in `dir`: `None` when there is none (a log
/// written before log ids, or opened read-only before its first writable open). Writes nothing
/// and syncs nothing.
///
/// # Errors
/// [`Error::LogIdCorrupt`] when the file exists but is not a valid log id; [`Error::Io`] when a
/// call fails.
pub fn read_log_id(fs: &dyn FileSystem, dir: &Path) -> Result<Option<LogId>> {
    let path = dir.join(LOG_ID_FILE_NAME);
    let file = match fs.open(&path, OpenMode::ReadOnly) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open log id", &path, e)),
    };
    let len = file.len().map_err(|e| Error::io("stat log id", &path, e))?;
    // A file of the wrong length is damaged whatever it holds; not reading it keeps a huge
    // stray file from being read into memory.
    if len != LOG_ID_LEN as u64 {
        return Err(Error::LogIdCorrupt {
            path,
            kind: LogIdCorruption::WrongLength { len },
        });
    }
    let mut bytes = [0u8; LOG_ID_LEN];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io("read log id", &path, e))?;
    match LogIdFile::decode_from(&bytes) {
        Ok(decoded) => Ok(Some(decoded.id)),
        Err(kind) => Err(Error::LogIdCorrupt { path, kind }),
    }
}

/// Gives the log in `dir` a new id and makes it durable (the numbered steps in the module docs).
/// The caller holds the writer lock and has seen that `log-id` does not exist.
///
/// # Errors
/// [`Error::Io`] when a call fails. The log then has no id yet, or (if only the final directory
/// fsync failed) one that the next open makes durable before returning it.
pub(crate) fn create_log_id(fs: &dyn FileSystem, dir: &Path) -> Result<LogId> {
    let tmp = dir.join(LOG_ID_TMP_FILE_NAME);
    let path = dir.join(LOG_ID_FILE_NAME);
    match fs.remove_file(&tmp) {
        Ok(()) => {
            tracing::info!(path = %tmp.display(), "removed a stale log id left unfinished by a crash")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale log id", &tmp, e)),
    }
    let id = LogId::generate();
    let encoded = LogIdFile { id }.encode();
    debug_assert_eq!(LogIdFile::decode_from(&encoded), Ok(LogIdFile { id }));
    let file = fs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io("create log id", &tmp, e))?;
    file.write_all_at(&encoded, 0)
        .map_err(|e| Error::io("write log id", &tmp, e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync log id", &tmp, e))?;
    drop(file);
    fs.rename(&tmp, &path)
        .map_err(|e| Error::io("rename log id", &path, e))?;
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LogId {
        LogId::from_bytes([
            0x01, 0x90, 0xb6, 0xf4, 0x3c, 0x2a, 0x7d, 0x10, 0x8e, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x66, 0x77,
        ])
    }

    /// Proves an id prints as the lowercase hyphenated UUID and parses back from exactly that.
    #[test]
    fn display_and_parse_round_trip() {
        let id = sample();
        assert_eq!(id.to_string(), "0190b6f4-3c2a-7d10-8e11-223344556677");
        assert_eq!(
            format!("{id:?}"),
            "LogId(0190b6f4-3c2a-7d10-8e11-223344556677)"
        );
        assert_eq!(id.to_string().parse::<LogId>(), Ok(id));
        assert_eq!(LogId::from_bytes(*id.as_bytes()), id);
    }

    /// Proves spellings other than the one `Display` writes are refused, naming the input.
    #[test]
    fn parse_refuses_other_spellings() {
        for text in [
            "0190B6F4-3C2A-7D10-8E11-223344556677",
            "0190b6f43c2a7d108e11223344556677",
            "{0190b6f4-3c2a-7d10-8e11-223344556677}",
            "urn:uuid:0190b6f4-3c2a-7d10-8e11-223344556677",
            "0190b6f4-3c2a-7d10-8e11-22334455667",
            "",
            "not a log id",
        ] {
            let error = text.parse::<LogId>().unwrap_err();
            assert_eq!(error.input, text);
            assert!(error.to_string().contains("lowercase hyphenated UUID"));
        }
    }

    /// Proves generated ids are version-7 UUIDs and differ from each other.
    #[test]
    fn generated_ids_are_v7_and_distinct() {
        let a = LogId::generate();
        let b = LogId::generate();
        assert_ne!(a, b);
        assert_eq!(uuid::Uuid::from_bytes(*a.as_bytes()).get_version_num(), 7);
    }

    /// Proves the file round-trips with the documented layout, and that every flipped bit, every
    /// truncation and every extension is refused with the matching kind.
    #[test]
    fn file_round_trip_and_damage() {
        let file = LogIdFile { id: sample() };
        let bytes = file.encode();
        assert_eq!(&bytes[..8], b"HSWALLID");
        assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &[0; 4]);
        assert_eq!(&bytes[16..32], sample().as_bytes());
        assert_eq!(&bytes[32..], &crc32fast::hash(&bytes[..32]).to_le_bytes());
        assert_eq!(LogIdFile::decode_from(&bytes), Ok(file));
        for bit in 0..LOG_ID_LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            let error = LogIdFile::decode_from(&flipped).unwrap_err();
            if bit / 8 < LOG_ID_VERSION_OFFSET {
                assert_eq!(error, LogIdCorruption::BadMagic, "bit {bit}");
            } else {
                assert!(
                    matches!(error, LogIdCorruption::Checksum { .. }),
                    "bit {bit}: {error}"
                );
            }
        }
        for len in 0..LOG_ID_LEN {
            assert_eq!(
                LogIdFile::decode_from(&bytes[..len]),
                Err(LogIdCorruption::WrongLength { len: len as u64 })
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(
            LogIdFile::decode_from(&longer),
            Err(LogIdCorruption::WrongLength { len: 37 })
        );
    }

    /// Proves a file with a valid checksum but a version or reserved word this reader does not
    /// know is refused as such, not taken for a checksum error.
    #[test]
    fn future_version_and_reserved_bits_are_refused() {
        let reseal = |bytes: &mut [u8; LOG_ID_LEN]| {
            let checksum = crc(&bytes[..LOG_ID_CRC_OFFSET]);
            bytes[LOG_ID_CRC_OFFSET..].copy_from_slice(&checksum.to_le_bytes());
        };
        let mut version_2 = LogIdFile { id: sample() }.encode();
        version_2[LOG_ID_VERSION_OFFSET..LOG_ID_RESERVED_OFFSET]
            .copy_from_slice(&2u32.to_le_bytes());
        reseal(&mut version_2);
        assert_eq!(
            LogIdFile::decode_from(&version_2),
            Err(LogIdCorruption::UnsupportedVersion { version: 2 })
        );
        let mut reserved = LogIdFile { id: sample() }.encode();
        reserved[LOG_ID_RESERVED_OFFSET] = 1;
        reseal(&mut reserved);
        assert_eq!(
            LogIdFile::decode_from(&reserved),
            Err(LogIdCorruption::NonZeroReserved { reserved: 1 })
        );
    }

    /// Proves a log id serializes as its string and deserializes only from that spelling.
    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_the_string() {
        let id = sample();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"0190b6f4-3c2a-7d10-8e11-223344556677\"");
        assert_eq!(serde_json::from_str::<LogId>(&json).unwrap(), id);
        let upper = serde_json::from_str::<LogId>("\"0190B6F4-3C2A-7D10-8E11-223344556677\"");
        assert!(upper.is_err());
        assert!(serde_json::from_str::<LogId>("17").is_err());
    }
}
