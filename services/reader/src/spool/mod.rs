//! The durable tap queue: a tap is fsync'd here before it is published and leaves
//! only after JetStream acknowledged it, so neither a crash, a power cut nor a
//! Wi-Fi outage loses a vote.
//!
//! # Layout
//!
//! One directory, used by one [`Spool`] at a time (an `flock` on `spool.lock`).
//! Integers are little endian.
//!
//! - `spool-<base>.log`, `<base>` in 20 decimal digits: a segment, a plain run of
//!   records `"TPR1" | crc32 u32 | len u32 | seq u64 | payload[len]`, the crc over
//!   `len | seq | payload`. `<base>` is the next seq at the time the segment was
//!   started: its records have `seq >= base`, and seqs increase in name order.
//!   Appends go to the newest segment; a new one is started when it would grow
//!   past `max_bytes / 16` (clamped to 1 KiB..4 MiB).
//! - `spool-<base>.ack`: the acks of that segment's records, in ack order, each
//!   `"TPA1" | seq u64 | crc32 u32` (crc over the first 12 bytes). Each seq is
//!   acked at most once, so the file never outgrows its segment's record count
//!   and needs no compaction: it is deleted with its segment.
//! - `spool.lock`: empty; only ever locked.
//!
//! # Sequence numbers
//!
//! On open, the next seq is the highest of the newest segment's base, every
//! intact record's and ack's seq plus one, and 1. A segment is only deleted once
//! a newer one exists on disk (created, then the directory fsync'd), so the
//! newest name carries the counter even when every record was acked and deleted.
//!
//! # Recovery rules (on open)
//!
//! - Damaged bytes followed by an intact record in the same file (resynchronised
//!   on the record magic + crc) are skipped and logged: the damaged record is
//!   lost, every record after it is kept.
//! - Damaged bytes with nothing intact after them at the end of the newest
//!   segment are a torn append: logged, truncated away (then fsync'd), and a
//!   fresh segment is started one seq further, so the seq the torn record may
//!   have carried is never handed out again. At the end of an older segment,
//!   which is never appended to again, they are only skipped.
//! - Intact records whose seqs do not increase, or lie below their segment's
//!   base, were not written by this code in this directory (copied or restored
//!   files): open fails with [`SpoolError::Corrupt`] instead of guessing which
//!   copy to send.
//! - Damaged ack entries are ignored (their records are sent again); unrecognised
//!   files are ignored; ack logs without their segment are deleted.
//!
//! # Durability
//!
//! - [`Spool::append`]: one `write` + one `fdatasync`; new segments are created,
//!   then the directory is fsync'd, before they get records.
//! - [`Spool::ack`]: one `write` to the ack log (`O_APPEND`): once it returns, the
//!   ack survives the process being killed. The ack logs are `fdatasync`'d in
//!   batches: on the 64th ack since the last sync, on the first ack a second or
//!   more after it, and on drop. A power cut can lose the acks since the last
//!   sync (fewer than 64, or whatever the kernel had not written back yet, ~30 s
//!   by default, when no further ack came). Their records come back from
//!   [`Spool::open`] and are published again, which JetStream de-duplicates as
//!   long as the message id is derived from the seq and it happens within the
//!   stream's duplicate window; a consumer should be idempotent beyond that.
//!
//! # Disk use
//!
//! [`Spool::bytes`] counts, per segment, the log size plus the larger of the ack
//! log size and 16 bytes per record: every record's ack entry is reserved when it
//! is appended, so acking never needs room. A segment other than the newest is
//! deleted as soon as all its records are acked. The newest one, once all its
//! records are acked, is replaced by an empty segment when it holds a quarter of
//! the segment size or more (so a spool that drains after every tap does not
//! create and delete a file per tap), or when an append needs its room; so up to
//! a quarter segment of acked records can keep holding room in it.

mod frame;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use frame::{ACK_ENTRY, RECORD_HEADER};
use tracing::{debug, error, info, warn};

const LOCK_FILE: &str = "spool.lock";
const MIN_SEGMENT: u64 = 1 << 10;
const MAX_SEGMENT: u64 = 4 << 20;
const ACK_SYNC_EVERY: u32 = 64;
const ACK_SYNC_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `bytes` is the usage at the time of the refused append.
    #[error("spool full: {bytes} of {limit} bytes in use, the record does not fit")]
    Full { bytes: u64, limit: u64 },
    /// Only for damage that is not a torn tail and cannot be skipped safely.
    #[error("spool file {} is inconsistent at byte {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpoolLimits {
    pub max_bytes: u64,
    /// Fraction of `max_bytes` at which [`Spool::is_warning`] turns on, e.g. 0.8.
    pub warn_ratio: f64,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            warn_ratio: 0.8,
        }
    }
}

