//! Byte-level framing of segment records and ack entries.
//!
//! Pure functions over slices, so every byte pattern a damaged disk can produce
//! is handled here without I/O; nothing in this module indexes out of bounds
//! or panics on input.

use std::ops::Range;

/// Starts every record; lets recovery find the next record after damage.
pub(super) const RECORD_MAGIC: [u8; 4] = *b"TPR1";
/// magic(4) + crc(4) + len(4) + seq(8).
pub(super) const RECORD_HEADER: usize = 20;
/// Starts every ack entry.
pub(super) const ACK_MAGIC: [u8; 4] = *b"TPA1";
/// magic(4) + seq(8) + crc(4).
pub(super) const ACK_ENTRY: usize = 16;

/// Encodes one record into `out` (cleared first, so the buffer can be reused).
/// The caller guarantees `payload.len() <= u32::MAX`.
pub(super) fn encode_record(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len() as u32;
    out.clear();
    out.reserve(RECORD_HEADER + payload.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&record_crc(len, seq, payload).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Covers length and seq too: a flipped length or seq must not pass as valid.
fn record_crc(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Decodes the record at the start of `buf`, if a complete and intact one is there.
pub(super) fn decode_record(buf: &[u8]) -> Option<(u64, &[u8])> {
    let header = buf.get(..RECORD_HEADER)?;
    if header[..4] != RECORD_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let len = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let seq = u64::from_le_bytes(header[12..20].try_into().ok()?);
    let end = RECORD_HEADER.checked_add(usize::try_from(len).ok()?)?;
    let payload = buf.get(RECORD_HEADER..end)?;
    (record_crc(len, seq, payload) == crc).then_some((seq, payload))
}

/// An intact record found by [`scan_records`].
#[derive(Debug)]
pub(super) struct ScannedRecord<'a> {
    pub offset: usize,
    pub seq: u64,
    pub payload: &'a [u8],
}

/// What a segment log holds: intact records, damaged ranges that intact records
/// follow, and where a damaged tail (nothing intact after it) starts.
#[derive(Debug, Default)]
pub(super) struct RecordScan<'a> {
    pub records: Vec<ScannedRecord<'a>>,
    pub skipped: Vec<Range<usize>>,
    pub damaged_tail: Option<usize>,
}

/// Splits a segment log into records, resynchronising after damage.
///
/// At a position that does not decode, the next position (byte by byte) where a
/// complete record with a matching CRC starts is searched for: if there is one,
/// the bytes in between are reported as skipped; if there is none, everything
/// from the damaged position on is the damaged tail.
pub(super) fn scan_records(buf: &[u8]) -> RecordScan<'_> {
    let mut scan = RecordScan::default();
    let mut pos = 0;
    while pos < buf.len() {
        if let Some((seq, payload)) = decode_record(&buf[pos..]) {
            scan.records.push(ScannedRecord {
                offset: pos,
                seq,
                payload,
            });
            pos += RECORD_HEADER + payload.len();
            continue;
        }
        match (pos + 1..buf.len()).find(|&at| decode_record(&buf[at..]).is_some()) {
            Some(next) => {
                scan.skipped.push(pos..next);
                pos = next;
            }
            None => {
                scan.damaged_tail = Some(pos);
                break;
            }
        }
    }
    scan
}

pub(super) fn encode_ack(seq: u64) -> [u8; ACK_ENTRY] {
    let mut entry = [0u8; ACK_ENTRY];
    entry[..4].copy_from_slice(&ACK_MAGIC);
    entry[4..12].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&entry[..12]);
    entry[12..].copy_from_slice(&crc.to_le_bytes());
    entry
}

fn decode_ack(buf: &[u8]) -> Option<u64> {
    let entry = buf.get(..ACK_ENTRY)?;
    if entry[..4] != ACK_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(entry[12..16].try_into().ok()?);
    if crc32fast::hash(&entry[..12]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(entry[4..12].try_into().ok()?))
}

/// What an ack log holds.
#[derive(Debug, Default)]
pub(super) struct AckScan {
    pub seqs: Vec<u64>,
    /// Bytes between intact entries that were not part of any entry.
    pub skipped: usize,
    /// End of the last intact entry; anything after it is a torn write.
    pub valid_end: usize,
}

/// Reads an ack log, resynchronising byte by byte after damage.
pub(super) fn scan_acks(buf: &[u8]) -> AckScan {
    let mut scan = AckScan::default();
    let mut pos = 0;
    let mut garbage = 0;
    while pos < buf.len() {
        match decode_ack(&buf[pos..]) {
            Some(seq) => {
                scan.seqs.push(seq);
                pos += ACK_ENTRY;
                scan.valid_end = pos;
                scan.skipped += garbage;
                garbage = 0;
            }
            None => {
                pos += 1;
                garbage += 1;
            }
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut frame = Vec::new();
        for (seq, payload) in records {
            encode_record(*seq, payload, &mut frame);
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn record_round_trip() {
        let buf = log(&[(1, b"a"), (2, b""), (7, b"hello")]);
        let scan = scan_records(&buf);
        let got: Vec<_> = scan.records.iter().map(|r| (r.seq, r.payload)).collect();
        assert_eq!(got, vec![(1, &b"a"[..]), (2, &b""[..]), (7, &b"hello"[..])]);
        assert!(scan.skipped.is_empty());
        assert_eq!(scan.damaged_tail, None);
    }

    #[test]
    fn corrupt_length_resyncs_to_next_record() {
        let mut buf = log(&[(1, b"aaaa"), (2, b"bbbb"), (3, b"cccc")]);
        let second = RECORD_HEADER + 4;
        buf[second + 8] ^= 0x40; // length field of record 2
        let scan = scan_records(&buf);
        let seqs: Vec<_> = scan.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(scan.skipped, vec![second..2 * second]);
        assert_eq!(scan.damaged_tail, None);
    }

    #[test]
    fn garbage_after_last_record_is_damaged_tail() {
        let mut buf = log(&[(1, b"aaaa")]);
        let end = buf.len();
        buf.extend_from_slice(&[0; 7]);
        let scan = scan_records(&buf);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.damaged_tail, Some(end));
    }

    #[test]
    fn acks_resync_and_report_torn_tail() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&encode_ack(5));
        buf.extend_from_slice(b"xyz");
        buf.extend_from_slice(&encode_ack(9));
        let valid_end = buf.len();
        buf.extend_from_slice(&encode_ack(11)[..10]);
        let scan = scan_acks(&buf);
        assert_eq!(scan.seqs, vec![5, 9]);
        assert_eq!(scan.skipped, 3);
        assert_eq!(scan.valid_end, valid_end);
    }

    #[test]
    fn zeroed_ack_entry_is_not_an_ack() {
        assert!(scan_acks(&[0; 64]).seqs.is_empty());
    }
}
