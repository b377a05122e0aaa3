//! ID-Innovations ID-12 / ID-20 / ID-12LA / ID-20LA in ASCII output mode, 9600 8N1.
//!
//! A frame is 16 bytes: `STX(02)`, 10 ASCII hex data characters (5 bytes: the
//! EM4100 version byte and 32-bit id), 2 ASCII hex checksum characters (XOR of
//! the 5 data bytes), `CR`, `LF`, `ETX(03)`. The reader sends one frame per
//! presentation of a tag; it never listens to the host.

use super::{Check, FrameParser, Framing, ReaderEvent, Scanner, decode_hex};

const STX: u8 = 0x02;
const ETX: u8 = 0x03;
const CR: u8 = b'\r';
const LF: u8 = b'\n';
/// Bytes in one frame.
pub const FRAME_LEN: usize = 16;

/// Incremental ID-12 parser.
pub struct Id12Parser {
    scanner: Scanner<Id12Framing>,
}

impl Id12Parser {
    pub fn new() -> Self {
        Id12Parser {
            scanner: Scanner::new(),
        }
    }
}

impl Default for Id12Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameParser for Id12Parser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<ReaderEvent>) {
        self.scanner.feed(bytes, out);
    }
}

/// The frame an ID-12 sends for `uid` (uppercase hex, as the reader does);
/// for simulators and tests.
pub fn frame(uid: [u8; 5]) -> Vec<u8> {
    let checksum = uid.iter().fold(0u8, |acc, b| acc ^ b);
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.push(STX);
    f.extend(hex::encode_upper(uid).into_bytes());
    f.extend(hex::encode_upper([checksum]).into_bytes());
    f.extend([CR, LF, ETX]);
    f
}

struct Id12Framing;

impl Framing for Id12Framing {
    const MAX_FRAME: usize = FRAME_LEN;

    fn is_start(b: u8) -> bool {
        b == STX
    }

    fn check(cand: &[u8]) -> Check {
        let i = cand.len() - 1;
        let b = cand[i];
        let expect = |want: u8, name: &str| {
            if b == want {
                Check::Incomplete
            } else {
                Check::Invalid(format!("expected {name} at offset {i}, got {b:#04x}"))
            }
        };
        match i {
            // Data and checksum characters: a framing byte here means the
            // frame was cut short (hex validity is checked in `decode`).
            1..=12 if matches!(b, STX | ETX | CR | LF) => Check::Invalid(format!(
                "frame cut short: framing byte {b:#04x} at offset {i}"
            )),
            1..=12 => Check::Incomplete,
            13 => expect(CR, "CR"),
            14 => expect(LF, "LF"),
            15 if b == ETX => Check::Complete,
            15 => expect(ETX, "ETX"),
            _ => Check::Invalid(format!("frame longer than {FRAME_LEN} bytes")),
        }
    }

