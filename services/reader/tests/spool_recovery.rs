//! Spool recovery from damaged files: torn tails, mid-file damage, garbage.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tagpoll_reader::spool::{Spool, SpoolError, SpoolLimits, SpoolRecord};

/// Record header size and field offsets, from the layout in the spool's module docs.
const HEADER: usize = 20;
const LEN_FIELD: usize = 8;
const SEQ_FIELD: usize = 12;

fn limits() -> SpoolLimits {
    SpoolLimits {
        max_bytes: 1 << 20,
        warn_ratio: 0.8,
    }
}

fn open(dir: &Path) -> (Spool, Vec<SpoolRecord>) {
    Spool::open(dir, limits()).expect("open spool")
}

fn payload(i: u64) -> Vec<u8> {
    format!("payload-{i}-{}", "abc".repeat(i as usize)).into_bytes()
}

fn seqs(records: &[SpoolRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn only_segment(dir: &Path) -> PathBuf {
    let logs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    logs.into_iter().next().unwrap()
}

/// Writes records 1..=n into a fresh spool; returns the segment path and each
/// record's start offset (plus the end of the last one).
fn build(dir: &Path, n: u64) -> (PathBuf, Vec<usize>) {
    let (mut spool, _) = open(dir);
    let segment = only_segment(dir);
    let mut offsets = vec![0];
    for i in 1..=n {
        assert_eq!(spool.append(&payload(i)).unwrap(), i);
        offsets.push(fs::metadata(&segment).unwrap().len() as usize);
    }
    (segment, offsets)
}

fn expect_records(records: &[SpoolRecord], expected: &[u64]) {
    assert_eq!(seqs(records), expected);
    for record in records {
        assert_eq!(record.payload, payload(record.seq), "seq {}", record.seq);
    }
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record_is_cut_and_nothing_before_it_lost() {
    let source = tempfile::tempdir().unwrap();
    let (segment, offsets) = build(source.path(), 5);
    let name = segment.file_name().unwrap().to_owned();
    let full = fs::read(&segment).unwrap();
    let (start, end) = (offsets[4], offsets[5]);
    assert_eq!(end, full.len());
    assert!(end - start > HEADER + 10);

    for cut in start + 1..end {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(&name);
        fs::write(&path, &full[..cut]).unwrap();

        let (mut spool, pending) = open(dir.path());
        expect_records(&pending, &[1, 2, 3, 4]);
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            start,
            "cut {cut}"
        );
        // The torn record's seq may have been handed out: it is not handed out again.
        let next = spool.append(b"next").unwrap();
        assert!(next > 5, "cut {cut}: seq {next} reused");
        drop(spool);

        let (_, pending) = open(dir.path());
        assert_eq!(seqs(&pending), vec![1, 2, 3, 4, next], "cut {cut}");
        assert_eq!(pending[4].payload, b"next");
    }
}

#[test]
fn crc_mismatch_in_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = build(dir.path(), 5);
    let mut data = fs::read(&segment).unwrap();
    *data.last_mut().unwrap() ^= 0x01;
    fs::write(&segment, &data).unwrap();

    let (spool, pending) = open(dir.path());
    expect_records(&pending, &[1, 2, 3, 4]);
    assert_eq!(fs::metadata(&segment).unwrap().len() as usize, offsets[4]);
    assert!(spool.next_seq() > 5);
}

#[test]
fn zero_filled_tail_after_a_power_cut_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = build(dir.path(), 5);
    let mut data = fs::read(&segment).unwrap();
    data.extend_from_slice(&[0; 4096]);
    fs::write(&segment, &data).unwrap();

    let (_, pending) = open(dir.path());
    expect_records(&pending, &[1, 2, 3, 4, 5]);
    assert_eq!(fs::metadata(&segment).unwrap().len() as usize, offsets[5]);
}

