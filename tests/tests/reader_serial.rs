//! Byte-exact tests of the real `tagpoll-reader` binary through
//! pseudo-terminal pairs, one per supported protocol, against a real
//! nats-server: what is written on the "reader" side (valid frames, frames
//! split at every byte boundary, glued frames, bad checksums, noise) must
//! come out as exactly the expected `TagRead`s in stream TAGPOLL_READS — no
//! more, no fewer — and the frame errors must show in the device heartbeat.
//!
//! Presences are separated by using a different tag, by an SM130 "no tag"
//! reply, or by waiting well over the quiet time (`--quiet-ms`).

mod reader_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reader_support::*;
use tagpoll_tests::*;
use tokio::time::sleep;
use tokio_serial::SerialStream;

const DEVICE: &str = "hall-left";
const QUIET_MS: u64 = 250;
/// Comfortably over the quiet time (even if the reader is late to read one of
/// the two sightings on a loaded machine): the next sighting is a new presence.
const GAP: Duration = Duration::from_millis(6 * QUIET_MS);
/// Between the two writes of a split frame.
const SPLIT_PAUSE: Duration = Duration::from_millis(15);

/// A 5-byte EM4100 UID, distinct for each (family, n).
fn em(family: u8, n: u8) -> [u8; 5] {
    [family, 0x3C, n, 0xA5 ^ n, n.wrapping_mul(7)]
}

/// What one protocol's script expects: UIDs in tap order and frame errors.
#[derive(Default)]
struct Expect {
    uids: Vec<Vec<u8>>,
    frame_errors: u64,
}

async fn split_write(master: &mut SerialStream, frame: &[u8], at: usize) {
    write(master, &frame[..at]).await;
    sleep(SPLIT_PAUSE).await;
    write(master, &frame[at..]).await;
}

/// ID-12: 16-byte ASCII frames with an XOR checksum.
async fn id12_script(m: &mut SerialStream) -> Expect {
    let mut e = Expect::default();
    let f = id12_frame;
    // A valid frame.
    write(m, &f(em(0x11, 0))).await;
    e.uids.push(em(0x11, 0).to_vec());
    // A tag held on the reader: repeated frames are one presence.
    write(
        m,
        &[f(em(0x11, 1)), f(em(0x11, 1)), f(em(0x11, 1))].concat(),
    )
    .await;
    e.uids.push(em(0x11, 1).to_vec());
    // Split at every byte boundary.
    for k in 1..16u8 {
        let uid = em(0x11, 10 + k);
        split_write(m, &f(uid), k as usize).await;
        e.uids.push(uid.to_vec());
    }
    // Glued frames of three tags in one write.
    let glued = [em(0x11, 40), em(0x11, 41), em(0x11, 42)];
    write(m, &glued.map(f).concat()).await;
    e.uids.extend(glued.map(|u| u.to_vec()));
    // Bad checksum: an error, no tap.
    let mut bad = f(em(0x11, 50));
    bad[12] = if bad[12] == b'0' { b'1' } else { b'0' };
    write(m, &bad).await;
    e.frame_errors += 1;
    // A non-hex digit: an error, no tap.
    let mut nonhex = f(em(0x11, 51));
    nonhex[4] = b'G';
    write(m, &nonhex).await;
    e.frame_errors += 1;
    // Line noise, then a good frame.
    write(
        m,
        &[&[0x00, 0xFF, b'x', b'\r', 0x80][..], &f(em(0x11, 52))].concat(),
    )
    .await;
    e.frame_errors += 1;
    e.uids.push(em(0x11, 52).to_vec());
    // A frame cut short (a dropped byte run), then a good one.
    write(m, &[&f(em(0x11, 53))[..7], &f(em(0x11, 54))[..]].concat()).await;
    e.frame_errors += 1;
    e.uids.push(em(0x11, 54).to_vec());
    // The same tag again after the quiet time: a new presence, a new vote.
    sleep(GAP).await;
    write(m, &f(em(0x11, 54))).await;
    e.uids.push(em(0x11, 54).to_vec());
    e
}

