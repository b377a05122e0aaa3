//! Spool behaviour without damage: ordering, acks, seqs, limits, segment reclaim.

use std::fs;
use std::path::{Path, PathBuf};

use tagpoll_reader::spool::{Spool, SpoolError, SpoolLimits, SpoolRecord};

fn limits(max_bytes: u64) -> SpoolLimits {
    SpoolLimits {
        max_bytes,
        warn_ratio: 0.8,
    }
}

fn open(dir: &Path, max_bytes: u64) -> (Spool, Vec<SpoolRecord>) {
    Spool::open(dir, limits(max_bytes)).expect("open spool")
}

/// 40..53 bytes, like an encoded tap.
fn payload(i: u64) -> Vec<u8> {
    format!("tap-{i:05}-{}", "x".repeat(30 + (i % 13) as usize)).into_bytes()
}

fn seqs(records: &[SpoolRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn spool_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("spool-") && name.ends_with(ext)
        })
        .collect();
    files.sort();
    files
}

/// Sizes of every segment and ack log, by name.
fn disk_state(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = spool_files(dir, ".log");
    files.extend(spool_files(dir, ".ack"));
    files
        .into_iter()
        .map(|p| {
            let len = fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

fn disk_bytes(dir: &Path) -> u64 {
    disk_state(dir).iter().map(|(_, len)| len).sum()
}

#[test]
fn append_ack_reopen_returns_exactly_the_unacked_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, pending) = open(dir.path(), 1 << 20);
    assert!(pending.is_empty());
    assert_eq!(spool.next_seq(), 1);
    for i in 1..=10 {
        assert_eq!(spool.append(&payload(i)).unwrap(), i);
    }
    for seq in 1..=4 {
        spool.ack(seq).unwrap();
    }
    assert_eq!(spool.depth(), 6);
    drop(spool);

    let (spool, pending) = open(dir.path(), 1 << 20);
    let expected: Vec<SpoolRecord> = (5..=10)
        .map(|seq| SpoolRecord {
            seq,
            payload: payload(seq),
        })
        .collect();
    assert_eq!(pending, expected);
    assert_eq!(spool.depth(), 6);
    assert_eq!(spool.next_seq(), 11);
}

#[test]
fn out_of_order_acks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 1 << 20);
    for i in 1..=10 {
        spool.append(&payload(i)).unwrap();
    }
    for seq in [7, 3, 9, 1, 10] {
        spool.ack(seq).unwrap();
    }
    // Repeated and unknown acks are no-ops.
    spool.ack(7).unwrap();
    spool.ack(0).unwrap();
    spool.ack(999).unwrap();
    assert_eq!(spool.depth(), 5);
    drop(spool);

    let (mut spool, pending) = open(dir.path(), 1 << 20);
    assert_eq!(seqs(&pending), vec![2, 4, 5, 6, 8]);
    for record in &pending {
        assert_eq!(record.payload, payload(record.seq));
    }
    spool.ack(5).unwrap();
    spool.ack(9).unwrap(); // acked before the reopen
    assert_eq!(spool.depth(), 4);
    drop(spool);

    let (_, pending) = open(dir.path(), 1 << 20);
    assert_eq!(seqs(&pending), vec![2, 4, 6, 8]);
}

#[test]
fn seq_is_monotonic_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for round in 0..4 {
        let (mut spool, _) = open(dir.path(), 1 << 20);
        for _ in 0..3 {
            all.push(spool.append(&payload(round)).unwrap());
        }
        // Acking everything of a round must not let the next round reuse seqs.
        if round % 2 == 1 {
            for &seq in &all {
                spool.ack(seq).unwrap();
            }
        }
    }
    assert_eq!(all, (1..=12).collect::<Vec<_>>());
}

