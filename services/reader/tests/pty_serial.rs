//! Byte-exact tests of `run_reader` through pseudo-terminal pairs.
//!
//! The test keeps both ends of a pty pair: it writes reader output on the
//! master and reads host commands from it, while `run_reader` opens the slave
//! by path like a real `/dev/ttyUSB*`. The test's own slave handle is only held
//! (never read) so the pty stays alive until the test "unplugs" it.
//!
//! Every wait is bounded by a timeout so a broken reader fails instead of
//! hanging. Ordering, not timing, carries the assertions: a large quiet time
//! makes repeated frames one presence however slowly the machine runs.

use std::path::Path;
use std::time::Duration;

use tagpoll_reader::protocol::{self, Feedback, LineFormat, Protocol, id12, parallax, sm130};
use tagpoll_reader::serial::{ReaderPort, SerialEvent, run_reader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_serial::{SerialPort, SerialStream};

const WAIT: Duration = Duration::from_secs(5);
/// Long enough that no presence expires during a test.
const LONG_QUIET: Duration = Duration::from_secs(30);
const READER: &str = "r1";

struct Pty {
    master: SerialStream,
    _slave: SerialStream,
    path: String,
}

fn pty() -> Pty {
    let (master, slave) = SerialStream::pair().expect("create pty pair");
    let path = slave.name().expect("slave pty has a name");
    Pty {
        master,
        _slave: slave,
        path,
    }
}

/// A running `run_reader` task and its channels.
struct Reader {
    events: mpsc::Receiver<SerialEvent>,
    feedback: mpsc::Sender<Feedback>,
    task: JoinHandle<()>,
}

impl Reader {
    fn start(path: &str, protocol: Protocol, quiet: Duration) -> Reader {
        let (ev_tx, events) = mpsc::channel(64);
        let (feedback, fb_rx) = mpsc::channel(8);
        let port = ReaderPort::new(READER, path, protocol);
        let task = tokio::spawn(run_reader(port, ev_tx, fb_rx, quiet));
        Reader {
            events,
            feedback,
            task,
        }
    }

    async fn next(&mut self) -> SerialEvent {
        timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for a reader event")
            .expect("reader task ended")
    }

    /// Skips `Disconnected` events (failed re-open attempts) up to `Connected`.
    async fn connected(&mut self) {
        loop {
            match self.next().await {
                SerialEvent::Connected { reader_id } => {
                    assert_eq!(reader_id, READER);
                    return;
                }
                SerialEvent::Disconnected { .. } => continue,
                other => panic!("expected Connected, got {other:?}"),
            }
        }
    }

    async fn tap(&mut self, uid: &[u8]) {
        assert_eq!(
            self.next().await,
            SerialEvent::Tap {
                reader_id: READER.into(),
                uid: uid.to_vec()
            }
        );
    }

    /// Stops the task before the test drops its ptys, so a re-open can never
    /// reach a pty number another test got meanwhile.
    async fn stop(self) {
        drop(self.events);
        timeout(WAIT, self.task)
            .await
            .expect("reader task did not stop after its events receiver was dropped")
            .expect("reader task panicked");
    }
}

async fn write(master: &mut SerialStream, bytes: &[u8]) {
    timeout(WAIT, master.write_all(bytes))
        .await
        .expect("write to pty master timed out")
        .expect("write to pty master");
}

/// Reads exactly `n` bytes the reader wrote to its port.
async fn read_n(master: &mut SerialStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    timeout(WAIT, master.read_exact(&mut buf))
        .await
        .expect("timed out reading from pty master")
        .expect("read from pty master");
    buf
}

/// Reads what the reader writes until `wanted` has appeared in it.
async fn read_until_contains(master: &mut SerialStream, wanted: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    timeout(WAIT, async {
        while !seen.windows(wanted.len()).any(|w| w == wanted) {
            let n = master.read(&mut buf).await.expect("read from pty master");
            assert!(n > 0, "pty master closed");
            seen.extend(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("reader never wrote {wanted:02X?}; saw {seen:02X?}"));
    seen
}

/// Points `link` at `target` atomically, as udev does for by-id names.
fn point_symlink(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("create symlink");
    std::fs::rename(&tmp, link).expect("rename symlink into place");
}

const EM_A: [u8; 5] = [0x1E, 0x00, 0x9A, 0x4D, 0x1A];
const EM_B: [u8; 5] = [0x04, 0x15, 0xAF, 0x3B, 0x7C];

#[tokio::test]
async fn pty_id12_taps_once_per_presence() {
    let mut pty = pty();
    let mut reader = Reader::start(&pty.path, Protocol::Id12, LONG_QUIET);
    reader.connected().await;

    // A tag held on the reader: three frames, one tap.
    let frames = [id12::frame(EM_A), id12::frame(EM_A), id12::frame(EM_A)].concat();
    write(&mut pty.master, &frames).await;
    reader.tap(&EM_A).await;
    // Another tag ends A's presence; A again is a new tap.
    write(&mut pty.master, &id12::frame(EM_B)).await;
    reader.tap(&EM_B).await;
    write(&mut pty.master, &id12::frame(EM_A)).await;
    reader.tap(&EM_A).await;

    reader.stop().await;
}

#[tokio::test]
async fn pty_parallax_repeated_frames_are_one_tap() {
    let mut pty = pty();
    let mut reader = Reader::start(&pty.path, Protocol::Parallax, LONG_QUIET);
    reader.connected().await;

    for _ in 0..5 {
        write(&mut pty.master, &parallax::frame(EM_A)).await;
    }
    // Parallax frames have no checksum: a tag counts at its second frame.
    write(&mut pty.master, &parallax::frame(EM_B)).await;
    write(&mut pty.master, &parallax::frame(EM_B)).await;
    reader.tap(&EM_A).await;
    reader.tap(&EM_B).await;

    reader.stop().await;
}

#[tokio::test]
async fn pty_parallax_lone_or_garbled_frames_are_not_taps() {
    let mut pty = pty();
    let mut reader = Reader::start(&pty.path, Protocol::Parallax, Duration::from_millis(50));
    reader.connected().await;

    // A spurious frame on its own (RF noise) never becomes a tap...
    write(&mut pty.master, &parallax::frame(EM_B)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...nor does a frame garbled into another id while a tag is held.
    let held = [
        parallax::frame(EM_A),
        parallax::frame(EM_A),
        parallax::frame(EM_B),
        parallax::frame(EM_A),
    ]
    .concat();
    write(&mut pty.master, &held).await;
    reader.tap(&EM_A).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    write(
        &mut pty.master,
        &[parallax::frame(EM_B), parallax::frame(EM_B)].concat(),
    )
    .await;
    // The next event is B's tap: nothing came from the lone or garbled frames.
    reader.tap(&EM_B).await;

    reader.stop().await;
}

#[tokio::test]
async fn pty_parallax_tag_left_quiet_taps_again() {
    // Real quiet time: a tag seen again after it expired is a new presence.
    let mut pty = pty();
    let mut reader = Reader::start(&pty.path, Protocol::Parallax, Duration::from_millis(50));
    reader.connected().await;

    let held = [parallax::frame(EM_A), parallax::frame(EM_A)].concat();
    write(&mut pty.master, &held).await;
    reader.tap(&EM_A).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    write(&mut pty.master, &held).await;
    reader.tap(&EM_A).await;

    reader.stop().await;
}

#[tokio::test]
async fn pty_sm130_polls_and_reads_select_replies() {
    let mut pty = pty();
    let mut reader = Reader::start(&pty.path, Protocol::Sm130, LONG_QUIET);
    reader.connected().await;

    // The reader asks first: Select Tag.
    assert_eq!(
        read_n(&mut pty.master, 5).await,
        vec![0xFF, 0x00, 0x01, 0x83, 0x84]
    );

    let uid4 = [0xDE, 0xAD, 0xBE, 0xEF];
    let uid7 = [0x04, 0x52, 0x9A, 0x6A, 0x2B, 0x49, 0x80];
    let reply4 = sm130::select_reply(0x02, &uid4).expect("reply");
    let reply7 = sm130::select_reply(0x01, &uid7).expect("reply");
    // The same tag answering several polls is one tap; a 7-byte UID is kept whole.
    write(&mut pty.master, &reply4).await;
    write(&mut pty.master, &reply4).await;
    write(&mut pty.master, &reply7).await;
    reader.tap(&uid4).await;
    reader.tap(&uid7).await;
    // The field empties ("N"): the next sighting of the same tag is a new tap,
    // long before the quiet time would have ended it.
    write(&mut pty.master, &sm130::no_tag_reply()).await;
    write(&mut pty.master, &reply7).await;
    reader.tap(&uid7).await;

    reader.stop().await;
}

#[tokio::test]
async fn pty_sm130_feedback_sets_and_clears_outputs() {
    let mut pty = pty();
    let mut reader = Reader::start(&pty.path, Protocol::Sm130, LONG_QUIET);
    reader.connected().await;

    reader
        .feedback
        .send(Feedback::Rejected)
        .await
        .expect("send feedback");
    let on =
        protocol::feedback_command(&Protocol::Sm130, Feedback::Rejected).expect("sm130 feedback");
    assert_eq!(on, vec![0xFF, 0x00, 0x02, 0x92, 0x02, 0x96]);
    read_until_contains(&mut pty.master, &on).await;
    // The module acknowledges; the ack is no event.
    write(&mut pty.master, &on).await;
    read_until_contains(&mut pty.master, &[0xFF, 0x00, 0x02, 0x92, 0x00, 0x94]).await;

    let uid = [1, 2, 3, 4];
    write(
        &mut pty.master,
        &sm130::select_reply(0x02, &uid).expect("reply"),
    )
    .await;
    reader.tap(&uid).await;

    reader.stop().await;
}

#[tokio::test]
async fn pty_line_formats() {
    let mut pty = pty();
    let mut reader = Reader::start(&pty.path, Protocol::Line(LineFormat::Hex), LONG_QUIET);
    reader.connected().await;
    write(
        &mut pty.master,
        b"04:A2:3B:1C\r\n04a23b1c\n0102030405060708090A\n",
    )
    .await;
    reader.tap(&[0x04, 0xA2, 0x3B, 0x1C]).await;
    reader.tap(&(1..=10).collect::<Vec<u8>>()).await;
    reader.stop().await;

    let mut pty = self::pty();
    let mut reader = Reader::start(&pty.path, Protocol::Line(LineFormat::Decimal), LONG_QUIET);
    reader.connected().await;
    write(&mut pty.master, b"3735928559\r\n").await;
    reader.tap(&[0xDE, 0xAD, 0xBE, 0xEF]).await;
    reader.stop().await;
}

#[tokio::test]
async fn pty_split_glued_and_corrupt_frames() {
    let mut pty = pty();
    let mut reader = Reader::start(&pty.path, Protocol::Id12, LONG_QUIET);
    reader.connected().await;

    // Split: half a frame, a pause so the reader surely reads it alone, the rest.
    let a = id12::frame(EM_A);
    write(&mut pty.master, &a[..7]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    write(&mut pty.master, &a[7..]).await;
    reader.tap(&EM_A).await;

    // Corrupt checksum, then noise glued to a good frame.
    let mut bad = id12::frame(EM_B);
    bad[12] ^= 0x01;
    let glued = [bad.clone(), vec![0x00, 0xFF], id12::frame(EM_B)].concat();
    write(&mut pty.master, &glued).await;
    match reader.next().await {
        SerialEvent::FrameError {
            reader_id,
            reason,
            bytes,
        } => {
            assert_eq!(reader_id, READER);
            assert!(reason.contains("checksum"), "{reason}");
            assert_eq!(bytes, bad);
        }
        other => panic!("expected the checksum error, got {other:?}"),
    }
    match reader.next().await {
        SerialEvent::FrameError { bytes, .. } => assert_eq!(bytes, vec![0x00, 0xFF]),
        other => panic!("expected the noise error, got {other:?}"),
    }
    reader.tap(&EM_B).await;

    reader.stop().await;
}

#[tokio::test]
async fn pty_unplug_and_replug_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("usb-reader");
    let first = pty();
    point_symlink(&link, Path::new(&first.path));
    let mut reader = Reader::start(
        link.to_str().expect("utf-8 path"),
        Protocol::Id12,
        LONG_QUIET,
    );
    reader.connected().await;
    let mut master = first.master;
    write(&mut master, &id12::frame(EM_A)).await;
    reader.tap(&EM_A).await;

    // Unplug: the by-id name disappears (points nowhere), then the device goes.
    point_symlink(&link, &dir.path().join("absent"));
    drop(master);
    drop(first._slave);
    match reader.next().await {
        SerialEvent::Disconnected { reader_id, error } => {
            assert_eq!(reader_id, READER);
            assert!(!error.is_empty());
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }

    // Replug as a new pty behind the same name.
    let mut second = pty();
    point_symlink(&link, Path::new(&second.path));
    reader.connected().await;
    // Same tag again: a new connection, a new presence, a new tap.
    write(&mut second.master, &id12::frame(EM_A)).await;
    reader.tap(&EM_A).await;

    reader.stop().await;
}

#[tokio::test]
async fn pty_missing_device_reports_once_then_connects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("usb-reader");
    let mut reader = Reader::start(
        link.to_str().expect("utf-8 path"),
        Protocol::Parallax,
        LONG_QUIET,
    );
    match reader.next().await {
        SerialEvent::Disconnected { error, .. } => assert!(error.contains("usb-reader"), "{error}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let mut pty = pty();
    point_symlink(&link, Path::new(&pty.path));
    // Retries with the same error are not reported again: Connected is next.
    assert_eq!(
        reader.next().await,
        SerialEvent::Connected {
            reader_id: READER.into()
        }
    );
    write(
        &mut pty.master,
        &[parallax::frame(EM_B), parallax::frame(EM_B)].concat(),
    )
    .await;
    reader.tap(&EM_B).await;
    reader.stop().await;
}

#[tokio::test]
async fn pty_reader_stops_when_events_are_dropped_while_disconnected() {
    let reader = Reader::start("/nonexistent/tagpoll-test-port", Protocol::Id12, LONG_QUIET);
    reader.stop().await;
}

#[tokio::test]
async fn pty_usb_serial_that_is_not_plugged_in_is_looked_up_again() {
    // No adapter has this serial number: reported (once) as disconnected,
    // naming the serial, and the task keeps trying instead of failing.
    let mut reader = Reader::start("usb:TAGPOLLTEST0000", Protocol::Id12, LONG_QUIET);
    match reader.next().await {
        SerialEvent::Disconnected { error, .. } => {
            assert!(error.contains("TAGPOLLTEST0000"), "{error}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    reader.stop().await;
}