#[test]
fn mid_file_corruption_loses_only_the_damaged_record() {
    // (what, byte offset within record 3, xor mask)
    let damage = [
        ("magic", 0, 0xff),
        ("crc", 5, 0x10),
        ("length up", LEN_FIELD, 0x40),
        ("length down", LEN_FIELD, 0x01),
        ("length huge", LEN_FIELD + 3, 0x80),
        ("seq", SEQ_FIELD, 0x02),
        ("payload", HEADER + 3, 0x20),
    ];
    for (what, at, mask) in damage {
        let dir = tempfile::tempdir().unwrap();
        let (segment, offsets) = build(dir.path(), 5);
        let mut data = fs::read(&segment).unwrap();
        data[offsets[2] + at] ^= mask;
        fs::write(&segment, &data).unwrap();

        let (mut spool, pending) = open(dir.path());
        expect_records(&pending, &[1, 2, 4, 5]);
        assert_eq!(spool.next_seq(), 6, "{what}");
        // The damaged bytes stay (later records depend on nothing before them), and
        // appending after them is unaffected.
        assert_eq!(fs::metadata(&segment).unwrap().len() as usize, offsets[5]);
        assert_eq!(spool.append(&payload(6)).unwrap(), 6);
        spool.ack(4).unwrap();
        drop(spool);

        let (_, pending) = open(dir.path());
        expect_records(&pending, &[1, 2, 5, 6]);
    }
}

#[test]
fn a_zeroed_block_in_the_middle_loses_only_the_records_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = build(dir.path(), 8);
    let mut data = fs::read(&segment).unwrap();
    // From inside record 3 to inside record 5.
    data[offsets[2] + 7..offsets[4] + 9].fill(0);
    fs::write(&segment, &data).unwrap();

    let (_, pending) = open(dir.path());
    expect_records(&pending, &[1, 2, 6, 7, 8]);
}

#[test]
fn a_damaged_ack_log_only_brings_records_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path());
    for i in 1..=6 {
        spool.append(&payload(i)).unwrap();
    }
    for seq in [2, 4, 5] {
        spool.ack(seq).unwrap();
    }
    drop(spool);
    let ack = only_segment(dir.path()).with_extension("ack");
    let mut data = fs::read(&ack).unwrap();
    assert_eq!(data.len(), 3 * 16);
    data[16 + 6] ^= 0x08; // the entry acking 4
    data.extend_from_slice(&[0xaa; 9]); // and a torn entry
    fs::write(&ack, &data).unwrap();

    let (mut spool, pending) = open(dir.path());
    expect_records(&pending, &[1, 3, 4, 6]);
    assert_eq!(fs::metadata(&ack).unwrap().len(), 3 * 16, "torn entry kept");
    spool.ack(4).unwrap();
    drop(spool);
    let (_, pending) = open(dir.path());
    expect_records(&pending, &[1, 3, 6]);
}

#[test]
fn records_whose_seqs_go_backwards_are_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = build(dir.path(), 3);
    let data = fs::read(&segment).unwrap();
    let mut doubled = data.clone();
    doubled.extend_from_slice(&data);
    fs::write(&segment, &doubled).unwrap();

    match Spool::open(dir.path(), limits()) {
        Err(SpoolError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, segment);
            assert_eq!(offset as usize, offsets[3]);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// One way to damage the files of a spool.
#[derive(Debug, Clone)]
enum Damage {
    Flip(prop::sample::Index, prop::sample::Index, u8),
    Truncate(prop::sample::Index, prop::sample::Index),
    Overwrite(prop::sample::Index, prop::sample::Index, Vec<u8>),
    Insert(prop::sample::Index, prop::sample::Index, Vec<u8>),
    /// Copies a slice of one file over another place (possibly another file).
    Splice(
        prop::sample::Index,
        prop::sample::Index,
        prop::sample::Index,
        prop::sample::Index,
        usize,
    ),
    NewFile(u8, u64, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let index = any::<prop::sample::Index>;
    let bytes = || prop::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (index(), index(), 1u8..=255).prop_map(|(f, p, m)| Damage::Flip(f, p, m)),
        (index(), index()).prop_map(|(f, p)| Damage::Truncate(f, p)),
        (index(), index(), bytes()).prop_map(|(f, p, b)| Damage::Overwrite(f, p, b)),
        (index(), index(), bytes()).prop_map(|(f, p, b)| Damage::Insert(f, p, b)),
        (index(), index(), index(), index(), 1usize..200)
            .prop_map(|(a, b, c, d, n)| Damage::Splice(a, b, c, d, n)),
        (0u8..4, 0u64..40, prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(k, base, b)| Damage::NewFile(k, base, b)),
    ]
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "spool.lock")
        .collect();
    files.sort();
    files
}

