//! The fake anyMeta server lives in the library (`tagpoll_identity::fake_anymeta`) so the
//! workspace's integration tests and the benchmark can use it too.
pub use tagpoll_identity::fake_anymeta::*;
