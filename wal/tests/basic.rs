//! The log's everyday surface on the real file system: append, read, rotate, reopen, lock,
//! tail-follow, truncate, concurrency, and input errors.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hybridstore_wal::{Durability, Error, Options, Position, Wal};

fn options(segment_size_bytes: u64) -> Options {
    Options {
        segment_size_bytes,
        ..Options::default()
    }
}

fn read_all(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
    wal.reader(Position(from))
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.position.0, r.data.to_vec())
        })
        .collect()
}

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}-{}", "x".repeat((i % 37) as usize)).into_bytes()
}

/// Proves records come back in order with dense positions across rotations and a clean reopen.
#[test]
fn append_read_rotate_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), options(1024)).unwrap();
    for i in 0..200u64 {
        let result = wal.append(&[payload(i)]).unwrap();
        assert_eq!(result.first, Position(i));
    }
    assert!(wal.segment_ids().len() > 5, "small segments must rotate");
    let all = read_all(&wal, 0);
    assert_eq!(all.len(), 200);
    for (i, (position, data)) in all.iter().enumerate() {
        assert_eq!(*position, i as u64);
        assert_eq!(data, &payload(i as u64));
    }
    // Reading from the middle of a sealed segment and of the active one.
    assert_eq!(read_all(&wal, 117)[0], (117, payload(117)));
    assert_eq!(read_all(&wal, 199), vec![(199, payload(199))]);
    wal.close().unwrap();
    assert!(dir.path().join("clean-shutdown").exists());

    let wal = Wal::open(dir.path(), options(1024)).unwrap();
    assert!(
        !dir.path().join("clean-shutdown").exists(),
        "marker is consumed at open"
    );
    assert_eq!(wal.durable_end(), Position(200));
    assert_eq!(wal.append(&[b"after"]).unwrap().first, Position(200));
    assert_eq!(read_all(&wal, 150).len(), 51);
}

/// Proves a multi-record append gets consecutive positions and reads back whole.
#[test]
fn batch_append_positions() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default()).unwrap();
    wal.append(&[b"a"]).unwrap();
    let batch = wal.append(&[b"b".as_slice(), b"c", b"d"]).unwrap();
    assert_eq!((batch.first, batch.last), (Position(1), Position(3)));
    let all: Vec<Vec<u8>> = read_all(&wal, 0).into_iter().map(|(_, d)| d).collect();
    assert_eq!(
        all,
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
    );
}

/// Proves a second writer on the same directory gets `Locked`, and the lock frees on close.
#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default()).unwrap();
    let second = Wal::open(dir.path(), Options::default());
    assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
    wal.close().unwrap();
    Wal::open(dir.path(), Options::default()).unwrap();
}

/// Proves the directory is created 0700 and segment files 0600.
#[test]
fn permissions() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("wal");
    let wal = Wal::open(&dir, Options::default()).unwrap();
    wal.append(&[b"x"]).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let segment = dir.join("00000000000000000000.wal");
    assert_eq!(mode(&segment), 0o600);
}

/// Proves bad input is refused with a typed error and writes nothing.
#[test]
fn bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), options(1024)).unwrap();
    let empty: [&[u8]; 0] = [];
    assert!(matches!(wal.append(&empty), Err(Error::EmptyAppend)));
    let too_big = vec![0u8; 2000];
    assert!(matches!(
        wal.append(&[too_big]),
        Err(Error::AppendTooLarge { .. })
    ));
    assert_eq!(wal.durable_end(), Position(0));
    let bad = Wal::open(dir.path().join("x"), options(10));
    assert!(matches!(bad, Err(Error::InvalidConfig(_))));
}