/// Parallax: 12-byte frames without checksum; a tag counts at its second
/// identical frame.
async fn parallax_script(m: &mut SerialStream) -> Expect {
    let mut e = Expect::default();
    let f = parallax_frame;
    let twice = |u: [u8; 5]| [f(u), f(u)].concat();
    write(m, &twice(em(0x22, 0))).await;
    e.uids.push(em(0x22, 0).to_vec());
    // Held: the reader repeats its frame.
    write(
        m,
        &[twice(em(0x22, 1)), twice(em(0x22, 1)), f(em(0x22, 1))].concat(),
    )
    .await;
    e.uids.push(em(0x22, 1).to_vec());
    // The first frame split at every byte boundary; the repeat goes with its
    // second half, so no pause of the test can part the two.
    for k in 1..12u8 {
        let uid = em(0x22, 10 + k);
        split_write(m, &twice(uid), k as usize).await;
        e.uids.push(uid.to_vec());
    }
    // Glued: three tags, two frames each, one write.
    let glued = [em(0x22, 40), em(0x22, 41), em(0x22, 42)];
    write(m, &glued.map(twice).concat()).await;
    e.uids.extend(glued.map(|u| u.to_vec()));
    // A lone frame (what RF noise can produce) is no tap.
    write(m, &f(em(0x22, 45))).await;
    // A non-hex frame: an error, no tap.
    let mut nonhex = f(em(0x22, 50));
    nonhex[10] = b'Z';
    write(m, &nonhex).await;
    e.frame_errors += 1;
    write(m, &twice(em(0x22, 51))).await;
    e.uids.push(em(0x22, 51).to_vec());
    // Noise, then a tag.
    write(
        m,
        &[&[0x00, b'7', b'\r', 0x80][..], &twice(em(0x22, 52))].concat(),
    )
    .await;
    e.frame_errors += 1;
    e.uids.push(em(0x22, 52).to_vec());
    // A frame cut short, then a tag.
    write(
        m,
        &[&f(em(0x22, 53))[..5], &twice(em(0x22, 54))[..]].concat(),
    )
    .await;
    e.frame_errors += 1;
    e.uids.push(em(0x22, 54).to_vec());
    // One frame garbled into another id while a tag is held: still one tap.
    let held = em(0x22, 60);
    let garbled = em(0x22, 61);
    write(
        m,
        &[f(held), f(held), f(garbled), f(held), f(held)].concat(),
    )
    .await;
    e.uids.push(held.to_vec());
    // The same tag after the quiet time: a new presence.
    sleep(GAP).await;
    write(m, &twice(held)).await;
    e.uids.push(held.to_vec());
    e
}

