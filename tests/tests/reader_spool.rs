//! The reader's spool against a real nats-server and the real binary: no
//! accepted tap is lost or doubled when NATS goes away and the reader is
//! SIGKILLed, and the heartbeat shows the spool's depth and alarm.
//!
//! A tap is *accepted* once it is fsync'd in the spool; the reader logs it
//! then (JSON log line "tap" with its read id), and from that moment it must
//! reach stream TAGPOLL_READS exactly once.

mod reader_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream::DiscardPolicy;
use prost::Message;
use reader_support::*;
use tagpoll_tests::*;
use tokio::time::sleep;
use tokio_serial::SerialStream;

const DEVICE: &str = "bar";

/// The tags written so far, each with the phase it was written in.
type Written = Arc<Mutex<Vec<(u8, [u8; 5])>>>;

/// Writes one ID-12 frame of a new tag every 60 ms (a busy reader: a person
/// taps about once a second), recording each tag with the phase it was
/// written in, until stopped.
struct Tapper {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    written: Written,
    task: tokio::task::JoinHandle<SerialStream>,
}

impl Tapper {
    fn start(mut master: SerialStream) -> Tapper {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(1));
        let written: Written = Arc::new(Mutex::new(Vec::new()));
        let (s, p, w) = (stop.clone(), phase.clone(), written.clone());
        let task = tokio::spawn(async move {
            let mut n: u32 = 0;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let phase = p.load(Ordering::SeqCst);
                let uid = [0x44, phase, (n >> 8) as u8, n as u8, 0x5A];
                write(&mut master, &id12_frame(uid)).await;
                w.lock().unwrap().push((phase, uid));
                sleep(Duration::from_millis(60)).await;
            }
            master
        });
        Tapper {
            stop,
            phase,
            written,
            task,
        }
    }

    fn phase(&self, p: u8) {
        self.phase.store(p, Ordering::SeqCst);
    }

    async fn stop(self) -> (SerialStream, Vec<(u8, [u8; 5])>) {
        self.stop.store(true, Ordering::SeqCst);
        let master = self.task.await.expect("tapper");
        let written = self.written.lock().unwrap().clone();
        (master, written)
    }
}

