//! The I/O edge: one task per serial reader that opens the port, feeds the
//! protocol parser, polls readers that need it, debounces sightings into taps,
//! writes feedback, and keeps re-opening the port after it disappears.
//!
//! USB-serial readers get unplugged at events (kicked cables, hubs losing
//! power). The kernel then fails reads with EIO or returns end of file, and
//! the device node vanishes until the adapter is back, so [`run_reader`]
//! treats every failure as "disconnected" and retries forever with backoff.
//! Configure readers by a stable path (`/dev/serial/by-id/…`, see
//! [`resolve_usb_serial`]) rather than `/dev/ttyUSB0`, whose number can change
//! on re-plugging.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};
use tracing::{debug, info, warn};

use crate::debounce::Debouncer;
use crate::protocol::{self, Feedback, Protocol, ReaderEvent};

/// First wait before re-opening a port that failed.
pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest wait between attempts to open a missing port.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that lasted this long resets the backoff; a port that opens
/// and fails at once keeps backing off instead of spinning.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(5);
/// How often a polled reader (SM130) is asked for the tag in its field; well
/// under the default quiet time, so a resting tag stays one presence.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long feedback outputs stay on before they are switched off.
pub const FEEDBACK_HOLD: Duration = Duration::from_secs(1);
/// A write that takes longer is abandoned (the reader is not draining input).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Prefix of a [`ReaderPort::path`] that names a USB adapter by serial number.
pub const USB_SERIAL_PREFIX: &str = "usb:";
/// Where udev publishes stable names for USB serial adapters.
pub const SERIAL_BY_ID: &str = "/dev/serial/by-id";

/// One configured serial reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderPort {
    /// The reader (antenna) id from the device config.
    pub reader_id: String,
    /// Device path, e.g. `/dev/serial/by-id/usb-FTDI_…-if00-port0`, or
    /// `usb:SERIAL`: the USB adapter with that serial number, looked up with
    /// [`resolve_usb_serial`] at every (re-)open.
    pub path: String,
    pub protocol: Protocol,
    pub baud: u32,
}

impl ReaderPort {
    /// A reader at the protocol's default baud rate.
    pub fn new(reader_id: impl Into<String>, path: impl Into<String>, protocol: Protocol) -> Self {
        ReaderPort {
            reader_id: reader_id.into(),
            path: path.into(),
            protocol,
            baud: protocol.default_baud(),
        }
    }
}

/// What a reader task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialEvent {
    /// The port is open (again).
    Connected { reader_id: String },
    /// The port failed or could not be opened; the task keeps retrying.
    /// Repeated failures with the same error are reported once.
    Disconnected { reader_id: String, error: String },
    /// A tag was presented: sent exactly once per presence.
    Tap { reader_id: String, uid: Vec<u8> },
    /// Bytes that did not form a valid frame (at most 64 of them).
    FrameError {
        reader_id: String,
        reason: String,
        bytes: Vec<u8>,
    },
}

/// Runs one reader until `events` is closed (its receiver dropped).
///
/// Opens `port.path` (8N1, no flow control), emits [`SerialEvent::Connected`],
/// then turns received bytes into events; SM130 readers are polled every
/// [`POLL_INTERVAL`]. Each [`Feedback`] received is written to the reader when
/// its protocol has an output command (and switched off after
/// [`FEEDBACK_HOLD`]); feedback arriving while disconnected is dropped, as
/// it would be stale by the time the reader is back. On open failure, read
/// error or end of file it emits [`SerialEvent::Disconnected`] and re-opens
/// with exponential backoff from [`BACKOFF_START`] up to [`BACKOFF_MAX`].
/// `quiet` is the debounce quiet time (see [`crate::debounce`]).
pub async fn run_reader(
    port: ReaderPort,
    events: mpsc::Sender<SerialEvent>,
    feedback: mpsc::Receiver<Feedback>,
    quiet: Duration,
) {
    let mut worker = Worker {
        port,
        events,
        feedback: Some(feedback),
        quiet,
    };
    worker.run().await;
}

/// Finds the stable path of the USB serial adapter whose serial number is
/// `serial` (e.g. `A3S280TD` for
/// `/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A3S280TD-if00-port0`).
///
/// The by-id symlink itself is returned, not its target, because udev
/// re-creates it for the re-plugged adapter even when the ttyUSB number
/// changes.
pub fn resolve_usb_serial(serial: &str) -> Option<PathBuf> {
    resolve_usb_serial_in(Path::new(SERIAL_BY_ID), serial)
}

/// [`resolve_usb_serial`] over another directory (for tests).
///
/// The serial must appear in the entry name as a whole `_`/`-` separated part,
/// so `A3S2` does not match `…_A3S280TD-if00…`; spaces in `serial` are read as
/// `_`, as udev writes them. With several matches (multi-port adapters) the
/// first name in sorted order wins, which is interface 0.
pub fn resolve_usb_serial_in(dir: &Path, serial: &str) -> Option<PathBuf> {
    let serial = serial.trim().replace(' ', "_");
    if serial.is_empty() {
        return None;
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| contains_part(name, &serial))
        .collect();
    names.sort();
    names.first().map(|n| dir.join(n))
}