/// SM130: the service polls; the test answers each poll, then "no tag".
async fn sm130_script(sm: &Sm130) -> Expect {
    let mut e = Expect::default();
    let m4 = |n: u8| vec![0x5A, 0x10, n, 0x21];
    let m7 = |n: u8| vec![0x04, 0x52, n, 0x6A, 0x2B, 0x49, 0x80];
    sm.answer(vec![sm130_tag(&m4(0))]);
    e.uids.push(m4(0));
    // A 7-byte UID is kept whole.
    sm.answer(vec![sm130_tag(&m7(1))]);
    e.uids.push(m7(1));
    // Split at every byte boundary.
    for k in 1..10u8 {
        let f = sm130_tag(&m4(10 + k));
        assert_eq!(f.len(), 10);
        sm.answer(vec![f[..k as usize].to_vec(), f[k as usize..].to_vec()]);
        e.uids.push(m4(10 + k));
    }
    for k in [1usize, 4, 7, 12] {
        let f = sm130_tag(&m7(20 + k as u8));
        sm.answer(vec![f[..k].to_vec(), f[k..].to_vec()]);
        e.uids.push(m7(20 + k as u8));
    }
    // Glued replies: a tag, the field empties, another tag.
    sm.answer(vec![
        [sm130_tag(&m4(40)), sm130_no_tag(), sm130_tag(&m7(41))].concat(),
    ]);
    e.uids.extend([m4(40), m7(41)]);
    // A tag resting in the field answers several polls: one presence.
    sm.answer(vec![[sm130_tag(&m4(42)), sm130_tag(&m4(42))].concat()]);
    e.uids.push(m4(42));
    // Bad checksum: an error, no tap.
    let mut bad = sm130_tag(&m4(50));
    *bad.last_mut().unwrap() ^= 0x01;
    assert!(!bad[1..].contains(&0xFF));
    sm.answer(vec![bad]);
    e.frame_errors += 1;
    // Noise, then a tag.
    sm.answer(vec![
        [&[0x00, 0x13, 0x37][..], &sm130_tag(&m4(52))].concat(),
    ]);
    e.frame_errors += 1;
    e.uids.push(m4(52));
    // Replies to other commands (a write-output ack) are no tags and no errors.
    sm.answer(vec![sm130_output(0b01)]);
    // The first tag again, after the field was empty: a new presence.
    sm.answer(vec![sm130_tag(&m4(0))]);
    e.uids.push(m4(0));
    sm.done().await;
    e
}

