//! `tagpoll-reader --check`: the shipped example device config validates,
//! and mistakes are reported with the file, line and key (or the flag).

use std::process::Output;

use tagpoll_tests::binary;

fn reader(args: &[&str]) -> Output {
    std::process::Command::new(binary("tagpoll-reader"))
        .args(args)
        .env_remove("NATS_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tagpoll-reader")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_example_device_config_passes_check() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/reader/device.toml");
    let o = reader(&["--config", file, "--check"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("configuration OK"), "{out}");
    // Every protocol appears in the example.
    for protocol in ["id12", "parallax", "sm130", "line"] {
        assert!(out.contains(&format!("protocol={protocol}")), "{out}");
    }
}

#[test]
fn check_names_the_line_and_key_of_a_mistake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("device.toml");
    std::fs::write(
        &file,
        "device = \"hall\"\n\n[[readers]]\nid = \"r1\"\npath = \"/dev/ttyUSB0\"\nprotocol = \"morse\"\n",
    )
    .expect("write config");
    let o = reader(&["--config", file.to_str().unwrap(), "--check"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("device.toml:6:"), "{out}");
    assert!(out.contains("readers[0].protocol"), "{out}");
    assert!(out.contains("morse"), "{out}");
}

#[test]
fn the_command_line_form_is_checked_too() {
    let o = reader(&[
        "--device",
        "hall",
        "--reader",
        "coffee=/dev/ttyUSB0,protocol=sm130",
        "--reader",
        "tea=usb:A3S280TD,protocol=parallax,baud=2400",
        "--quiet-ms",
        "250",
        "--spool",
        "/var/lib/tagpoll/spool",
        "--check",
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("coffee /dev/ttyUSB0 protocol=sm130 baud=19200"),
        "{out}"
    );
    assert!(
        out.contains("tea usb:A3S280TD protocol=parallax baud=2400"),
        "{out}"
    );
    assert!(out.contains("quiet 250 ms"), "{out}");

    let o = reader(&[
        "--device",
        "hall",
        "--reader",
        "coffee=/dev/ttyUSB0",
        "--check",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing protocol"), "{}", text(&o));
}
