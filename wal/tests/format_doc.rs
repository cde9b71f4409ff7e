//! Keeps `wal/FORMAT.md` and the format code in step: the document's `constants` block must list
//! every `pub const` of `format.rs` with the value the code has, and the marker and index
//! constants it documents.

use std::collections::BTreeMap;

use hybridstore_wal::format::*;
use hybridstore_wal::marker::{MARKER_FIXED_LEN, MARKER_MAGIC, MARKER_VERSION};
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

/// Proves the list above covers every `pub const` in `format.rs`, so a new constant cannot be
/// added to the code without being documented.
#[test]
fn every_format_constant_is_listed() {
    let source = include_str!("../src/format.rs");
    let listed = in_code();
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
            "format.rs constant {name} is missing from FORMAT.md's constants block"
        );
    }
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