/// Line readers (hex): one UID per line.
async fn line_script(m: &mut SerialStream) -> Expect {
    let mut e = Expect::default();
    write(m, b"04A23B1C\r\n").await;
    e.uids.push(vec![0x04, 0xA2, 0x3B, 0x1C]);
    // Held: printed repeatedly.
    write(m, b"04A23B1D\r\n04a23b1d\r\n04:A2:3B:1D\r\n").await;
    e.uids.push(vec![0x04, 0xA2, 0x3B, 0x1D]);
    // Split at every byte boundary.
    for k in 1..16u8 {
        let uid = vec![0x04, 0x10, k, 0x33, 0x44, 0x55, 0x66];
        let line = format!("{}\r\n", hex::encode_upper(&uid)).into_bytes();
        assert_eq!(line.len(), 16);
        split_write(m, &line, k as usize).await;
        e.uids.push(uid);
    }
    // Separators and case.
    write(m, b"04:a2:3b:20\n04-A2-3B-21\r\n04 a2 3b 22\n").await;
    e.uids
        .extend([0x20u8, 0x21, 0x22].map(|b| vec![0x04, 0xA2, 0x3B, b]));
    // Glued lines; blank lines are ignored.
    write(m, b"0A0B0C0D\nDEADBEEF\r\n\r\n\n0A0B0C0E\n").await;
    e.uids.extend([
        vec![0x0A, 0x0B, 0x0C, 0x0D],
        vec![0xDE, 0xAD, 0xBE, 0xEF],
        vec![0x0A, 0x0B, 0x0C, 0x0E],
    ]);
    // Bad lines: a non-hex digit, noise, an odd number of digits.
    write(m, b"04A23G1C\r\n\x00\xff\x13 garbage\r\nABC\n").await;
    e.frame_errors += 3;
    // The same tag after the quiet time.
    sleep(GAP).await;
    write(m, b"0A0B0C0E\n").await;
    e.uids.push(vec![0x0A, 0x0B, 0x0C, 0x0E]);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_taps_exactly_the_expected_reads_into_jetstream() {
    let bus = TestBus::start();
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    tagpoll_bus::topology::ensure(&js).await.expect("streams");
    let mut hb = heartbeats(&client, DEVICE).await;

    let (mut p1, mut p2, p3, mut p4) = (pty(), pty(), pty(), pty());
    let spool = bus.path().join("spool");
    let specs = [
        format!("r1={},protocol=id12", p1.path),
        format!("r2={},protocol=parallax", p2.path),
        format!("r3={},protocol=sm130", p3.path),
        format!("r4={},protocol=line", p4.path),
    ];
    let quiet = QUIET_MS.to_string();
    let mut args = vec!["--device", DEVICE, "--spool", spool.to_str().unwrap()];
    for s in &specs {
        args.extend(["--reader", s.as_str()]);
    }
    args.extend(["--quiet-ms", quiet.as_str()]);
    let _reader = start_reader(&bus, &args);
    all_connected(&mut hb, &["r1", "r2", "r3", "r4"]).await;

    let sm = Sm130::spawn(p3.master);
    let (e1, e2, e3, e4) = tokio::join!(
        id12_script(&mut p1.master),
        parallax_script(&mut p2.master),
        sm130_script(&sm),
        line_script(&mut p4.master),
    );
    let want: BTreeMap<&str, (Expect, v1::TagTechnology)> = BTreeMap::from([
        ("r1", (e1, v1::TagTechnology::Em4100)),
        ("r2", (e2, v1::TagTechnology::Em4100)),
        ("r3", (e3, v1::TagTechnology::Iso14443a)),
        ("r4", (e4, v1::TagTechnology::Other)),
    ]);
    let total: usize = want.values().map(|(e, _)| e.uids.len()).sum();

    let stored = reads_after(&js, total, Duration::from_millis(1500)).await;
    assert_eq!(stored.len(), total, "taps in TAGPOLL_READS");
    let mut ids = BTreeSet::new();
    let mut last_seq = 0;
    let mut got: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for s in &stored {
        let r = &s.read;
        assert!(ids.insert(r.read_id.clone()), "read id twice: {r:?}");
        assert_eq!(s.msg_id.as_deref(), Some(r.read_id.as_str()), "Nats-Msg-Id");
        assert_eq!(r.device_id, DEVICE);
        assert_eq!(s.subject, subjects::read(DEVICE, &r.reader_id));
        let (_, tech) = want
            .get(r.reader_id.as_str())
            .unwrap_or_else(|| panic!("tap from unknown reader: {r:?}"));
        assert_eq!(r.technology(), *tech, "technology of {r:?}");
        assert!(r.read_at.is_some());
        assert!(r.device_seq > last_seq, "device_seq must increase: {r:?}");
        last_seq = r.device_seq;
        got.entry(r.reader_id.clone())
            .or_default()
            .push(r.tag_uid.clone());
    }
    for (reader, (e, _)) in &want {
        let got = got.remove(*reader).unwrap_or_default();
        let hexes = |v: &[Vec<u8>]| v.iter().map(hex::encode_upper).collect::<Vec<_>>();
        assert_eq!(
            hexes(&got),
            hexes(&e.uids),
            "taps of {reader} in stream order"
        );
    }

    // The heartbeat counts the same taps and exactly the frame errors written.
    let beat = heartbeat_where(&mut hb, WAIT, "every tap counted, spool empty", |hb| {
        hb.readers.iter().map(|r| r.taps).sum::<u64>() == total as u64 && hb.spool_depth == 0
    })
    .await;
    assert!(beat.nats_connected);
    assert!(beat.last_tap_at.is_some());
    assert_eq!(beat.kind, "device");
    assert_eq!(beat.name, DEVICE);
    let mut errors = 0;
    for (reader, (e, _)) in &want {
        let h = health(&beat, reader);
        assert_eq!(h.state, "connected", "{h:?}");
        assert_eq!(h.taps, e.uids.len() as u64, "taps of {reader}");
        assert_eq!(h.frame_errors, e.frame_errors, "frame errors of {reader}");
        assert!(h.last_tap_at.is_some());
        errors += e.frame_errors;
    }
    assert_eq!(beat.frame_errors, errors);
    assert_eq!(health(&beat, "r3").protocol, "sm130");
    assert!(sm.polls.load(std::sync::atomic::Ordering::SeqCst) > 10);
    drop((p1.slave, p2.slave, p3.slave, p4.slave));
}
