//! The fault test: 20,000 taps from several simulated devices while each
//! service, a reader device and the nats-server (or one node of a 3-node
//! cluster) are SIGKILLed and restarted in turn and the fake anyMeta goes
//! down for a while; afterwards nothing is lost or doubled (`tagpoll chaos`).

use tagpoll_tests::cli_with_env;

/// The two runs each want the whole machine: never at the same time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `tagpoll chaos` with `extra` arguments, prints the verdict line and
/// checks that nothing was lost or doubled; returns the JSON report.
fn chaos(what: &str, extra: &[&str]) -> serde_json::Value {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut args = vec![
        "chaos",
        "--taps",
        "20000",
        "--devices",
        "4",
        "--rate",
        "800",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = cli_with_env(&args, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    println!(
        "chaos ({what}): taps sent {} / votes counted {} (expected {}) / lost {} / doubled {} / faults {}",
        report["taps"],
        report["counted_votes"],
        report["expected_votes"],
        report["lost"],
        report["doubled"],
        report["faults"]
    );
    assert_eq!(report["taps"], 20000);
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["doubled"], 0, "{report}");
    assert_eq!(
        report["counted_votes"], report["expected_votes"],
        "{report}"
    );
    assert_eq!(report["counts_match"], true);
    assert!(
        report["anymeta_answers"].as_u64().unwrap() > 0,
        "identity asked the fake anyMeta: {report}"
    );
    assert!(out.status.success(), "{stderr}");
    report
}

fn faults(report: &serde_json::Value) -> Vec<String> {
    report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn chaos_run_loses_and_doubles_nothing() {
    let report = chaos("one nats-server", &[]);
    let faults = faults(&report);
    for kind in [
        "tally",
        "identity",
        "chaos-",
        "web",
        "anyMeta",
        "nats-server",
    ] {
        assert!(
            faults.iter().any(|f| f.contains(kind)),
            "no {kind} fault in {faults:?}"
        );
    }
}

#[test]
fn chaos_run_on_a_three_node_cluster_loses_and_doubles_nothing() {
    let report = chaos("3-node cluster", &["--cluster", "3"]);
    assert_eq!(report["cluster_nodes"], 3);
    assert!(faults(&report).iter().any(|f| f.contains("node")));
}
