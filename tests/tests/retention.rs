//! Retention: the streams are created with the `max_age` from
//! `TAGPOLL_RETENTION_DAYS` (the vote stream) and
//! `TAGPOLL_READS_RETENTION_HOURS` (taps in flight: raw reads, identified
//! reads), 30 days and 48 hours when unset; `tagpoll load` brings existing streams in line
//! with the settings given (never with defaults, so an upgrade shortens
//! nothing), and a bad value is refused naming the variable.

use std::time::Duration;

use tagpoll_tests::cluster::repo_root;
use tagpoll_tests::*;

const HOUR: Duration = Duration::from_secs(3600);

async fn max_ages(js: &async_nats::jetstream::Context) -> [Duration; 3] {
    let mut out = [Duration::ZERO; 3];
    for (i, name) in [
        names::STREAM_READS,
        names::STREAM_IDENTIFIED,
        names::STREAM_VOTES,
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = js.get_stream(name).await.expect("stream exists");
        out[i] = s.info().await.expect("stream info").config.max_age;
    }
    out
}

fn load(bus: &TestBus, extra: &[(&str, &str)]) -> std::process::Output {
    let event = repo_root().join("examples/event.toml");
    let mut env = bus.env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    cli_with_env(&["load", event.to_str().unwrap()], &env)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_sets_and_changes_the_streams_retention() {
    let bus = TestBus::start();
    let js = async_nats::jetstream::new(bus.client().await);

    // First load creates the streams with the defaults; nothing to change.
    let out = load(&bus, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("retention of"), "{}", text(&out));
    assert_eq!(max_ages(&js).await, [HOUR * 48, HOUR * 48, HOUR * 24 * 30]);

    // New settings: votes kept forever, taps in flight for 12 hours.
    let out = load(
        &bus,
        &[
            ("TAGPOLL_RETENTION_DAYS", "0"),
            ("TAGPOLL_READS_RETENTION_HOURS", "12"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for line in [
        "retention of TAGPOLL_READS: 12 hours (was 2 days)",
        "retention of TAGPOLL_IDENTIFIED: 12 hours (was 2 days)",
        "retention of TAGPOLL_VOTES: forever (was 30 days)",
    ] {
        assert!(said.contains(line), "missing {line:?} in:\n{said}");
    }
    assert_eq!(max_ages(&js).await, [HOUR * 12, HOUR * 12, Duration::ZERO]);

    // A load without the settings (an upgrade, a reload) changes nothing:
    // the defaults only apply to streams being created.
    let out = load(&bus, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("retention of"), "{}", text(&out));
    // One setting given: only the streams it governs change.
    let out = load(&bus, &[("TAGPOLL_RETENTION_DAYS", "90")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(max_ages(&js).await, [HOUR * 12, HOUR * 12, HOUR * 24 * 90]);

    // A bad value changes nothing and says which variable is wrong.
    for (var, value, needle) in [
        (
            "TAGPOLL_RETENTION_DAYS",
            "a month",
            r#"TAGPOLL_RETENTION_DAYS="a month" is not a number"#,
        ),
        (
            "TAGPOLL_READS_RETENTION_HOURS",
            "0.1",
            r#"TAGPOLL_READS_RETENTION_HOURS="0.1" is shorter than the minimum"#,
        ),
        (
            "TAGPOLL_RETENTION_DAYS",
            "1",
            "TAGPOLL_READS_RETENTION_HOURS (48.0 hours) must be at least an hour shorter than TAGPOLL_RETENTION_DAYS",
        ),
    ] {
        let out = load(&bus, &[(var, value)]);
        assert!(!out.status.success(), "{var}={value} was accepted");
        let said = text(&out);
        assert!(said.contains(needle), "{said}");
    }
    assert_eq!(max_ages(&js).await, [HOUR * 12, HOUR * 12, HOUR * 24 * 90]);
}
