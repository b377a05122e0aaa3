//! Pure frame parsers for the supported serial RFID readers: bytes in, events out.
//!
//! Nothing here does I/O or reads a clock, so every parser can be driven byte
//! by byte from tests. Bytes come from a UART: frames may be split across reads
//! at any byte, glued together, or preceded by line noise (a USB-serial adapter
//! often emits a stray byte when opened). Parsers therefore keep only bounded
//! state, never panic, and report a [`ReaderEvent::Tag`] only for a frame that
//! passed every check the protocol offers.
//!
//! One file per protocol: [`id12`], [`parallax`], [`sm130`], [`line`].

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use tagpoll_proto::v1::TagTechnology;

pub mod id12;
pub mod line;
pub mod parallax;
pub mod sm130;

/// Most bytes a [`ReaderEvent::FrameError`] carries: enough to diagnose a
/// wiring or baud-rate problem, bounded so noise cannot grow memory or logs.
pub const MAX_ERROR_BYTES: usize = 64;

/// The wire protocol a reader speaks; chosen per reader in the device config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// ID-Innovations ID-12/ID-20/ID-12LA (ASCII output mode), 125 kHz EM4100.
    Id12,
    /// Parallax serial RFID card reader (#28140), 125 kHz EM4100.
    Parallax,
    /// SonMicro SM130 (UART), 13.56 MHz Mifare; polled by the host.
    Sm130,
    /// Generic reader printing one UID per line.
    Line(LineFormat),
}

/// How a [`Protocol::Line`] reader prints a UID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LineFormat {
    /// Hex digits, optionally separated by `:`, `-` or spaces (`04:A2:3B:1C`).
    #[default]
    Hex,
    /// One unsigned decimal number (`3735928559`), as many 125 kHz USB readers print.
    Decimal,
}

/// A protocol name that is none of the supported ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown reader protocol {0:?}; expected one of id12, parallax, sm130, line, line-hex, line-dec"
)]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Accepts `id12`, `parallax`, `sm130`, `line` (= `line-hex`), `line-hex`,
    /// `line-dec` (or `line-decimal`), ignoring ASCII case and surrounding blanks.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "id12" => Ok(Protocol::Id12),
            "parallax" => Ok(Protocol::Parallax),
            "sm130" => Ok(Protocol::Sm130),
            "line" | "line-hex" => Ok(Protocol::Line(LineFormat::Hex)),
            "line-dec" | "line-decimal" => Ok(Protocol::Line(LineFormat::Decimal)),
            _ => Err(UnknownProtocol(s.to_owned())),
        }
    }
}

impl fmt::Display for Protocol {
    /// The canonical name, which [`Protocol::from_str`] parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Id12 => "id12",
            Protocol::Parallax => "parallax",
            Protocol::Sm130 => "sm130",
            Protocol::Line(LineFormat::Hex) => "line",
            Protocol::Line(LineFormat::Decimal) => "line-dec",
        })
    }
}

impl Protocol {
    /// The baud rate the reader ships with (all are 8N1, no flow control).
    pub fn default_baud(&self) -> u32 {
        match self {
            Protocol::Id12 => 9600,
            Protocol::Parallax => 2400,
            Protocol::Sm130 => 19200,
            Protocol::Line(_) => 9600,
        }
    }

    /// Identical frames needed before a tag counts as presented (see
    /// [`crate::debounce::Debouncer::with_confirmations`]).
    ///
    /// Parallax frames carry no checksum, so one garbled hex digit would read
    /// as another (valid-looking) tag and could vote for somebody else, and
    /// Parallax's documentation (v2.1, "Interference") says RF noise can make
    /// the reader send a spurious tag with no tag near; it recommends reading
    /// two responses in a row. The reader keeps sending its frame while a tag
    /// is in range (one 12-byte frame takes 50 ms at 2400 baud), so a tap
    /// becomes a vote at its second identical frame within the quiet time.
    /// ID-12 and SM130 frames are checksummed; line readers usually print a
    /// tag once, so they are taken at one frame.
    pub fn confirmations(&self) -> u32 {
        match self {
            Protocol::Parallax => 2,
            Protocol::Id12 | Protocol::Sm130 | Protocol::Line(_) => 1,
        }
    }

