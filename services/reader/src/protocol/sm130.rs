//! SonMicro SM130 / SM130-mini over UART, 13.56 MHz ISO 14443A (Mifare), 19200 8N1.
//!
//! Frames in both directions are `FF 00 LEN CMD DATA… CSUM`: `FF 00` is the
//! header, LEN counts CMD and DATA, CSUM is the low byte of the sum of every
//! byte after `FF` (`00 + LEN + CMD + DATA`). The module only answers
//! commands, so the host polls with "Select Tag" (0x83). Its reply is either
//! LEN 2 with one status byte (`N` no tag, `U` RF field off) or a tag-type
//! byte (1 Ultralight, 2 Classic 1K, 3 Classic 4K, FF other) followed by the
//! 4- or 7-byte UID, which is kept exactly as sent. Replies to "Seek for Tag"
//! (0x82; the module seeks by itself after power-up) carry a tag the same way.
//! Other replies (0x80 reset/firmware, 0x92 write-output ack, …) are consumed.

use super::{Check, Feedback, FrameParser, Framing, ReaderEvent, Scanner, frame_error};

/// "Reset": the module answers with its firmware version.
pub const CMD_RESET: u8 = 0x80;
/// "Seek for Tag": replies come when a tag enters the field.
pub const CMD_SEEK_TAG: u8 = 0x82;
/// "Select Tag": reports the tag in the field now, or `N`.
pub const CMD_SELECT_TAG: u8 = 0x83;
/// "Write Output": sets OUT1 (bit 0) and OUT2 (bit 1).
pub const CMD_WRITE_OUTPUT: u8 = 0x92;

const HEADER: u8 = 0xFF;
const RESERVED: u8 = 0x00;
/// Largest LEN accepted. Real replies are shorter (a 16-byte block read has
/// LEN 18); the bound only limits how long a false `FF 00` can hold bytes
/// before the checksum check rejects it and the scanner looks inside.
pub const MAX_LEN: u8 = 64;

/// Incremental SM130 reply parser.
pub struct Sm130Parser {
    scanner: Scanner<Sm130Framing>,
}

impl Sm130Parser {
    pub fn new() -> Self {
        Sm130Parser {
            scanner: Scanner::new(),
        }
    }
}

impl Default for Sm130Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameParser for Sm130Parser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<ReaderEvent>) {
        self.scanner.feed(bytes, out);
    }
}

/// Builds a frame for `cmd` with `data` (a command to the module, or a reply
/// in tests and simulators); `None` when `data` is longer than 254 bytes.
pub fn frame(cmd: u8, data: &[u8]) -> Option<Vec<u8>> {
    let len = u8::try_from(data.len().checked_add(1)?).ok()?;
    let mut f = Vec::with_capacity(data.len() + 5);
    f.extend([HEADER, RESERVED, len, cmd]);
    f.extend(data);
    f.push(checksum(&f[1..]));
    Some(f)
}

/// A "Select Tag" reply naming a tag of `tag_type` with `uid`.
pub fn select_reply(tag_type: u8, uid: &[u8]) -> Option<Vec<u8>> {
    let data: Vec<u8> = std::iter::once(tag_type)
        .chain(uid.iter().copied())
        .collect();
    frame(CMD_SELECT_TAG, &data)
}

/// The "Select Tag" reply for an empty field: `FF 00 02 83 4E D3`.
pub fn no_tag_reply() -> Vec<u8> {
    vec![HEADER, RESERVED, 0x02, CMD_SELECT_TAG, b'N', 0xD3]
}

