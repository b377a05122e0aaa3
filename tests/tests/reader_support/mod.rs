//! Shared by the `reader_*` tests: pseudo-terminal readers, frames written
//! from the protocol documents (independently of the parsers under test),
//! and views of what the real `tagpoll-reader` binary put on the bus.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use tagpoll::dev::ServiceProcess;
use tagpoll_tests::{TestBus, names, subjects, v1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_serial::{SerialPort, SerialStream};

/// Bound of every single wait on the reader or the bus.
pub const WAIT: Duration = Duration::from_secs(30);

/// A pseudo-terminal pair: the test plays the RFID reader on `master`; the
/// service opens `path` (the slave) like a `/dev/ttyUSB*`. The test keeps its
/// own slave handle open, so the pty survives the service closing it.
pub struct Pty {
    pub master: SerialStream,
    pub slave: SerialStream,
    pub path: String,
}

/// A new pty pair whose descriptors are close-on-exec: a service spawned
/// by this test process must not inherit the master, or closing it here
/// would not hang up the service's end (an "unplug" would go unnoticed).
pub fn pty() -> Pty {
    use std::os::fd::AsRawFd;
    let (master, slave) = SerialStream::pair().expect("create pty pair");
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fcntl on a descriptor we own; no memory is passed.
        let r = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        assert_eq!(r, 0, "FD_CLOEXEC on pty fd {fd}");
    }
    let path = slave.name().expect("slave pty has a name");
    Pty {
        master,
        slave,
        path,
    }
}

/// Clears the exclusive-open flag (TIOCEXCL) a killed service left on the
/// tty: it stays while our slave handle keeps the tty open, and only root
/// may open such a tty again.
/// (Not `set_exclusive(false)`: that also takes a shared flock, which would
/// then keep the service from taking its exclusive one.)
pub fn release_exclusive(slave: &mut SerialStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCNXCL takes no argument; the descriptor is ours.
    let r = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCNXCL) };
    assert_eq!(r, 0, "TIOCNXCL on the slave pty");
}

/// Writes all of `bytes` on the master, bounded.
pub async fn write(master: &mut SerialStream, bytes: &[u8]) {
    timeout(WAIT, master.write_all(bytes))
        .await
        .expect("write to pty master timed out")
        .expect("write to pty master");
}

/// Points `link` at `target` atomically, as udev does for by-id names.
pub fn point_symlink(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("create symlink");
    std::fs::rename(&tmp, link).expect("rename symlink into place");
}

// ----- frames, written from the protocol descriptions ---------------------

/// ID-12 ASCII frame: STX, 10 hex digits, 2 hex digits of the XOR of the 5
/// bytes, CR, LF, ETX.
pub fn id12_frame(uid: [u8; 5]) -> Vec<u8> {
    let xor = uid.iter().fold(0, |a, b| a ^ b);
    let mut f = vec![0x02];
    f.extend(format!("{}{xor:02X}", hex::encode_upper(uid)).bytes());
    f.extend([b'\r', b'\n', 0x03]);
    assert_eq!(f.len(), 16);
    f
}

/// Parallax frame: LF, 10 hex digits, CR.
pub fn parallax_frame(uid: [u8; 5]) -> Vec<u8> {
    let mut f = vec![b'\n'];
    f.extend(hex::encode_upper(uid).bytes());
    f.push(b'\r');
    assert_eq!(f.len(), 12);
    f
}

/// SM130 frame: FF 00 LEN CMD DATA CSUM, CSUM = low byte of the sum of
/// every byte after FF.
pub fn sm130_frame(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0xFF, 0x00, (data.len() + 1) as u8, cmd];
    f.extend(data);
    let sum = f[1..].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    f.push(sum);
    f
}

/// The host's "Select Tag" poll.
pub const SM130_SELECT: [u8; 5] = [0xFF, 0x00, 0x01, 0x83, 0x84];

/// A Select Tag reply naming a Mifare tag (type 2 = Classic 1K, 1 = Ultralight).
/// Panics if an 0xFF other than the header would make the test's own
/// expectations depend on resynchronisation details.
pub fn sm130_tag(uid: &[u8]) -> Vec<u8> {
    let kind = if uid.len() == 7 { 0x01 } else { 0x02 };
    let f = sm130_frame(0x83, &[&[kind][..], uid].concat());
    assert!(
        !f[1..].contains(&0xFF),
        "pick another test UID: {f:02X?} has 0xFF inside"
    );
    f
}