    /// The tag technology to record in a `TagRead` from this reader.
    pub fn technology(&self) -> TagTechnology {
        match self {
            Protocol::Id12 | Protocol::Parallax => TagTechnology::Em4100,
            Protocol::Sm130 => TagTechnology::Iso14443a,
            Protocol::Line(_) => TagTechnology::Other,
        }
    }
}

/// What a parser recognised in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderEvent {
    /// A complete, verified frame naming a tag; `uid` is every UID byte as the
    /// reader reported it.
    Tag { uid: Vec<u8> },
    /// The reader said explicitly that no tag is in the field (SM130 select
    /// reply with LEN 2), so a presence can end before the quiet time.
    NoTag,
    /// Bytes that did not form a valid frame; `bytes` holds at most
    /// [`MAX_ERROR_BYTES`] of them.
    FrameError { reason: String, bytes: Vec<u8> },
}

/// An incremental parser: the stream may be cut anywhere between calls.
pub trait FrameParser: Send {
    /// Consumes `bytes` and appends whatever they complete to `out`.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<ReaderEvent>);
}

/// A fresh parser for `p`; one per open port, since parsers carry partial frames.
pub fn parser(p: &Protocol) -> Box<dyn FrameParser> {
    match p {
        Protocol::Id12 => Box::new(id12::Id12Parser::new()),
        Protocol::Parallax => Box::new(parallax::ParallaxParser::new()),
        Protocol::Sm130 => Box::new(sm130::Sm130Parser::new()),
        Protocol::Line(format) => Box::new(line::LineParser::new(*format)),
    }
}

/// The command the host must send, repeatedly, to learn whether a tag is
/// present; `None` for readers that report tags on their own.
///
/// SM130: "Select Tag" (`FF 00 01 83 84`).
pub fn poll_command(p: &Protocol) -> Option<Vec<u8>> {
    match p {
        Protocol::Sm130 => sm130::frame(sm130::CMD_SELECT_TAG, &[]),
        _ => None,
    }
}

/// What became of a tap, shown to the voter on the reader if it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feedback {
    /// A first vote counted here.
    Accepted,
    /// The vote moved here from another answer.
    Changed,
    /// Nothing changed: the vote was already counted.
    Duplicate,
    /// Not counted (unknown tag, poll closed, ...).
    Rejected,
}

/// The bytes that show `feedback` on the reader itself; `None` when the
/// protocol has no outputs (ID-12, Parallax and line readers are driven by a
/// command hook elsewhere).
///
/// SM130: "Write Output" (cmd 0x92), whose data byte drives OUT1 (bit 0) and
/// OUT2 (bit 1); the other bits are ignored by the module. With a green LED on
/// OUT1 and a red one on OUT2:
///
/// | feedback  | bits | LEDs | meaning for the voter        |
/// |-----------|------|------|------------------------------|
/// | Accepted  | 0b01 | green | your vote counts here       |
/// | Changed   | 0b01 | green | your vote counts here (now) |
/// | Duplicate | 0b11 | both  | already counted, no change  |
/// | Rejected  | 0b10 | red   | not counted                 |
///
/// Only two outputs exist, so Accepted and Changed share a pattern: both mean
/// "this answer now has your vote". [`feedback_off_command`] clears them again.
pub fn feedback_command(p: &Protocol, feedback: Feedback) -> Option<Vec<u8>> {
    match p {
        Protocol::Sm130 => sm130::frame(sm130::CMD_WRITE_OUTPUT, &[sm130::output_bits(feedback)]),
        _ => None,
    }
}