/// The OUT1/OUT2 bits for `feedback`; see [`super::feedback_command`].
pub fn output_bits(feedback: Feedback) -> u8 {
    match feedback {
        Feedback::Accepted | Feedback::Changed => 0b01,
        Feedback::Duplicate => 0b11,
        Feedback::Rejected => 0b10,
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

struct Sm130Framing;

impl Framing for Sm130Framing {
    const MAX_FRAME: usize = MAX_LEN as usize + 4;

    fn is_start(b: u8) -> bool {
        b == HEADER
    }

    fn check(cand: &[u8]) -> Check {
        match cand {
            [_, RESERVED] => Check::Incomplete,
            [_, _] => Check::NotAFrame,
            [_, _, 0] => Check::Invalid("length byte 0 (a frame has at least a command)".into()),
            [_, _, len] if *len > MAX_LEN => {
                Check::Invalid(format!("length byte {len} exceeds {MAX_LEN}"))
            }
            [_, _, len, ..] if cand.len() == usize::from(*len) + 4 => Check::Complete,
            _ => Check::Incomplete,
        }
    }

    fn decode(frame: &[u8]) -> Result<Option<ReaderEvent>, String> {
        let [_, body @ .., csum] = frame else {
            return Err("short frame".into());
        };
        let computed = checksum(body);
        if computed != *csum {
            return Err(format!(
                "checksum mismatch: frame says {csum:02X}, bytes sum to {computed:02X}"
            ));
        }
        let [_, _, cmd, data @ ..] = body else {
            return Err("short frame".into());
        };
        if *cmd != CMD_SELECT_TAG && *cmd != CMD_SEEK_TAG {
            return Ok(None);
        }
        match data {
            // Status only. For select it means no tag ('N') or RF off ('U'):
            // either way nothing is present. For seek it is 'L' (seeking) or
            // 'U', which says nothing about a tag.
            [_status] if *cmd == CMD_SELECT_TAG => Ok(Some(ReaderEvent::NoTag)),
            [_status] => Ok(None),
            [_tag_type, uid @ ..] if matches!(uid.len(), 4 | 7 | 10) => {
                Ok(Some(ReaderEvent::Tag { uid: uid.to_vec() }))
            }
            _ => Ok(Some(frame_error(
                format!(
                    "tag reply (cmd {cmd:02X}) with {} data bytes; expected a type byte and a 4, 7 or 10 byte UID",
                    data.len()
                ),
                frame,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use proptest::prelude::*;

    const UID4: [u8; 4] = [0xDE, 0xAD, 0xBE, 0xEF];
    const UID7: [u8; 7] = [0x04, 0x52, 0x9A, 0x6A, 0x2B, 0x49, 0x80];

    fn make() -> Box<dyn FrameParser> {
        Box::new(Sm130Parser::new())
    }

    fn tag(uid: &[u8]) -> ReaderEvent {
        ReaderEvent::Tag { uid: uid.to_vec() }
    }

    fn reply(tag_type: u8, uid: &[u8]) -> Vec<u8> {
        select_reply(tag_type, uid).expect("short uid")
    }

    #[test]
    fn encodes_commands_and_replies() {
        assert_eq!(
            frame(CMD_SELECT_TAG, &[]),
            Some(vec![0xFF, 0x00, 0x01, 0x83, 0x84])
        );
        // 00 + 06 + 83 + 02 + DE + AD + BE + EF = 0x3C3 -> C3
        assert_eq!(
            reply(0x02, &UID4),
            vec![0xFF, 0x00, 0x06, 0x83, 0x02, 0xDE, 0xAD, 0xBE, 0xEF, 0xC3]
        );
        assert_eq!(frame(CMD_SELECT_TAG, b"N"), Some(no_tag_reply()));
        assert_eq!(frame(0x10, &[0; 254]).map(|f| f.len()), Some(259));
        assert_eq!(frame(0x10, &[0; 255]), None);
    }

    #[test]
    fn four_byte_uid_at_every_split_point() {
        assert_every_split(&make, &reply(0x02, &UID4), &[tag(&UID4)]);
    }

    #[test]
    fn seven_byte_uid_is_kept_whole() {
        let f = reply(0x01, &UID7);
        assert_eq!(f[2], 9);
        assert_every_split(&make, &f, &[tag(&UID7)]);
    }

    #[test]
    fn ten_byte_uid_is_kept_whole() {
        let uid: Vec<u8> = (1..=10).collect();
        assert_every_split(&make, &reply(0xFF, &uid), &[tag(&uid)]);
    }

    #[test]
    fn no_tag_reply_is_no_tag() {
        assert_every_split(&make, &no_tag_reply(), &[ReaderEvent::NoTag]);
        // 'U': RF field off, nothing can be present either.
        let rf_off = frame(CMD_SELECT_TAG, b"U").expect("frame");
        assert_eq!(feed_all(make().as_mut(), &rf_off), vec![ReaderEvent::NoTag]);
    }

    #[test]
    fn seek_replies_carry_tags_but_status_is_silent() {
        let found = frame(CMD_SEEK_TAG, &[0x02, 1, 2, 3, 4]).expect("frame");
        assert_eq!(feed_all(make().as_mut(), &found), vec![tag(&[1, 2, 3, 4])]);
        let seeking = frame(CMD_SEEK_TAG, b"L").expect("frame");
        assert_eq!(feed_all(make().as_mut(), &seeking), vec![]);
    }

    #[test]
    fn other_replies_are_consumed_silently() {
        let ack = frame(CMD_WRITE_OUTPUT, &[0x01]).expect("frame");
        let firmware = frame(CMD_RESET, b"UM13.1").expect("frame");
        let bytes = [ack, firmware, reply(0x02, &UID4)].concat();
        assert_eq!(feed_all(make().as_mut(), &bytes), vec![tag(&UID4)]);
    }

    #[test]
    fn glued_replies_all_come_out() {
        let bytes = [
            reply(0x02, &UID4),
            no_tag_reply(),
            reply(0x01, &UID7),
            reply(0x02, &UID4),
        ]
        .concat();
        let want = vec![tag(&UID4), ReaderEvent::NoTag, tag(&UID7), tag(&UID4)];
        assert_every_split(&make, &bytes, &want);
    }

    #[test]
    fn bad_checksum_is_an_error_not_a_tag() {
        let mut f = reply(0x02, &UID4);
        let last = f.len() - 1;
        f[last] ^= 0x01;
        let out = feed_all(make().as_mut(), &f);
        assert_eq!(out.len(), 1);
        let ReaderEvent::FrameError { reason, bytes } = &out[0] else {
            panic!("expected an error, got {out:?}");
        };
        assert!(reason.contains("checksum"), "{reason}");
        assert_eq!(bytes, &f);
    }

    #[test]
    fn corrupted_uid_byte_is_caught() {
        let mut f = reply(0x02, &UID4);
        f[6] = 0x00;
        let out = feed_all(make().as_mut(), &f);
        assert!(tags(&out).is_empty());
        assert_eq!(errors(&out), 1);
    }

    #[test]
    fn odd_uid_length_is_an_error() {
        let f = reply(0x02, &[1, 2, 3]);
        let out = feed_all(make().as_mut(), &f);
        assert!(tags(&out).is_empty());
        assert_eq!(errors(&out), 1);
    }

    #[test]
    fn noise_before_a_frame_is_reported_then_the_frame_is_read() {
        let mut bytes = vec![0x00, 0x12, 0xFF, 0x34];
        bytes.extend(reply(0x02, &UID4));
        let out = feed_all(make().as_mut(), &bytes);
        assert_eq!(
            out,
            vec![
                ReaderEvent::FrameError {
                    reason: "4 bytes of noise outside any frame".into(),
                    bytes: vec![0x00, 0x12, 0xFF, 0x34],
                },
                tag(&UID4)
            ]
        );
        assert_every_split(&make, &bytes, &out);
    }

    #[test]
    fn false_header_swallowing_a_real_frame_is_recovered() {
        // `FF 00 20` announces 32 bytes; the real reply hides inside them.
        let mut bytes = vec![0xFF, 0x00, 0x20];
        bytes.extend(reply(0x02, &UID4));
        bytes.extend([0x55; 40]);
        let out = feed_all(make().as_mut(), &bytes);
        assert_eq!(tags(&out), vec![UID4.to_vec()]);
        assert_bounded(&out);
        assert_every_split(&make, &bytes, &out);
    }

    #[test]
    fn impossible_lengths_are_errors() {
        let out = feed_all(make().as_mut(), &[0xFF, 0x00, 0x00, 0xFF, 0x00, 0xF0]);
        assert_eq!(errors(&out), 2);
        assert!(tags(&out).is_empty());
    }

    /// Every valid tag-carrying reply (by brute force) in `bytes`.
    fn oracle(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        for i in 0..bytes.len() {
            let w = &bytes[i..];
            if w.len() < 5 || w[0] != 0xFF || w[1] != 0 || w[2] == 0 || w[2] > MAX_LEN {
                continue;
            }
            let n = w[2] as usize + 4;
            if w.len() < n {
                continue;
            }
            let sum = w[1..n - 1].iter().fold(0u8, |a, b| a.wrapping_add(*b));
            let cmd = w[3];
            let uid_len = n.saturating_sub(6);
            if sum == w[n - 1] && (cmd == 0x82 || cmd == 0x83) && [4, 7, 10].contains(&uid_len) {
                found.push(w[5..n - 1].to_vec());
            }
        }
        found
    }

    /// A reply the module might send, with the event it must produce.
    fn any_reply() -> impl Strategy<Value = (Vec<u8>, Option<ReaderEvent>)> {
        prop_oneof![
            any::<(u8, [u8; 4])>().prop_map(|(t, u)| (reply(t, &u), Some(tag(&u)))),
            any::<(u8, [u8; 7])>().prop_map(|(t, u)| (reply(t, &u), Some(tag(&u)))),
            Just((no_tag_reply(), Some(ReaderEvent::NoTag))),
            any::<u8>().prop_map(|b| (frame(CMD_WRITE_OUTPUT, &[b & 3]).unwrap_or_default(), None)),
        ]
    }

    fn any_reply_bytes() -> impl Strategy<Value = Vec<u8>> {
        any_reply().prop_map(|(f, _)| f)
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_or_invent_tags(
            bytes in proptest::collection::vec(
                prop_oneof![Just(0xFFu8), Just(0x00), Just(0x06), Just(0x83), any::<u8>()], 0..600),
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
        fn corrupted_and_noisy_replies_never_invent_tags(
            parts in proptest::collection::vec(
                prop_oneof![
                    any_reply_bytes(),
                    proptest::collection::vec(any::<u8>(), 0..12),
                    (any_reply_bytes(), any::<usize>(), any::<u8>()).prop_map(|(mut f, i, b)| {
                        let i = i % f.len();
                        f[i] = b;
                        f
                    }),
                    (any_reply_bytes(), any::<usize>()).prop_map(|(f, cut)| f[..cut % f.len()].to_vec()),
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
        fn replies_between_noise_are_all_recovered(
            items in proptest::collection::vec(
                (any_reply(), proptest::collection::vec(any::<u8>().prop_filter("no FF", |b| *b != 0xFF), 0..40)),
                0..10,
            ),
            trailing in proptest::collection::vec(any::<u8>(), 0..40),
            sizes in proptest::collection::vec(1usize..40, 1..10),
        ) {
            let mut bytes = Vec::new();
            let mut want = Vec::new();
            for ((reply, event), noise) in &items {
                bytes.extend(noise);
                bytes.extend(reply);
                want.extend(event.clone());
            }
            bytes.extend(&trailing);
            let out = feed_chunked(make().as_mut(), &bytes, &sizes);
            let got: Vec<ReaderEvent> = out.into_iter().filter(|e| !matches!(e, ReaderEvent::FrameError { .. })).collect();
            prop_assert_eq!(got, want);
        }
    }
}