fn contains_part(name: &str, part: &str) -> bool {
    let is_sep = |c: Option<char>| c.is_none_or(|c| c == '_' || c == '-');
    name.match_indices(part).any(|(i, _)| {
        is_sep(name[..i].chars().next_back()) && is_sep(name[i + part.len()..].chars().next())
    })
}

/// Why a connection ended.
enum Ended {
    /// Nobody listens any more: stop the task.
    EventsClosed,
    /// The port failed; report it and re-open.
    Failed(String),
}

struct Worker {
    port: ReaderPort,
    events: mpsc::Sender<SerialEvent>,
    /// `None` once the feedback sender is gone.
    feedback: Option<mpsc::Receiver<Feedback>>,
    quiet: Duration,
}

impl Worker {
    async fn run(&mut self) {
        let mut backoff = BACKOFF_START;
        let mut last_error: Option<String> = None;
        loop {
            if self.events.is_closed() {
                return;
            }
            match self.open() {
                Ok(stream) => {
                    info!(reader = %self.port.reader_id, path = %self.port.path, protocol = %self.port.protocol, "serial reader connected");
                    if !self
                        .send(SerialEvent::Connected {
                            reader_id: self.port.reader_id.clone(),
                        })
                        .await
                    {
                        return;
                    }
                    let started = Instant::now();
                    match self.connection(stream).await {
                        Ended::EventsClosed => return,
                        Ended::Failed(error) => {
                            warn!(reader = %self.port.reader_id, path = %self.port.path, %error, "serial reader disconnected");
                            if !self.disconnected(&error).await {
                                return;
                            }
                            last_error = Some(error);
                        }
                    }
                    if started.elapsed() >= STABLE_CONNECTION {
                        backoff = BACKOFF_START;
                    }
                }
                Err(error) => {
                    if last_error.as_deref() != Some(error.as_str()) {
                        warn!(reader = %self.port.reader_id, path = %self.port.path, %error, "cannot open serial reader; retrying");
                        if !self.disconnected(&error).await {
                            return;
                        }
                        last_error = Some(error);
                    } else {
                        debug!(reader = %self.port.reader_id, %error, ?backoff, "serial reader still unavailable");
                    }
                }
            }
            if !self.wait(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn open(&self) -> Result<SerialStream, String> {
        let path = match self.port.path.strip_prefix(USB_SERIAL_PREFIX) {
            // Looked up at every attempt: the adapter may be plugged in later.
            Some(serial) => resolve_usb_serial(serial)
                .ok_or_else(|| {
                    format!(
                        "no USB serial adapter with serial number {serial:?} under {SERIAL_BY_ID}"
                    )
                })?
                .display()
                .to_string(),
            None => self.port.path.clone(),
        };
        tokio_serial::new(&path, self.port.baud)
            .data_bits(DataBits::Eight)
            .parity(Parity::None)
            .stop_bits(StopBits::One)
            .flow_control(FlowControl::None)
            .open_native_async()
            .map_err(|e| format!("open {path}: {e}"))
    }

    /// Sends an event; `false` when the receiver is gone.
    async fn send(&self, event: SerialEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    async fn disconnected(&self, error: &str) -> bool {
        self.send(SerialEvent::Disconnected {
            reader_id: self.port.reader_id.clone(),
            error: error.to_owned(),
        })
        .await
    }

    /// Sleeps `pause` while discarding feedback; `false` if events closed.
    async fn wait(&mut self, pause: Duration) -> bool {
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                _ = self.events.closed() => return false,
                fb = recv_feedback(self.feedback.as_mut()) => match fb {
                    Some(fb) => debug!(reader = %self.port.reader_id, ?fb, "feedback dropped: reader disconnected"),
                    None => self.feedback = None,
                },
            }
        }
    }

    /// Serves one open port until it fails or `events` closes.
    async fn connection(&mut self, mut stream: SerialStream) -> Ended {
        let protocol = self.port.protocol;
        let mut parser = protocol::parser(&protocol);
        let mut debouncer = Debouncer::with_confirmations(self.quiet, protocol.confirmations());
        let poll = protocol::poll_command(&protocol);
        let mut poll_timer = tokio::time::interval(POLL_INTERVAL);
        poll_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outputs_off_at: Option<Instant> = None;
        let mut buf = [0u8; 256];
        let mut parsed = Vec::new();
        loop {
            let expire_at = debouncer.next_deadline().map(Instant::from_std);
            tokio::select! {
                read = stream.read(&mut buf) => {
                    let n = match read {
                        Ok(0) => return Ended::Failed("end of file (device gone?)".into()),
                        Ok(n) => n,
                        Err(e) => return Ended::Failed(format!("read: {e}")),
                    };
                    parser.feed(buf.get(..n).unwrap_or_default(), &mut parsed);
                    for event in parsed.drain(..) {
                        if let Some(out) = self.on_reader_event(event, &mut debouncer)
                            && !self.send(out).await
                        {
                            return Ended::EventsClosed;
                        }
                    }
                }
                _ = poll_timer.tick(), if poll.is_some() => {
                    if let Some(cmd) = &poll
                        && let Err(e) = self.write(&mut stream, cmd).await
                    {
                        return Ended::Failed(e);
                    }
                }
                fb = recv_feedback(self.feedback.as_mut()) => match fb {
                    None => self.feedback = None,
                    Some(fb) => {
                        if let Some(cmd) = protocol::feedback_command(&protocol, fb) {
                            debug!(reader = %self.port.reader_id, ?fb, "showing feedback");
                            if let Err(e) = self.write(&mut stream, &cmd).await {
                                return Ended::Failed(e);
                            }
                            outputs_off_at = Some(Instant::now() + FEEDBACK_HOLD);
                        }
                    }
                },
                _ = sleep_until(outputs_off_at) => {
                    outputs_off_at = None;
                    if let Some(cmd) = protocol::feedback_off_command(&protocol)
                        && let Err(e) = self.write(&mut stream, &cmd).await
                    {
                        return Ended::Failed(e);
                    }
                }
                _ = sleep_until(expire_at) => {
                    for uid in debouncer.expire(std::time::Instant::now()) {
                        debug!(reader = %self.port.reader_id, uid = %hex::encode_upper(&uid), "tag removed");
                    }
                }
                _ = self.events.closed() => return Ended::EventsClosed,
            }
        }
    }

    /// Debounces one parsed event into what the service should hear.
    fn on_reader_event(
        &self,
        event: ReaderEvent,
        debouncer: &mut Debouncer,
    ) -> Option<SerialEvent> {
        let reader_id = self.port.reader_id.clone();
        let now = std::time::Instant::now();
        match event {
            ReaderEvent::Tag { uid } => {
                let tap = debouncer.sighting(&uid, now)?;
                debug!(reader = %reader_id, uid = %hex::encode_upper(&tap.uid), "tap");
                Some(SerialEvent::Tap {
                    reader_id,
                    uid: tap.uid,
                })
            }
            ReaderEvent::NoTag => {
                for uid in debouncer.no_tag(now) {
                    debug!(reader = %reader_id, uid = %hex::encode_upper(&uid), "tag removed (reader reports empty field)");
                }
                None
            }
            ReaderEvent::FrameError { reason, bytes } => {
                debug!(reader = %reader_id, %reason, bytes = %hex::encode_upper(&bytes), "frame error");
                Some(SerialEvent::FrameError {
                    reader_id,
                    reason,
                    bytes,
                })
            }
        }
    }

    /// Writes a whole command. An I/O error ends the connection; a timeout
    /// (the device accepts no input) is logged and the command skipped.
    async fn write(&self, stream: &mut SerialStream, bytes: &[u8]) -> Result<(), String> {
        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => {
                warn!(reader = %self.port.reader_id, "write to serial reader timed out; command skipped");
                Ok(())
            }
        }
    }
}

async fn recv_feedback(rx: Option<&mut mpsc::Receiver<Feedback>>) -> Option<Feedback> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_port_uses_the_protocol_baud() {
        let p = ReaderPort::new("r1", "/dev/null", Protocol::Sm130);
        assert_eq!(p.baud, 19200);
        assert_eq!(
            ReaderPort::new("r1", "/dev/null", Protocol::Parallax).baud,
            2400
        );
    }

