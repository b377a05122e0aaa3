//! Feedback at the reader, through the real `tagpoll-reader` binary: the
//! tally's `ReaderFeedback` for a tap on this device lights the SM130's
//! outputs (Write Output bytes arrive on the pseudo-terminal, and are
//! switched off again after a second) and runs the feedback hook with the
//! outcome and the voter's name in its environment; readers without outputs
//! (ID-12) get the hook only. Feedback for another device is not seen.

mod reader_support;

use std::time::{Duration, Instant};

use prost::Message;
use reader_support::*;
use tagpoll_tests::*;
use tokio::io::AsyncReadExt;

const DEVICE: &str = "foyer";

fn outcome(reader: &str, kind: v1::OutcomeKind, reason: v1::RejectReason) -> v1::ReaderFeedback {
    feedback_at(DEVICE, reader, kind, reason)
}

fn feedback_at(
    device: &str,
    reader: &str,
    kind: v1::OutcomeKind,
    reason: v1::RejectReason,
) -> v1::ReaderFeedback {
    v1::ReaderFeedback {
        outcome: Some(v1::VoteOutcome {
            read_id: format!("read-{reader}-{}", kind.as_str_name()),
            device_id: device.into(),
            reader_id: reader.into(),
            poll_id: "drink".into(),
            answer_id: "tea".into(),
            kind: kind as i32,
            reject_reason: reason as i32,
            message: "counted".into(),
            ..Default::default()
        }),
        display_name: "Ada".into(),
    }
}

async fn publish(client: &async_nats::Client, f: &v1::ReaderFeedback) {
    let o = f.outcome.as_ref().expect("outcome");
    client
        .publish(
            subjects::feedback(&o.device_id, &o.reader_id),
            f.encode_to_vec().into(),
        )
        .await
        .expect("publish feedback");
    client.flush().await.expect("flush");
}

fn hook_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the hook wrote `line`.
async fn wait_hooked(file: &std::path::Path, line: &str) {
    let start = Instant::now();
    while !hook_lines(file).iter().any(|l| l == line) {
        assert!(
            start.elapsed() < WAIT,
            "the hook never wrote {line:?}; it wrote {:?}",
            hook_lines(file)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Publishes `o` (again every second: the reader's core subscription may not
/// be in place yet) until the hook wrote `line`.
async fn until_hooked(
    client: &async_nats::Client,
    o: &v1::ReaderFeedback,
    file: &std::path::Path,
    line: &str,
) {
    let start = Instant::now();
    loop {
        publish(client, o).await;
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_secs(1) {
            if hook_lines(file).iter().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            start.elapsed() < WAIT,
            "the hook never wrote {line:?}; it wrote {:?}",
            hook_lines(file)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_light_the_sm130_and_run_the_hook() {
    let bus = TestBus::start();
    let client = bus.client().await;
    let mut hb = heartbeats(&client, DEVICE).await;

    let (id12, sm) = (pty(), pty());
    let hook_file = bus.path().join("hook.txt");
    let hook = format!(
        "printf '%s|%s|%s|%s|%s|%s|%s|%s\\n' \"$TAGPOLL_DEVICE\" \"$TAGPOLL_READER\" \
         \"$TAGPOLL_OUTCOME\" \"$TAGPOLL_REASON\" \"$TAGPOLL_POLL\" \"$TAGPOLL_ANSWER\" \
         \"$TAGPOLL_VOTER_NAME\" \"$TAGPOLL_READ_ID\" >> '{}'",
        hook_file.display()
    );
    let specs = [
        format!("door={},protocol=id12", id12.path),
        format!("bar={},protocol=sm130", sm.path),
    ];
    let spool = bus.path().join("spool");
    let _reader = start_reader(
        &bus,
        &[
            "--device",
            DEVICE,
            "--reader",
            &specs[0],
            "--reader",
            &specs[1],
            "--spool",
            spool.to_str().unwrap(),
            "--feedback-cmd",
            &hook,
        ],
    );
    all_connected(&mut hb, &["door", "bar"]).await;
    let sm130 = Sm130::spawn(sm.master);

    // ID-12: no outputs, the hook only.
    let rejected = outcome(
        "door",
        v1::OutcomeKind::Rejected,
        v1::RejectReason::PollClosed,
    );
    until_hooked(
        &client,
        &rejected,
        &hook_file,
        "foyer|door|rejected|poll_closed|drink|tea|Ada|read-door-OUTCOME_KIND_REJECTED",
    )
    .await;

    // SM130: a duplicate lights both outputs (0b11), then they go off.
    let since = Instant::now();
    let duplicate = outcome(
        "bar",
        v1::OutcomeKind::Duplicate,
        v1::RejectReason::Unspecified,
    );
    // Sent once (the device's subscription is proven by the ID-12 hook): a
    // re-send would light the outputs again and stretch the time they are on.
    publish(&client, &duplicate).await;
    wait_hooked(
        &hook_file,
        "foyer|bar|duplicate||drink|tea|Ada|read-bar-OUTCOME_KIND_DUPLICATE",
    )
    .await;
    assert_eq!(sm130_output(0b11), [0xFF, 0x00, 0x02, 0x92, 0x03, 0x97]);
    let on = sm130.wait_for_bytes(&sm130_output(0b11), since).await;
    let off = sm130.wait_for_bytes(&sm130_output(0b00), on).await;
    let held = off.duration_since(on);
    assert!(
        // 1 s on the reader's clock; the slack is for this test being slow to read.
        held >= Duration::from_millis(700) && held < Duration::from_secs(4),
        "outputs held for {held:?}, expected about 1 s"
    );

    // Accepted and changed: green (OUT1); rejected: red (OUT2).
    for (kind, bits) in [
        (v1::OutcomeKind::Changed, 0b01),
        (v1::OutcomeKind::Rejected, 0b10),
        (v1::OutcomeKind::Accepted, 0b01),
    ] {
        let since = Instant::now();
        publish(&client, &outcome("bar", kind, v1::RejectReason::UnknownTag)).await;
        sm130.wait_for_bytes(&sm130_output(bits), since).await;
    }

    // Feedback for another device, and a bare outcome on the vote stream's
    // subject for our own reader: neither signalled nor hooked.
    publish(
        &client,
        &feedback_at(
            "hall",
            "elsewhere",
            v1::OutcomeKind::Accepted,
            v1::RejectReason::Unspecified,
        ),
    )
    .await;
    let mut bare = outcome(
        "door",
        v1::OutcomeKind::Accepted,
        v1::RejectReason::Unspecified,
    )
    .outcome
    .unwrap();
    bare.read_id = "bare-outcome".into();
    client
        .publish(
            subjects::outcome(&bare.poll_id, &bare.reader_id),
            bare.encode_to_vec().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = hook_lines(&hook_file);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("|elsewhere|") || l.contains("bare-outcome")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("foyer|bar|changed|")),
        "{lines:?}"
    );

    // The ID-12 port was never written to: it has no outputs.
    let mut master = id12.master;
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(300), master.read(&mut buf)).await;
    assert!(got.is_err(), "the service wrote to the ID-12: {got:?}");
    drop((id12.slave, sm.slave));
}
