//! Keeps `wal/FORMAT.md` and the format code in step: the document's `constants` block must list
//! every `pub const` of `format.rs`, `identity.rs` and `prepare.rs` with the value the code has, and the marker
//! and index constants it documents.

use std::collections::BTreeMap;

use hybridstore_wal::format::*;
use hybridstore_wal::identity::{
    LogId, LogIdFile, LOG_ID_BYTES_OFFSET, LOG_ID_CRC_OFFSET, LOG_ID_FILE_NAME, LOG_ID_LEN,
    LOG_ID_MAGIC, LOG_ID_RESERVED_OFFSET, LOG_ID_TMP_FILE_NAME, LOG_ID_VERSION,
    LOG_ID_VERSION_OFFSET,
};
use hybridstore_wal::marker::{MARKER_FIXED_LEN, MARKER_MAGIC, MARKER_VERSION};
use hybridstore_wal::prepare::PREPARED_SEGMENT_FILE_NAME;
use hybridstore_wal::segment::INDEX_INTERVAL_BYTES;

fn documented() -> BTreeMap<String, String> {
    let doc = include_str!("../FORMAT.md");
    let block = doc
        .split("```constants\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("FORMAT.md has a ```constants block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(" = ")
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            (
                name.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            )
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn in_code() -> BTreeMap<String, String> {
    [
        ("SEGMENT_MAGIC", text(&SEGMENT_MAGIC)),
        ("FORMAT_VERSION", FORMAT_VERSION.to_string()),
        ("SEGMENT_HEADER_LEN", SEGMENT_HEADER_LEN.to_string()),
        (
            "SEGMENT_HEADER_VERSION_OFFSET",
            SEGMENT_HEADER_VERSION_OFFSET.to_string(),
        ),
        (
            "SEGMENT_HEADER_FLAGS_OFFSET",
            SEGMENT_HEADER_FLAGS_OFFSET.to_string(),
        ),
        (
            "SEGMENT_HEADER_FIRST_POSITION_OFFSET",
            SEGMENT_HEADER_FIRST_POSITION_OFFSET.to_string(),
        ),
        (
            "SEGMENT_HEADER_RESERVED_OFFSET",
            SEGMENT_HEADER_RESERVED_OFFSET.to_string(),
        ),
        (
            "SEGMENT_HEADER_CRC_OFFSET",
            SEGMENT_HEADER_CRC_OFFSET.to_string(),
        ),
        ("FRAME_HEADER_LEN", FRAME_HEADER_LEN.to_string()),
        (
            "FRAME_HEADER_CRC_OFFSET",
            FRAME_HEADER_CRC_OFFSET.to_string(),
        ),
        ("FRAME_BODY_LEN_OFFSET", FRAME_BODY_LEN_OFFSET.to_string()),
        (
            "FRAME_FIRST_POSITION_OFFSET",
            FRAME_FIRST_POSITION_OFFSET.to_string(),
        ),
        (
            "FRAME_RECORD_COUNT_OFFSET",
            FRAME_RECORD_COUNT_OFFSET.to_string(),
        ),
        ("FRAME_BODY_CRC_OFFSET", FRAME_BODY_CRC_OFFSET.to_string()),
        ("FRAME_ALIGN", FRAME_ALIGN.to_string()),
        ("RECORD_LEN_PREFIX_LEN", RECORD_LEN_PREFIX_LEN.to_string()),
        ("SEGMENT_FILE_SUFFIX", SEGMENT_FILE_SUFFIX.to_string()),
        ("SEGMENT_FILE_DIGITS", SEGMENT_FILE_DIGITS.to_string()),
        ("MARKER_MAGIC", text(&MARKER_MAGIC)),
        ("MARKER_VERSION", MARKER_VERSION.to_string()),
        ("MARKER_FIXED_LEN", MARKER_FIXED_LEN.to_string()),
        ("INDEX_INTERVAL_BYTES", INDEX_INTERVAL_BYTES.to_string()),
        ("LOG_ID_FILE_NAME", LOG_ID_FILE_NAME.to_string()),
        (
            "PREPARED_SEGMENT_FILE_NAME",
            PREPARED_SEGMENT_FILE_NAME.to_string(),
        ),
        ("LOG_ID_TMP_FILE_NAME", LOG_ID_TMP_FILE_NAME.to_string()),
        ("LOG_ID_MAGIC", text(&LOG_ID_MAGIC)),
        ("LOG_ID_VERSION", LOG_ID_VERSION.to_string()),
        ("LOG_ID_VERSION_OFFSET", LOG_ID_VERSION_OFFSET.to_string()),
        ("LOG_ID_RESERVED_OFFSET", LOG_ID_RESERVED_OFFSET.to_string()),
        ("LOG_ID_BYTES_OFFSET", LOG_ID_BYTES_OFFSET.to_string()),
        ("LOG_ID_CRC_OFFSET", LOG_ID_CRC_OFFSET.to_string()),
        ("LOG_ID_LEN", LOG_ID_LEN.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Proves every documented constant has the code's value and every code constant is documented.
#[test]
fn format_md_matches_code() {
    assert_eq!(
        documented(),
        in_code(),
        "FORMAT.md's constants block and the code disagree"
    );
}

/// Proves the list above covers every `pub const` in `format.rs` and `identity.rs`, so a new
/// constant cannot be added to the code without being documented.
#[test]
fn every_format_constant_is_listed() {
    let listed = in_code();
    for (file, source) in [
        ("format.rs", include_str!("../src/format.rs")),
        ("identity.rs", include_str!("../src/identity.rs")),
        ("prepare.rs", include_str!("../src/prepare.rs")),
    ] {
        check_listed(file, source, &listed);
    }
}

fn check_listed(file: &str, source: &str, listed: &BTreeMap<String, String>) {
    for line in source.lines() {
        let Some(rest) = line.trim_start().strip_prefix("pub const ") else {
            continue;
        };
        let Some(name) = rest.split(':').next() else {
            continue;
        };
        if name.contains('(') {
            continue; // `pub const fn`
        }
        assert!(
            listed.contains_key(name),
            "{file} constant {name} is missing from FORMAT.md's constants block"
        );
    }
}

/// Proves the log id table's layout holds: the field offsets the table gives are where the encoder
/// puts magic, version, reserved word, id and checksum, and the checksum covers bytes `0..32`.
#[test]
fn documented_log_id_layout() {
    let id = LogId::from_bytes(*b"0123456789abcdef");
    let bytes = LogIdFile { id }.encode();
    assert_eq!(bytes.len(), 36);
    assert_eq!(&bytes[0..8], b"HSWALLID");
    assert_eq!(bytes[8..12], 1u32.to_le_bytes());
    assert_eq!(bytes[12..16], [0; 4]);
    assert_eq!(&bytes[16..32], b"0123456789abcdef");
    assert_eq!(bytes[32..36], crc32fast::hash(&bytes[0..32]).to_le_bytes());
}

/// Proves the frame diagram's example sizes hold: a frame of one 256 B record is 288 bytes.
#[test]
fn documented_frame_size_example() {
    let frame = encode_frame(Position(0), &[[7u8; 256]]);
    assert_eq!(
        frame.len(),
        288,
        "24 B header + 4 B length + 256 B + 4 B padding"
    );
}
