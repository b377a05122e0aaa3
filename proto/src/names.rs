//! JetStream streams, durable consumers, KV buckets and headers.
//!
//! docs/architecture.md lists the same names; keep both in step.

/// Taps from reader devices (`tagpoll.reads.>`), de-duplicated by read id.
pub const STREAM_READS: &str = "TAGPOLL_READS";
/// Taps with their voter resolved (`tagpoll.identified.>`).
pub const STREAM_IDENTIFIED: &str = "TAGPOLL_IDENTIFIED";
/// The vote stream: one outcome per identified read (`tagpoll.outcomes.>`).
pub const STREAM_VOTES: &str = "TAGPOLL_VOTES";

/// Every change of the config bucket, kept as long as a tap may wait to be
/// decided: a mirror of `KV_tagpoll_config` (same sequences and server
/// timestamps, no per-key history limit).
pub const STREAM_CONFIG_HISTORY: &str = "TAGPOLL_CONFIG_HISTORY";

/// The last heartbeat of every sender (memory storage, one per subject), so
/// `tagpoll status` also sees senders that went silent.
pub const STREAM_HEARTBEATS: &str = "TAGPOLL_HEARTBEATS";

/// Dead letters (`tagpoll.dead.>`): a copy of every message a service
/// terminated because it can never be processed (undecodable, a bad id or
/// subject, out of deliveries), with why in [`HEADER_DEAD_REASON`] and where
/// it came from in the other `Tagpoll-Dead-*` headers. Bounded; see
/// `docs/security.md`.
pub const STREAM_DEAD: &str = "TAGPOLL_DEAD";

/// Durable consumer of [`STREAM_READS`] shared by identity instances.
pub const CONSUMER_IDENTITY: &str = "identity";

/// Poll definitions, reader mappings, file-backend tags, event settings.
pub const KV_CONFIG: &str = "tagpoll_config";
/// Latest [`crate::v1::PollResults`] per poll.
pub const KV_RESULTS: &str = "tagpoll_results";
/// The identity service's shared lookup cache (anyMeta answers, keyed by a keyed hash of the
/// tag UID, never the UID itself); see `docs/identity.md`.
pub const KV_IDENTITY_CACHE: &str = "tagpoll_identity_cache";

/// JetStream de-duplication header; we always set it to the read id.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Carries the read id on every message derived from a tap, for tracing.
pub const HEADER_READ_ID: &str = "Tagpoll-Read-Id";

/// Why a dead letter was dead-lettered (visible ASCII, at most 1,000 bytes).
pub const HEADER_DEAD_REASON: &str = "Tagpoll-Dead-Reason";
/// The stream a dead letter was stored in before.
pub const HEADER_DEAD_STREAM: &str = "Tagpoll-Dead-Stream";
/// The subject a dead letter was published on.
pub const HEADER_DEAD_SUBJECT: &str = "Tagpoll-Dead-Subject";
/// The dead letter's sequence in [`HEADER_DEAD_STREAM`].
pub const HEADER_DEAD_SEQUENCE: &str = "Tagpoll-Dead-Sequence";
/// The service that dead-lettered it.
pub const HEADER_DEAD_SERVICE: &str = "Tagpoll-Dead-Service";
/// Set when the copied payload was cut short (value: its full length).
pub const HEADER_DEAD_TRUNCATED: &str = "Tagpoll-Dead-Truncated";

/// KV keys inside [`KV_CONFIG`].
pub mod config_keys {
    /// Event-wide settings.
    pub const EVENT: &str = "event";
    /// Prefix of poll definition keys.
    pub const POLL_PREFIX: &str = "poll.";
    /// Prefix of reader mapping keys.
    pub const READER_PREFIX: &str = "reader.";
    /// Prefix of file-backend tag keys.
    pub const TAG_PREFIX: &str = "tag.";

    /// Key of a poll definition.
    pub fn poll(poll_id: &str) -> String {
        format!("{POLL_PREFIX}{poll_id}")
    }

    /// Key of a reader mapping.
    pub fn reader(reader_id: &str) -> String {
        format!("{READER_PREFIX}{reader_id}")
    }

    /// Key of a file-backend tag, UID as uppercase hex.
    pub fn tag(uid_hex: &str) -> String {
        format!("{TAG_PREFIX}{uid_hex}")
    }
}

/// KV keys inside [`KV_IDENTITY_CACHE`].
pub mod identity_cache_keys {
    /// Prefix of cached anyMeta answers: `anymeta.{keyed hash of site and UID}`.
    pub const ANYMETA_PREFIX: &str = "anymeta.";
}

/// Key of a poll's results inside [`KV_RESULTS`].
pub fn results_key(poll_id: &str) -> String {
    format!("poll.{poll_id}")
}
