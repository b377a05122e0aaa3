//! Device configuration: a TOML file per device, or the same on the command
//! line (`--device D --reader ID=PATH,protocol=NAME[,baud=N]`).
//!
//! Validated at start; every error names the key (and line) or the flag.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tagpoll_proto::ids::check_id;

use crate::protocol::Protocol;

/// Where a reader is attached.
#[derive(Debug, Clone, PartialEq)]
pub enum ReaderPath {
    /// A device path, ideally stable (`/dev/serial/by-id/...`).
    Path(PathBuf),
    /// The USB serial number of the adapter (e.g. FTDI `A3S280TD`), found
    /// under `/dev/serial/by-id` whenever it is plugged in.
    UsbSerial(String),
}

/// One configured reader.
#[derive(Debug, Clone, PartialEq)]
pub struct ReaderSpec {
    pub id: String,
    pub path: ReaderPath,
    pub protocol: Protocol,
    pub baud: u32,
}

/// Everything a reader device needs besides NATS credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub device_id: String,
    pub readers: Vec<ReaderSpec>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub quiet: Duration,
    /// Shell command run for every outcome at one of our readers.
    pub feedback_command: Option<String>,
    /// `nats.url` from the file; `NATS_URL` in the environment wins.
    pub nats_url: Option<String>,
    /// `nats.creds` from the file; `NATS_CREDS` wins.
    pub nats_creds: Option<String>,
}

/// Default spool size limit.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// A configuration error, naming where it is.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{location}: {message}")]
pub struct ConfigError {
    pub location: String,
    pub message: String,
}

fn err(location: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        location: location.into(),
        message: message.into(),
    }
}

/// Parses `READER_ID=PATH,protocol=NAME[,baud=N]`; PATH may be `usb:SERIAL`.
pub fn parse_reader_flag(spec: &str) -> Result<ReaderSpec, ConfigError> {
    let at = format!("--reader {spec}");
    let (id, rest) = spec
        .split_once('=')
        .ok_or_else(|| err(&at, "expected READER_ID=PATH,protocol=NAME[,baud=N]"))?;
    check_id(id).map_err(|e| err(&at, format!("reader id {id:?} {e}")))?;
    let mut parts = rest.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(err(&at, "missing the device path after '='"));
    }
    let (mut protocol, mut baud) = (None, None);
    for kv in parts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| err(&at, format!("{kv:?} is not KEY=VALUE")))?;
        match k {
            "protocol" => {
                protocol = Some(
                    v.parse::<Protocol>()
                        .map_err(|e| err(&at, format!("protocol: {e}")))?,
                )
            }
            "baud" => {
                baud = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|b| *b > 0)
                        .ok_or_else(|| err(&at, format!("baud {v:?} is not a positive number")))?,
                )
            }
            other => {
                return Err(err(
                    &at,
                    format!("unknown option {other:?} (use protocol= and baud=)"),
                ));
            }
        }
    }
    let protocol =
        protocol.ok_or_else(|| err(&at, "missing protocol=NAME (id12, parallax, sm130, line)"))?;
    Ok(ReaderSpec {
        id: id.to_string(),
        path: reader_path(path),
        baud: baud.unwrap_or_else(|| protocol.default_baud()),
        protocol,
    })
}

