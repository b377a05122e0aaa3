//! Generic readers that print one UID per line (many USB/serial 125 kHz and
//! 13.56 MHz boards, Arduino sketches).
//!
//! Lines end in `\n` (a preceding `\r` is trimmed with other blanks); blank
//! lines are ignored. There is no checksum, so a line is accepted when its
//! whole content is a UID in the configured [`LineFormat`]:
//! - hex: hex digits, optionally separated by `:`, `-` or spaces, an even
//!   number of them, 1 to 10 bytes (`04:A2:3B:1C`, `04a23b1c`);
//! - decimal: one unsigned 64-bit number, sent as its big-endian bytes with
//!   leading zero bytes removed but at least 4 bytes kept
//!   (`3735928559` → `DE AD BE EF`, `42` → `00 00 00 2A`).
//!
//! A line longer than [`MAX_LINE`] bytes is reported once and skipped up to
//! the next newline.

use super::{FrameParser, LineFormat, ReaderEvent, frame_error};

/// Longest line (bytes before the `\n`, including any `\r`) accepted.
pub const MAX_LINE: usize = 64;
/// Most bytes a hex UID may have.
pub const MAX_UID: usize = 10;
/// Fewest bytes a decimal UID is padded to.
pub const MIN_DECIMAL_UID: usize = 4;

/// Incremental line parser.
pub struct LineParser {
    format: LineFormat,
    buf: Vec<u8>,
    /// Inside an overlong line already reported: drop bytes up to the newline.
    skipping: bool,
}

impl LineParser {
    pub fn new(format: LineFormat) -> Self {
        LineParser {
            format,
            buf: Vec::with_capacity(MAX_LINE),
            skipping: false,
        }
    }

    fn line(&self, line: &[u8], out: &mut Vec<ReaderEvent>) {
        let text = line.trim_ascii();
        if text.is_empty() {
            return;
        }
        let parsed = match self.format {
            LineFormat::Hex => parse_hex(text),
            LineFormat::Decimal => parse_decimal(text),
        };
        out.push(match parsed {
            Ok(uid) => ReaderEvent::Tag { uid },
            Err(reason) => frame_error(reason, line),
        });
    }
}

impl FrameParser for LineParser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<ReaderEvent>) {
        for &b in bytes {
            if b == b'\n' {
                if !self.skipping {
                    self.line(&self.buf, out);
                }
                self.buf.clear();
                self.skipping = false;
            } else if self.skipping {
                // Still inside the overlong line.
            } else if self.buf.len() >= MAX_LINE {
                out.push(frame_error(
                    format!("line longer than {MAX_LINE} bytes without a newline"),
                    &self.buf,
                ));
                self.buf.clear();
                self.skipping = true;
            } else {
                self.buf.push(b);
            }
        }
    }
}

fn parse_hex(text: &[u8]) -> Result<Vec<u8>, String> {
    let mut nibbles = Vec::with_capacity(2 * MAX_UID);
    for &c in text {
        match c {
            b':' | b'-' | b' ' | b'\t' => {}
            _ => {
                let n = (c as char)
                    .to_digit(16)
                    .ok_or_else(|| format!("{:?} is not a hex digit or separator", c as char))?;
                if nibbles.len() == 2 * MAX_UID {
                    return Err(format!("more than {MAX_UID} bytes of hex"));
                }
                nibbles.push(n as u8);
            }
        }
    }
    if nibbles.is_empty() {
        return Err("no hex digits".into());
    }
    if nibbles.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", nibbles.len()));
    }
    Ok(nibbles
        .chunks_exact(2)
        .map(|p| (p[0] << 4) | p[1])
        .collect())
}

