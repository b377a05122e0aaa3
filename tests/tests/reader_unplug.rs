//! Unplugging and re-plugging a serial reader under the real
//! `tagpoll-reader` binary: the reader is configured by a stable name (as
//! udev makes under /dev/serial/by-id), the pseudo-terminal behind it is
//! removed and a new one created behind the same name.
//!
//! Alone in its test binary: no other test thread may spawn a process while
//! this one's pty exists, or that process could hold the pty open and the
//! "unplug" would hang nobody up.

mod reader_support;

use std::path::Path;
use std::time::Duration;

use reader_support::*;
use tagpoll_tests::*;

const DEVICE: &str = "hall-left";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugged_reader_comes_back_at_the_same_path() {
    let bus = TestBus::start();
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    tagpoll_bus::topology::ensure(&js).await.expect("streams");
    let mut hb = heartbeats(&client, DEVICE).await;

    // The reader is configured by a stable name, as under /dev/serial/by-id.
    let link = bus
        .path()
        .join("usb-FTDI_FT232R_USB_UART_A3S280TD-if00-port0");
    let first = pty();
    point_symlink(&link, Path::new(&first.path));
    let spec = format!("door={},protocol=id12", link.display());
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
            "--quiet-ms",
            "150",
        ],
    );
    all_connected(&mut hb, &["door"]).await;
    let uid = [0x33, 0x3C, 0x01, 0xA4, 0x07];
    let Pty {
        mut master, slave, ..
    } = first;
    write(&mut master, &id12_frame(uid)).await;
    reads_after(&js, 1, Duration::ZERO).await;

    // Unplug: the name disappears, then the device.
    point_symlink(&link, &bus.path().join("absent"));
    drop(master);
    drop(slave);
    heartbeat_where(&mut hb, WAIT, "the reader disconnected", |hb| {
        hb.readers.iter().any(|r| r.state == "disconnected")
    })
    .await;

    // Replug: a new pty behind the same name.
    let mut second = pty();
    point_symlink(&link, Path::new(&second.path));
    all_connected(&mut hb, &["door"]).await;
    // The same tag again on the new connection is a new tap.
    write(&mut second.master, &id12_frame(uid)).await;
    let stored = reads_after(&js, 2, Duration::from_millis(500)).await;
    assert_eq!(stored.len(), 2);
    for s in &stored {
        assert_eq!(s.read.reader_id, "door");
        assert_eq!(s.read.tag_uid, uid.to_vec());
    }
    assert_ne!(stored[0].read.read_id, stored[1].read.read_id);
}