    #[test]
    fn resolves_usb_serial_numbers_by_whole_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "usb-FTDI_FT232R_USB_UART_A3S280TD-if00-port0",
            "usb-FTDI_FT232R_USB_UART_B77-if00-port0",
            "usb-Prolific_Technology_Inc._USB-Serial_Controller_D-if00-port0",
            "usb-FTDI_Dual_RS232_FT2XYZ-if01-port0",
            "usb-FTDI_Dual_RS232_FT2XYZ-if00-port0",
        ] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        let d = dir.path();
        assert_eq!(
            resolve_usb_serial_in(d, "A3S280TD"),
            Some(d.join("usb-FTDI_FT232R_USB_UART_A3S280TD-if00-port0"))
        );
        assert_eq!(resolve_usb_serial_in(d, "A3S2"), None);
        assert_eq!(resolve_usb_serial_in(d, "B7"), None);
        assert_eq!(
            resolve_usb_serial_in(d, " FT2XYZ "),
            Some(d.join("usb-FTDI_Dual_RS232_FT2XYZ-if00-port0"))
        );
        assert_eq!(resolve_usb_serial_in(d, ""), None);
        assert_eq!(resolve_usb_serial_in(d, "NOPE"), None);
        assert_eq!(resolve_usb_serial_in(&d.join("missing"), "A3S280TD"), None);
    }

    #[test]
    fn resolve_usb_serial_does_not_panic_without_by_id_dir() {
        // The directory exists only while an adapter is plugged in.
        let _ = resolve_usb_serial("A3S280TD");
    }
}