/// The Select Tag reply for an empty field ('N').
pub fn sm130_no_tag() -> Vec<u8> {
    sm130_frame(0x83, b"N")
}

/// The Write Output command for OUT1/OUT2 `bits`.
pub fn sm130_output(bits: u8) -> Vec<u8> {
    sm130_frame(0x92, &[bits])
}

// ----- an SM130 played by the test ----------------------------------------

/// One answer to one Select Tag poll: `pieces` are written with a short pause
/// between them (so the service reads them separately), then "no tag", so
/// each scripted answer is one presence.
pub enum Sm130Item {
    Answer(Vec<Vec<u8>>),
    /// Signals once every earlier answer was written.
    Done(oneshot::Sender<()>),
}

/// The test's side of an SM130: answers every poll, records what the host sent.
pub struct Sm130 {
    pub script: mpsc::UnboundedSender<Sm130Item>,
    /// Every byte the service wrote to the reader, with when it arrived.
    pub received: Arc<Mutex<Vec<(Instant, u8)>>>,
    pub polls: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sm130 {
    /// Takes over `master`; answers polls with the script, else "no tag".
    pub fn spawn(master: SerialStream) -> Sm130 {
        let (script, mut items) = mpsc::unbounded_channel::<Sm130Item>();
        let received = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rec, count) = (received.clone(), polls.clone());
        let task = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(master);
            let mut buf = [0u8; 256];
            let mut seen: Vec<u8> = Vec::new();
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let now = Instant::now();
                rec.lock()
                    .unwrap()
                    .extend(buf[..n].iter().map(|b| (now, *b)));
                seen.extend(&buf[..n]);
                let mut polls_now = 0;
                while let Some(at) = seen.windows(5).position(|w| w == SM130_SELECT) {
                    seen.drain(..at + 5);
                    polls_now += 1;
                }
                let keep = seen.len().saturating_sub(4);
                seen.drain(..keep);
                for _ in 0..polls_now {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    match items.try_recv() {
                        Ok(Sm130Item::Answer(pieces)) => {
                            for (i, piece) in pieces.iter().enumerate() {
                                if i > 0 {
                                    tokio::time::sleep(Duration::from_millis(15)).await;
                                }
                                if wr.write_all(piece).await.is_err() {
                                    return;
                                }
                            }
                            if wr.write_all(&sm130_no_tag()).await.is_err() {
                                return;
                            }
                        }
                        Ok(Sm130Item::Done(tx)) => {
                            let _ = tx.send(());
                            if wr.write_all(&sm130_no_tag()).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => {
                            if wr.write_all(&sm130_no_tag()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Sm130 {
            script,
            received,
            polls,
            task,
        }
    }

    pub fn answer(&self, pieces: Vec<Vec<u8>>) {
        self.script
            .send(Sm130Item::Answer(pieces))
            .expect("sm130 emulator running");
    }

    /// Waits until every answer queued so far was written.
    pub async fn done(&self) {
        let (tx, rx) = oneshot::channel();
        self.script
            .send(Sm130Item::Done(tx))
            .expect("sm130 emulator running");
        timeout(WAIT, rx)
            .await
            .expect("SM130 script not consumed: is the service polling?")
            .expect("sm130 emulator ended");
    }

    /// Waits until `wanted` appears in what the service wrote; returns when
    /// its first byte arrived.
    pub async fn wait_for_bytes(&self, wanted: &[u8], after: Instant) -> Instant {
        let start = Instant::now();
        loop {
            {
                let rec = self.received.lock().unwrap();
                let recent: Vec<&(Instant, u8)> = rec.iter().filter(|(t, _)| *t >= after).collect();
                if let Some(i) = recent
                    .windows(wanted.len())
                    .position(|w| w.iter().map(|(_, b)| *b).eq(wanted.iter().copied()))
                {
                    return recent[i].0;
                }
            }
            if start.elapsed() > WAIT {
                let rec = self.received.lock().unwrap();
                let tail: Vec<u8> = rec.iter().rev().take(40).rev().map(|(_, b)| *b).collect();
                panic!(
                    "the service never wrote {wanted:02X?} to the SM130; last bytes {tail:02X?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sm130 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ----- the service ---------------------------------------------------------

/// Starts `tagpoll-reader` with `args`, logging JSON lines (parsed by [`logged_taps`]).
pub fn start_reader(bus: &TestBus, args: &[&str]) -> ServiceProcess {
    bus.service(
        "tagpoll-reader",
        args,
        &[
            ("TAGPOLL_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,async_nats=warn"),
        ],
    )
}

/// The read ids of the taps the service logged as spooled (message "tap"),
/// over every run that appended to its log. A line cut short by SIGKILL is skipped.
pub fn logged_taps(reader: &ServiceProcess) -> Vec<String> {
    let text = std::fs::read_to_string(reader.log_path()).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "tap")
        .filter_map(|v| v["fields"]["read_id"].as_str().map(str::to_string))
        .collect()
}

/// A message of stream TAGPOLL_READS.
#[derive(Debug, Clone)]
pub struct StoredRead {
    pub stream_seq: u64,
    pub subject: String,
    pub msg_id: Option<String>,
    pub read: v1::TagRead,
}

/// Every message stored in TAGPOLL_READS now, in stream order (ordered consumer).
pub async fn stored_reads(js: &async_nats::jetstream::Context) -> Vec<StoredRead> {
    use async_nats::jetstream::consumer;
    let mut stream = js
        .get_stream(names::STREAM_READS)
        .await
        .expect("stream TAGPOLL_READS");
    let info = stream.info().await.expect("stream info").state.clone();
    if info.messages == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("consume TAGPOLL_READS");
    let mut out = Vec::new();
    loop {
        let msg = timeout(WAIT, messages.next())
            .await
            .expect("timed out reading TAGPOLL_READS")
            .expect("stream ended")
            .expect("message");
        let meta = msg.info().expect("jetstream message info");
        let (stream_seq, pending) = (meta.stream_sequence, meta.pending);
        out.push(StoredRead {
            stream_seq,
            subject: msg.subject.to_string(),
            msg_id: msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string()),
            read: v1::TagRead::decode(msg.payload.as_ref()).expect("a TagRead"),
        });
        if pending == 0 || stream_seq >= info.last_sequence {
            return out;
        }
    }
}

/// Messages stored in TAGPOLL_READS.
pub async fn stored_count(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream(names::STREAM_READS).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits until TAGPOLL_READS holds at least `n` messages, then `settle`
/// longer (so extra, unwanted messages would show up too), and returns them all.
pub async fn reads_after(
    js: &async_nats::jetstream::Context,
    n: usize,
    settle: Duration,
) -> Vec<StoredRead> {
    let start = Instant::now();
    loop {
        let have = stored_count(js).await as usize;
        if have >= n {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out: {have} of {n} taps in TAGPOLL_READS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settle).await;
    stored_reads(js).await
}

/// Subscribes to the device's heartbeats.
pub async fn heartbeats(client: &async_nats::Client, device: &str) -> async_nats::Subscriber {
    client
        .subscribe(subjects::heartbeat("device", device, "*"))
        .await
        .expect("subscribe to heartbeats")
}

/// The next heartbeat for which `ok` holds; panics with the last one after
/// `limit` (heartbeats come every 2 s).
pub async fn heartbeat_where(
    sub: &mut async_nats::Subscriber,
    limit: Duration,
    what: &str,
    ok: impl Fn(&v1::Heartbeat) -> bool,
) -> v1::Heartbeat {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        let left = limit.saturating_sub(start.elapsed());
        let Ok(Some(msg)) = timeout(left, sub.next()).await else {
            break;
        };
        let hb = v1::Heartbeat::decode(msg.payload.as_ref()).expect("a Heartbeat");
        if ok(&hb) {
            return hb;
        }
        last = Some(hb);
    }
    panic!("no heartbeat with {what} within {limit:?}; last: {last:#?}");
}

/// Waits for a heartbeat showing every one of `readers` connected.
pub async fn all_connected(sub: &mut async_nats::Subscriber, readers: &[&str]) -> v1::Heartbeat {
    heartbeat_where(sub, WAIT, "every reader connected", |hb| {
        readers.iter().all(|id| {
            hb.readers
                .iter()
                .any(|r| r.reader_id == *id && r.state == "connected")
        })
    })
    .await
}

/// A reader's health in a heartbeat.
pub fn health<'a>(hb: &'a v1::Heartbeat, reader: &str) -> &'a v1::ReaderHealth {
    hb.readers
        .iter()
        .find(|r| r.reader_id == reader)
        .unwrap_or_else(|| panic!("no reader {reader} in heartbeat {hb:#?}"))
}