#[test]
fn seq_survives_full_compaction() {
    let dir = tempfile::tempdir().unwrap();
    // Small limit: 4 KiB segments, so 300 records span many segments.
    let max = 64 << 10;
    let (mut spool, _) = open(dir.path(), max);
    for i in 1..=300 {
        spool.append(&payload(i)).unwrap();
    }
    assert!(spool_files(dir.path(), ".log").len() > 3);
    for seq in 1..=300 {
        spool.ack(seq).unwrap();
    }
    assert_eq!(spool.depth(), 0);
    assert_eq!(spool.next_seq(), 301);
    drop(spool);

    for _ in 0..2 {
        let (spool, pending) = open(dir.path(), max);
        assert!(pending.is_empty());
        assert_eq!(spool.next_seq(), 301);
        assert_eq!(spool.bytes(), 0);
        assert_eq!(disk_bytes(dir.path()), 0, "{:?}", disk_state(dir.path()));
        assert_eq!(spool_files(dir.path(), ".log").len(), 1);
    }
    let (mut spool, _) = open(dir.path(), max);
    assert_eq!(spool.append(b"after").unwrap(), 301);
}

#[test]
fn seq_survives_compaction_of_a_small_drained_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 1 << 20);
    spool.append(b"one").unwrap();
    spool.append(b"two").unwrap();
    spool.ack(2).unwrap();
    spool.ack(1).unwrap();
    drop(spool);
    let (spool, pending) = open(dir.path(), 1 << 20);
    assert!(pending.is_empty());
    assert_eq!(spool.bytes(), 0);
    assert_eq!(spool.next_seq(), 3);
    drop(spool);
    let (mut spool, _) = open(dir.path(), 1 << 20);
    assert_eq!(spool.append(b"three").unwrap(), 3);
}