fn parse_decimal(text: &[u8]) -> Result<Vec<u8>, String> {
    if !text.iter().all(u8::is_ascii_digit) {
        return Err("not a decimal number".into());
    }
    let n = std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("decimal number does not fit in 64 bits")?;
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let start = first.min(bytes.len() - MIN_DECIMAL_UID);
    Ok(bytes[start..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use proptest::prelude::*;

    fn hex_parser() -> Box<dyn FrameParser> {
        Box::new(LineParser::new(LineFormat::Hex))
    }

    fn dec_parser() -> Box<dyn FrameParser> {
        Box::new(LineParser::new(LineFormat::Decimal))
    }

    fn tag(uid: &[u8]) -> ReaderEvent {
        ReaderEvent::Tag { uid: uid.to_vec() }
    }

    #[test]
    fn hex_line_at_every_split_point() {
        assert_every_split(
            &hex_parser,
            b"04A23B1C\r\n",
            &[tag(&[0x04, 0xA2, 0x3B, 0x1C])],
        );
    }

    #[test]
    fn hex_separators_and_case() {
        let uid = [0x04, 0xA2, 0x3B, 0x1C];
        for line in [
            &b"04:a2:3b:1c\n"[..],
            b"04-A2-3B-1C\n",
            b"04 A2 3B 1C\n",
            b"  04A23B1C  \r\n",
            b"\t04a2:3B1c\n",
        ] {
            assert_eq!(
                feed_all(hex_parser().as_mut(), line),
                vec![tag(&uid)],
                "{line:?}"
            );
        }
    }

    #[test]
    fn hex_lengths() {
        assert_eq!(feed_all(hex_parser().as_mut(), b"7F\n"), vec![tag(&[0x7F])]);
        let ten: Vec<u8> = (1..=10).collect();
        assert_eq!(
            feed_all(hex_parser().as_mut(), b"0102030405060708090A\n"),
            vec![tag(&ten)]
        );
        let out = feed_all(hex_parser().as_mut(), b"0102030405060708090A0B\n");
        assert!(tags(&out).is_empty());
        assert_eq!(errors(&out), 1);
        let out = feed_all(hex_parser().as_mut(), b"4A2\n");
        assert_eq!(errors(&out), 1);
    }

    #[test]
    fn bad_hex_lines_are_errors_with_the_line() {
        for line in [&b"04A23G1C\n"[..], b"::\n", b"0x04A2\n", b"\xff\xfe\n"] {
            let out = feed_all(hex_parser().as_mut(), line);
            assert_eq!(out.len(), 1, "{line:?}");
            let ReaderEvent::FrameError { bytes, .. } = &out[0] else {
                panic!("expected an error for {line:?}, got {out:?}");
            };
            assert_eq!(bytes[..], line[..line.len() - 1]);
        }
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(feed_all(hex_parser().as_mut(), b"\n\r\n  \n"), vec![]);
    }

    #[test]
    fn glued_lines_all_come_out() {
        let bytes = b"0A0B0C0D\nDEADBEEF\r\n0A0B0C0D\n";
        let want = vec![
            tag(&[10, 11, 12, 13]),
            tag(&[0xDE, 0xAD, 0xBE, 0xEF]),
            tag(&[10, 11, 12, 13]),
        ];
        assert_every_split(&hex_parser, bytes, &want);
    }

    #[test]
    fn decimal_lines() {
        assert_every_split(
            &dec_parser,
            b"3735928559\r\n",
            &[tag(&[0xDE, 0xAD, 0xBE, 0xEF])],
        );
        assert_eq!(
            feed_all(dec_parser().as_mut(), b"42\n"),
            vec![tag(&[0, 0, 0, 42])]
        );
        assert_eq!(
            feed_all(dec_parser().as_mut(), b"0000000042\n"),
            vec![tag(&[0, 0, 0, 42])]
        );
        assert_eq!(
            feed_all(dec_parser().as_mut(), b"0\n"),
            vec![tag(&[0, 0, 0, 0])]
        );
        assert_eq!(
            feed_all(dec_parser().as_mut(), b"1099511627775\n"),
            vec![tag(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF])]
        );
        assert_eq!(
            feed_all(dec_parser().as_mut(), b"18446744073709551615\n"),
            vec![tag(&[0xFF; 8])]
        );
    }

    #[test]
    fn bad_decimal_lines_are_errors() {
        for line in [
            &b"18446744073709551616\n"[..],
            b"12a4\n",
            b"-5\n",
            b"+5\n",
            b"1 2\n",
        ] {
            let out = feed_all(dec_parser().as_mut(), line);
            assert!(tags(&out).is_empty(), "{line:?}");
            assert_eq!(errors(&out), 1, "{line:?}");
        }
    }

    #[test]
    fn overlong_line_is_reported_once_and_skipped() {
        let mut bytes = vec![b'A'; 200];
        bytes.extend(b"\n0A0B0C0D\n");
        let out = feed_all(hex_parser().as_mut(), &bytes);
        assert_eq!(out.len(), 2, "{out:?}");
        let ReaderEvent::FrameError {
            bytes: reported,
            reason,
        } = &out[0]
        else {
            panic!("expected an error first, got {out:?}");
        };
        assert!(reason.contains("longer"), "{reason}");
        assert_eq!(reported.len(), MAX_LINE);
        assert_eq!(out[1], tag(&[10, 11, 12, 13]));
        assert_every_split(&hex_parser, &bytes, &out);
    }

    #[test]
    fn line_of_exactly_max_length_is_parsed() {
        let mut line = vec![b' '; MAX_LINE - 8];
        line.extend(b"DEADBEEF\n");
        assert_eq!(
            feed_all(hex_parser().as_mut(), &line),
            vec![tag(&[0xDE, 0xAD, 0xBE, 0xEF])]
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_tags_need_newlines(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b'0'), Just(b'a'), Just(b'9'), any::<u8>()],
                0..600),
            sizes in proptest::collection::vec(1usize..40, 1..20),
            decimal in any::<bool>(),
        ) {
            let make = || -> Box<dyn FrameParser> { if decimal { dec_parser() } else { hex_parser() } };
            let whole = feed_all(make().as_mut(), &bytes);
            prop_assert_eq!(&whole, &feed_chunked(make().as_mut(), &bytes, &sizes));
            assert_bounded(&whole);
            let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
            let got = tags(&whole);
            prop_assert!(got.len() <= newlines);
            for uid in &got {
                prop_assert!(!uid.is_empty() && uid.len() <= MAX_UID);
                if decimal {
                    prop_assert!(uid.len() >= MIN_DECIMAL_UID);
                }
            }
        }

        #[test]
        fn uid_lines_between_noise_lines_are_all_recovered(
            items in proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 1..=MAX_UID),
                    0usize..3,
                    // Noise lines that can never be UIDs: letters beyond F, punctuation.
                    proptest::collection::vec(proptest::collection::vec(
                        prop_oneof![b'g'..=b'z', b'G'..=b'Z', Just(b'!'), Just(b'#'), Just(0x80u8)], 1..100), 0..3),
                ),
                0..10,
            ),
            sizes in proptest::collection::vec(1usize..40, 1..10),
        ) {
            let mut bytes = Vec::new();
            for (uid, style, noise) in &items {
                for n in noise {
                    bytes.extend(n);
                    bytes.push(b'\n');
                }
                let text = match style {
                    0 => hex::encode_upper(uid),
                    1 => hex::encode(uid),
                    _ => uid.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"),
                };
                bytes.extend(text.as_bytes());
                bytes.extend(b"\r\n");
            }
            let out = feed_chunked(hex_parser().as_mut(), &bytes, &sizes);
            let want: Vec<Vec<u8>> = items.iter().map(|(u, _, _)| u.clone()).collect();
            prop_assert_eq!(tags(&out), want);
        }

        #[test]
        fn decimal_round_trips(n in any::<u64>()) {
            let out = feed_all(dec_parser().as_mut(), format!("{n}\r\n").as_bytes());
            let uid = tags(&out).pop().unwrap_or_default();
            prop_assert!(uid.len() >= MIN_DECIMAL_UID && uid.len() <= 8);
            prop_assert_eq!(uid.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)), n);
        }
    }
}