/// Proves concurrent appenders all get distinct positions and every record reads back intact.
#[test]
fn concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), options(64 * 1024)).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let wal = wal.clone();
            thread::spawn(move || {
                (0..100u64)
                    .map(|i| {
                        let data = format!("t{t}-i{i}");
                        (wal.append(&[data.as_bytes()]).unwrap().first.0, data)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut expected: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(|(p, d)| (p, d.into_bytes()))
        .collect();
    expected.sort();
    assert_eq!(read_all(&wal, 0), expected);
}

/// Proves a tail reader wakes for records appended after it caught up, and stops on close.
#[test]
fn tail_follow() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default()).unwrap();
    let mut reader = wal.reader(Position(0)).unwrap();
    assert!(reader.next_record().unwrap().is_none());
    let writer = {
        let wal = wal.clone();
        thread::spawn(move || {
            for i in 0..50u64 {
                wal.append(&[payload(i)]).unwrap();
            }
        })
    };
    for i in 0..50u64 {
        let record = reader
            .next_blocking(Duration::from_secs(10))
            .unwrap()
            .expect("record arrives");
        assert_eq!((record.position.0, record.data.to_vec()), (i, payload(i)));
    }
    writer.join().unwrap();
    let waiter = thread::spawn(move || reader.next_blocking(Duration::from_secs(30)).unwrap());
    thread::sleep(Duration::from_millis(50));
    wal.close().unwrap();
    assert!(waiter.join().unwrap().is_none(), "close wakes tail readers");
}

/// Proves truncate_before removes only whole sealed segments below the position.
#[test]
fn truncate_before_keeps_needed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), options(512)).unwrap();
    for i in 0..100u64 {
        wal.append(&[payload(i)]).unwrap();
    }
    let before = wal.segment_ids();
    let removed = wal.truncate_before(Position(50)).unwrap();
    assert!(removed > 0);
    let first = wal.first_position();
    assert!(first <= Position(50), "position 50 must still be readable");
    assert_eq!(read_all(&wal, 50).len(), 50);
    assert!(matches!(
        wal.reader(Position(0)),
        Err(Error::PositionTruncated { .. })
    ));
    assert_eq!(wal.segment_ids().len(), before.len() - removed);
    // Truncating everything never removes the active segment.
    wal.truncate_before(Position(1000)).unwrap();
    assert_eq!(wal.segment_ids().len(), 1);
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), options(512)).unwrap();
    assert_eq!(wal.durable_end(), Position(100));
}

/// Proves interval and never modes acknowledge, publish and read back the same records.
#[test]
fn other_durability_modes() {
    for durability in [
        Durability::Never,
        Durability::Interval(Duration::from_millis(2)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(
            dir.path(),
            Options {
                durability,
                ..options(4096)
            },
        )
        .unwrap();
        for i in 0..100u64 {
            wal.append(&[payload(i)]).unwrap();
        }
        let end = wal.wait_durable_beyond(Position(99), Duration::from_secs(10));
        assert_eq!(end, Position(100), "{durability:?}");
        assert_eq!(read_all(&wal, 0).len(), 100);
        wal.close().unwrap();
        let wal = Wal::open(
            dir.path(),
            Options {
                durability,
                ..options(4096)
            },
        )
        .unwrap();
        assert_eq!(wal.durable_end(), Position(100));
    }
}

/// Proves the durable listener sees every advance of the durable end.
#[test]
fn durable_listener() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), Options::default()).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    wal.on_durable(Arc::new(move |end| sink.lock().unwrap().push(end)));
    wal.append(&[b"a"]).unwrap();
    wal.append(&[b"b"]).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Position(1), Position(2)]);
}

/// Proves group commit under heavy contention neither hangs nor loses an append: 32 threads ×
/// 300 appends all return, with distinct dense positions.
#[test]
fn heavy_contention_every_appender_returns() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(
        dir.path(),
        Options {
            durability: Durability::Never,
            ..options(1 << 20)
        },
    )
    .unwrap();
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let wal = wal.clone();
            thread::spawn(move || {
                (0..300)
                    .map(|_| wal.append(&[[1u8; 64]]).unwrap().first.0)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut positions: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    positions.sort_unstable();
    assert_eq!(positions, (0..32 * 300).collect::<Vec<u64>>());
}

/// Proves a read-only open reads every record beside a live writer, sees nothing appended after
/// it opened, refuses appends, and leaves a torn tail on disk uncut.
#[test]
fn read_only_open() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), options(2048)).unwrap();
    for i in 0..100u64 {
        wal.append(&[payload(i)]).unwrap();
    }
    let reader = Wal::open_read_only(dir.path(), options(2048)).unwrap();
    wal.append(&[payload(100)]).unwrap();
    let seen = read_all(&reader, 0);
    assert_eq!(
        seen.len(),
        100,
        "the writer's lock must not stop a read-only open"
    );
    assert_eq!(seen[99], (99, payload(99)));
    assert!(matches!(
        reader.append(&[b"x".as_slice()]),
        Err(Error::Closed)
    ));
    drop(reader);
    wal.close().unwrap();

    // Tear the last frame: the read-only open stops before it and leaves the bytes alone.
    let last = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 3).unwrap();
    std::fs::remove_file(dir.path().join(hybridstore_wal::marker::MARKER_FILE_NAME)).unwrap();
    let reader = Wal::open_read_only(dir.path(), options(2048)).unwrap();
    assert_eq!(read_all(&reader, 0).len(), 100);
    drop(reader);
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        len - 3,
        "nothing may be cut"
    );
}