#[test]
fn full_is_returned_at_the_limit_writes_nothing_and_acks_free_room() {
    let dir = tempfile::tempdir().unwrap();
    let max = 8 << 10;
    let (mut spool, _) = open(dir.path(), max);
    let big = vec![7u8; 100];
    let mut accepted = Vec::new();
    let err = loop {
        match spool.append(&big) {
            Ok(seq) => accepted.push(seq),
            Err(err) => break err,
        }
        assert!(spool.bytes() <= max);
        assert!(accepted.len() < 1000, "never became full");
    };
    match err {
        SpoolError::Full { bytes, limit } => {
            assert_eq!(limit, max);
            assert_eq!(bytes, spool.bytes());
            assert!(bytes > max - 300, "refused at {bytes} of {max} bytes");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    let full_bytes = spool.bytes();
    let before = disk_state(dir.path());
    let (depth, next) = (spool.depth(), spool.next_seq());
    assert!(matches!(spool.append(&big), Err(SpoolError::Full { .. })));
    assert!(matches!(spool.append(b""), Err(SpoolError::Full { .. })));
    assert_eq!(
        disk_state(dir.path()),
        before,
        "a refused append touched the disk"
    );
    assert_eq!((spool.depth(), spool.next_seq()), (depth, next));

    // Acking the oldest half frees their segments, and appends fit again.
    let half = accepted.len() / 2;
    for &seq in &accepted[..half] {
        spool.ack(seq).unwrap();
    }
    assert!(
        spool.bytes() < full_bytes * 2 / 3,
        "{} of {full_bytes} bytes left",
        spool.bytes()
    );
    let seq = spool.append(&big).unwrap();
    assert_eq!(seq, next);
    drop(spool);

    let (_, pending) = open(dir.path(), max);
    let mut expected = accepted[half..].to_vec();
    expected.push(seq);
    assert_eq!(seqs(&pending), expected);
    assert!(pending.iter().all(|r| r.payload == big));
}

#[test]
fn acking_the_newest_records_frees_their_small_segment_when_room_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    // 1 KiB segments of 20 records; 62 records fit, so the newest segment holds two:
    // too small to be replaced as soon as it drains, which leaves it to `append`.
    let max = 4 << 10;
    let (mut spool, _) = open(dir.path(), max);
    let mut n = 0;
    while spool.append(&[1u8; 30]).is_ok() {
        n += 1;
    }
    let newest = spool_files(dir.path(), ".log").pop().unwrap();
    let name = newest.file_name().unwrap().to_str().unwrap();
    let base: u64 = name["spool-".len()..name.len() - ".log".len()]
        .parse()
        .unwrap();
    assert!(
        base > 1 && base <= n,
        "newest segment {name} of {n} records"
    );
    for seq in base..=n {
        spool.ack(seq).unwrap();
    }
    for _ in base..=n {
        spool
            .append(&[2u8; 30])
            .expect("acked records gave back their room");
    }
    assert!(matches!(
        spool.append(&[2u8; 30]),
        Err(SpoolError::Full { .. })
    ));
    drop(spool);
    let (_, pending) = open(dir.path(), max);
    assert_eq!(pending.len() as u64, n);
    assert!(
        pending[..(base - 1) as usize]
            .iter()
            .all(|r| r.payload == [1u8; 30])
    );
    assert!(
        pending[(base - 1) as usize..]
            .iter()
            .all(|r| r.payload == [2u8; 30])
    );
}

#[test]
fn warning_turns_on_at_the_threshold_and_off_after_acks() {
    let dir = tempfile::tempdir().unwrap();
    let max = 10_000;
    let lim = SpoolLimits {
        max_bytes: max,
        warn_ratio: 0.5,
    };
    let (mut spool, _) = Spool::open(dir.path(), lim).unwrap();
    assert!(!spool.is_warning());
    let (mut saw_off, mut saw_on) = (false, false);
    let mut accepted = Vec::new();
    while let Ok(seq) = spool.append(&[3u8; 50]) {
        accepted.push(seq);
        let expected = spool.bytes() >= max / 2;
        assert_eq!(spool.is_warning(), expected, "at {} bytes", spool.bytes());
        saw_off |= !expected;
        saw_on |= expected;
    }
    assert!(saw_off && saw_on);
    drop(spool);

    // The state is a function of the bytes on disk, so it survives a reopen.
    let (mut spool, _) = Spool::open(dir.path(), lim).unwrap();
    assert!(spool.is_warning());
    for seq in accepted {
        spool.ack(seq).unwrap();
    }
    assert!(!spool.is_warning());
}

#[test]
fn acked_segments_are_deleted_and_disk_use_returns_near_zero() {
    let dir = tempfile::tempdir().unwrap();
    let max = 64 << 10; // 4 KiB segments
    let (mut spool, _) = open(dir.path(), max);
    for i in 1..=600 {
        spool.append(&payload(i)).unwrap();
    }
    let segments = spool_files(dir.path(), ".log").len();
    assert!(segments >= 8, "only {segments} segments");
    assert!(disk_bytes(dir.path()) <= spool.bytes());

    // Acking the older half deletes the older half of the segments, logs and acks.
    for seq in (1..=300).rev() {
        spool.ack(seq).unwrap();
    }
    let left = spool_files(dir.path(), ".log").len();
    assert!(
        left <= segments / 2 + 1,
        "{left} of {segments} segments left"
    );
    assert!(spool_files(dir.path(), ".ack").len() <= 1);
    assert!(disk_bytes(dir.path()) <= spool.bytes());

    for seq in 301..=600 {
        spool.ack(seq).unwrap();
    }
    assert_eq!(spool.depth(), 0);
    assert_eq!(spool_files(dir.path(), ".log").len(), 1);
    assert!(spool.bytes() < 4 << 10, "{} bytes left", spool.bytes());
    assert!(disk_bytes(dir.path()) <= spool.bytes());
    drop(spool);

    let (spool, pending) = open(dir.path(), max);
    assert!(pending.is_empty());
    assert_eq!(disk_bytes(dir.path()), 0);
    assert_eq!(spool.next_seq(), 601);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 1 << 20);
    spool.append(b"a").unwrap();
    match Spool::open(dir.path(), limits(1 << 20)) {
        Err(SpoolError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::WouldBlock)
        }
        other => panic!("expected the lock to refuse, got {other:?}"),
    }
    drop(spool);
    let (_, pending) = open(dir.path(), 1 << 20);
    assert_eq!(seqs(&pending), vec![1]);
}

#[test]
fn open_creates_missing_directories_and_ignores_foreign_files() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/spool");
    let (mut spool, _) = open(&dir, 1 << 20);
    spool.append(b"x").unwrap();
    drop(spool);
    fs::write(dir.join("README"), b"not a spool file").unwrap();
    fs::write(dir.join("spool-1.log"), b"wrong digit count").unwrap();
    let (_, pending) = open(&dir, 1 << 20);
    assert_eq!(
        pending,
        vec![SpoolRecord {
            seq: 1,
            payload: b"x".to_vec()
        }]
    );
    assert!(dir.join("README").exists());
}