/// The taps the reader logged, once no new one came for a second (at most 20 s).
async fn settled_taps(reader: &tagpoll::dev::ServiceProcess) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut taps = logged_taps(reader);
    loop {
        sleep(Duration::from_secs(1)).await;
        let now = logged_taps(reader);
        if now.len() == taps.len() || std::time::Instant::now() > deadline {
            return now;
        }
        taps = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_nats_is_down_loses_and_doubles_no_accepted_tap() {
    let mut bus = TestBus::start();
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    tagpoll_bus::topology::ensure(&js).await.expect("streams");
    let mut hb = heartbeats(&client, DEVICE).await;

    let Pty {
        master,
        mut slave,
        path,
    } = pty();
    let spec = format!("till={path},protocol=id12");
    let spool = bus.path().join("spool");
    let args = [
        "--device",
        DEVICE,
        "--reader",
        &spec,
        "--spool",
        spool.to_str().unwrap(),
        "--quiet-ms",
        "100",
    ];
    let mut reader = start_reader(&bus, &args);
    all_connected(&mut hb, &["till"]).await;
    let tapper = Tapper::start(master);

    // 1: NATS up.
    sleep(Duration::from_secs(1)).await;
    // 2: NATS down, taps keep coming into the spool.
    tapper.phase(2);
    tokio::task::block_in_place(|| bus.server.stop());
    sleep(Duration::from_millis(1200)).await;
    // 3: the reader is SIGKILLed mid-stream; frames wait in the pty meanwhile.
    tapper.phase(3);
    reader.kill();
    release_exclusive(&mut slave);
    sleep(Duration::from_millis(300)).await;
    // 4: the reader is back, NATS still down.
    tapper.phase(4);
    reader.start().expect("restart the reader");
    sleep(Duration::from_millis(1200)).await;
    // 5: NATS is back.
    tapper.phase(5);
    tokio::task::block_in_place(|| bus.server.restart()).expect("restart nats-server");
    sleep(Duration::from_millis(800)).await;
    let (_master, written) = tapper.stop().await;

    // Let the reader take the last frames (until its log stops growing), then
    // everything it accepted must arrive, and nothing more may follow.
    let accepted = settled_taps(&reader).await;
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client);
    let stored = reads_after(&js, accepted.len(), Duration::from_millis(2000)).await;

    let by_id: BTreeMap<&str, &StoredRead> = stored
        .iter()
        .map(|s| (s.read.read_id.as_str(), s))
        .collect();
    assert_eq!(by_id.len(), stored.len(), "a read id is stored twice");
    for id in &accepted {
        assert!(
            by_id.contains_key(id.as_str()),
            "accepted tap {id} never reached TAGPOLL_READS"
        );
    }
    // At most one more than logged: a tap fsync'd just before the kill, whose
    // log line was not written.
    assert!(
        stored.len() <= accepted.len() + 1,
        "{} stored for {} accepted",
        stored.len(),
        accepted.len()
    );
    let phase_of: BTreeMap<Vec<u8>, u8> = written.iter().map(|(p, u)| (u.to_vec(), *p)).collect();
    let mut uids = BTreeSet::new();
    let mut per_phase: BTreeMap<u8, usize> = BTreeMap::new();
    let mut last_seq = 0;
    for s in &stored {
        let r = &s.read;
        assert_eq!(s.msg_id.as_deref(), Some(r.read_id.as_str()));
        assert_eq!(
            (r.device_id.as_str(), r.reader_id.as_str()),
            (DEVICE, "till")
        );
        assert!(
            uids.insert(r.tag_uid.clone()),
            "tag tapped once, stored twice: {r:?}"
        );
        let phase = phase_of
            .get(&r.tag_uid)
            .unwrap_or_else(|| panic!("stored a tag that was never tapped: {r:?}"));
        *per_phase.entry(*phase).or_default() += 1;
        assert!(r.device_seq > last_seq, "device_seq must increase: {r:?}");
        last_seq = r.device_seq;
    }
    let lost = written.len() - stored.len();
    eprintln!(
        "tapped {}, accepted (logged) {}, stored {}, per phase {per_phase:?}, \
         never accepted (in the killed process's hands) {lost}",
        written.len(),
        accepted.len(),
        stored.len()
    );
    for phase in [1, 2, 3, 4, 5] {
        assert!(
            per_phase.get(&phase).copied().unwrap_or(0) > 0,
            "no tap of phase {phase} stored: {per_phase:?}"
        );
    }
    assert!(
        stored.len() * 10 >= written.len() * 9,
        "too few taps accepted: {} of {}",
        stored.len(),
        written.len()
    );
    drop(slave);
}