fn apply(dir: &Path, damage: &Damage) {
    let files = spool_files(dir);
    if files.is_empty() {
        return;
    }
    let pick = |i: &prop::sample::Index| files[i.index(files.len())].clone();
    let at = |data: &[u8], i: &prop::sample::Index| i.index(data.len() + 1);
    match damage {
        Damage::Flip(f, p, mask) => {
            let path = pick(f);
            let mut data = fs::read(&path).unwrap();
            if !data.is_empty() {
                let p = p.index(data.len());
                data[p] ^= mask;
                fs::write(&path, data).unwrap();
            }
        }
        Damage::Truncate(f, p) => {
            let path = pick(f);
            let data = fs::read(&path).unwrap();
            fs::write(&path, &data[..at(&data, p)]).unwrap();
        }
        Damage::Overwrite(f, p, bytes) => {
            let path = pick(f);
            let mut data = fs::read(&path).unwrap();
            let start = at(&data, p);
            let end = (start + bytes.len()).min(data.len());
            data[start..end].copy_from_slice(&bytes[..end - start]);
            fs::write(&path, data).unwrap();
        }
        Damage::Insert(f, p, bytes) => {
            let path = pick(f);
            let mut data = fs::read(&path).unwrap();
            let p = at(&data, p);
            data.splice(p..p, bytes.iter().copied());
            fs::write(&path, data).unwrap();
        }
        Damage::Splice(from, from_at, to, to_at, n) => {
            let source = fs::read(pick(from)).unwrap();
            let start = at(&source, from_at);
            let chunk = source[start..(start + n).min(source.len())].to_vec();
            let path = pick(to);
            let mut data = fs::read(&path).unwrap();
            let p = at(&data, to_at);
            data.splice(p..p, chunk);
            fs::write(&path, data).unwrap();
        }
        Damage::NewFile(kind, base, bytes) => {
            let name = match kind {
                0 => format!("spool-{base:020}.log"),
                1 => format!("spool-{base:020}.ack"),
                2 => format!("spool-{base}.log"),
                _ => "spool.state.tmp".to_owned(),
            };
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever happens to the files, open does not panic, and what it returns
    /// was written, in order; the spool it returns keeps working.
    #[test]
    fn garbled_files_never_panic_and_never_invent_records(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 1..30),
        acked in prop::collection::vec(any::<bool>(), 30),
        damages in prop::collection::vec(damage(), 1..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // 1 KiB segments, so several files get damaged.
        let lim = SpoolLimits { max_bytes: 16 << 10, warn_ratio: 0.8 };
        let mut written = BTreeMap::new();
        {
            let (mut spool, _) = Spool::open(dir.path(), lim).unwrap();
            for (i, payload) in payloads.iter().enumerate() {
                let seq = spool.append(payload).unwrap();
                written.insert(seq, payload.clone());
                if acked[i] {
                    spool.ack(seq).unwrap();
                }
            }
        }
        for damage in &damages {
            apply(dir.path(), damage);
        }

        let (mut spool, pending) = match Spool::open(dir.path(), lim) {
            Ok(opened) => opened,
            Err(err) => {
                prop_assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
                return Ok(());
            }
        };
        for pair in pending.windows(2) {
            prop_assert!(pair[0].seq < pair[1].seq);
        }
        for record in &pending {
            prop_assert_eq!(Some(&record.payload), written.get(&record.seq), "seq {}", record.seq);
        }
        prop_assert_eq!(spool.depth(), pending.len() as u64);
        let seq = spool.append(b"after").unwrap();
        prop_assert!(seq > pending.last().map_or(0, |r| r.seq));
        drop(spool);

        let (_, again) = Spool::open(dir.path(), lim).unwrap();
        prop_assert_eq!(again.last().map(|r| (r.seq, r.payload.as_slice())), Some((seq, &b"after"[..])));
        prop_assert_eq!(&again[..again.len() - 1], &pending[..]);
    }

    /// A directory of nothing but random files.
    #[test]
    fn random_files_never_panic(
        files in prop::collection::vec((0u8..3, 0u64..5, prop::collection::vec(any::<u8>(), 0..400)), 0..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (kind, base, bytes) in &files {
            let ext = if *kind == 0 { "ack" } else { "log" };
            fs::write(dir.path().join(format!("spool-{base:020}.{ext}")), bytes).unwrap();
        }
        if let Ok((mut spool, pending)) = Spool::open(dir.path(), limits()) {
            prop_assert!(pending.is_empty());
            let seq = spool.append(b"x").unwrap();
            drop(spool);
            let (_, again) = Spool::open(dir.path(), limits()).unwrap();
            prop_assert_eq!(again, vec![SpoolRecord { seq, payload: b"x".to_vec() }]);
        }
    }
}