/// The bytes that switch the feedback outputs off again (SM130: write output
/// 0); `None` where [`feedback_command`] is `None`.
pub fn feedback_off_command(p: &Protocol) -> Option<Vec<u8>> {
    match p {
        Protocol::Sm130 => sm130::frame(sm130::CMD_WRITE_OUTPUT, &[0]),
        _ => None,
    }
}

/// A `FrameError` carrying at most [`MAX_ERROR_BYTES`] of `bytes`.
pub(crate) fn frame_error(reason: impl Into<String>, bytes: &[u8]) -> ReaderEvent {
    ReaderEvent::FrameError {
        reason: reason.into(),
        bytes: bytes[..bytes.len().min(MAX_ERROR_BYTES)].to_vec(),
    }
}

/// What a framing makes of a candidate frame that has grown by one byte.
pub(crate) enum Check {
    /// Consistent so far; needs more bytes.
    Incomplete,
    /// A whole frame with a valid structure; [`Framing::decode`] is next.
    Complete,
    /// The start byte was a coincidence (e.g. SM130 `FF` not followed by `00`):
    /// count the bytes as noise, not as a broken frame.
    NotAFrame,
    /// A frame that started but broke (wrong terminator, impossible length).
    Invalid(String),
}

/// The shape of a start-byte-delimited binary or ASCII frame.
pub(crate) trait Framing {
    /// Longest possible frame; a candidate never grows beyond it.
    const MAX_FRAME: usize;

    /// Whether `b` may begin a frame.
    fn is_start(b: u8) -> bool;

    /// Judges `cand` (starting with a start byte, at least 2 bytes long).
    fn check(cand: &[u8]) -> Check;

    /// Decodes a structurally complete frame. `Err` rejects it as corrupt and
    /// makes the scanner look for a frame start inside it.
    fn decode(frame: &[u8]) -> Result<Option<ReaderEvent>, String>;
}

/// The resynchronising scanner shared by the start-byte protocols.
///
/// Bytes outside frames collect as noise (reported once a frame resolves or
/// [`MAX_ERROR_BYTES`] have gathered). When a candidate frame breaks, the
/// bytes after its start byte are scanned again, so a real frame hiding behind
/// a false start (or a truncated frame) is still found. Every rejection drops
/// at least the start byte, so this terminates, and the output depends only
/// on the concatenated input, not on how it was chunked.
pub(crate) struct Scanner<F> {
    cand: Vec<u8>,
    noise: Vec<u8>,
    replay: VecDeque<u8>,
    _framing: PhantomData<fn() -> F>,
}

impl<F: Framing> Scanner<F> {
    pub(crate) fn new() -> Self {
        Scanner {
            cand: Vec::with_capacity(F::MAX_FRAME),
            noise: Vec::new(),
            replay: VecDeque::new(),
            _framing: PhantomData,
        }
    }

    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<ReaderEvent>) {
        for &b in bytes {
            self.step(b, out);
            while let Some(r) = self.replay.pop_front() {
                self.step(r, out);
            }
        }
    }

    fn step(&mut self, b: u8, out: &mut Vec<ReaderEvent>) {
        if self.cand.is_empty() {
            if F::is_start(b) {
                self.cand.push(b);
            } else {
                self.push_noise(b, out);
            }
            return;
        }
        self.cand.push(b);
        let check = match F::check(&self.cand) {
            Check::Incomplete if self.cand.len() >= F::MAX_FRAME => {
                Check::Invalid(format!("frame longer than {} bytes", F::MAX_FRAME))
            }
            c => c,
        };
        match check {
            Check::Incomplete => {}
            Check::Complete => match F::decode(&self.cand) {
                Ok(ev) => {
                    self.flush_noise(out);
                    out.extend(ev);
                    self.cand.clear();
                }
                Err(reason) => self.reject(Some(reason), out),
            },
            Check::NotAFrame => self.reject(None, out),
            Check::Invalid(reason) => self.reject(Some(reason), out),
        }
    }

    fn reject(&mut self, reason: Option<String>, out: &mut Vec<ReaderEvent>) {
        let cand = std::mem::take(&mut self.cand);
        let cut = cand
            .iter()
            .skip(1)
            .position(|&b| F::is_start(b))
            .map_or(cand.len(), |i| i + 1);
        let (bad, rest) = cand.split_at(cut);
        match reason {
            None => bad.iter().for_each(|&b| self.push_noise(b, out)),
            Some(reason) => {
                self.flush_noise(out);
                out.push(frame_error(reason, bad));
            }
        }
        for &b in rest.iter().rev() {
            self.replay.push_front(b);
        }
        self.cand = cand;
        self.cand.clear();
    }

    fn push_noise(&mut self, b: u8, out: &mut Vec<ReaderEvent>) {
        self.noise.push(b);
        if self.noise.len() >= MAX_ERROR_BYTES {
            self.flush_noise(out);
        }
    }

    fn flush_noise(&mut self, out: &mut Vec<ReaderEvent>) {
        if !self.noise.is_empty() {
            let n = self.noise.len();
            let s = if n == 1 { "" } else { "s" };
            out.push(frame_error(
                format!("{n} byte{s} of noise outside any frame"),
                &self.noise,
            ));
            self.noise.clear();
        }
    }
}

