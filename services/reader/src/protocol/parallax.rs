//! Parallax serial RFID card reader (#28140), 125 kHz EM4100, 2400 8N1.
//!
//! A frame is 12 bytes: `LF(0A)`, 10 ASCII hex digits of the tag id (5 bytes),
//! `CR(0D)`. The reader repeats the frame for as long as a tag is in range
//! (while /ENABLE is held low). The format has no checksum: a corrupted hex
//! digit cannot be detected, only non-hex characters and broken framing can.

use super::{Check, FrameParser, Framing, ReaderEvent, Scanner, decode_hex};

const LF: u8 = 0x0A;
const CR: u8 = 0x0D;
/// Bytes in one frame.
pub const FRAME_LEN: usize = 12;

/// Incremental Parallax parser.
pub struct ParallaxParser {
    scanner: Scanner<ParallaxFraming>,
}

impl ParallaxParser {
    pub fn new() -> Self {
        ParallaxParser {
            scanner: Scanner::new(),
        }
    }
}

impl Default for ParallaxParser {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameParser for ParallaxParser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<ReaderEvent>) {
        self.scanner.feed(bytes, out);
    }
}

/// The frame a Parallax reader sends for `uid`; for simulators and tests.
pub fn frame(uid: [u8; 5]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.push(LF);
    f.extend(hex::encode_upper(uid).into_bytes());
    f.push(CR);
    f
}

struct ParallaxFraming;

impl Framing for ParallaxFraming {
    const MAX_FRAME: usize = FRAME_LEN;

    fn is_start(b: u8) -> bool {
        b == LF
    }

    fn check(cand: &[u8]) -> Check {
        let i = cand.len() - 1;
        let b = cand[i];
        match i {
            1..=10 if b == LF || b == CR => Check::Invalid(format!(
                "frame cut short: {b:#04x} after {} of 10 id characters",
                i - 1
            )),
            1..=10 => Check::Incomplete,
            11 if b == CR => Check::Complete,
            11 => Check::Invalid(format!("expected CR at offset 11, got {b:#04x}")),
            _ => Check::Invalid(format!("frame longer than {FRAME_LEN} bytes")),
        }
    }

    fn decode(frame: &[u8]) -> Result<Option<ReaderEvent>, String> {
        let digits = frame.get(1..11).ok_or("short frame")?;
        let uid = decode_hex(digits).ok_or("non-hex character in tag id")?;
        Ok(Some(ReaderEvent::Tag { uid }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use proptest::prelude::*;

    const UID: [u8; 5] = [0x0F, 0x01, 0x84, 0xF0, 0x7A];

    fn make() -> Box<dyn FrameParser> {
        Box::new(ParallaxParser::new())
    }

    fn tag(uid: &[u8]) -> ReaderEvent {
        ReaderEvent::Tag { uid: uid.to_vec() }
    }

    #[test]
    fn encodes_the_documented_frame() {
        assert_eq!(frame(UID), b"\n0F0184F07A\r".to_vec());
    }

    #[test]
    fn valid_frame_at_every_split_point() {
        assert_every_split(&make, &frame(UID), &[tag(&UID)]);
    }

    #[test]
    fn repeated_and_glued_frames_all_come_out() {
        let b = [0x04, 0x15, 0xAF, 0x3B, 0x7C];
        let bytes = [frame(UID), frame(UID), frame(b)].concat();
        assert_eq!(
            feed_all(make().as_mut(), &bytes),
            vec![tag(&UID), tag(&UID), tag(&b)]
        );
        assert_every_split(&make, &bytes, &[tag(&UID), tag(&UID), tag(&b)]);
    }

    #[test]
    fn non_hex_id_is_an_error() {
        let f = b"\n0F0184F07Z\r";
        let out = feed_all(make().as_mut(), f);
        assert_eq!(out.len(), 1);
        let ReaderEvent::FrameError { reason, bytes } = &out[0] else {
            panic!("expected an error, got {out:?}");
        };
        assert!(reason.contains("non-hex"), "{reason}");
        assert_eq!(bytes, f);
    }

    #[test]
    fn noise_before_a_frame_is_reported_then_the_frame_is_read() {
        let mut bytes = vec![0x00, b'7', b'\r', 0x80];
        bytes.extend(frame(UID));
        let out = feed_all(make().as_mut(), &bytes);
        assert_eq!(errors(&out), 1);
        assert_eq!(tags(&out), vec![UID.to_vec()]);
        assert_every_split(&make, &bytes, &out);
    }

    #[test]
    fn truncated_frame_followed_by_a_good_one() {
        let good = frame(UID);
        let bytes = [&good[..5], &good[..]].concat();
        let out = feed_all(make().as_mut(), &bytes);
        assert_eq!(tags(&out), vec![UID.to_vec()]);
        assert_eq!(errors(&out), 1);
    }

    #[test]
    fn overlong_frame_is_an_error() {
        let out = feed_all(make().as_mut(), b"\n0F0184F07A0\r");
        assert!(tags(&out).is_empty());
        assert_eq!(errors(&out), 1);
    }

    fn oracle(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .windows(FRAME_LEN)
            .filter(|w| w[0] == LF && w[11] == CR)
            .filter_map(|w| hex::decode(&w[1..11]).ok())
            .collect()
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_or_invent_tags(
            bytes in proptest::collection::vec(
                prop_oneof![Just(LF), Just(CR), Just(b'A'), Just(b'0'), any::<u8>()], 0..600),
            sizes in proptest::collection::vec(1usize..40, 1..20),
        ) {
            let whole = feed_all(make().as_mut(), &bytes);
            prop_assert_eq!(&whole, &feed_chunked(make().as_mut(), &bytes, &sizes));
            assert_bounded(&whole);
            let real = oracle(&bytes);
            let got = tags(&whole);
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
                (any::<[u8; 5]>(), proptest::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != LF), 0..40)),
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