    fn decode(frame: &[u8]) -> Result<Option<ReaderEvent>, String> {
        let (Some(data), Some(sum)) = (frame.get(1..11), frame.get(11..13)) else {
            return Err("short frame".into());
        };
        let uid = decode_hex(data).ok_or("non-hex character in tag data")?;
        let sum = decode_hex(sum).ok_or("non-hex character in checksum")?;
        let computed = uid.iter().fold(0u8, |acc, b| acc ^ b);
        match sum.first() {
            Some(&given) if given == computed => Ok(Some(ReaderEvent::Tag { uid })),
            Some(&given) => Err(format!(
                "checksum mismatch: frame says {given:02X}, data XOR is {computed:02X}"
            )),
            None => Err("missing checksum".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use proptest::prelude::*;

    const UID: [u8; 5] = [0x1E, 0x00, 0x9A, 0x4D, 0x1A];

    fn make() -> Box<dyn FrameParser> {
        Box::new(Id12Parser::new())
    }

    fn tag(uid: &[u8]) -> ReaderEvent {
        ReaderEvent::Tag { uid: uid.to_vec() }
    }

    #[test]
    fn encodes_the_documented_frame() {
        // 1E^00^9A^4D^1A = D3
        assert_eq!(frame(UID), b"\x021E009A4D1AD3\r\n\x03".to_vec());
    }

    #[test]
    fn valid_frame_at_every_split_point() {
        assert_every_split(&make, &frame(UID), &[tag(&UID)]);
    }

    #[test]
    fn lowercase_hex_is_accepted() {
        let f = b"\x021e009a4d1ad3\r\n\x03";
        assert_eq!(feed_all(make().as_mut(), f), vec![tag(&UID)]);
    }

    #[test]
    fn glued_frames_all_come_out() {
        let b = [0x04, 0x15, 0xAF, 0x3B, 0x7C];
        let mut bytes = frame(UID);
        bytes.extend(frame(b));
        bytes.extend(frame(UID));
        assert_eq!(
            feed_all(make().as_mut(), &bytes),
            vec![tag(&UID), tag(&b), tag(&UID)]
        );
    }

    #[test]
    fn bad_checksum_is_an_error_not_a_tag() {
        let mut f = frame(UID);
        f[12] = b'4'; // D3 -> D4
        let out = feed_all(make().as_mut(), &f);
        assert_eq!(out.len(), 1);
        let ReaderEvent::FrameError { reason, bytes } = &out[0] else {
            panic!("expected an error, got {out:?}");
        };
        assert!(reason.contains("checksum"), "{reason}");
        assert_eq!(bytes, &f);
    }

    #[test]
    fn corrupted_data_digit_is_caught_by_checksum() {
        let mut f = frame(UID);
        f[3] = b'1'; // 00 -> 10 in the data
        let out = feed_all(make().as_mut(), &f);
        assert!(tags(&out).is_empty());
        assert_eq!(errors(&out), 1);
    }

    #[test]
    fn non_hex_data_is_an_error() {
        let mut f = frame(UID);
        f[5] = b'G';
        let out = feed_all(make().as_mut(), &f);
        assert!(tags(&out).is_empty());
        assert_eq!(errors(&out), 1);
    }

    #[test]
    fn noise_before_a_frame_is_reported_then_the_frame_is_read() {
        let mut bytes = vec![0x00, 0xFF, b'x', b'\r'];
        bytes.extend(frame(UID));
        let out = feed_all(make().as_mut(), &bytes);
        assert_eq!(
            out,
            vec![
                ReaderEvent::FrameError {
                    reason: "4 bytes of noise outside any frame".into(),
                    bytes: vec![0x00, 0xFF, b'x', b'\r'],
                },
                tag(&UID)
            ]
        );
    }

    #[test]
    fn truncated_frame_followed_by_a_good_one() {
        let good = frame(UID);
        let mut bytes = good[..7].to_vec(); // lost the tail
        bytes.extend(&good);
        let out = feed_all(make().as_mut(), &bytes);
        assert_eq!(tags(&out), vec![UID.to_vec()]);
        assert_eq!(errors(&out), 1);
        assert_every_split(&make, &bytes, &out);
    }

    #[test]
    fn missing_terminators_are_errors() {
        let mut f = frame(UID);
        f[15] = b'X';
        let out = feed_all(make().as_mut(), &f);
        assert!(tags(&out).is_empty());
        assert_eq!(errors(&out), 1);
    }

    #[test]
    fn long_noise_is_reported_in_bounded_pieces() {
        let out = feed_all(make().as_mut(), &[b'A'; 1000]);
        assert_eq!(errors(&out), 1000 / super::super::MAX_ERROR_BYTES);
        assert_bounded(&out);
    }

    /// Every valid ID-12 frame (by an independent brute-force check) in `bytes`.
    fn oracle(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .windows(FRAME_LEN)
            .filter(|w| w[0] == STX && w[13..] == [CR, LF, ETX])
            .filter_map(|w| {
                let data = hex::decode(&w[1..11]).ok()?;
                let sum = hex::decode(&w[11..13]).ok()?;
                (data.iter().fold(0, |a, b| a ^ b) == sum[0]).then_some(data)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_or_invent_tags(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..40, 1..20),
        ) {
            let whole = feed_all(make().as_mut(), &bytes);
            let chunked = feed_chunked(make().as_mut(), &bytes, &sizes);
            prop_assert_eq!(&whole, &chunked);
            assert_bounded(&whole);
            let real = oracle(&bytes);
            let got = tags(&whole);
            prop_assert!(got.len() <= real.len());
            for uid in &got {
                prop_assert!(real.contains(uid));
            }
        }

        #[test]
        fn frames_mixed_with_bytes_of_the_alphabet_never_invent_tags(
            parts in proptest::collection::vec(
                prop_oneof![
                    any::<[u8; 5]>().prop_map(frame),
                    proptest::collection::vec(
                        prop_oneof![Just(STX), Just(ETX), Just(CR), Just(LF), Just(b'0'), Just(b'F'), any::<u8>()],
                        0..20
                    ),
                    (any::<[u8; 5]>(), 0usize..FRAME_LEN, any::<u8>()).prop_map(|(u, i, b)| {
                        let mut f = frame(u);
                        f[i] = b;
                        f
                    }),
                ],
                0..12,
            ),
            sizes in proptest::collection::vec(1usize..20, 1..10),
        ) {
            let bytes = parts.concat();
            let out = feed_chunked(make().as_mut(), &bytes, &sizes);
            prop_assert_eq!(&out, &feed_all(make().as_mut(), &bytes));
            let real = oracle(&bytes);
            let got = tags(&out);
            prop_assert!(got.len() <= real.len());
            for uid in &got {
                prop_assert!(real.contains(uid));
            }
        }

        #[test]
        fn a_frame_after_a_truncated_one_is_recovered(
            lost in any::<[u8; 5]>(),
            cut in 1usize..FRAME_LEN,
            uid in any::<[u8; 5]>(),
            sizes in proptest::collection::vec(1usize..20, 1..10),
        ) {
            let bytes = [&frame(lost)[..cut], &frame(uid)[..]].concat();
            let out = feed_chunked(make().as_mut(), &bytes, &sizes);
            prop_assert_eq!(tags(&out), vec![uid.to_vec()]);
        }

        #[test]
        fn frames_between_noise_are_all_recovered(
            items in proptest::collection::vec(
                (any::<[u8; 5]>(), proptest::collection::vec(any::<u8>().prop_filter("no STX", |b| *b != STX), 0..40)),
                0..10,
            ),
            trailing in proptest::collection::vec(any::<u8>(), 0..40),
            sizes in proptest::collection::vec(1usize..40, 1..10),
        ) {
            let mut bytes = Vec::new();
            for (uid, noise) in &items {
                bytes.extend(noise);
                bytes.extend(frame(*uid));
            }
            bytes.extend(&trailing);
            let out = feed_chunked(make().as_mut(), &bytes, &sizes);
            let want: Vec<Vec<u8>> = items.iter().map(|(u, _)| u.to_vec()).collect();
            prop_assert_eq!(tags(&out), want);
        }
    }
}