/// Decodes ASCII hex (either case) into bytes; `None` on any other character.
pub(crate) fn decode_hex(ascii: &[u8]) -> Option<Vec<u8>> {
    hex::decode(ascii).ok()
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by the parser tests.
    use super::*;

    /// Feeds `bytes` in one call.
    pub fn feed_all(p: &mut dyn FrameParser, bytes: &[u8]) -> Vec<ReaderEvent> {
        let mut out = Vec::new();
        p.feed(bytes, &mut out);
        out
    }

    /// Feeds `bytes` in pieces whose sizes cycle through `sizes` (0 is read as 1).
    pub fn feed_chunked(
        p: &mut dyn FrameParser,
        bytes: &[u8],
        sizes: &[usize],
    ) -> Vec<ReaderEvent> {
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(1)
                .clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(n);
            p.feed(chunk, &mut out);
            rest = tail;
            i += 1;
        }
        out
    }

    /// The UIDs of the `Tag` events, in order.
    pub fn tags(events: &[ReaderEvent]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|e| match e {
                ReaderEvent::Tag { uid } => Some(uid.clone()),
                _ => None,
            })
            .collect()
    }

    /// Number of `FrameError` events.
    pub fn errors(events: &[ReaderEvent]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, ReaderEvent::FrameError { .. }))
            .count()
    }

    /// Asserts that `frame` parses to `expected` when fed whole, split in two at
    /// every byte boundary, and one byte at a time.
    pub fn assert_every_split(
        make: &dyn Fn() -> Box<dyn FrameParser>,
        frame: &[u8],
        expected: &[ReaderEvent],
    ) {
        assert_eq!(feed_all(make().as_mut(), frame), expected, "whole frame");
        for cut in 1..frame.len() {
            let mut p = make();
            let mut out = Vec::new();
            p.feed(&frame[..cut], &mut out);
            p.feed(&frame[cut..], &mut out);
            assert_eq!(out, expected, "split at byte {cut}");
        }
        assert_eq!(
            feed_chunked(make().as_mut(), frame, &[1]),
            expected,
            "1-byte pieces"
        );
    }

    /// Asserts that every `FrameError` respects the size bound.
    pub fn assert_bounded(events: &[ReaderEvent]) {
        for e in events {
            if let ReaderEvent::FrameError { bytes, .. } = e {
                assert!(
                    bytes.len() <= MAX_ERROR_BYTES,
                    "error carries {} bytes",
                    bytes.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_round_trip() {
        for p in [
            Protocol::Id12,
            Protocol::Parallax,
            Protocol::Sm130,
            Protocol::Line(LineFormat::Hex),
            Protocol::Line(LineFormat::Decimal),
        ] {
            assert_eq!(p.to_string().parse::<Protocol>(), Ok(p));
        }
    }

    #[test]
    fn protocol_names_and_aliases_parse() {
        assert_eq!("id12".parse(), Ok(Protocol::Id12));
        assert_eq!(" Parallax ".parse(), Ok(Protocol::Parallax));
        assert_eq!("SM130".parse(), Ok(Protocol::Sm130));
        assert_eq!("line".parse(), Ok(Protocol::Line(LineFormat::Hex)));
        assert_eq!("line-hex".parse(), Ok(Protocol::Line(LineFormat::Hex)));
        assert_eq!("line-dec".parse(), Ok(Protocol::Line(LineFormat::Decimal)));
        assert_eq!(
            "line-decimal".parse(),
            Ok(Protocol::Line(LineFormat::Decimal))
        );
        let err = "pn532".parse::<Protocol>().unwrap_err();
        assert_eq!(err, UnknownProtocol("pn532".into()));
        assert!(err.to_string().contains("sm130"));
        assert!("".parse::<Protocol>().is_err());
        assert!("line-oct".parse::<Protocol>().is_err());
    }

    #[test]
    fn default_bauds_and_technologies() {
        assert_eq!(Protocol::Id12.default_baud(), 9600);
        assert_eq!(Protocol::Parallax.default_baud(), 2400);
        assert_eq!(Protocol::Sm130.default_baud(), 19200);
        assert_eq!(Protocol::Line(LineFormat::Decimal).default_baud(), 9600);
        assert_eq!(Protocol::Id12.technology(), TagTechnology::Em4100);
        assert_eq!(Protocol::Parallax.technology(), TagTechnology::Em4100);
        assert_eq!(Protocol::Sm130.technology(), TagTechnology::Iso14443a);
        assert_eq!(
            Protocol::Line(LineFormat::Hex).technology(),
            TagTechnology::Other
        );
    }

    #[test]
    fn only_sm130_is_polled() {
        assert_eq!(
            poll_command(&Protocol::Sm130),
            Some(vec![0xFF, 0x00, 0x01, 0x83, 0x84])
        );
        assert_eq!(poll_command(&Protocol::Id12), None);
        assert_eq!(poll_command(&Protocol::Parallax), None);
        assert_eq!(poll_command(&Protocol::Line(LineFormat::Hex)), None);
    }

    #[test]
    fn sm130_feedback_sets_outputs() {
        let p = Protocol::Sm130;
        assert_eq!(
            feedback_command(&p, Feedback::Accepted),
            Some(vec![0xFF, 0x00, 0x02, 0x92, 0x01, 0x95])
        );
        assert_eq!(
            feedback_command(&p, Feedback::Changed),
            Some(vec![0xFF, 0x00, 0x02, 0x92, 0x01, 0x95])
        );
        assert_eq!(
            feedback_command(&p, Feedback::Duplicate),
            Some(vec![0xFF, 0x00, 0x02, 0x92, 0x03, 0x97])
        );
        assert_eq!(
            feedback_command(&p, Feedback::Rejected),
            Some(vec![0xFF, 0x00, 0x02, 0x92, 0x02, 0x96])
        );
        assert_eq!(
            feedback_off_command(&p),
            Some(vec![0xFF, 0x00, 0x02, 0x92, 0x00, 0x94])
        );
    }

    #[test]
    fn other_protocols_have_no_feedback_bytes() {
        for p in [
            Protocol::Id12,
            Protocol::Parallax,
            Protocol::Line(LineFormat::Hex),
        ] {
            for f in [
                Feedback::Accepted,
                Feedback::Changed,
                Feedback::Duplicate,
                Feedback::Rejected,
            ] {
                assert_eq!(feedback_command(&p, f), None);
            }
            assert_eq!(feedback_off_command(&p), None);
        }
    }

    #[test]
    fn frame_error_is_bounded() {
        let ReaderEvent::FrameError { bytes, .. } = frame_error("x", &[7u8; 500]) else {
            panic!("not an error");
        };
        assert_eq!(bytes.len(), MAX_ERROR_BYTES);
    }
}
