//! `droptrace demo` end to end: the newcomer's first command must build its lab, attribute
//! every step right, exit 0 and leave nothing behind.
mod common;

use common::{require_root, run_droptrace};

fn demo_namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("dtlab-demo-"))
        .map(str::to_string)
        .collect()
}

// One test, run in sequence: the leftover check below would otherwise see the demo's own
// namespaces while it runs.
#[test]
fn demo_attributes_every_step_and_refuses_to_run_over_leftovers() {
    require_root();
    let out = run_droptrace(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "demo failed:\n{stdout}\n{stderr}"
    );
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("STEP"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(table.len(), 6, "six steps in the table:\n{stdout}");
    for (row, cause) in table.iter().zip([
        "(none)",
        "forwarding_disabled",
        "(none)",
        "missing_chain",
        "(none)",
        "firewall_reject",
    ]) {
        assert!(row.ends_with("right"), "step attributed wrong: {row}");
        assert!(row.contains(cause), "{row}");
    }
    // The same code path as `watch`: real verdict blocks and the culprit of step 2.
    assert!(
        stdout.contains("VERDICT port 5000/tcp: forwarding_disabled"),
        "{stdout}"
    );
    assert!(
        stdout.contains("culprit:  net.ipv4.ip_forward 1 -> 0"),
        "{stdout}"
    );
    // The flow, not only the deaths: each step's summary line for the port. Healthy steps
    // forward and drop nothing; with forwarding off nothing is forwarded.
    if common::kernel::has_forwarding_tracepoints() {
        let flows: Vec<&str> = stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("port 5000/tcp: "))
            .collect();
        assert_eq!(flows.len(), 6, "one flow line per step:\n{stdout}");
        let forwarded = |line: &str| -> u64 {
            let n = line.trim_start().trim_start_matches("port 5000/tcp: ");
            n.split(' ').next().unwrap_or("0").parse().unwrap_or(0)
        };
        for healthy in [flows[0], flows[2], flows[4]] {
            assert!(
                forwarded(healthy) > 0 && healthy.contains(" 0 dropped"),
                "{healthy}"
            );
        }
        assert_eq!(forwarded(flows[1]), 0, "{}", flows[1]);
        assert!(
            stdout.contains("evidence: the kernel routed"),
            "the routing decision as evidence:\n{stdout}"
        );
    }
    assert!(
        demo_namespaces().is_empty(),
        "the demo left namespaces behind"
    );

    // A killed demo's namespaces block the next run until --cleanup removes them.
    let fake = format!("dtlab-demo-leftover-{}", std::process::id());
    let made = std::process::Command::new("ip")
        .args(["netns", "add", &fake])
        .status()
        .unwrap();
    assert!(made.success());
    let refused = run_droptrace(&["demo"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&fake) && err.contains("droptrace demo --cleanup"),
        "{err}"
    );
    let cleaned = run_droptrace(&["demo", "--cleanup"]);
    assert!(cleaned.status.success());
    assert!(String::from_utf8_lossy(&cleaned.stdout).contains(&fake));
    assert!(demo_namespaces().is_empty());
}