/// Stops TAGPOLL_READS from taking more messages (max 1 message, discard
/// new) or lets it again: JetStream then refuses the reader's publishes
/// while NATS itself stays up.
async fn refuse_reads(js: &async_nats::jetstream::Context, refuse: bool) {
    let mut stream = js
        .get_stream(names::STREAM_READS)
        .await
        .expect("stream TAGPOLL_READS");
    let mut config = stream.info().await.expect("stream info").config.clone();
    if refuse {
        config.max_messages = 1;
        config.discard = DiscardPolicy::New;
    } else {
        config.max_messages = -1;
        config.discard = DiscardPolicy::Old;
    }
    js.update_stream(config)
        .await
        .expect("update TAGPOLL_READS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_shows_spool_depth_and_frame_errors_while_jetstream_refuses() {
    let bus = TestBus::start();
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    tagpoll_bus::topology::ensure(&js).await.expect("streams");
    let mut hb = heartbeats(&client, DEVICE).await;

    let mut p = pty();
    let spec = format!("till={},protocol=id12", p.path);
    let spool = bus.path().join("spool");
    let _reader = start_reader(
        &bus,
        &[
            "--device",
            DEVICE,
            "--reader",
            &spec,
            "--spool",
            spool.to_str().unwrap(),
        ],
    );
    all_connected(&mut hb, &["till"]).await;
    let uid = |n: u8| [0x55, 0x01, n, 0x02, 0x03];
    write(&mut p.master, &id12_frame(uid(0))).await;
    reads_after(&js, 1, Duration::ZERO).await;

    refuse_reads(&js, true).await;
    let mut bad = id12_frame(uid(9));
    bad[12] = if bad[12] == b'0' { b'1' } else { b'0' };
    let frames = [
        id12_frame(uid(1)),
        bad.clone(),
        id12_frame(uid(2)),
        bad,
        id12_frame(uid(3)),
    ]
    .concat();
    write(&mut p.master, &frames).await;
    let beat = heartbeat_where(&mut hb, WAIT, "3 taps waiting and 2 frame errors", |hb| {
        hb.spool_depth == 3 && hb.frame_errors == 2
    })
    .await;
    assert!(
        beat.nats_connected,
        "NATS is up, JetStream refuses: {beat:?}"
    );
    assert!(
        !beat.last_error.is_empty(),
        "the refusal is reported: {beat:?}"
    );
    assert_eq!(beat.lag, 3);
    let h = health(&beat, "till");
    assert_eq!((h.taps, h.frame_errors), (4, 2), "{h:?}");
    assert_eq!(beat.handled, 4);

    refuse_reads(&js, false).await;
    heartbeat_where(&mut hb, WAIT, "an empty spool", |hb| hb.spool_depth == 0).await;
    let stored = reads_after(&js, 4, Duration::from_millis(500)).await;
    let got: Vec<Vec<u8>> = stored.iter().map(|s| s.read.tag_uid.clone()).collect();
    assert_eq!(got, (0..4).map(|n| uid(n).to_vec()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_alarm_shows_in_the_heartbeat_until_the_spool_drains() {
    use tagpoll_reader::spool::{Spool, SpoolLimits};
    let bus = TestBus::start();
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    tagpoll_bus::topology::ensure(&js).await.expect("streams");
    let mut hb = heartbeats(&client, DEVICE).await;

    // A spool left 85% full by an outage (1 MiB limit): 85 taps of 10 KiB.
    let spool = bus.path().join("spool");
    {
        let limits = SpoolLimits {
            max_bytes: 1 << 20,
            warn_ratio: 0.8,
        };
        let (mut s, _) = Spool::open(&spool, limits).expect("open spool");
        for i in 0..85u64 {
            let read = v1::TagRead {
                read_id: format!("prefill-{i}"),
                device_id: DEVICE.into(),
                reader_id: "till".into(),
                tag_uid: vec![i as u8; 10 * 1024],
                technology: v1::TagTechnology::Other as i32,
                read_at: Some(tagpoll_proto::now()),
                device_seq: i + 1,
            };
            s.append(&read.encode_to_vec()).expect("prefill append");
        }
        assert!(s.is_warning());
    }
    // JetStream keeps refusing: one message stored, no more taken.
    tap(&js, "other", "x", &[1, 2, 3, 4], "fill-1").await;
    refuse_reads(&js, true).await;

    let p = pty();
    let spec = format!("till={},protocol=id12", p.path);
    let _reader = start_reader(
        &bus,
        &[
            "--device",
            DEVICE,
            "--reader",
            &spec,
            "--spool",
            spool.to_str().unwrap(),
            "--spool-max-mb",
            "1",
        ],
    );
    let beat = heartbeat_where(&mut hb, WAIT, "the spool alarm", |hb| {
        hb.spool_depth == 85 && hb.last_error.contains("spool over 80% full")
    })
    .await;
    assert!(beat.nats_connected);

    refuse_reads(&js, false).await;
    let beat = heartbeat_where(&mut hb, WAIT, "the spool drained", |hb| hb.spool_depth == 0).await;
    assert!(
        !beat.last_error.contains("spool over"),
        "alarm still on: {beat:?}"
    );
    let stored = reads_after(&js, 86, Duration::from_millis(300)).await;
    assert_eq!(stored.len(), 86);
    drop(p);
}