fn reader_path(s: &str) -> ReaderPath {
    match s.strip_prefix("usb:") {
        Some(serial) => ReaderPath::UsbSerial(serial.to_string()),
        None => ReaderPath::Path(PathBuf::from(s)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    device: toml::Spanned<String>,
    #[serde(default)]
    readers: Vec<RawReader>,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    debounce: RawDebounce,
    #[serde(default)]
    feedback: RawFeedback,
    #[serde(default)]
    nats: RawNats,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReader {
    id: toml::Spanned<String>,
    path: Option<String>,
    usb_serial: Option<String>,
    protocol: toml::Spanned<String>,
    baud: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    dir: Option<PathBuf>,
    max_mb: Option<toml::Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDebounce {
    quiet_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFeedback {
    command: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNats {
    url: Option<String>,
    creds: Option<String>,
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{col}")
}

/// Parses a device TOML file's text; `file` names it in errors.
pub fn parse_file(file: &str, text: &str) -> Result<DeviceConfig, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or("1:1".into(), |s| line_col(text, s.start));
        err(format!("{file}:{at}"), e.message().trim())
    })?;
    let at = |span: std::ops::Range<usize>, key: &str| {
        format!("{file}:{} ({key})", line_col(text, span.start))
    };
    check_id(raw.device.get_ref()).map_err(|e| {
        err(
            at(raw.device.span(), "device"),
            format!("device id {:?} {e}", raw.device.get_ref()),
        )
    })?;
    let mut readers = Vec::new();
    for (i, r) in raw.readers.iter().enumerate() {
        let key = format!("readers[{i}]");
        check_id(r.id.get_ref()).map_err(|e| {
            err(
                at(r.id.span(), &format!("{key}.id")),
                format!("reader id {:?} {e}", r.id.get_ref()),
            )
        })?;
        if readers.iter().any(|x: &ReaderSpec| x.id == *r.id.get_ref()) {
            return Err(err(
                at(r.id.span(), &format!("{key}.id")),
                format!("reader {:?} listed twice", r.id.get_ref()),
            ));
        }
        let protocol: Protocol = r.protocol.get_ref().parse().map_err(|e| {
            err(
                at(r.protocol.span(), &format!("{key}.protocol")),
                format!("{e}"),
            )
        })?;
        let path = match (&r.path, &r.usb_serial) {
            (Some(p), None) => reader_path(p),
            (None, Some(s)) => ReaderPath::UsbSerial(s.clone()),
            _ => {
                return Err(err(
                    at(r.id.span(), &key),
                    "give exactly one of `path` or `usb_serial`",
                ));
            }
        };
        readers.push(ReaderSpec {
            id: r.id.get_ref().clone(),
            path,
            baud: r.baud.unwrap_or_else(|| protocol.default_baud()),
            protocol,
        });
    }
    let spool_max_bytes = match &raw.spool.max_mb {
        None => DEFAULT_SPOOL_MAX_BYTES,
        Some(mb) if *mb.get_ref() >= 1 => mb.get_ref() * 1024 * 1024,
        Some(mb) => return Err(err(at(mb.span(), "spool.max_mb"), "must be at least 1")),
    };
    Ok(DeviceConfig {
        device_id: raw.device.get_ref().clone(),
        readers,
        spool_dir: raw.spool.dir,
        spool_max_bytes,
        quiet: Duration::from_millis(raw.debounce.quiet_ms.unwrap_or(300)),
        feedback_command: raw.feedback.command,
        nats_url: raw.nats.url,
        nats_creds: raw.nats.creds,
    })
}

/// The spool folder when none is configured: `$STATE_DIRECTORY` (systemd),
/// else `~/.local/state/tagpoll/DEVICE/spool`.
pub fn default_spool_dir(device: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(dir).join("spool");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/tagpoll").join(device).join("spool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reader_flag() {
        let r = parse_reader_flag("coffee=/dev/ttyUSB0,protocol=id12").unwrap();
        assert_eq!(r.id, "coffee");
        assert_eq!(r.path, ReaderPath::Path("/dev/ttyUSB0".into()));
        assert_eq!(r.baud, 9600);
        let r = parse_reader_flag("tea=usb:A3S280TD,protocol=sm130,baud=57600").unwrap();
        assert_eq!(r.path, ReaderPath::UsbSerial("A3S280TD".into()));
        assert_eq!(r.baud, 57600);
    }

    #[test]
    fn reader_flag_errors_name_the_problem() {
        for (spec, needle) in [
            ("nopath", "expected READER_ID=PATH"),
            ("a.b=/dev/x,protocol=id12", "reader id"),
            ("r=/dev/x", "missing protocol"),
            ("r=/dev/x,protocol=morse", "protocol"),
            ("r=/dev/x,protocol=id12,baud=fast", "baud"),
            ("r=/dev/x,protocol=id12,speed=1", "unknown option"),
        ] {
            let e = parse_reader_flag(spec).unwrap_err();
            assert!(e.to_string().contains(needle), "{spec}: {e}");
            assert!(e.location.contains(spec), "{e}");
        }
    }

    #[test]
    fn parses_a_device_file_and_points_at_bad_keys() {
        let ok = "device = \"hall\"\n[[readers]]\nid = \"r1\"\nusb_serial = \"A3S280TD\"\nprotocol = \"sm130\"\n[spool]\nmax_mb = 8\n";
        let c = parse_file("dev.toml", ok).unwrap();
        assert_eq!(c.readers[0].baud, 19200);
        assert_eq!(c.spool_max_bytes, 8 << 20);
        let bad = ok.replace("sm130", "sm999");
        let e = parse_file("dev.toml", &bad).unwrap_err();
        assert!(
            e.location
                .starts_with("dev.toml:5:12 (readers[0].protocol)"),
            "{e}"
        );
        let e = parse_file("dev.toml", "device = \"hall\"\ncolour = 1\n").unwrap_err();
        assert!(e.location.starts_with("dev.toml:2:1"), "{e}");
    }
}