/// An open spool directory. See the [module docs](self) for format and guarantees.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    segment_target: u64,
    /// Keyed by base seq; never empty: the last one is where appends go.
    segments: BTreeMap<u64, Segment>,
    /// Append handle of the last segment.
    active: File,
    next_seq: u64,
    /// Reused encode buffer, so an append is a single `write`.
    frame: Vec<u8>,
    acks_since_sync: u32,
    last_ack_sync: Instant,
    /// Files were created or deleted since the directory was last fsync'd.
    dir_dirty: bool,
    warning: bool,
    /// Held for its lock.
    _lock: File,
}

#[derive(Debug, Default)]
struct Segment {
    log_len: u64,
    /// Intact records in the log, acked or not: each has an ack entry reserved.
    records: u64,
    unacked: BTreeSet<u64>,
    ack_len: u64,
    /// Opened on the first ack after open.
    ack_file: Option<File>,
    /// Acks written since the last fdatasync of `ack_file`.
    ack_dirty: bool,
}

impl Segment {
    fn usage(&self) -> u64 {
        let reserved = self.records.saturating_mul(ACK_ENTRY as u64);
        self.log_len.saturating_add(self.ack_len.max(reserved))
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir`; returns the records not yet
    /// acknowledged, in append order. Recovery rules are in the module docs.
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<(Spool, Vec<SpoolRecord>), SpoolError> {
        create_dir(dir)?;
        let lock = lock_dir(dir)?;
        let (logs, acks) = list_dir(dir)?;
        let newest = logs.last().copied();

        let mut loaded = Loaded::default();
        let mut segments = BTreeMap::new();
        let mut torn = false;
        for &base in &logs {
            let (segment, torn_here) = load_segment(
                dir,
                base,
                Some(base) == newest,
                acks.contains(&base),
                &mut loaded,
            )?;
            torn |= torn_here;
            segments.insert(base, segment);
        }

        let mut dir_dirty = false;
        for &base in acks.difference(&logs) {
            let path = ack_path(dir, base);
            match remove_if_exists(&path) {
                Ok(()) => dir_dirty = true,
                Err(err) => {
                    warn!(path = %path.display(), error = %err, "could not delete spool ack log without a segment")
                }
            }
        }

        let mut next_seq = [
            Some(1),
            newest,
            loaded.max_seq.map(|seq| seq.saturating_add(1)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(1);
        if torn {
            next_seq = next_seq.saturating_add(1);
        }

        let drained_tail = newest
            .and_then(|base| segments.get(&base))
            .is_some_and(|seg| seg.unacked.is_empty() && seg.log_len > 0);
        let active = match newest {
            Some(base) if !torn && !drained_tail => {
                let path = log_path(dir, base);
                OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?
            }
            _ => {
                let file = create_segment(dir, next_seq)?;
                segments.insert(next_seq, Segment::default());
                file
            }
        };

        let mut spool = Spool {
            dir: dir.to_path_buf(),
            limits,
            segment_target: (limits.max_bytes / 16).clamp(MIN_SEGMENT, MAX_SEGMENT),
            segments,
            active,
            next_seq,
            frame: Vec::new(),
            acks_since_sync: 0,
            last_ack_sync: Instant::now(),
            dir_dirty,
            warning: false,
            _lock: lock,
        };
        spool.reclaim(false);
        spool.sync_acks();
        Ok((spool, loaded.pending))
    }

    /// Appends and fsyncs before returning; seq is strictly increasing across
    /// restarts (persisted, never reused, even after the spool is emptied and
    /// compacted).
    ///
    /// Returns [`SpoolError::Full`], having written nothing, when the record (and
    /// its reserved ack entry) would take the spool past `max_bytes`. A failed
    /// append still uses up its seq and is removed from the file again.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        if u32::try_from(payload.len()).is_err() {
            return Err(self.active_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "spool record payload is larger than 4 GiB",
            )));
        }
        let frame_len = (RECORD_HEADER + payload.len()) as u64;
        let needed = frame_len + ACK_ENTRY as u64;
        if self.bytes().saturating_add(needed) > self.limits.max_bytes {
            self.reclaim(true);
            let bytes = self.bytes();
            if bytes.saturating_add(needed) > self.limits.max_bytes {
                return Err(SpoolError::Full {
                    bytes,
                    limit: self.limits.max_bytes,
                });
            }
        }
        let active_len = self.active_segment().log_len;
        if active_len > 0 && active_len + frame_len > self.segment_target {
            match self.roll() {
                Ok(()) => self.reclaim(false),
                // The segment size is a target, not a limit: better a big segment than a lost tap.
                Err(err) => {
                    warn!(error = %err, "could not start a new spool segment; appending to the current one")
                }
            }
        }

        let seq = self.next_seq;
        self.next_seq = seq.checked_add(1).ok_or_else(|| {
            self.active_error(io::Error::other("spool sequence numbers exhausted"))
        })?;
        frame::encode_record(seq, payload, &mut self.frame);
        let base = self.active_base();
        let Some(segment) = self.segments.get_mut(&base) else {
            unreachable!("the active segment is in the map");
        };
        let written = self
            .active
            .write_all(&self.frame)
            .and_then(|()| self.active.sync_data());
        if let Err(source) = written {
            let path = log_path(&self.dir, base);
            // Take the partial or unsynced record out again, so it cannot come back from
            // `open` after the caller was told it failed.
            let restored = self
                .active
                .set_len(segment.log_len)
                .and_then(|()| self.active.sync_data());
            if let Err(err) = restored {
                error!(path = %path.display(), error = %err, "could not remove a failed append from the spool; it may come back after a restart");
                if let Ok(meta) = self.active.metadata() {
                    segment.log_len = meta.len();
                }
            }
            return Err(SpoolError::Io { path, source });
        }
        segment.log_len += frame_len;
        segment.records += 1;
        segment.unacked.insert(seq);
        self.note_usage();
        Ok(seq)
    }

    /// Marks a record as delivered (acknowledged by JetStream); acks may come out
    /// of order, and acking an unknown or already acked seq does nothing.
    ///
    /// Durable against the process dying once it returns; against a power cut
    /// within about a second (see the module docs). An error means the ack was
    /// not recorded and the record stays pending.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let Some((&base, segment)) = self.segments.range_mut(..=seq).next_back() else {
            debug!(seq, "ignoring ack of a seq the spool does not hold");
            return Ok(());
        };
        if !segment.unacked.contains(&seq) {
            debug!(seq, "ignoring ack of a seq the spool does not hold");
            return Ok(());
        }
        let path = ack_path(&self.dir, base);
        let file = match segment.ack_file.take() {
            Some(file) => file,
            None => {
                self.dir_dirty = true;
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?
            }
        };
        let file = segment.ack_file.insert(file);
        if let Err(source) = file.write_all(&frame::encode_ack(seq)) {
            if let Ok(meta) = file.metadata() {
                segment.ack_len = meta.len();
            }
            return Err(SpoolError::Io { path, source });
        }
        segment.ack_len += ACK_ENTRY as u64;
        segment.ack_dirty = true;
        segment.unacked.remove(&seq);
        if segment.unacked.is_empty() {
            self.reclaim(false);
        }
        self.acks_since_sync += 1;
        if self.acks_since_sync >= ACK_SYNC_EVERY
            || self.last_ack_sync.elapsed() >= ACK_SYNC_INTERVAL
        {
            self.sync_acks();
        }
        Ok(())
    }

    /// Records appended and not acked.
    pub fn depth(&self) -> u64 {
        self.segments.values().map(|s| s.unacked.len() as u64).sum()
    }

    /// Bytes on disk counted against `max_bytes` (see the module docs).
    pub fn bytes(&self) -> u64 {
        self.segments.values().map(Segment::usage).sum()
    }

    /// `bytes >= warn_ratio * max_bytes`: the alarm before the spool fills.
    pub fn is_warning(&self) -> bool {
        self.bytes() as f64 >= self.limits.warn_ratio * self.limits.max_bytes as f64
    }

    /// The seq the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn active_base(&self) -> u64 {
        match self.segments.last_key_value() {
            Some((&base, _)) => base,
            None => unreachable!("a spool always has an active segment"),
        }
    }

    fn active_segment(&self) -> &Segment {
        match self.segments.last_key_value() {
            Some((_, segment)) => segment,
            None => unreachable!("a spool always has an active segment"),
        }
    }

    fn active_error(&self, source: io::Error) -> SpoolError {
        SpoolError::Io {
            path: log_path(&self.dir, self.active_base()),
            source,
        }
    }

    /// Starts a new active segment at the next seq. Only called while the current
    /// one holds bytes, whose seqs are all below `next_seq`, so the name is fresh.
    fn roll(&mut self) -> Result<(), SpoolError> {
        let base = self.next_seq;
        self.active = create_segment(&self.dir, base)?;
        self.segments.insert(base, Segment::default());
        Ok(())
    }

    /// Deletes fully acked segments, and replaces the active one if it is fully
    /// acked and big enough (or `force_active`). Failures are logged and retried on
    /// the next call: they cost disk space (which `Full` reports), never records.
    fn reclaim(&mut self, force_active: bool) {
        let active = self.active_base();
        let drained: Vec<u64> = self
            .segments
            .iter()
            .filter(|&(&base, seg)| base != active && seg.unacked.is_empty())
            .map(|(&base, _)| base)
            .collect();
        for base in drained {
            self.remove_segment(base);
        }
        let segment = self.active_segment();
        let big_enough = force_active || segment.log_len >= self.segment_target / 4;
        if segment.unacked.is_empty() && segment.log_len > 0 && big_enough {
            match self.roll() {
                Ok(()) => self.remove_segment(active),
                Err(err) => {
                    warn!(error = %err, "could not replace the fully acknowledged spool segment")
                }
            }
        }
        self.note_usage();
    }

    /// Log first: an ack log left behind is deleted by the next open, while a log
    /// left without its acks would only send its records again.
    fn remove_segment(&mut self, base: u64) {
        let log = log_path(&self.dir, base);
        if let Err(err) = remove_if_exists(&log) {
            warn!(path = %log.display(), error = %err, "could not delete fully acknowledged spool segment");
            return;
        }
        self.segments.remove(&base);
        self.dir_dirty = true;
        let ack = ack_path(&self.dir, base);
        if let Err(err) = remove_if_exists(&ack) {
            warn!(path = %ack.display(), error = %err, "could not delete spool ack log");
        }
    }

    /// Failures only widen the window in which a power cut re-sends acked records,
    /// so they are logged rather than returned.
    fn sync_acks(&mut self) {
        for (&base, segment) in &mut self.segments {
            if !segment.ack_dirty {
                continue;
            }
            segment.ack_dirty = false;
            if let Some(file) = &segment.ack_file
                && let Err(err) = file.sync_data()
            {
                let path = ack_path(&self.dir, base);
                warn!(path = %path.display(), error = %err, "could not fsync spool acks; after a power cut their records may be sent again");
            }
        }
        if self.dir_dirty {
            self.dir_dirty = false;
            if let Err(err) = sync_dir(&self.dir) {
                warn!(error = %err, "could not fsync the spool directory");
            }
        }
        self.acks_since_sync = 0;
        self.last_ack_sync = Instant::now();
    }

    fn note_usage(&mut self) {
        let warning = self.is_warning();
        if warning != self.warning {
            self.warning = warning;
            if warning {
                warn!(
                    bytes = self.bytes(),
                    limit = self.limits.max_bytes,
                    "spool is above its warning threshold"
                );
            } else {
                info!(
                    bytes = self.bytes(),
                    limit = self.limits.max_bytes,
                    "spool is back below its warning threshold"
                );
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.acks_since_sync > 0 || self.dir_dirty {
            self.sync_acks();
        }
    }
}

/// What reading the segments in order accumulates.
#[derive(Default)]
struct Loaded {
    pending: Vec<SpoolRecord>,
    last_seq: Option<u64>,
    /// Highest seq in any intact record or ack entry.
    max_seq: Option<u64>,
}

/// Reads one segment and its ack log; returns whether a torn tail was truncated.
fn load_segment(
    dir: &Path,
    base: u64,
    newest: bool,
    has_acks: bool,
    loaded: &mut Loaded,
) -> Result<(Segment, bool), SpoolError> {
    let mut segment = Segment::default();
    let mut acked = BTreeSet::new();
    if has_acks {
        let (seqs, ack_len) = load_acks(dir, base)?;
        segment.ack_len = ack_len;
        for seq in seqs {
            // A seq at or above the base was handed out, even if its record is gone.
            if seq >= base {
                loaded.max_seq = loaded.max_seq.max(Some(seq));
            }
            acked.insert(seq);
        }
    }

    let path = log_path(dir, base);
    let data = fs::read(&path).map_err(io_err(&path))?;
    segment.log_len = data.len() as u64;
    let scan = frame::scan_records(&data);
    for record in scan.records {
        let out_of_order = if record.seq < base {
            Some(format!(
                "record seq {} is below the segment's base seq {base}",
                record.seq
            ))
        } else {
            loaded
                .last_seq
                .filter(|&last| record.seq <= last)
                .map(|last| format!("record seq {} does not follow seq {last}", record.seq))
        };
        if let Some(reason) = out_of_order {
            return Err(SpoolError::Corrupt {
                path,
                offset: record.offset as u64,
                reason,
            });
        }
        loaded.last_seq = Some(record.seq);
        loaded.max_seq = loaded.max_seq.max(Some(record.seq));
        segment.records += 1;
        if !acked.contains(&record.seq) {
            segment.unacked.insert(record.seq);
            loaded.pending.push(SpoolRecord {
                seq: record.seq,
                payload: record.payload.to_vec(),
            });
        }
    }
    for range in &scan.skipped {
        warn!(path = %path.display(), offset = range.start, bytes = range.len(),
            "skipping damaged bytes in spool segment; the records after them are kept");
    }

    let Some(tail) = scan.damaged_tail else {
        return Ok((segment, false));
    };
    let bytes = data.len() - tail;
    if !newest {
        warn!(path = %path.display(), offset = tail, bytes, "skipping damaged bytes at the end of an older spool segment");
        return Ok((segment, false));
    }
    warn!(path = %path.display(), offset = tail, bytes, "truncating torn tail of spool segment (an append cut short)");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| {
            file.set_len(tail as u64)?;
            file.sync_all()
        })
        .map_err(io_err(&path))?;
    segment.log_len = tail as u64;
    Ok((segment, true))
}

/// Returns the acked seqs and the ack log's length (after cutting a torn tail).
fn load_acks(dir: &Path, base: u64) -> Result<(Vec<u64>, u64), SpoolError> {
    let path = ack_path(dir, base);
    let data = fs::read(&path).map_err(io_err(&path))?;
    let scan = frame::scan_acks(&data);
    if scan.skipped > 0 {
        warn!(path = %path.display(), bytes = scan.skipped,
            "ignoring damaged bytes in spool ack log; records they acked will be sent again");
    }
    if scan.valid_end == data.len() {
        return Ok((scan.seqs, data.len() as u64));
    }
    warn!(path = %path.display(), offset = scan.valid_end, bytes = data.len() - scan.valid_end,
        "truncating torn tail of spool ack log");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(scan.valid_end as u64))
        .map_err(io_err(&path))?;
    Ok((scan.seqs, scan.valid_end as u64))
}

fn create_dir(dir: &Path) -> Result<(), SpoolError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(SpoolError::Io {
                path,
                source: io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the spool directory is already open elsewhere",
                ),
            });
        }
        Err(TryLockError::Error(err)) if err.kind() == io::ErrorKind::Unsupported => {
            warn!(path = %path.display(), "file locks unsupported here; nothing stops a second spool on this directory");
        }
        Err(TryLockError::Error(source)) => return Err(SpoolError::Io { path, source }),
    }
    Ok(file)
}

/// Bases of the segment logs and of the ack logs in `dir`.
fn list_dir(dir: &Path) -> Result<(BTreeSet<u64>, BTreeSet<u64>), SpoolError> {
    let mut logs = BTreeSet::new();
    let mut acks = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let name = entry.map_err(io_err(dir))?.file_name();
        match name.to_str().and_then(parse_name) {
            Some((base, FileKind::Log)) => {
                logs.insert(base);
            }
            Some((base, FileKind::Ack)) => {
                acks.insert(base);
            }
            None if name == LOCK_FILE => {}
            None => {
                warn!(dir = %dir.display(), file = ?name, "ignoring unrecognised file in spool directory")
            }
        }
    }
    Ok((logs, acks))
}

enum FileKind {
    Log,
    Ack,
}

/// Exactly 20 digits, so that one base has exactly one name.
fn parse_name(name: &str) -> Option<(u64, FileKind)> {
    let rest = name.strip_prefix("spool-")?;
    let (digits, kind) = if let Some(digits) = rest.strip_suffix(".log") {
        (digits, FileKind::Log)
    } else {
        (rest.strip_suffix(".ack")?, FileKind::Ack)
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, kind))
}

fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("spool-{base:020}.log"))
}

fn ack_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("spool-{base:020}.ack"))
}

/// Creates an empty segment and makes its name durable before it is used.
fn create_segment(dir: &Path, base: u64) -> Result<File, SpoolError> {
    let path = log_path(dir, base);
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}
