//! The `tagpoll` command's offline behaviour: validating event files.

use tagpoll_tests::cli_with_env;

fn run(args: &[&str]) -> (bool, String, String) {
    let o = cli_with_env(args, &[]);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_event() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/event.toml");
    let (ok, out, err) = run(&["check", root]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("ok (3 polls, 10 readers, 4 tags)"), "{out}");
}

#[test]
fn check_names_line_column_and_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        "[event]\nid = \"x\"\n\n[[polls]]\nid = \"p\"\nquestion = \"\"\nanswers = [{ id = \"a\", label = \"A\" }]\n\n[[readers]]\nid = \"r1\"\npoll = \"q\"\nanswer = \"a\"\n\n[[readers]]\nid = \"r1\"\npoll = \"p\"\nanswer = \"a\"\n",
    )
    .unwrap();
    let path = file.display().to_string();
    let (ok, out, err) = run(&["check", &path]);
    assert!(!ok, "a broken file must fail: {out}{err}");
    assert!(
        err.contains(&format!("{path}:6:12: poll \"p\" has an empty question")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:11:8: reader \"r1\" names unknown poll \"q\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:15:6: reader \"r1\" is mapped twice")),
        "{err}"
    );
}

#[test]
fn check_reports_toml_syntax_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("syntax.toml");
    std::fs::write(&file, "[event]\nid = \"x\"\n[[polls]\nid = 1\n").unwrap();
    let (ok, _, err) = run(&["check", &file.display().to_string()]);
    assert!(!ok);
    assert!(err.contains("syntax.toml:3:"), "{err}");
}

#[test]
fn tap_rejects_a_malformed_tag_before_connecting() {
    let (ok, _, err) = run(&["tap", "--reader", "r1", "--tag", "XYZ"]);
    assert!(!ok);
    assert!(
        err.contains("--tag: tag \"XYZ\" is not a UID in hex"),
        "{err}"
    );
}

#[test]
fn tap_wait_must_be_positive_and_excludes_no_wait() {
    let (ok, _, err) = run(&["tap", "--reader", "r1", "--tag", "0A0B", "--wait", "0"]);
    assert!(!ok);
    assert!(err.contains("--wait"), "{err}");
    let (ok, _, err) = run(&[
        "tap",
        "--reader",
        "r1",
        "--tag",
        "0A0B",
        "--wait",
        "5",
        "--no-wait",
    ]);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
}
